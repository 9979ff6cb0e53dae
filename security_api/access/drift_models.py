"""Tables of drift detection (security_api/access/drift.py): its findings and its schedule.

Imported at the end of security_api/models.py, so importing the models registers every table.
"""
from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import Index, Integer, String, text
from sqlalchemy.orm import Mapped, mapped_column

from security_api.db import Base, UTCDateTime
from security_api.json_column import JSONText


def _new_id() -> str:
    return str(uuid.uuid4())


class DriftFinding(Base):
    """A difference between the grants and what a provisioner's target holds, found by a scan.

    Open while `resolved_at` is NULL; at most one open finding per `key` (the partial unique
    index), so however many scans see it, it is recorded, audited and notified once.
    """

    __tablename__ = "drift_findings"
    __table_args__ = (
        Index("uq_drift_findings_open", "key", unique=True,
              sqlite_where=text("resolved_at IS NULL"),
              postgresql_where=text("resolved_at IS NULL")),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=_new_id)
    key: Mapped[str] = mapped_column(String(400))
    kind: Mapped[str] = mapped_column(String(16))
    provisioner: Mapped[str] = mapped_column(String(64))
    permission_key: Mapped[str | None] = mapped_column(String(64))
    request_id: Mapped[str | None] = mapped_column(String(128))
    target: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(String(500))
    ref: Mapped[dict] = mapped_column(JSONText(sort_keys=True), default=dict)
    found_at: Mapped[datetime] = mapped_column(UTCDateTime())
    resolved_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), index=True)
    # "gone" (a later scan no longer saw it) or "fixed" (drift fix repaired it).
    resolution: Mapped[str | None] = mapped_column(String(16))


class DriftSchedule(Base):
    """One row: when the next periodic drift scan is due, claimed by one worker per interval."""

    __tablename__ = "drift_schedule"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    next_scan_at: Mapped[datetime] = mapped_column(UTCDateTime())
