"""Extending a grant without a gap: `POST /v1/requests/<id>/extend`.

The rule that would decide a new request for the permission now decides the extension, through
the same checks (`request_creation.checked_terms`):
- `auto`: the grant's end moves to now + n at once; nothing is revoked or provisioned.
- `approval`: a new pending request that `extends` the grant and leans on it (`continues_id`).
  Its last approval, while the grant still runs, moves the grant's end and makes the extension
  `active` with the same end, provisioning nothing (it *continues* the grant: see grant_chain).
  After the grant has ended, the approval is an ordinary new grant, provisioned.
Every move of the grant's end is one conditional UPDATE on the grant's row (grant_chain.move_end),
so an extension racing the reaper or a revoke either moves a running grant or changes nothing.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from security_api import audit, metrics
from security_api.access import conflicts
from security_api.access.expiry import expire_one
from security_api.access.grant_chain import hold_running, move_end
from security_api.access.request_actors import Actor, visible_request
from security_api.access.request_creation import (
    Terms,
    checked_terms,
    insert_request,
    refuse_conflicts_of,
)
from security_api.access.transitions import Event, transition
from security_api.clock import isoformat
from security_api.enums import AuditAction, PolicyMode, RequestStatus
from security_api.errors import Conflict, Forbidden
from security_api.integrations import outbox
from security_api.models import AccessRequest
from security_api.services import Services
from security_api.unit_of_work import unit_of_work

NOT_ACTIVE = ("Only an active grant can be extended.", "request_not_active")
BREAK_GLASS_REFUSAL = ("A break-glass grant cannot be extended: when it ends, break the glass "
                       "again (each use is reviewed).", "break_glass_not_extendable")
EXTENSION_PENDING = ("An extension of this grant is already waiting for approval.",
                     "extension_pending")


def extend(session: Session, services: Services, *, request_id: str, actor: Actor,
           justification: str, duration_minutes: int | None, origin: audit.Origin,
           now: datetime, totp: object = None) -> tuple[AccessRequest, bool]:
    """Extend one's own active grant; return (the request to show, whether it is a new one).

    `auto`: the grant itself, its end moved. `approval`: the new pending extension.
    """
    request = visible_request(session, request_id, actor)
    if request.requester_id != actor.subject.id:
        raise Forbidden("Only the requester can extend a grant.")
    if request.status != RequestStatus.ACTIVE or request.expires_at is None:
        raise Conflict(NOT_ACTIVE[0], code=NOT_ACTIVE[1])
    # An extension continuing a grant is extended by extending that grant.
    grant = session.get(AccessRequest, request.continues_id or request.id)
    terms = checked_terms(session, services, requester=actor.subject,
                          permission_key=grant.permission_key, justification=justification,
                          duration_minutes=duration_minutes, params=grant.params,
                          totp=totp, origin=origin, now=now)
    if terms.decision.mode == PolicyMode.BREAK_GLASS:
        # An emergency use is one reviewed use: more time is a new use, with its own review.
        raise Conflict(*BREAK_GLASS_REFUSAL[:1], code=BREAK_GLASS_REFUSAL[1])
    if terms.decision.mode == PolicyMode.AUTO:
        _extend_at_once(session, grant, terms, actor=actor, origin=origin, now=now)
        return session.get(AccessRequest, request.id, populate_existing=True), False
    extension_id = _ask(session, request.id, grant.id, terms, actor=actor, origin=origin, now=now)
    return session.get(AccessRequest, extension_id, populate_existing=True), True


def _extend_at_once(session: Session, grant: AccessRequest, terms: Terms, *, actor: Actor,
                    origin: audit.Origin, now: datetime) -> None:
    previous, expires_at = grant.expires_at, now + timedelta(minutes=terms.duration)
    with _conflicts_audited(session, grant, actor, origin, now), unit_of_work(session):
        if not move_end(session, grant.id, expires_at=expires_at, now=now):
            raise Conflict(NOT_ACTIVE[0], code=NOT_ACTIVE[1])
        refuse_conflicts_of(session, grant.requester_id, terms, now=now)
        audit.record(session, action=AuditAction.REQUEST_EXTENDED, actor=actor.subject.username,
                     target=grant.id, origin=origin, now=now,
                     details={"mode": PolicyMode.AUTO, "duration_minutes": terms.duration,
                              "justification": terms.justification,
                              "previous_expires_at": isoformat(previous),
                              "expires_at": isoformat(expires_at)})
        metrics.stage_extension(session, "auto")


def _ask(session: Session, request_id: str, grant_id: str, terms: Terms, *, actor: Actor,
         origin: audit.Origin, now: datetime) -> str:
    """Create the pending extension, while the grant's row is held running."""
    grant = session.get(AccessRequest, grant_id)
    with _conflicts_audited(session, grant, actor, origin, now), unit_of_work(session):
        # Held until the commit: a revoke racing this waits, then cancels the extension too.
        if not hold_running(session, grant_id, now=now):
            raise Conflict(NOT_ACTIVE[0], code=NOT_ACTIVE[1])
        refuse_conflicts_of(session, grant.requester_id, terms, now=now)
        if session.scalar(select(AccessRequest.id).where(
                AccessRequest.continues_id == grant_id,
                AccessRequest.status == RequestStatus.PENDING)) is not None:
            raise Conflict(EXTENSION_PENDING[0], code=EXTENSION_PENDING[1])
        extension = insert_request(session, actor.subject, terms, origin=origin, now=now,
                                   extends=(request_id, grant_id), duplicate=EXTENSION_PENDING)
        audit.record(session, action=AuditAction.REQUEST_EXTENSION_REQUESTED,
                     actor=actor.subject.username, target=grant_id, origin=origin, now=now,
                     details={"extension": extension.id, "duration_minutes": terms.duration})
        outbox.request_created(session, extension.id)
        metrics.stage_extension(session, "pending")
        return extension.id


def _conflicts_audited(session: Session, grant: AccessRequest, actor: Actor,
                       origin: audit.Origin, now: datetime):
    """An extension a conflict set forbids (another side held since) is refused and audited."""
    return conflicts.refusals_audited(session, stage="extend", actor=actor.subject.username,
                                      target=grant.id, origin=origin, now=now)


@dataclass(frozen=True)
class Settled:
    """How an approved extension lands: continued its grant, or stands alone (owed revokes)."""

    continued: bool
    owed: list[str] = field(default_factory=list)


def settle_approved(session: Session, extension_id: str, *, approver: str,
                    origin: audit.Origin, now: datetime) -> Settled:
    """In approve's transaction, after an extension's last approval: continue its grant if it
    still runs (active now, nothing to provision), else end that grant (if due) and tell the
    caller to grant this one as an ordinary request, after the grant's owed revoke.
    """
    extension = session.get(AccessRequest, extension_id, populate_existing=True)
    grant_id = extension.continues_id
    expires_at = now + timedelta(minutes=extension.duration_minutes)
    if not move_end(session, grant_id, expires_at=expires_at, now=now):
        # The old grant is revoked before the new one is made, so its revoke cannot undo it.
        owed = [grant_id] if expire_one(session, grant_id, origin=origin, now=now) else []
        metrics.stage_extension(session, "late")
        return Settled(False, owed)
    transition(session, extension_id, event=Event.CONTINUE, decided_at=now, expires_at=expires_at)
    audit.record(session, action=AuditAction.REQUEST_EXTENDED, actor=approver, target=grant_id,
                 origin=origin, now=now,
                 details={"mode": PolicyMode.APPROVAL, "extension": extension_id,
                          "expires_at": isoformat(expires_at)})
    audit.record(session, action=AuditAction.REQUEST_ACTIVATED, actor="system",
                 target=extension_id, origin=origin, now=now,
                 details={"expires_at": isoformat(expires_at), "continues": grant_id})
    outbox.request_decided(session, extension_id)
    metrics.stage_extension(session, "in_time")
    return Settled(True)
