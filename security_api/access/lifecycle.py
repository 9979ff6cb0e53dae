"""The decisions on an access request: approve, deny, cancel, revoke, retry.

Each is a public operation that owns its transaction (`unit_of_work`) and moves the request
through the table in `transitions.py`; an outside call (grant or revoke) runs after the commit.
The rest of the lifecycle lives beside it and is re-exported here for the routes, the portal
and the CLI: creation (`request_creation`), who may act (`request_actors`), expiry
(`expiry`), and eligibility after deactivation or a role change (`eligibility`).
"""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from security_api import audit
from security_api.access import extension
from security_api.access.conflicts import refusals_audited, refuse_conflicts
from security_api.access.eligibility import (
    end_ineligible,
    grant_and_recheck,
    ineligibility,
    require_eligible_requester,
    settle_ended,
)
from security_api.access.expiry import expire_due
from security_api.access.grant_chain import end_with_grant, hold_running, running
from security_api.access.pending_deadline import decidable_in_time
from security_api.access.provisioning import finish_revoke, owed_revoke
from security_api.access.request_actors import Actor, approver_groups, is_eligible_approver, visible_request
from security_api.access.request_creation import create_request
from security_api.access.transitions import Event, transition
from security_api.accounts.step_up import require_step_up_for
from security_api.enums import AuditAction, Decision, RequestStatus
from security_api.errors import Conflict, Forbidden
from security_api.integrations import outbox
from security_api.models import AccessRequest, Approval
from security_api.services import Services
from security_api.unit_of_work import unit_of_work

extend = extension.extend

__all__ = ["Actor", "approve", "approver_groups", "cancel", "create_request", "deny", "extend",
           "end_ineligible", "expire_due", "ineligibility", "is_eligible_approver", "retry",
           "revoke", "settle_ended", "visible_request"]


def _require_decider(session: Session, request: AccessRequest, actor: Actor) -> None:
    if request.requester_id == actor.subject.id:
        raise Forbidden("You cannot decide your own request.", code="separation_of_duties")
    if not is_eligible_approver(session, request, actor):
        raise Forbidden("You are not an approver of this request.")


def _record_decision(session: Session, request: AccessRequest, actor: Actor, decision: Decision,
                     comment: str, now: datetime) -> None:
    session.add(Approval(request_id=request.id, approver_id=actor.subject.id,
                         decision=decision, comment=comment or "", at=now))
    try:
        session.flush()
    except IntegrityError:
        # One decision per approver: no second approval, no taking an approval back by denying.
        raise Conflict("You have already decided this request.", code="already_decided") from None


def _conflicts_audited(session: Session, stage: str, actor: Actor, request_id: str,
                       origin: audit.Origin, now: datetime):
    return refusals_audited(session, stage=stage, actor=actor.subject.username,
                            target=request_id, origin=origin, now=now)


def _reloaded(session: Session, request_id: str) -> AccessRequest:
    """The request as it stands after the outside steps, read once.

    Called with the id the caller asked for (visible_request found that very row), not the
    copy's `.id`: an outside step's rollback expires the copy, and reading its id would load
    the whole row once more before this read.
    """
    return session.get(AccessRequest, request_id, populate_existing=True)


def _require_decider_step_up(session: Session, services: Services, request: AccessRequest,
                             actor: Actor, totp: object, origin: audit.Origin,
                             now: datetime) -> None:
    """A step-up permission's decider proves a fresh second factor, before anything is written."""
    require_step_up_for(session, services, permission_key=request.permission_key,
                        user_id=actor.subject.id, code=totp, origin=origin, now=now)


def approve(session: Session, services: Services, *, request_id: str, actor: Actor, comment: str,
            origin: audit.Origin, now: datetime, totp: object = None) -> AccessRequest:
    """Record an approval; the last one needed grants and provisions, once.

    `totp`: the approver's step-up code, needed when the permission has `step_up`.
    """
    with _conflicts_audited(session, "approve", actor, request_id, origin, now), \
            unit_of_work(session):
        request = visible_request(session, request_id, actor)
        _require_decider(session, request, actor)
        require_eligible_requester(session, request)
        _require_decider_step_up(session, services, request, actor, totp, origin, now)
        if request.continues_id is not None:
            # Lock order grant, then extension (as revoke and expiry take them): no deadlock.
            hold_running(session, request.continues_id, now=now)
        # A request that became conflicting while it waited is never granted.
        refuse_conflicts(session, requester_id=request.requester_id,
                         permission_key=request.permission_key, now=now,
                         ignore_request_id=request.id)
        # Touching the row takes its write lock: deciders of one request go one at a time.
        # Past its decision deadline it reads as expired: too late to decide (409).
        transition(session, request.id, event=Event.DECIDE,
                   extra_where=(decidable_in_time(now),))
        _record_decision(session, request, actor, Decision.APPROVE, comment, now)
        audit.record(session, action=AuditAction.REQUEST_APPROVED, actor=actor.subject.username,
                     target=request.id, origin=origin, now=now, details={"comment": comment or ""})
        approvals = session.scalar(select(func.count()).select_from(Approval).where(
            Approval.request_id == request.id, Approval.decision == Decision.APPROVE))
        granting = approvals >= request.approvals_required
        settled = _settle_extension(session, request, granting, actor=actor, origin=origin,
                                    now=now)
        granting = granting and not settled.continued
        if granting:  # the request's new status (granting) is known here, before the commit
            # An extension approved after its grant ended stands alone: it leans on nothing.
            transition(session, request.id, event=Event.APPROVE, decided_at=now,
                       provisioning_started_at=now, continues_id=None)
    for ended_id in settled.owed:
        finish_revoke(session, services, ended_id, origin=origin, now=now)
    if granting:
        grant_and_recheck(session, services, request.id, origin=origin, now=now)
    return _reloaded(session, request_id)


def _settle_extension(session: Session, request: AccessRequest, granting: bool, *,
                      actor: Actor, origin: audit.Origin, now: datetime) -> extension.Settled:
    """The last approval of an extension: continue its grant, or stand alone (see extension)."""
    if not granting or request.continues_id is None:
        return extension.Settled(False)
    return extension.settle_approved(session, request.id, approver=actor.subject.username,
                                     origin=origin, now=now)


def deny(session: Session, services: Services, *, request_id: str, actor: Actor, comment: str,
         origin: audit.Origin, now: datetime, totp: object = None) -> AccessRequest:
    """Refuse a pending request; one eligible approver's no is enough (with step-up when the
    permission has it: a denial is a decision too, and a stolen token must not make one)."""
    with unit_of_work(session):
        request = visible_request(session, request_id, actor)
        _require_decider(session, request, actor)
        _require_decider_step_up(session, services, request, actor, totp, origin, now)
        transition(session, request.id, event=Event.DENY, decided_at=now,
                   extra_where=(decidable_in_time(now),))
        _record_decision(session, request, actor, Decision.DENY, comment, now)
        audit.record(session, action=AuditAction.REQUEST_DENIED, actor=actor.subject.username,
                     target=request.id, origin=origin, now=now, details={"comment": comment or ""})
        outbox.request_decided(session, request.id)
    session.refresh(request)
    return request


def cancel(session: Session, services: Services, *, request_id: str, actor: Actor,
           origin: audit.Origin, now: datetime) -> AccessRequest:
    """Withdraw one's own pending request."""
    with unit_of_work(session):
        request = visible_request(session, request_id, actor)
        if request.requester_id != actor.subject.id:
            raise Forbidden("Only the requester can cancel a request.")
        transition(session, request.id, event=Event.CANCEL, decided_at=now,
                   extra_where=(decidable_in_time(now),))
        audit.record(session, action=AuditAction.REQUEST_CANCELLED, actor=actor.subject.username,
                     target=request.id, origin=origin, now=now)
    session.refresh(request)
    return request


def revoke(session: Session, services: Services, *, request_id: str, actor: Actor,
           origin: audit.Origin, now: datetime) -> AccessRequest:
    """End an active grant early (requester or admin) and run the provisioner's revoke once.

    Two public steps: the revoke is owed from this commit on, then `finish_revoke` calls out.
    """
    with unit_of_work(session):
        request = visible_request(session, request_id, actor)
        if request.requester_id != actor.subject.id and not actor.is_admin:
            raise Forbidden("Only the requester or an administrator can revoke a grant.")
        # Revoking an extension that continues a grant revokes that grant (and it with it).
        grant_id = request.continues_id if request.status == RequestStatus.ACTIVE \
            and request.continues_id else request.id
        transition(session, grant_id, event=Event.REVOKE, ended_at=now,
                   provisioning_started_at=now, extra_where=running(now))
        audit.record(session, action=AuditAction.REQUEST_REVOKED, actor=actor.subject.username,
                     target=grant_id, origin=origin, now=now)
        end_with_grant(session, grant_id, expired=False, actor=actor.subject.username,
                       origin=origin, now=now)
        # The move above won (a lost one raises 409): the revoke is owed from this commit on.
        claimed = owed_revoke(session, services, grant_id)
    finish_revoke(session, services, grant_id, origin=origin, now=now, claimed=claimed)
    return _reloaded(session, request_id)


def retry(session: Session, services: Services, *, request_id: str, actor: Actor,
          origin: audit.Origin, now: datetime) -> AccessRequest:
    """Provision a failed request again (an approver or an administrator)."""
    with _conflicts_audited(session, "retry", actor, request_id, origin, now), \
            unit_of_work(session):
        request = visible_request(session, request_id, actor)
        if not (actor.is_admin or is_eligible_approver(session, request, actor)):
            raise Forbidden("Only an approver or an administrator can retry a request.")
        if request.status == RequestStatus.FAILED:
            require_eligible_requester(session, request)
            refuse_conflicts(session, requester_id=request.requester_id,
                             permission_key=request.permission_key, now=now,
                             ignore_request_id=request.id)
        transition(session, request.id, event=Event.RETRY, decided_at=now,
                   provisioning_started_at=now)
        audit.record(session, action=AuditAction.REQUEST_RETRIED, actor=actor.subject.username,
                     target=request.id, origin=origin, now=now)
    grant_and_recheck(session, services, request.id, origin=origin, now=now)
    return _reloaded(session, request_id)
