"""Warn the holder of a grant, once, shortly before it ends (EXPIRY_WARNING_MINUTES).

Why a claim column and not a flag: `expiry_warned_for` holds the `expires_at` the holder was
warned about. The claim is one conditional UPDATE (`... WHERE expiry_warned_for IS NULL OR
expiry_warned_for <> expires_at`) in the same transaction as the outbox row, so of several
reapers (instances x workers) exactly one wins and the warning is never lost nor doubled.
When an extension moves `expires_at`, the two no longer match and the new end can be warned
about in its turn; nothing else needs to reset the column.

This is not a move of the request's status (transitions.py): the grant stays `active`.
"""
from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from security_api import audit, metrics
from security_api.clock import isoformat
from security_api.enums import AuditAction, RequestStatus
from security_api.integrations import outbox
from security_api.models import AccessRequest
from security_api.unit_of_work import end_reads, unit_of_work


def _due(now: datetime, horizon: datetime) -> tuple:
    """SQL conditions: an active grant ending within the horizon, not warned about this end.

    An extension approved in time rides on its grant (continues_id): the grant is the one
    warned, with the link to extend it again, so its holder hears once, not twice."""
    return (AccessRequest.status == RequestStatus.ACTIVE, AccessRequest.continues_id.is_(None),
            AccessRequest.expires_at > now, AccessRequest.expires_at <= horizon,
            or_(AccessRequest.expiry_warned_for.is_(None),
                AccessRequest.expiry_warned_for != AccessRequest.expires_at))


def warn_one(session: Session, request_id: str, *, origin: audit.Origin, now: datetime,
             horizon: datetime) -> bool:
    """In the caller's transaction: claim the warning of one grant and write it to the outbox.

    Return False when another reaper claimed it first, or the grant ended or moved meanwhile.
    """
    claimed = session.execute(
        update(AccessRequest).where(AccessRequest.id == request_id, *_due(now, horizon))
        .values(expiry_warned_for=AccessRequest.expires_at)).rowcount == 1
    if not claimed:
        return False
    expires_at = session.scalar(select(AccessRequest.expires_at)
                                .where(AccessRequest.id == request_id))
    audit.record(session, action=AuditAction.REQUEST_EXPIRY_WARNING_SENT, actor="system",
                 target=request_id, origin=origin, now=now,
                 details={"expires_at": isoformat(expires_at)})
    metrics.stage_expiry_warning(session)
    outbox.expiry_warning(session, request_id)
    return True


def warn_due(session: Session, *, warning_minutes: int, now: datetime, origin: audit.Origin,
             limit: int = 100) -> int:
    """Warn the holders of grants ending within `warning_minutes` (0: off); return how many
    warnings this call wrote, each in its own unit of work."""
    if warning_minutes <= 0:
        return 0
    horizon = now + timedelta(minutes=warning_minutes)
    due = list(session.scalars(select(AccessRequest.id).where(*_due(now, horizon))
                               .order_by(AccessRequest.expires_at).limit(limit)))
    end_reads(session)
    warned = 0
    for request_id in due:
        with unit_of_work(session):
            warned += warn_one(session, request_id, origin=origin, now=now, horizon=horizon)
    return warned
