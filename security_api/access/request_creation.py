"""Asking for a permission: the checks, then one unit of work that creates the request."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import and_, bindparam, case, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from security_api import audit, metrics
from security_api.access import conflicts
from security_api.access.break_glass import record_use
from security_api.access.eligibility import grant_and_recheck
from security_api.access.expiry import expire_one
from security_api.access.grants import Subject
from security_api.access.pending_deadline import pending_deadline
from security_api.access.policy import Decision, decide
from security_api.access.provisioning import Claimed, claim_lease, fail_abandoned, finish_revoke
from security_api.accounts.step_up import require_step_up
from security_api.enums import AuditAction, PolicyMode, RequestStatus, UserKind
from security_api.errors import Conflict, Forbidden, InvalidParams
from security_api.integrations import outbox, slack_outbox
from security_api.models import AccessRequest, Permission, RequestApproverGroup
from security_api.provisioners import GrantContext, get_provisioner
from security_api.services import Services
from security_api.unit_of_work import unit_of_work


@dataclass(frozen=True)
class Terms:
    """What a new request (or an extension) would be granted under, once every check passed."""

    permission: Permission
    decision: Decision
    duration: int
    justification: str
    params: dict
    rivals: frozenset[str]  # the other permissions of its conflict sets (see conflicts.py)


def checked_terms(session: Session, services: Services, *, requester: Subject,
                  permission_key: str, justification: str, duration_minutes: int | None,
                  params: dict, totp: object, origin: audit.Origin, now: datetime) -> Terms:
    """Run THE checks of a new request and return its terms; raise the refusal otherwise.

    The one place both paths pass: `create_request` and an extension (`extension.extend`) are
    decided by the rule that would decide a new request now. Checks added later (step-up,
    conflict sets) belong here, so that neither path can skip them.
    """
    permission, decision, rivals = _requestable(session, requester, permission_key)
    break_glass = decision.mode == PolicyMode.BREAK_GLASS
    duration = _checked_duration(duration_minutes, decision.max_duration_minutes)
    # An emergency grant is judged afterwards by its reason: one is always needed.
    justification = _checked_justification(
        justification, permission.requires_justification or break_glass)
    provisioner = get_provisioner(permission.provisioner, services.settings)
    clean_params = provisioner.validate_params(params, config=permission.provisioner_config)
    # Last: a code is not spent on a request refused anyway. break_glass: always a fresh
    # second factor, whatever the permission's step_up says (and checked once, here).
    if permission.step_up or break_glass:
        require_step_up(session, services, user_id=requester.id, code=totp, origin=origin,
                        now=now)
    return Terms(permission, decision, duration, justification, clean_params, frozenset(rivals))


def refuse_conflicts_of(session: Session, requester_id: str, terms: Terms, *, now: datetime,
                        ignore_request_id: str | None = None) -> None:
    """In the unit of work that inserts or moves a grant: 409 when a conflict set forbids it."""
    conflicts.refuse_conflicts(session, requester_id=requester_id,
                               permission_key=terms.permission.key, now=now,
                               known_rivals=terms.rivals, ignore_request_id=ignore_request_id)


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
    terms = checked_terms(session, services, requester=requester, permission_key=permission_key,
                          justification=justification, duration_minutes=duration_minutes,
                          params=params, totp=totp, origin=origin, now=now)
    break_glass = terms.decision.mode == PolicyMode.BREAK_GLASS
    with conflicts.refusals_audited(session, stage="create", actor=requester.username,
                                    target=terms.permission.key, origin=origin, now=now), \
            unit_of_work(session):
        owed = _clear_the_slot(session, requester.id, terms.permission.key, origin=origin,
                               now=now)
        refuse_conflicts_of(session, requester.id, terms, now=now)
        request = insert_request(session, requester, terms, origin=origin, now=now)
        request_id, auto = request.id, request.status == RequestStatus.GRANTING
        outbox.request_created(session, request_id, inserted=request)
        slack_outbox.request_created(session, request_id, pending=request.status == RequestStatus.PENDING)
        if break_glass:
            record_use(session, services, request=request, rule=terms.decision.rule,
                       requester=requester.username, origin=origin, now=now)
    if break_glass:
        metrics.count_break_glass_use()
    for ended_id in owed:
        finish_revoke(session, services, ended_id, origin=origin, now=now)
    if auto:
        # This unit of work made the claim: the grant runs on what it knows (no read back).
        claimed = Claimed(terms.permission.provisioner, GrantContext(
            request_id=request_id, requester=requester.username, requester_ip=origin.ip,
            permission=terms.permission.key, params=request.params,
            config=terms.permission.provisioner_config, expires_at=None))
        grant_and_recheck(session, services, request_id, origin=origin, now=now,
                          claimed=claimed)
        # Its second look read the row after the grant landed (or expired the copy if it
        # ended it): the copy is current.
        return session.get(AccessRequest, request_id)
    return session.get(AccessRequest, request_id, populate_existing=True)


def _requestable(session: Session, subject: Subject,
                 permission_key: str) -> tuple[Permission, Decision, set[str]]:
    if subject.kind != UserKind.PERSON:
        raise Forbidden("Service accounts cannot request permissions.", code="not_requestable")
    permission, rules, rivals = conflicts.permission_and_rivals(session, permission_key, subject)
    # Decided by the policy engine on the candidate rules, as grants.decision_for decides.
    decision = decide(role=subject.role, subrole=subject.subrole, permission=permission.key,
                      permission_max_minutes=permission.max_duration_minutes,
                      candidates=rules) if permission else None
    if decision is not None and decision.mode == PolicyMode.STANDING:
        raise Conflict("You hold this permission already (standing).", code="already_held")
    if decision is None or not decision.requestable:
        raise Forbidden("This permission is not requestable for your role.",
                        code="not_requestable")
    return permission, decision, rivals


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


OPEN = (RequestStatus.PENDING, RequestStatus.GRANTING, RequestStatus.ACTIVE)
# The open requests of a slot, each marked whether it blocks only until ended here (a due
# grant, an abandoned claim). Built once, not per request (see bench/write_cpu.py).
_ENDS_HERE = or_(
    and_(AccessRequest.status == RequestStatus.ACTIVE,
         AccessRequest.expires_at <= bindparam("now")),
    and_(AccessRequest.status == RequestStatus.GRANTING,
         AccessRequest.provisioning_started_at < bindparam("lapsed")))
SLOT_HOLDERS = select(AccessRequest.id, AccessRequest.status,
                      case((_ENDS_HERE, True), else_=False)).where(
    AccessRequest.requester_id == bindparam("requester_id"),
    AccessRequest.permission_key == bindparam("permission_key"),
    AccessRequest.status.in_(OPEN))


def _clear_the_slot(session: Session, requester_id: str, permission: str, *,
                    origin: audit.Origin, now: datetime) -> list[str]:
    """Expire the requester's due grant of this permission and fail a claim whose worker is
    gone (not waiting for the reaper), then refuse (409) if an open request still holds the
    slot; return the ids whose revoke or cleanup is now owed.

    One select finds both: the open requests, each marked whether it blocks only until ended
    here. Only when ending one loses a race (it moved meanwhile) is the slot looked at again.
    """
    rows = session.execute(SLOT_HOLDERS, {
        "requester_id": requester_id, "permission_key": permission, "now": now,
        "lapsed": now - claim_lease()}).all()
    ended, still_open, lost = [], [], False
    for request_id, status, ends_here in rows:
        if not ends_here:
            still_open.append(status)
            continue
        end = expire_one if status == RequestStatus.ACTIVE else fail_abandoned
        if end(session, request_id, origin=origin, now=now):
            ended.append(request_id)
        else:
            lost = True
    if lost:  # moved since the select (extended, ended, heartbeat): ask the table again
        still_open = list(session.scalars(select(AccessRequest.status).where(
            AccessRequest.requester_id == requester_id,
            AccessRequest.permission_key == permission, AccessRequest.status.in_(OPEN))))
    _refuse_open_request(still_open)
    return ended


def _refuse_open_request(statuses: list[str]) -> None:
    status = RequestStatus.ACTIVE if RequestStatus.ACTIVE in statuses else \
        statuses[0] if statuses else None
    if status == RequestStatus.ACTIVE:
        raise Conflict("You already hold an active grant of this permission.",
                       code="already_active")
    if status in (RequestStatus.PENDING, RequestStatus.GRANTING):
        raise Conflict("You already have a pending request for this permission.",
                       code="already_requested")


ALREADY_REQUESTED = ("You already have an open request for this permission.",
                     "already_requested")


def insert_request(session: Session, subject: Subject, terms: Terms, *, origin: audit.Origin,
                   now: datetime, extends: tuple[str, str] | None = None,
                   duplicate: tuple[str, str] = ALREADY_REQUESTED) -> AccessRequest:
    """Add the request (granting under `auto`: the claim is made with the insert).

    `extends` is (the request extended, the grant it continues) for a pending extension;
    `duplicate` the 409 when a unique index says another open request holds its place.
    """
    rule = terms.decision.rule
    auto = rule.mode in (PolicyMode.AUTO, PolicyMode.BREAK_GLASS)  # granted at once
    request = AccessRequest(
        requester_id=subject.id, permission_key=terms.permission.key,
        justification=terms.justification, params=terms.params,
        duration_minutes=terms.duration,
        status=RequestStatus.GRANTING if auto else RequestStatus.PENDING, mode=rule.mode,
        approvals_required=rule.approvals_required, requester_ip=origin.ip, created_at=now,
        decided_at=now if auto else None, provisioning_started_at=now if auto else None,
        pending_expires_at=None if auto else pending_deadline(now, rule.pending_ttl_minutes),
        provisioning={}, extends_id=extends[0] if extends else None,
        continues_id=extends[1] if extends else None)
    session.add(request)
    try:
        session.flush()
    except IntegrityError:
        raise Conflict(duplicate[0], code=duplicate[1]) from None
    metrics.stage_request_status(session, request.status)
    for entry in rule.approvers:
        role, _, subrole = entry.partition("/")
        session.add(RequestApproverGroup(request_id=request.id, role=role, subrole=subrole or "*"))
    details = {"permission": terms.permission.key, "mode": rule.mode, "rule": rule.id,
               "duration_minutes": terms.duration}
    if extends:
        details["extends"] = extends[0]
    audit.record(session, action=AuditAction.REQUEST_CREATED, actor=subject.username,
                 target=request.id, origin=origin, now=now, details=details)
    return request
