"""The after-the-fact review of a break-glass grant: one row per break-glass request.

A table of its own rather than columns on access_requests: only break-glass requests have one,
and "exactly one review" and "overdue notified once" are each one conditional UPDATE on it
(`WHERE verdict IS NULL`, `WHERE overdue_notified_at IS NULL`), whatever the request's status.
"""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from security_api.db import Base, UTCDateTime


class BreakGlassReview(Base):
    """Due when the request was made; decided once; its overdue notice sent once."""

    __tablename__ = "break_glass_reviews"
    __table_args__ = (
        # The reaper's and scope=unreviewed's look-up: the open reviews by due time.
        Index("ix_break_glass_reviews_open", "verdict", "due_at"),
    )

    request_id: Mapped[str] = mapped_column(ForeignKey("access_requests.id"), primary_key=True)
    due_at: Mapped[datetime] = mapped_column(UTCDateTime())
    verdict: Mapped[str | None] = mapped_column(String(16))
    reviewer_id: Mapped[str | None] = mapped_column(ForeignKey("users.id"))
    reviewed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    comment: Mapped[str] = mapped_column(String(2000), default="")
    overdue_notified_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
