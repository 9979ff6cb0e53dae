"""Asking for a permission: the checks, then one unit of work that creates the request."""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import and_, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from security_api import audit, metrics
from security_api.access.break_glass import record_use
from security_api.access.eligibility import grant_and_recheck
from security_api.access.expiry import expire_one
from security_api.access.grants import Subject, decision_for
from security_api.access.policy import Decision
from security_api.access.provisioning import claim_lease, fail_abandoned, finish_revoke
from security_api.accounts.step_up import require_step_up
from security_api.enums import AuditAction, PolicyMode, RequestStatus, UserKind
from security_api.errors import Conflict, Forbidden, InvalidParams
from security_api.integrations import outbox
from security_api.models import AccessRequest, Permission, RequestApproverGroup
from security_api.provisioners import get_provisioner
from security_api.services import Services
from security_api.unit_of_work import unit_of_work


def create_request(session: Session, services: Services, *, requester: Subject,
                   permission_key: str, justification: str, duration_minutes: int | None,
                   params: dict, origin: audit.Origin, now: datetime,
                   totp: object = None) -> AccessRequest:
    """Ask for a permission: active at once for `auto` and `break_glass`, pending for `approval`.

    Takes the requester alone: no administrator or auditor power changes what one may ask for,
    so the caller need not look those up. One unit of work ends what blocks the slot (a grant
    whose time is up, a claim whose worker is gone) and creates the request; the outside calls
    (their revokes, then the new grant) run after its commit. A `step_up` permission needs
    `totp`, a fresh code of the requester, checked after every other check (a code is not
    spent on a request refused anyway) and before anything is written.
    """
    permission, decision = _requestable(session, requester, permission_key)
    break_glass = decision.mode == PolicyMode.BREAK_GLASS
    duration = _checked_duration(duration_minutes, decision.max_duration_minutes)
    # An emergency grant is judged afterwards by its reason: one is always needed.
    justification = _checked_justification(
        justification, permission.requires_justification or break_glass)
    provisioner = get_provisioner(permission.provisioner, services.settings)
    clean_params = provisioner.validate_params(params, config=permission.provisioner_config)
    # break_glass: always a fresh second factor, whatever the permission's step_up says.
    if permission.step_up or break_glass:
        require_step_up(session, services, user_id=requester.id, code=totp, origin=origin,
                        now=now)
    with unit_of_work(session):
        owed = _end_what_blocks(session, requester.id, permission.key, origin=origin, now=now)
        _refuse_open_request(session, requester.id, permission.key)
        request = _insert(session, requester, permission.key, decision, justification=justification,
                          params=clean_params, duration=duration, origin=origin, now=now)
        request_id, auto = request.id, request.status == RequestStatus.GRANTING
        outbox.request_created(session, request_id)
        if break_glass:
            record_use(session, services, request=request, rule=decision.rule,
                       requester=requester.username, origin=origin, now=now)
    if break_glass:
        metrics.count_break_glass_use()
    for ended_id in owed:
        finish_revoke(session, services, ended_id, origin=origin, now=now)
    if auto:
        grant_and_recheck(session, services, request_id, origin=origin, now=now)
    return session.get(AccessRequest, request_id, populate_existing=True)


def _requestable(session: Session, subject: Subject,
                 permission_key: str) -> tuple[Permission, Decision]:
    if subject.kind != UserKind.PERSON:
        raise Forbidden("Service accounts cannot request permissions.", code="not_requestable")
    permission = session.get(Permission, permission_key)
    decision = decision_for(session, subject, permission) if permission else None
    if decision is not None and decision.mode == PolicyMode.STANDING:
        raise Conflict("You hold this permission already (standing).", code="already_held")
    if decision is None or not decision.requestable:
        raise Forbidden("This permission is not requestable for your role.",
                        code="not_requestable")
    return permission, decision


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


def _end_what_blocks(session: Session, requester_id: str, permission: str, *,
                     origin: audit.Origin, now: datetime) -> list[str]:
    """Expire the requester's due grant of this permission and fail a claim whose worker is
    gone (not waiting for the reaper); return the ids whose revoke or cleanup is now owed."""
    rows = session.execute(select(AccessRequest.id, AccessRequest.status).where(
        AccessRequest.requester_id == requester_id, AccessRequest.permission_key == permission,
        or_(and_(AccessRequest.status == RequestStatus.ACTIVE, AccessRequest.expires_at <= now),
            and_(AccessRequest.status == RequestStatus.GRANTING,
                 AccessRequest.provisioning_started_at < now - claim_lease())))).all()
    ended = []
    for request_id, status in rows:
        end = expire_one if status == RequestStatus.ACTIVE else fail_abandoned
        if end(session, request_id, origin=origin, now=now):
            ended.append(request_id)
    return ended


def _refuse_open_request(session: Session, requester_id: str, permission: str) -> None:
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


def _insert(session: Session, subject: Subject, permission: str, decision: Decision, *,
            justification: str, params: dict, duration: int, origin: audit.Origin,
            now: datetime) -> AccessRequest:
    """Add the request (granting under `auto`: the claim is made with the insert)."""
    rule = decision.rule
    auto = rule.mode in (PolicyMode.AUTO, PolicyMode.BREAK_GLASS)  # granted at once
    request = AccessRequest(
        requester_id=subject.id, permission_key=permission, justification=justification,
        params=params, duration_minutes=duration,
        status=RequestStatus.GRANTING if auto else RequestStatus.PENDING, mode=rule.mode,
        approvals_required=rule.approvals_required, requester_ip=origin.ip, created_at=now,
        decided_at=now if auto else None, provisioning_started_at=now if auto else None,
        provisioning={})
    session.add(request)
    try:
        session.flush()
    except IntegrityError:
        raise Conflict("You already have an open request for this permission.",
                       code="already_requested") from None
    metrics.stage_request_status(session, request.status)
    for entry in rule.approvers:
        role, _, subrole = entry.partition("/")
        session.add(RequestApproverGroup(request_id=request.id, role=role, subrole=subrole or "*"))
    audit.record(session, action=AuditAction.REQUEST_CREATED, actor=subject.username,
                 target=request.id, origin=origin, now=now,
                 details={"permission": permission, "mode": rule.mode, "rule": rule.id,
                          "duration_minutes": duration})
    return request
