"""The access-request state machine: every transition a conditional update, done once.

pending -> active (approved and provisioned) | denied | cancelled | failed
failed  -> active (retried) | failed
active  -> expired | revoked
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from . import audit
from .clock import isoformat
from .enums import AuditAction, Decision, PolicyMode, RequestStatus, UserKind
from .errors import Conflict, Forbidden, InvalidParams, NotFound
from .grants import Subject, decision_for
from .models import AccessRequest, Approval, Permission, RequestApproverGroup, User
from .policy import approver_matches
from .provisioners import GrantContext, ProvisioningError, get_provisioner
from .services import Services

MAX_JUSTIFICATION = 2000


@dataclass(frozen=True)
class Actor:
    """Who acts, with the two powers that change what they may do."""

    subject: Subject
    is_admin: bool = False
    is_auditor: bool = False


# ---- who may do what ---------------------------------------------------------------------------
def approver_groups(session: Session, request_id: str) -> list[str]:
    """Return the approver entries of a request (`role` or `role/subrole`)."""
    rows = session.execute(select(RequestApproverGroup.role, RequestApproverGroup.subrole)
                           .where(RequestApproverGroup.request_id == request_id))
    return [role if subrole == "*" else f"{role}/{subrole}" for role, subrole in rows]


def is_eligible_approver(session: Session, request: AccessRequest, actor: Actor) -> bool:
    """Tell whether the actor may decide this request (never its own requester)."""
    subject = actor.subject
    # Separation of duties: nobody decides their own request, whatever their powers.
    if subject.id == request.requester_id or subject.kind != UserKind.PERSON:
        return False
    if actor.is_admin:
        return True
    return any(approver_matches(entry, role=subject.role, subrole=subject.subrole)
               for entry in approver_groups(session, request.id))


def visible_request(session: Session, request_id: str, actor: Actor) -> AccessRequest:
    """Return a request the actor may see; 404 for one they may not (as if it did not exist)."""
    request = session.get(AccessRequest, request_id) if _is_id(request_id) else None
    if request is None:
        raise NotFound("No such request.")
    if request.requester_id == actor.subject.id or actor.is_admin or actor.is_auditor:
        return request
    if is_eligible_approver(session, request, actor):
        return request
    raise NotFound("No such request.")


def _is_id(value: str) -> bool:
    return len(value) == 36 and all(ch in "0123456789abcdef-" for ch in value)


# ---- provisioning ------------------------------------------------------------------------------
def _context(session: Session, request: AccessRequest, permission: Permission) -> GrantContext:
    requester = session.get(User, request.requester_id)
    return GrantContext(request_id=request.id, requester=requester.username,
                        requester_ip=request.requester_ip, permission=permission.key,
                        params=json.loads(request.params or "{}"),
                        config=json.loads(permission.provisioner_config or "{}"),
                        expires_at=request.expires_at)


def _provision(session: Session, services: Services, request: AccessRequest, *, action: str,
               origin: audit.Origin, now: datetime) -> bool:
    """Run the provisioner's grant, revoke or cleanup once; record and audit the outcome."""
    permission = session.get(Permission, request.permission_key)
    provisioner = get_provisioner(permission.provisioner, services.settings)
    ctx = _context(session, request, permission)
    try:
        result = provisioner.grant(ctx) if action == "grant" else provisioner.revoke(ctx)
        outcome = {"ok": True, "result": result, "error": None}
    except ProvisioningError as exc:
        outcome = {"ok": False, "result": None, "error": str(exc)[:500]}
    outcome["at"] = isoformat(now)
    record = json.loads(request.provisioning or "{}")
    record[action] = outcome
    session.execute(update(AccessRequest).where(AccessRequest.id == request.id)
                    .values(provisioning=json.dumps(record, sort_keys=True)))
    audit.record(session, action=AuditAction.PROVISIONING_SUCCEEDED if outcome["ok"]
                 else AuditAction.PROVISIONING_FAILED, actor="system", target=request.id,
                 origin=origin, now=now,
                 details={"action": action, "provisioner": permission.provisioner,
                          "error": outcome["error"]})
    return outcome["ok"]


def _claim(session: Session, request_id: str, *, source: RequestStatus, target: RequestStatus,
           extra_where=(), **values) -> bool:
    """Move a request from one status to another only if it is still in the first: once."""
    result = session.execute(
        update(AccessRequest)
        .where(AccessRequest.id == request_id, AccessRequest.status == source, *extra_where)
        .values(status=target, **values))
    return result.rowcount == 1


def _activate(session: Session, services: Services, request: AccessRequest, *,
              source: RequestStatus, origin: audit.Origin, now: datetime) -> None:
    """Claim the grant, run the provisioner's grant once, and land on active or failed."""
    expires_at = now + timedelta(minutes=request.duration_minutes)
    try:
        claimed = _claim(session, request.id, source=source, target=RequestStatus.ACTIVE,
                         decided_at=now, expires_at=expires_at)
    except IntegrityError:
        # Another open request of the same person for the same permission got there first.
        claimed = False
    if not claimed:
        session.rollback()
        raise Conflict("The request was decided meanwhile.", code="request_not_pending")
    session.refresh(request)
    if _provision(session, services, request, action="grant", origin=origin, now=now):
        audit.record(session, action=AuditAction.REQUEST_ACTIVATED, actor="system",
                     target=request.id, origin=origin, now=now,
                     details={"expires_at": isoformat(expires_at)})
        return
    # Never half-granted: a failed provisioning leaves the request failed, not active, and
    # the outside system is asked to undo whatever it may have done before failing (a
    # webhook that timed out may still have granted).
    session.execute(update(AccessRequest).where(AccessRequest.id == request.id)
                    .values(status=RequestStatus.FAILED, expires_at=None))
    session.refresh(request)
    _provision(session, services, request, action="cleanup", origin=origin, now=now)
    audit.record(session, action=AuditAction.REQUEST_FAILED, actor="system", target=request.id,
                 origin=origin, now=now)


# ---- transitions -------------------------------------------------------------------------------
def create_request(session: Session, services: Services, *, actor: Actor, permission_key: str,
                   justification: str, duration_minutes: int | None, params: dict,
                   origin: audit.Origin, now: datetime) -> AccessRequest:
    """Ask for a permission: active at once for `auto`, pending for `approval`."""
    subject = actor.subject
    if subject.kind != UserKind.PERSON:
        raise Forbidden("Service accounts cannot request permissions.", code="not_requestable")
    permission = session.get(Permission, permission_key)
    decision = decision_for(session, subject, permission) if permission else None
    if decision is not None and decision.mode == PolicyMode.STANDING:
        raise Conflict("You hold this permission already (standing).", code="already_held")
    if decision is None or not decision.requestable:
        raise Forbidden("This permission is not requestable for your role.",
                        code="not_requestable")
    duration = _checked_duration(duration_minutes, decision.max_duration_minutes)
    justification = _checked_justification(justification, permission.requires_justification)
    provisioner = get_provisioner(permission.provisioner, services.settings)
    clean_params = provisioner.validate_params(params, config=json.loads(permission.provisioner_config))
    expire_due(session, services, now=now, origin=origin, requester_id=subject.id,
               permission_key=permission.key)
    _refuse_open_request(session, subject.id, permission.key, now)
    rule = decision.rule
    request = AccessRequest(
        requester_id=subject.id, permission_key=permission.key, justification=justification,
        params=json.dumps(clean_params, sort_keys=True), duration_minutes=duration,
        status=RequestStatus.PENDING, mode=rule.mode, approvals_required=rule.approvals_required,
        requester_ip=origin.ip, created_at=now, provisioning="{}")
    session.add(request)
    try:
        session.flush()
    except IntegrityError:
        session.rollback()
        raise Conflict("You already have an open request for this permission.",
                       code="already_requested") from None
    for entry in rule.approvers:
        role, _, subrole = entry.partition("/")
        session.add(RequestApproverGroup(request_id=request.id, role=role, subrole=subrole or "*"))
    audit.record(session, action=AuditAction.REQUEST_CREATED, actor=subject.username,
                 target=request.id, origin=origin, now=now,
                 details={"permission": permission.key, "mode": rule.mode, "rule": rule.id,
                          "duration_minutes": duration})
    if rule.mode == PolicyMode.AUTO:
        session.flush()
        _activate(session, services, request, source=RequestStatus.PENDING, origin=origin, now=now)
    session.commit()
    session.refresh(request)
    return request


def _checked_duration(requested: int | None, limit: int) -> int:
    if requested is None:
        return limit
    if requested > limit:
        raise InvalidParams.one("duration_minutes", f"must be at most {limit}")
    return requested


def _checked_justification(text: str, required: bool) -> str:
    text = (text or "").strip()
    if required and not text:
        raise InvalidParams.one("justification", "is required for this permission",
                                code="missing_params")
    return text


def _refuse_open_request(session: Session, requester_id: str, permission: str,
                         now: datetime) -> None:
    status = session.scalar(select(AccessRequest.status).where(
        AccessRequest.requester_id == requester_id, AccessRequest.permission_key == permission,
        AccessRequest.status.in_([RequestStatus.PENDING, RequestStatus.ACTIVE])))
    if status == RequestStatus.ACTIVE:
        raise Conflict("You already hold an active grant of this permission.",
                       code="already_active")
    if status == RequestStatus.PENDING:
        raise Conflict("You already have a pending request for this permission.",
                       code="already_requested")


def _require_decider(session: Session, request: AccessRequest, actor: Actor) -> None:
    if request.requester_id == actor.subject.id:
        raise Forbidden("You cannot decide your own request.", code="separation_of_duties")
    if not is_eligible_approver(session, request, actor):
        raise Forbidden("You are not an approver of this request.")


def _lock_pending(session: Session, request_id: str) -> None:
    # Touching the row takes its write lock: deciders of one request go one at a time.
    if not _claim(session, request_id, source=RequestStatus.PENDING, target=RequestStatus.PENDING):
        session.rollback()
        raise Conflict("The request is not pending.", code="request_not_pending")


def approve(session: Session, services: Services, *, request_id: str, actor: Actor, comment: str,
            origin: audit.Origin, now: datetime) -> AccessRequest:
    """Record an approval; the last one needed grants and provisions, once."""
    request = visible_request(session, request_id, actor)
    _require_decider(session, request, actor)
    _lock_pending(session, request.id)
    session.add(Approval(request_id=request.id, approver_id=actor.subject.id,
                         decision=Decision.APPROVE, comment=comment or "", at=now))
    try:
        session.flush()
    except IntegrityError:
        session.rollback()
        raise Conflict("You have already decided this request.", code="already_decided") from None
    audit.record(session, action=AuditAction.REQUEST_APPROVED, actor=actor.subject.username,
                 target=request.id, origin=origin, now=now, details={"comment": comment or ""})
    approvals = session.scalar(select(func.count()).select_from(Approval).where(
        Approval.request_id == request.id, Approval.decision == Decision.APPROVE))
    if approvals >= request.approvals_required:
        _activate(session, services, request, source=RequestStatus.PENDING, origin=origin, now=now)
    session.commit()
    session.refresh(request)
    return request


def deny(session: Session, services: Services, *, request_id: str, actor: Actor, comment: str,
         origin: audit.Origin, now: datetime) -> AccessRequest:
    """Refuse a pending request; one eligible approver's no is enough."""
    request = visible_request(session, request_id, actor)
    _require_decider(session, request, actor)
    if not _claim(session, request.id, source=RequestStatus.PENDING, target=RequestStatus.DENIED,
                  decided_at=now):
        session.rollback()
        raise Conflict("The request is not pending.", code="request_not_pending")
    session.add(Approval(request_id=request.id, approver_id=actor.subject.id,
                         decision=Decision.DENY, comment=comment or "", at=now))
    audit.record(session, action=AuditAction.REQUEST_DENIED, actor=actor.subject.username,
                 target=request.id, origin=origin, now=now, details={"comment": comment or ""})
    session.commit()
    session.refresh(request)
    return request


def cancel(session: Session, services: Services, *, request_id: str, actor: Actor,
           origin: audit.Origin, now: datetime) -> AccessRequest:
    """Withdraw one's own pending request."""
    request = visible_request(session, request_id, actor)
    if request.requester_id != actor.subject.id:
        raise Forbidden("Only the requester can cancel a request.")
    if not _claim(session, request.id, source=RequestStatus.PENDING,
                  target=RequestStatus.CANCELLED, decided_at=now):
        session.rollback()
        raise Conflict("The request is not pending.", code="request_not_pending")
    audit.record(session, action=AuditAction.REQUEST_CANCELLED, actor=actor.subject.username,
                 target=request.id, origin=origin, now=now)
    session.commit()
    session.refresh(request)
    return request


def revoke(session: Session, services: Services, *, request_id: str, actor: Actor,
           origin: audit.Origin, now: datetime) -> AccessRequest:
    """End an active grant early (requester or admin) and run the provisioner's revoke once."""
    request = visible_request(session, request_id, actor)
    if request.requester_id != actor.subject.id and not actor.is_admin:
        raise Forbidden("Only the requester or an administrator can revoke a grant.")
    if not _claim(session, request.id, source=RequestStatus.ACTIVE, target=RequestStatus.REVOKED,
                  extra_where=(AccessRequest.expires_at > now,), ended_at=now):
        session.rollback()
        raise Conflict("The grant is not active.", code="request_not_active")
    session.refresh(request)
    audit.record(session, action=AuditAction.REQUEST_REVOKED, actor=actor.subject.username,
                 target=request.id, origin=origin, now=now)
    _provision(session, services, request, action="revoke", origin=origin, now=now)
    session.commit()
    session.refresh(request)
    return request


def retry(session: Session, services: Services, *, request_id: str, actor: Actor,
          origin: audit.Origin, now: datetime) -> AccessRequest:
    """Provision a failed request again (an approver or an administrator)."""
    request = visible_request(session, request_id, actor)
    if not (actor.is_admin or is_eligible_approver(session, request, actor)):
        raise Forbidden("Only an approver or an administrator can retry a request.")
    audit.record(session, action=AuditAction.REQUEST_RETRIED, actor=actor.subject.username,
                 target=request.id, origin=origin, now=now)
    try:
        _activate(session, services, request, source=RequestStatus.FAILED, origin=origin, now=now)
    except Conflict:
        raise Conflict("Only a failed request can be retried.", code="request_not_failed") from None
    session.commit()
    session.refresh(request)
    return request


def expire_due(session: Session, services: Services, *, now: datetime, origin: audit.Origin,
               limit: int = 100, requester_id: str | None = None,
               permission_key: str | None = None) -> int:
    """Expire grants whose time is up and run each provisioner's revoke exactly once."""
    stmt = select(AccessRequest.id).where(AccessRequest.status == RequestStatus.ACTIVE,
                                          AccessRequest.expires_at <= now)
    if requester_id is not None:
        stmt = stmt.where(AccessRequest.requester_id == requester_id,
                          AccessRequest.permission_key == permission_key)
    due = list(session.scalars(stmt.order_by(AccessRequest.expires_at).limit(limit)))
    session.rollback()
    expired = 0
    for request_id in due:
        # The conditional update is the claim: a second reaper finds nothing left to do.
        if not _claim(session, request_id, source=RequestStatus.ACTIVE,
                      target=RequestStatus.EXPIRED, ended_at=now):
            session.rollback()
            continue
        request = session.get(AccessRequest, request_id, populate_existing=True)
        audit.record(session, action=AuditAction.REQUEST_EXPIRED, actor="system",
                     target=request_id, origin=origin, now=now)
        _provision(session, services, request, action="revoke", origin=origin, now=now)
        session.commit()
        expired += 1
    return expired
