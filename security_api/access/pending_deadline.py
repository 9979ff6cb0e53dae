"""A pending request's decision deadline: computed once at creation, then only compared.

Why the deadline is stored on the request (`pending_expires_at`, from the rule's
`pending_ttl_minutes`) rather than computed from the rule when the reaper runs: like the other
terms of a request (mode, approvers, approvals_required) it is frozen when the request is made,
so an administrator editing or deleting the rule later neither expires waiting requests early
by surprise nor keeps them waiting forever. Kept apart from pending_expiry (which writes the
outbox) so readers can import it without a cycle.
"""
from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import or_

from security_api.models import AccessRequest

DEFAULT_PENDING_TTL_MINUTES = 1440


def pending_deadline(created_at: datetime, ttl_minutes: int | None) -> datetime:
    """Return when a request made at `created_at` under a rule with this ttl expires undecided."""
    return created_at + timedelta(minutes=ttl_minutes or DEFAULT_PENDING_TTL_MINUTES)


def decidable_in_time(now: datetime):
    """SQL condition: the request's decision deadline has not passed (or it has none)."""
    return or_(AccessRequest.pending_expires_at.is_(None), AccessRequest.pending_expires_at > now)
