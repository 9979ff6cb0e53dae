"""Approvals: the queue of pending requests the caller may decide, and deciding them."""
from __future__ import annotations

from flask import Response, request, url_for

from flask_api_functions import current_actor, db
from security_api.access import lifecycle
from security_api.access.request_views import list_requests
from security_api.access.request_views import render as render_requests
from security_api.clock import utcnow
from security_api.enums import RequestStatus

from .blueprint import bp, login_required, render
from .formatting import ago, duration, when
from .permission_names import permission_names, step_up_keys
from .request_actions import run_transition
from .request_views import PAGE_SIZE


@bp.get("/approvals")
@login_required
def approvals() -> Response:
    """List the pending requests the caller may decide, with the forms to decide them."""
    now = utcnow()
    page, next_cursor = list_requests(db(), actor=current_actor(), scope="approvable",
                                      status="pending", permission=None, limit=PAGE_SIZE,
                                      cursor=request.args.get("cursor") or None, now=now)
    # Approved by enough people and being set up: nothing left to decide.
    page = [row for row in page if row.status == RequestStatus.PENDING]
    rows = render_requests(db(), page, now=now)
    names = permission_names(row["permission"] for row in rows)
    stepped = step_up_keys(names)
    items = [dict(row, name=names.get(row["permission"], row["permission"]),
                  step_up=row["permission"] in stepped,
                  duration=duration(row["duration_minutes"]), age=ago(row["created_at"], now),
                  created=when(row["created_at"]),
                  approvals_given=sum(1 for a in row["approvals"] if a["decision"] == "approve"))
             for row in rows]
    more = url_for("portal.approvals", cursor=next_cursor) if next_cursor else None
    return render("portal/approvals.html", entries=items, more=more,
                  here=url_for("portal.approvals"))


@bp.post("/requests/<request_id>/approve")
@login_required
def approve(request_id: str) -> Response:
    """Approve a pending request (eligible approvers, never the requester)."""
    return run_transition(lifecycle.approve, request_id, with_comment=True)


@bp.post("/requests/<request_id>/deny")
@login_required
def deny(request_id: str) -> Response:
    """Deny a pending request (eligible approvers, never the requester)."""
    return run_transition(lifecycle.deny, request_id, with_comment=True)
