"""Pending requests that nobody decided in time: they expire, once, and the requester is told.

The deadline is `pending_expires_at`, frozen at creation (pending_deadline.py says why).

A request past its deadline reads as expired at once (request_views.effective_status) and can
no longer be decided (`decidable_in_time` guards approve, deny and cancel); the reaper then
makes it so in the database. The move is the table's conditional UPDATE, so of an approval and
the reaper racing, exactly one wins: the other sees `request_not_pending` or nothing to do.
"""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from security_api import audit, metrics
from security_api.access.transitions import Event, transition
from security_api.enums import AuditAction, ExpiredReason, RequestStatus
from security_api.integrations import outbox
from security_api.models import AccessRequest
from security_api.unit_of_work import end_reads, unit_of_work


def expire_pending_one(session: Session, request_id: str, *, origin: audit.Origin,
                       now: datetime) -> bool:
    """In the caller's transaction: expire one pending request past its deadline; tell the
    requester through the outbox. Return False when it was decided (or expired) meanwhile."""
    if not transition(session, request_id, event=Event.EXPIRE_PENDING, ended_at=now,
                      expired_reason=ExpiredReason.NOT_DECIDED,
                      extra_where=(AccessRequest.pending_expires_at <= now,)):
        return False
    audit.record(session, action=AuditAction.REQUEST_EXPIRED, actor="system", target=request_id,
                 origin=origin, now=now, details={"reason": ExpiredReason.NOT_DECIDED.value})
    metrics.stage_expiry(session, ExpiredReason.NOT_DECIDED)
    outbox.requests_ended(session, [request_id])
    return True


def expire_pending_due(session: Session, *, now: datetime, origin: audit.Origin,
                       limit: int = 100) -> int:
    """Expire up to `limit` pending requests past their deadline, each in its own unit of work;
    return how many this call expired (a concurrent reaper's share is not counted twice)."""
    due = list(session.scalars(
        select(AccessRequest.id)
        .where(AccessRequest.status == RequestStatus.PENDING,
               AccessRequest.pending_expires_at <= now)
        .order_by(AccessRequest.pending_expires_at).limit(limit)))
    end_reads(session)
    expired = 0
    for request_id in due:
        with unit_of_work(session):
            expired += expire_pending_one(session, request_id, origin=origin, now=now)
    return expired
