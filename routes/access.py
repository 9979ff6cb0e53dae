"""Permissions and access requests: catalog, holdings, checks, and the request lifecycle."""
from __future__ import annotations

from flask import Blueprint, request

from flask_api_functions import (
    CHECK_PERMISSION,
    current_actor,
    current_subject,
    db,
    envelope,
    origin,
    read_json,
    require_permission,
    require_token,
    services,
)
from security_api import grants, lifecycle
from security_api.clock import isoformat, utcnow
from security_api.enums import RequestStatus
from security_api.errors import InvalidParams, NotFound
from security_api.grants import Subject
from security_api.models import User
from security_api.request_views import SCOPES, list_requests, render

from . import schemas
from .openapi import CURSOR, LIMIT, NON_EMPTY, Query, documented

bp = Blueprint("access", __name__, url_prefix="/v1")
E = schemas.Error
MAX_LIMIT, DEFAULT_LIMIT = 200, 50


@bp.get("/permissions")
@documented(summary="The permissions the caller may request, with mode and maximum duration",
            tag="permissions", responses={200: schemas.Catalog})
@require_token
def permissions_catalog():
    """List what the caller's role may request."""
    items = [{"key": p.key, "name": p.name, "description": p.description, "mode": d.mode,
              "max_duration_minutes": d.max_duration_minutes,
              "requires_justification": p.requires_justification,
              "approvals_required": d.rule.approvals_required if d.mode == "approval" else None}
             for p, d in grants.requestable_catalog(db(), current_subject())]
    return envelope(None, permissions=items)


@bp.get("/me/permissions")
@documented(summary="What the caller holds now: standing permissions and active grants",
            tag="permissions", responses={200: schemas.Held})
@require_token
def my_permissions():
    """List the caller's standing permissions and active grants."""
    held = grants.held_permissions(db(), current_subject(), now=utcnow())
    for item in held:
        item["expires_at"] = isoformat(item["expires_at"])
    return envelope(None, permissions=held)


@bp.get("/check")
@documented(summary="Does a user hold a permission now? (holders of security-api.check)",
            tag="permissions", responses={200: schemas.CheckResult, 403: E, 404: E, 412: E},
            query={"user": Query("username", NON_EMPTY, required=True),
                   "permission": Query("permission key", NON_EMPTY, required=True)})
@require_permission(CHECK_PERMISSION)
def check():
    """Answer an internal tool's question about another user."""
    username, key = request.args.get("user"), request.args.get("permission")
    if not username or not key:
        missing = [name for name, value in (("user", username), ("permission", key)) if not value]
        raise InvalidParams(code="missing_params",
                            errors=[{"field": name, "problem": "is required"} for name in missing])
    user = db().query(User).filter_by(username=username.strip().lower()).one_or_none()
    if user is None:
        raise NotFound("No such user.")
    if not user.active:
        return envelope(None, allowed=False, expires_at=None)
    subject = Subject(user.id, user.username, user.role, user.subrole, user.kind)
    holding = grants.holding(db(), subject, permission=key, now=utcnow())
    return envelope(None, allowed=holding.held, expires_at=isoformat(holding.expires_at))


def _one(access_request, status=200, message=None):
    rendered = render(db(), [access_request], now=utcnow())[0]
    return envelope(message, status=status, request=rendered)


@bp.post("/requests")
@documented(summary="Request a permission", tag="requests", body=schemas.RequestCreateBody,
            responses={201: schemas.RequestEnvelope, 403: E, 409: E},
            description="Active at once when the caller's rule is `auto` (provisioned), "
                        "`pending` for `approval`, `failed` when provisioning failed. 403 "
                        "`not_requestable` when no rule allows it; 409 when already held, "
                        "active or pending; 412 for a duration above the maximum, a missing "
                        "justification, or params the provisioner refuses.")
@require_token
def create_request():
    """Ask for a permission."""
    body = read_json(schemas.RequestCreateBody)
    created = lifecycle.create_request(
        db(), services(), requester=current_subject(), permission_key=body.permission,
        justification=body.justification, duration_minutes=body.duration_minutes,
        params=body.params, origin=origin(), now=utcnow())
    return _one(created, status=201)


def _query_params() -> dict:
    args = request.args
    scope = args.get("scope", "own")
    status = args.get("status")
    errors = []
    if scope not in SCOPES:
        errors.append({"field": "scope", "problem": f"one of {', '.join(SCOPES)}"})
    if status is not None and status not in {s.value for s in RequestStatus}:
        errors.append({"field": "status", "problem": "not a request status"})
    raw_limit = args.get("limit", str(DEFAULT_LIMIT))
    limit = int(raw_limit) if raw_limit.isdigit() and raw_limit.isascii() else 0
    if not 1 <= limit <= MAX_LIMIT:
        errors.append({"field": "limit", "problem": f"a whole number from 1 to {MAX_LIMIT}"})
    if errors:
        raise InvalidParams(errors=errors)
    return {"scope": scope, "status": status, "permission": args.get("permission"),
            "limit": limit, "cursor": args.get("cursor")}


@bp.get("/requests")
@documented(summary="List requests: own (default), approvable, or all", tag="requests",
            responses={200: schemas.RequestList, 403: E, 412: E},
            query={"scope": Query("own (default) | approvable | all (admin or audit holders)",
                                  {"type": "string", "enum": list(SCOPES)}),
                   "status": Query("filter by status",
                                   {"type": "string", "enum": [s.value for s in RequestStatus]}),
                   "permission": "filter by permission key", "limit": LIMIT, "cursor": CURSOR})
@require_token
def requests_list():
    """List requests newest first, one page at a time."""
    page, next_cursor = list_requests(db(), actor=current_actor(), now=utcnow(), **_query_params())
    return envelope(None, requests=render(db(), page, now=utcnow()), next_cursor=next_cursor)


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
        kwargs["comment"] = read_json(schemas.DecisionBody).comment
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
                        "role's rules no longer let them ask for it (nothing is granted).")
@require_token
def approve(request_id: str):
    """Approve a pending request."""
    return _decide(lifecycle.approve, request_id, with_comment=True)


@bp.post("/requests/<request_id>/deny")
@documented(summary="Deny (eligible approvers and admins, never the requester)",
            tag="requests", body=schemas.DecisionBody, responses=_TRANSITION_ERRORS)
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
