"""Ending grants whose time is up: the claim in a transaction, the revoke after its commit."""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from security_api import audit, metrics
from security_api.access.grant_chain import end_with_grant
from security_api.access.provisioning import revoke_each_claimed
from security_api.access.transitions import Event, transition
from security_api.enums import AuditAction, ExpiredReason, RequestStatus
from security_api.integrations import outbox
from security_api.models import AccessRequest
from security_api.services import Services
from security_api.unit_of_work import end_reads


def expire_one(session: Session, request_id: str, *, origin: audit.Origin,
               now: datetime) -> bool:
    """In the caller's transaction: expire a due grant; its revoke is owed from the commit on.

    The conditional update is the claim: a second reaper finds nothing left to do. It also
    checks the end is still past: an extension that moved it meanwhile wins. An extension
    that continues a grant (see grant_chain) ends with it and owes no revoke of its own.
    """
    due = AccessRequest.expires_at <= now
    if not transition(session, request_id, event=Event.EXPIRE, ended_at=now,
                      provisioning_started_at=now, expired_reason=ExpiredReason.ENDED,
                      extra_where=(due, AccessRequest.continues_id.is_(None))):
        return transition(session, request_id, event=Event.EXPIRE_WITH_GRANT, ended_at=now,
                          expired_reason=ExpiredReason.ENDED,
                          extra_where=(due, AccessRequest.continues_id.is_not(None)))
    audit.record(session, action=AuditAction.REQUEST_EXPIRED, actor="system",
                 target=request_id, origin=origin, now=now,
                 details={"reason": ExpiredReason.ENDED.value})
    metrics.stage_expiry(session, ExpiredReason.ENDED)
    outbox.requests_ended(session, [request_id])
    end_with_grant(session, request_id, expired=True, actor="system", origin=origin, now=now)
    return True


def expire_due(session: Session, services: Services, *, now: datetime, origin: audit.Origin,
               limit: int = 100) -> int:
    """Expire grants whose time is up and run each provisioner's revoke exactly once.

    Each grant is its own unit of work: one slow or failing revoke does not hold back the rest.
    """
    due = list(session.scalars(
        select(AccessRequest.id)
        .where(AccessRequest.status == RequestStatus.ACTIVE, AccessRequest.expires_at <= now)
        .order_by(AccessRequest.expires_at).limit(limit)))
    end_reads(session)
    return revoke_each_claimed(session, services, due, claim=expire_one, origin=origin, now=now)
