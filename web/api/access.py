"""Permissions and access requests: catalog, holdings, checks, and the request lifecycle."""
from __future__ import annotations

from flask import Blueprint

from flask_api_functions import (
    CHECK_PERMISSION,
    current_actor,
    current_subject,
    db,
    origin,
    require_permission_read_by_view,
    require_token,
    respond,
    services,
    settle_permission,
)
from security_api.access import break_glass, conflicts, grants, lifecycle
from security_api.access.request_views import SCOPES, list_requests, render
from security_api.accounts.users import normalise_username
from security_api.clock import isoformat, utcnow
from security_api.enums import RequestStatus
from security_api.errors import NotFound
from web.api import schemas
from web.api.inputs import read_json, read_query
from web.api.openapi import documented
from web.api.queries import DEFAULT_LIMIT, Cursor, Limit, QueryModel, UserPermissionQuery, choice, text

bp = Blueprint("access", __name__, url_prefix="/v1")
STEP_UP_DOC = ("Step-up: for a permission with `step_up` the body needs `totp`, a current code "
               "of the caller's authenticator app, checked like a login code after the other "
               "checks and before any change (used once; it counts toward the lockout when "
               "wrong): 401 `step_up_required` when missing, 401 `invalid_step_up` when "
               "malformed, wrong or already used, or when the caller is a service account.")
E = schemas.Error


@bp.get("/permissions")
@documented(summary="The permissions the caller may request, with mode and maximum duration",
            tag="permissions", responses={200: schemas.Catalog})
@require_token
def permissions_catalog():
    """List what the caller's role may request, and what a conflict set blocks (`blocked_by`)."""
    catalog = grants.requestable_catalog(db(), current_subject())
    blocked = conflicts.blocked_by(db(), current_subject(), [p.key for p, _ in catalog],
                                   now=utcnow())
    items = [{"key": p.key, "name": p.name, "description": p.description, "mode": d.mode,
              "max_duration_minutes": d.max_duration_minutes,
              "requires_justification": p.requires_justification, "step_up": p.step_up,
              "approvals_required": d.rule.approvals_required if d.mode == "approval" else None,
              "blocked_by": blocked[p.key]}
             for p, d in catalog]
    return respond(None, permissions=items)


@bp.get("/me/permissions")
@documented(summary="What the caller holds now: standing permissions and active grants",
            tag="permissions", responses={200: schemas.Held})
@require_token
def my_permissions():
    """List the caller's standing permissions and active grants."""
    held = grants.held_permissions(db(), current_subject(), now=utcnow())
    for item in held:
        item["expires_at"] = isoformat(item["expires_at"])
    return respond(None, permissions=held)


@bp.get("/check")
@documented(summary="Does a user hold a permission now? (holders of security-api.check)",
            tag="permissions", responses={200: schemas.CheckResult, 403: E, 404: E, 412: E},
            query=UserPermissionQuery)
@require_permission_read_by_view(CHECK_PERMISSION)
def check():
    """Answer an internal tool's question about another user.

    The caller's own security-api.check and the answer are one read-only round trip; the guard
    is settled first, so a caller without it gets 403 whatever the user is (and, from the
    decorator, whatever the query string is).
    """
    query = read_query(UserPermissionQuery)
    guard, holding = services().holdings.of_subject_and_username(
        current_subject(), guard=CHECK_PERMISSION, username=normalise_username(query.user),
        permission=query.permission, now=utcnow())
    settle_permission(guard.held)
    if holding is None:
        raise NotFound("No such user.")
    return respond(None, allowed=holding.held, expires_at=isoformat(holding.expires_at))


def _one(access_request, status=200, message=None, *, just_created=False):
    # The caller's own name is known: a request of theirs needs no look-up of it.
    me = current_subject()
    rendered = render(db(), [access_request], now=utcnow(), names={me.id: me.username},
                      just_created=just_created)[0]
    return respond(message, status=status, request=rendered)


@bp.post("/requests")
@documented(summary="Request a permission", tag="requests", body=schemas.RequestCreateBody,
            responses={201: schemas.RequestEnvelope, 403: E, 409: E},
            description="Active at once when the caller's rule is `auto` or `break_glass` "
                        "(provisioned; break_glass always needs a justification and `totp`, "
                        "step-up: 401 `step_up_required` / `invalid_step_up`), "
                        "`pending` for `approval`, `failed` when provisioning failed. 403 "
                        "`not_requestable` when no rule allows it; 409 when already held, "
                        "active or pending; 412 for a duration above the maximum, a missing "
                        "justification, or params the provisioner refuses. " + STEP_UP_DOC)
@require_token
def create_request():
    """Ask for a permission."""
    body = read_json(schemas.RequestCreateBody)
    created = lifecycle.create_request(
        db(), services(), requester=current_subject(), permission_key=body.permission,
        justification=body.justification, duration_minutes=body.duration_minutes,
        params=body.params, origin=origin(), now=utcnow(), totp=body.totp)
    return _one(created, status=201, just_created=True)


Scope = choice("own (default) | approvable | all (admin or audit holders) | unreviewed "
               "(break-glass uses awaiting review: those you may review; admins: all)", SCOPES,
               f"one of {', '.join(SCOPES)}")
Status = choice("filter by status", [s.value for s in RequestStatus], "not a request status")
PermissionFilter = text("filter by permission key")


class RequestsQuery(QueryModel):
    """GET /v1/requests: whose requests, which ones, and the page."""

    scope: Scope = "own"
    status: Status = None
    permission: PermissionFilter = None
    limit: Limit = DEFAULT_LIMIT
    cursor: Cursor = None


@bp.get("/requests")
@documented(summary="List requests: own (default), approvable, all, or unreviewed",
            tag="requests",
            responses={200: schemas.RequestList, 403: E, 412: E}, query=RequestsQuery)
@require_token
def requests_list():
    """List requests newest first, one page at a time."""
    query = read_query(RequestsQuery)
    page, next_cursor = list_requests(db(), actor=current_actor(), now=utcnow(),
                                      **query.model_dump())
    return respond(None, requests=render(db(), page, now=utcnow()), next_cursor=next_cursor)


@bp.get("/requests/<request_id>")
@documented(summary="One request (requester, its approvers, admin and audit holders)",
            tag="requests", responses={200: schemas.RequestEnvelope, 404: E})
@require_token
def request_detail(request_id: str):
    """Show one request; 404 for anyone who may not see it."""
    return _one(lifecycle.visible_request(db(), request_id, current_actor()))


def _decide(transition, request_id: str, *, with_comment: bool):
    kwargs = {}
    if with_comment:
        body = read_json(schemas.DecisionBody)
        kwargs.update(comment=body.comment, totp=body.totp)
    else:
        read_json(schemas.EmptyBody)
    changed = transition(db(), services(), request_id=request_id, actor=current_actor(),
                         origin=origin(), now=utcnow(), **kwargs)
    return _one(changed)


_TRANSITION_ERRORS = {200: schemas.RequestEnvelope, 403: E, 404: E, 409: E}


@bp.post("/requests/<request_id>/approve")
@documented(summary="Approve (eligible approvers and admins, never the requester)",
            tag="requests", body=schemas.DecisionBody, responses=_TRANSITION_ERRORS,
            description="The last approval needed grants and provisions, exactly once. "
                        "409 unless pending or when you already decided; 409 "
                        "`no_longer_eligible` when the requester was deactivated or their "
                        "role's rules no longer let them ask for it (nothing is granted). "
                        + STEP_UP_DOC)
@require_token
def approve(request_id: str):
    """Approve a pending request."""
    return _decide(lifecycle.approve, request_id, with_comment=True)


@bp.post("/requests/<request_id>/deny")
@documented(summary="Deny (eligible approvers and admins, never the requester)",
            tag="requests", body=schemas.DecisionBody, responses=_TRANSITION_ERRORS,
            description=STEP_UP_DOC)
@require_token
def deny(request_id: str):
    """Deny a pending request."""
    return _decide(lifecycle.deny, request_id, with_comment=True)


@bp.post("/requests/<request_id>/cancel")
@documented(summary="Cancel one's own pending request", tag="requests",
            body=schemas.EmptyBody, responses=_TRANSITION_ERRORS)
@require_token
def cancel(request_id: str):
    """Withdraw a pending request."""
    return _decide(lifecycle.cancel, request_id, with_comment=False)


@bp.post("/requests/<request_id>/revoke")
@documented(summary="Revoke an active grant (requester or admin)", tag="requests",
            body=schemas.EmptyBody, responses=_TRANSITION_ERRORS,
            description="Runs the provisioner's revoke once.")
@require_token
def revoke(request_id: str):
    """End an active grant now."""
    return _decide(lifecycle.revoke, request_id, with_comment=False)


@bp.post("/requests/<request_id>/retry")
@documented(summary="Provision a failed request again (approvers and admins)", tag="requests",
            body=schemas.EmptyBody, responses=_TRANSITION_ERRORS,
            description="409 `request_not_failed` unless failed; 409 `no_longer_eligible` when "
                        "the requester was deactivated or may no longer ask for it.")
@require_token
def retry(request_id: str):
    """Retry the provisioning of a failed request."""
    return _decide(lifecycle.retry, request_id, with_comment=False)


@bp.post("/requests/<request_id>/extend")
@documented(summary="Extend one's active grant without a gap (the requester)", tag="requests",
            body=schemas.ExtendBody,
            responses={200: schemas.RequestEnvelope, 201: schemas.RequestEnvelope, 403: E,
                       404: E, 409: E, 412: E},
            description="Decided by the rule that would decide a new request for the "
                        "permission now. `auto`: 200 with the grant, its `expires_at` now + "
                        "`duration_minutes`; nothing is revoked or provisioned. `approval`: 201 "
                        "with a new `pending` request whose `extends` is the grant; approved "
                        "while the grant runs, it moves the grant's `expires_at` and is `active` "
                        "with the same end (nothing provisioned; it ends with the grant); "
                        "approved after the grant ended, it is an ordinary new grant. 409 "
                        "`request_not_active` unless active, `extension_pending` when one is "
                        "already waiting; 403 `not_requestable` when no rule allows it now; "
                        "403 for an approver or admin who is not the requester; 412 for a "
                        "duration above the maximum or a missing justification. " + STEP_UP_DOC)
@require_token
def extend(request_id: str):
    """Extend an active grant."""
    body = read_json(schemas.ExtendBody)
    shown, created = lifecycle.extend(
        db(), services(), request_id=request_id, actor=current_actor(),
        justification=body.justification, duration_minutes=body.duration_minutes,
        origin=origin(), now=utcnow(), totp=body.totp)
    return _one(shown, status=201 if created else 200)


@bp.post("/requests/<request_id>/review")
@documented(summary="Review a break-glass use (an approver of the rule, never the requester)",
            tag="requests", body=schemas.ReviewBody,
            responses={200: schemas.RequestEnvelope, 401: E, 403: E, 404: E, 409: E, 412: E},
            description="Exactly one review per break-glass request, due within the rule's "
                        "`review_within_minutes` (a late one is still taken, `overdue: true`). "
                        "`unjustified` revokes the grant at once if it is still active (the "
                        "provisioner's revoke runs). 403 for the requester or anyone the rule "
                        "does not name as approver (administrator power alone is not enough); "
                        "409 `not_break_glass`, `already_reviewed`, `request_not_settled` "
                        "(still being provisioned).")
@require_token
def review(request_id: str):
    """Record the after-the-fact review of a break-glass grant."""
    body = read_json(schemas.ReviewBody)
    reviewed = break_glass.review(db(), services(), request_id=request_id, actor=current_actor(),
                                  verdict=body.verdict, comment=body.comment, origin=origin(),
                                  now=utcnow())
    return _one(reviewed)
