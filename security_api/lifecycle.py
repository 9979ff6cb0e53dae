"""The access-request state machine: every transition a conditional update, done once.

pending -> active (approved and provisioned) | denied | cancelled | failed
failed  -> active (retried) | failed
active  -> expired | revoked
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from . import audit, metrics
from .enums import AuditAction, Decision, PolicyMode, ProvisioningState, RequestStatus, UserKind
from .errors import Conflict, Forbidden, InvalidParams, NotFound
from .grants import Subject, decision_for
from .models import AccessRequest, Approval, Permission, RequestApproverGroup, User
from .policy import approver_matches
from .provisioners import get_provisioner
from .provisioning import finish_grant, finish_revoke, recover_abandoned_grants
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


# ---- claims ------------------------------------------------------------------------------------
def _claim(session: Session, request_id: str, *, source: RequestStatus, target: RequestStatus,
           extra_where=(), **values) -> bool:
    """Move a request from one status to another only if it is still in the first: once."""
    result = session.execute(
        update(AccessRequest)
        .where(AccessRequest.id == request_id, AccessRequest.status == source, *extra_where)
        .values(status=target, **values))
    if result.rowcount == 1 and source != target:
        metrics.stage_request_status(session, target)
    return result.rowcount == 1


def _start_grant(session: Session, request: AccessRequest, *, source: RequestStatus,
                 now: datetime) -> None:
    """Claim the grant (pending or failed -> granting); the provisioner runs after the commit."""
    try:
        claimed = _claim(session, request.id, source=source, target=RequestStatus.GRANTING,
                         decided_at=now, provisioning_started_at=now)
    except IntegrityError:
        # Another open request of the same person for the same permission got there first.
        session.rollback()
        raise Conflict("The requester has another open request for this permission.",
                       code="already_requested") from None
    if not claimed:
        session.rollback()
        raise Conflict("The request was decided meanwhile.", code="request_not_pending")


def _end_grant(session: Session, request_id: str, *, target: RequestStatus, now: datetime,
               extra_where=()) -> bool:
    """Claim the end of an active grant; its revoke is owed from this commit on."""
    return _claim(session, request_id, source=RequestStatus.ACTIVE, target=target,
                  extra_where=extra_where, ended_at=now,
                  provisioning_state=ProvisioningState.REVOKING, provisioning_started_at=now)


def _reloaded(session: Session, request_id: str) -> AccessRequest:
    return session.get(AccessRequest, request_id, populate_existing=True)


# ---- transitions -------------------------------------------------------------------------------
def create_request(session: Session, services: Services, *, requester: Subject,
                   permission_key: str, justification: str, duration_minutes: int | None,
                   params: dict, origin: audit.Origin, now: datetime) -> AccessRequest:
    """Ask for a permission: active at once for `auto`, pending for `approval`.

    Takes the requester alone: no administrator or auditor power changes what one may ask for,
    so the caller need not look those up.
    """
    subject = requester
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
    clean_params = provisioner.validate_params(params, config=permission.provisioner_config)
    key = permission.key  # expire_due ends the transaction: `permission` would be loaded again
    expire_due(session, services, now=now, origin=origin, requester_id=subject.id,
               permission_key=key)
    # A claim left by a crashed worker blocks only until its lease lapses, not until the reaper.
    recover_abandoned_grants(session, services, origin=origin, now=now, requester_id=subject.id,
                             permission_key=key)
    _refuse_open_request(session, subject.id, key, now)
    rule = decision.rule
    auto = rule.mode == PolicyMode.AUTO
    request = AccessRequest(
        requester_id=subject.id, permission_key=key, justification=justification,
        params=clean_params, duration_minutes=duration,
        status=RequestStatus.GRANTING if auto else RequestStatus.PENDING, mode=rule.mode,
        approvals_required=rule.approvals_required, requester_ip=origin.ip, created_at=now,
        decided_at=now if auto else None, provisioning_started_at=now if auto else None,
        provisioning={})
    session.add(request)
    try:
        session.flush()
    except IntegrityError:
        session.rollback()
        raise Conflict("You already have an open request for this permission.",
                       code="already_requested") from None
    metrics.stage_request_status(session, request.status)
    for entry in rule.approvers:
        role, _, subrole = entry.partition("/")
        session.add(RequestApproverGroup(request_id=request.id, role=role, subrole=subrole or "*"))
    audit.record(session, action=AuditAction.REQUEST_CREATED, actor=subject.username,
                 target=request.id, origin=origin, now=now,
                 details={"permission": key, "mode": rule.mode, "rule": rule.id,
                          "duration_minutes": duration})
    session.commit()
    if auto:
        _grant_and_recheck(session, services, request.id, origin=origin, now=now)
    return _reloaded(session, request.id)


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
        AccessRequest.status.in_([RequestStatus.PENDING, RequestStatus.GRANTING,
                                  RequestStatus.ACTIVE])))
    if status == RequestStatus.ACTIVE:
        raise Conflict("You already hold an active grant of this permission.",
                       code="already_active")
    if status in (RequestStatus.PENDING, RequestStatus.GRANTING):
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


def _record_decision(session: Session, request: AccessRequest, actor: Actor, decision: Decision,
                     comment: str, now: datetime) -> None:
    session.add(Approval(request_id=request.id, approver_id=actor.subject.id,
                         decision=decision, comment=comment or "", at=now))
    try:
        session.flush()
    except IntegrityError:
        # One decision per approver: no second approval, no taking an approval back by denying.
        session.rollback()
        raise Conflict("You have already decided this request.", code="already_decided") from None


def approve(session: Session, services: Services, *, request_id: str, actor: Actor, comment: str,
            origin: audit.Origin, now: datetime) -> AccessRequest:
    """Record an approval; the last one needed grants and provisions, once."""
    request = visible_request(session, request_id, actor)
    _require_decider(session, request, actor)
    _require_eligible_requester(session, request)
    _lock_pending(session, request.id)
    _record_decision(session, request, actor, Decision.APPROVE, comment, now)
    audit.record(session, action=AuditAction.REQUEST_APPROVED, actor=actor.subject.username,
                 target=request.id, origin=origin, now=now, details={"comment": comment or ""})
    approvals = session.scalar(select(func.count()).select_from(Approval).where(
        Approval.request_id == request.id, Approval.decision == Decision.APPROVE))
    granting = approvals >= request.approvals_required
    if granting:
        _start_grant(session, request, source=RequestStatus.PENDING, now=now)
    session.commit()
    if granting:
        _grant_and_recheck(session, services, request.id, origin=origin, now=now)
    return _reloaded(session, request.id)


def deny(session: Session, services: Services, *, request_id: str, actor: Actor, comment: str,
         origin: audit.Origin, now: datetime) -> AccessRequest:
    """Refuse a pending request; one eligible approver's no is enough."""
    request = visible_request(session, request_id, actor)
    _require_decider(session, request, actor)
    if not _claim(session, request.id, source=RequestStatus.PENDING, target=RequestStatus.DENIED,
                  decided_at=now):
        session.rollback()
        raise Conflict("The request is not pending.", code="request_not_pending")
    _record_decision(session, request, actor, Decision.DENY, comment, now)
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
    if not _end_grant(session, request.id, target=RequestStatus.REVOKED, now=now,
                      extra_where=(AccessRequest.expires_at > now,)):
        session.rollback()
        raise Conflict("The grant is not active.", code="request_not_active")
    audit.record(session, action=AuditAction.REQUEST_REVOKED, actor=actor.subject.username,
                 target=request.id, origin=origin, now=now)
    session.commit()
    finish_revoke(session, services, request.id, origin=origin, now=now)
    return _reloaded(session, request.id)


def retry(session: Session, services: Services, *, request_id: str, actor: Actor,
          origin: audit.Origin, now: datetime) -> AccessRequest:
    """Provision a failed request again (an approver or an administrator)."""
    request = visible_request(session, request_id, actor)
    if not (actor.is_admin or is_eligible_approver(session, request, actor)):
        raise Forbidden("Only an approver or an administrator can retry a request.")
    if request.status == RequestStatus.FAILED:
        _require_eligible_requester(session, request)
    try:
        _start_grant(session, request, source=RequestStatus.FAILED, now=now)
    except Conflict:
        raise Conflict("Only a failed request can be retried.", code="request_not_failed") from None
    audit.record(session, action=AuditAction.REQUEST_RETRIED, actor=actor.subject.username,
                 target=request.id, origin=origin, now=now)
    session.commit()
    _grant_and_recheck(session, services, request.id, origin=origin, now=now)
    return _reloaded(session, request.id)


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
        if not _end_grant(session, request_id, target=RequestStatus.EXPIRED, now=now):
            session.rollback()
            continue
        audit.record(session, action=AuditAction.REQUEST_EXPIRED, actor="system",
                     target=request_id, origin=origin, now=now)
        session.commit()
        finish_revoke(session, services, request_id, origin=origin, now=now)
        expired += 1
    return expired


# ---- eligibility: deactivation and role changes -------------------------------------------------
def ineligibility(session: Session, *, user: User, permission_key: str) -> str | None:
    """Say why the user could not make this request now (`deactivated`, `role_changed`), or None.

    Re-decided by the policy engine for the user's current role and subrole, exactly as
    create_request decides: only a rule that makes it requestable (auto or approval) keeps it.
    """
    if not user.active:
        return "deactivated"
    permission = session.get(Permission, permission_key)
    subject = Subject(id=user.id, username=user.username, role=user.role, subrole=user.subrole,
                      kind=user.kind)
    if user.kind != UserKind.PERSON or permission is None \
            or not decision_for(session, subject, permission).requestable:
        return "role_changed"
    return None


def _require_eligible_requester(session: Session, request: AccessRequest) -> None:
    # Approving for someone who has left, or has moved to a role without this permission,
    # would hand the access straight to them: decided again now, not when they asked.
    user = session.get(User, request.requester_id, populate_existing=True)
    reason = ineligibility(session, user=user, permission_key=request.permission_key)
    if reason is not None:
        session.rollback()
        what = "deactivated" if reason == "deactivated" else \
            "no longer allowed this permission by their role's policy"
        raise Conflict(f"The requester is {what}; the request cannot be granted.",
                       code="no_longer_eligible")


def end_ineligible(session: Session, *, user: User, reason: str, actor: str,
                   origin: audit.Origin, now: datetime) -> tuple[list[str], list[str]]:
    """Inside the caller's transaction (user already changed): cancel the pending requests and
    end the active grants the user could not make now; return (cancelled, revoked) ids.

    The caller commits, then runs `settle_ended` for the revokes owed and the notifications.
    """
    cancelled, revoked = [], []
    rows = session.execute(select(AccessRequest.id, AccessRequest.status,
                                  AccessRequest.permission_key).where(
        AccessRequest.requester_id == user.id,
        AccessRequest.status.in_([RequestStatus.PENDING, RequestStatus.ACTIVE]))).all()
    for request_id, status, permission_key in rows:
        why = ineligibility(session, user=user, permission_key=permission_key)
        if why is None:
            continue
        details = {"reason": reason}
        if status == RequestStatus.PENDING:
            if _claim(session, request_id, source=RequestStatus.PENDING,
                      target=RequestStatus.CANCELLED, decided_at=now):
                audit.record(session, action=AuditAction.REQUEST_CANCELLED, actor=actor,
                             target=request_id, origin=origin, now=now, details=details)
                cancelled.append(request_id)
        elif _end_grant(session, request_id, target=RequestStatus.REVOKED, now=now,
                        extra_where=(AccessRequest.expires_at > now,)):
            audit.record(session, action=AuditAction.REQUEST_REVOKED, actor=actor,
                         target=request_id, origin=origin, now=now, details=details)
            revoked.append(request_id)
    return cancelled, revoked


def settle_ended(session: Session, services: Services, *, cancelled: list[str],
                 revoked: list[str], origin: audit.Origin, now: datetime) -> None:
    """After the commit: run each owed revoke (no transaction open) and tell the requesters."""
    for request_id in revoked:
        finish_revoke(session, services, request_id, origin=origin, now=now)
    # Imported here: announce renders requests, and rendering imports this module.
    from .announce import announce_ended
    announce_ended(session, services, [*cancelled, *revoked])


def _grant_and_recheck(session: Session, services: Services, request_id: str, *,
                       origin: audit.Origin, now: datetime) -> None:
    """Provision a claimed grant; if the requester stopped being eligible meanwhile, end it.

    A deactivation or role change that commits while the provisioner runs finds the request
    `granting` and cannot end it; this second look, after the grant landed, does. The requester's
    row is read with a share lock, so a deactivation still in flight is waited for.
    """
    finish_grant(session, services, request_id, origin=origin, now=now)
    request = _reloaded(session, request_id)
    if request.status != RequestStatus.ACTIVE:
        session.rollback()
        return
    user = session.scalar(select(User).where(User.id == request.requester_id)
                          .with_for_update(read=True).execution_options(populate_existing=True))
    reason = ineligibility(session, user=user, permission_key=request.permission_key)
    if reason is None or not _end_grant(session, request_id, target=RequestStatus.REVOKED,
                                        now=now):
        session.rollback()
        return
    audit.record(session, action=AuditAction.REQUEST_REVOKED, actor="system", target=request_id,
                 origin=origin, now=now, details={"reason": reason})
    session.commit()
    settle_ended(session, services, cancelled=[], revoked=[request_id], origin=origin, now=now)
