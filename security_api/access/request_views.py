"""Reading requests: the contract's rendering, and lists with filters and cursor pagination."""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import and_, bindparam, exists, literal, or_, select, tuple_
from sqlalchemy.orm import Session

from security_api import cursors
from security_api.access.break_glass_models import BreakGlassReview
from security_api.access.pending_deadline import decidable_in_time
from security_api.access.request_actors import Actor
from security_api.clock import as_utc, isoformat
from security_api.db import UTCDateTime
from security_api.enums import ExpiredReason, PolicyMode, RequestStatus
from security_api.errors import Forbidden
from security_api.models import AccessRequest, Approval, RequestApproverGroup, User

SCOPES = ("own", "approvable", "all", "unreviewed")


def effective_status(request: AccessRequest, now: datetime) -> str:
    """Return the status a reader sees: an active grant past its end is expired, reaped or not,
    and so is a pending request past its decision deadline."""
    if effective_expired_reason(request, now) is not None:
        return RequestStatus.EXPIRED
    if request.status == RequestStatus.GRANTING:
        return RequestStatus.PENDING  # approved; the provisioner is still at work
    return request.status


def effective_expired_reason(request: AccessRequest, now: datetime) -> str | None:
    """Return why the request is (or reads as) expired, or None when it is not."""
    if request.status == RequestStatus.EXPIRED:
        return request.expired_reason or ExpiredReason.ENDED
    if request.status == RequestStatus.ACTIVE and request.expires_at is not None \
            and as_utc(request.expires_at) <= now:
        return ExpiredReason.ENDED
    if request.status == RequestStatus.PENDING and request.pending_expires_at is not None \
            and as_utc(request.pending_expires_at) <= now:
        return ExpiredReason.NOT_DECIDED
    return None


# What every rendering of requests asks, built once at import rather than per answer (see
# bench/write_cpu.py): their approvals with the approvers' names, and the requests extending them.
_APPROVALS_OF = (select(Approval, User.username).join(User, User.id == Approval.approver_id)
                 .where(Approval.request_id.in_(bindparam("ids", expanding=True)))
                 .order_by(Approval.at))
_EXTENSIONS_OF = (select(AccessRequest.extends_id, AccessRequest.id)
                  .where(AccessRequest.extends_id.in_(bindparam("ids", expanding=True)))
                  .order_by(AccessRequest.created_at, AccessRequest.id))


def render(session: Session, requests: list[AccessRequest], *, now: datetime,
           names: dict[str, str] | None = None, just_created: bool = False) -> list[dict]:
    """Render requests as the contract describes them, in a fixed number of queries.

    Fewer when the caller knows part of the answer: `names`, requester ids to usernames (the
    caller's own name, say); `just_created`, the requests were inserted by this very call, so
    nobody has decided them or extended them yet (no approvals, no extensions to look up).
    """
    if not requests:
        return []
    ids = [r.id for r in requests]
    approvals: dict[str, list] = {request_id: [] for request_id in ids}
    extended_by: dict[str, list[str]] = {request_id: [] for request_id in ids}
    if not just_created:
        for approval, username in session.execute(_APPROVALS_OF, {"ids": ids}):
            approvals[approval.request_id].append({
                "approver": username, "decision": approval.decision,
                "comment": approval.comment, "at": isoformat(approval.at)})
        for extended_id, extension_id in session.execute(_EXTENSIONS_OF, {"ids": ids}):
            extended_by[extended_id].append(extension_id)
    names = dict(names or {})
    unknown = {r.requester_id for r in requests} - names.keys()
    if unknown:
        names.update(session.execute(select(User.id, User.username)
                                     .where(User.id.in_(unknown))).all())
    # Only break-glass requests have a review: no query at all for a page without one.
    reviews = _reviews(session, [r.id for r in requests if r.mode == PolicyMode.BREAK_GLASS], now)
    return [{
        "id": r.id, "requester": names.get(r.requester_id), "permission": r.permission_key,
        "justification": r.justification, "params": r.params,
        "duration_minutes": r.duration_minutes, "status": effective_status(r, now),
        "mode": r.mode, "approvals_required": r.approvals_required,
        "created_at": isoformat(r.created_at), "decided_at": isoformat(r.decided_at),
        "approvals": approvals[r.id], "expires_at": isoformat(r.expires_at),
        "ended_at": isoformat(r.ended_at), "provisioning": r.provisioning,
        "extends": r.extends_id, "extended_by": extended_by[r.id],
        "verified_at": {"grant": isoformat(r.grant_verified_at),
                        "revoke": isoformat(r.revoke_verified_at)},
        "pending_expires_at": isoformat(r.pending_expires_at),
        "expired_reason": effective_expired_reason(r, now),
        "review": reviews.get(r.id),
    } for r in requests]


def _reviews(session: Session, ids: list[str], now: datetime) -> dict[str, dict]:
    """Render the break-glass reviews of these requests (the others have none: null).

    Before the verdict the review shows `verdict`, `by`, `at` and `comment` as null and its
    `due_at`; `overdue` says the due time passed without a verdict, or the verdict came late.
    """
    if not ids:
        return {}
    rows = session.execute(select(BreakGlassReview, User.username)
                           .outerjoin(User, User.id == BreakGlassReview.reviewer_id)
                           .where(BreakGlassReview.request_id.in_(ids)))
    rendered = {}
    for review, reviewer in rows:
        due_at = as_utc(review.due_at)
        decided = review.verdict is not None
        rendered[review.request_id] = {
            "verdict": review.verdict, "by": reviewer, "at": isoformat(review.reviewed_at),
            "comment": review.comment if decided else None, "due_at": isoformat(due_at),
            "overdue": (as_utc(review.reviewed_at) if decided else now) > due_at}
    return rendered


def _status_filter(status: str, now: datetime):
    if status == RequestStatus.ACTIVE:
        return and_(AccessRequest.status == status, AccessRequest.expires_at > now)
    if status == RequestStatus.EXPIRED:
        return or_(AccessRequest.status == status,
                   and_(AccessRequest.status == RequestStatus.ACTIVE,
                        AccessRequest.expires_at <= now),
                   and_(AccessRequest.status == RequestStatus.PENDING, ~decidable_in_time(now)))
    if status == RequestStatus.PENDING:
        return or_(AccessRequest.status == RequestStatus.GRANTING,
                   and_(AccessRequest.status == RequestStatus.PENDING, decidable_in_time(now)))
    return AccessRequest.status == status


def _approvable(actor: Actor, now: datetime):
    subject = actor.subject
    decided = exists().where(Approval.request_id == AccessRequest.id,
                             Approval.approver_id == subject.id)
    condition = and_(AccessRequest.requester_id != subject.id, ~decided)
    condition = and_(condition, decidable_in_time(now))
    if actor.is_admin:
        return and_(condition, AccessRequest.status == RequestStatus.PENDING)
    group = exists().where(RequestApproverGroup.request_id == AccessRequest.id,
                           RequestApproverGroup.role == subject.role,
                           RequestApproverGroup.subrole.in_([subject.subrole, "*"]))
    return and_(condition, AccessRequest.status == RequestStatus.PENDING, group)


def _unreviewed(actor: Actor):
    """Break-glass uses awaiting review: all of them for admins, else those the actor may review."""
    open_review = exists().where(BreakGlassReview.request_id == AccessRequest.id,
                                 BreakGlassReview.verdict.is_(None))
    if actor.is_admin:
        return open_review
    subject = actor.subject
    group = exists().where(RequestApproverGroup.request_id == AccessRequest.id,
                           RequestApproverGroup.role == subject.role,
                           RequestApproverGroup.subrole.in_([subject.subrole, "*"]))
    return and_(open_review, AccessRequest.requester_id != subject.id, group)


def list_requests(session: Session, *, actor: Actor, scope: str, status: str | None,
                  permission: str | None, limit: int, cursor: str | None,
                  now: datetime) -> tuple[list[AccessRequest], str | None]:
    """Return one page of the requests the actor may list, newest first, and the next cursor."""
    stmt = select(AccessRequest)
    if scope == "own":
        stmt = stmt.where(AccessRequest.requester_id == actor.subject.id)
    elif scope == "approvable":
        if actor.subject.kind != "person":
            return [], None
        stmt = stmt.where(_approvable(actor, now))
    elif scope == "unreviewed":
        if actor.subject.kind != "person":
            return [], None
        stmt = stmt.where(_unreviewed(actor))
    elif scope == "all":
        if not (actor.is_admin or actor.is_auditor):
            raise Forbidden("scope=all is for holders of security-api.admin or security-api.audit.")
    if status is not None:
        stmt = stmt.where(_status_filter(status, now))
    if permission is not None:
        stmt = stmt.where(AccessRequest.permission_key == permission)
    if cursor:
        created_at, request_id = cursors.decode_position(cursor)
        # Bound with the column's type: stored naive UTC, whatever the session's time zone.
        stmt = stmt.where(tuple_(AccessRequest.created_at, AccessRequest.id)
                          < tuple_(literal(created_at, UTCDateTime()), request_id))
    rows = list(session.scalars(stmt.order_by(AccessRequest.created_at.desc(),
                                              AccessRequest.id.desc()).limit(limit + 1)))
    last = rows[limit - 1] if len(rows) > limit else None
    next_cursor = cursors.encode_position(last.created_at, last.id) if last else None
    return rows[:limit], next_cursor
