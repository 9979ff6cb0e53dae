"""A grant and the extensions that lean on it: moving its end, and ending them with it.

An extension approved while its grant still runs does not provision anything: it *continues*
the grant (`continues_id`). The grant row keeps the outside access and the revoke it owes;
the extension row shows `active` with the same `expires_at`, and ends when the grant ends
(expired with it, revoked with it), owing no revoke of its own. A pending extension leans on
the grant too: a revoke of the grant cancels it; an expiry leaves it waiting, to become an
ordinary grant if approved later.
"""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session

from security_api import audit
from security_api.access.transitions import Event, transition
from security_api.enums import AuditAction, ExpiredReason, RequestStatus
from security_api.integrations import outbox
from security_api.models import AccessRequest


def running(now: datetime) -> tuple:
    """Return the conditions of a grant that may be extended: its own, not past its end."""
    return (AccessRequest.expires_at > now, AccessRequest.continues_id.is_(None))


def hold_running(session: Session, grant_id: str, *, now: datetime) -> bool:
    """In the caller's transaction: lock a running grant's row (False if it is not running).

    A revoke or an expiry of the grant waits for this transaction, then sees what it wrote.
    """
    return transition(session, grant_id, event=Event.EXTEND, extra_where=running(now))


def move_end(session: Session, grant_id: str, *, expires_at: datetime, now: datetime) -> bool:
    """In the caller's transaction: move a running grant's end and its extensions' with it.

    One conditional UPDATE decides: a grant that has ended (or is past its end, reaped or not)
    is not moved, so no expiry or revoke can be undone by an extension racing it.
    """
    if not transition(session, grant_id, event=Event.EXTEND, expires_at=expires_at,
                      extra_where=running(now)):
        return False
    for rider_id in _leaning(session, grant_id, RequestStatus.ACTIVE):
        transition(session, rider_id, event=Event.EXTEND, expires_at=expires_at)
    return True


def end_with_grant(session: Session, grant_id: str, *, expired: bool, actor: str,
                   origin: audit.Origin, now: datetime) -> None:
    """In the transaction that ended a grant: end the extensions leaning on it.

    Continued ones end as the grant did (expired or revoked), owing no revoke; on a revoke a
    pending extension is cancelled (on an expiry it keeps waiting: approved, it grants anew).
    """
    # One look for both kinds of rider; the continued ones are ended first, as before.
    leaning = _leaning_by_status(session, grant_id)
    for rider_id in leaning.get(RequestStatus.ACTIVE, ()):
        event = Event.EXPIRE_WITH_GRANT if expired else Event.END_WITH_GRANT
        reason = {"expired_reason": ExpiredReason.ENDED} if expired else {}
        if transition(session, rider_id, event=event, source=RequestStatus.ACTIVE, ended_at=now,
                      **reason):
            audit.record(session, action=AuditAction.REQUEST_EXPIRED if expired
                         else AuditAction.REQUEST_REVOKED, actor=actor, target=rider_id,
                         origin=origin, now=now, details={"with_grant": grant_id})
    if expired:
        return
    for waiting_id in leaning.get(RequestStatus.PENDING, ()):
        if transition(session, waiting_id, event=Event.END_WITH_GRANT,
                      source=RequestStatus.PENDING, decided_at=now):
            audit.record(session, action=AuditAction.REQUEST_CANCELLED, actor=actor,
                         target=waiting_id, origin=origin, now=now,
                         details={"reason": "grant_ended", "with_grant": grant_id})
            outbox.requests_ended(session, [waiting_id])


# Built once at import: every revoke and expiry asks it (see bench/write_cpu.py).
_RIDERS = select(AccessRequest.id, AccessRequest.status).where(
    AccessRequest.continues_id == bindparam("grant_id"),
    AccessRequest.status.in_([RequestStatus.ACTIVE, RequestStatus.PENDING]))


def _leaning_by_status(session: Session, grant_id: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for rider_id, status in session.execute(_RIDERS, {"grant_id": grant_id}):
        found.setdefault(status, []).append(rider_id)
    return found


def _leaning(session: Session, grant_id: str, status: str) -> list[str]:
    return list(session.scalars(select(AccessRequest.id).where(
        AccessRequest.continues_id == grant_id, AccessRequest.status == status)))
