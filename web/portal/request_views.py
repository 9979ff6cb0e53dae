"""The caller's requests: the list, and one request with its facts, story and actions.

What a page offers (a button) is a convenience computed here; the POST handlers in
request_actions.py and approval_views.py rely on the domain's own checks.
"""
from __future__ import annotations

from flask import Response, request, url_for

from flask_api_functions import current_actor, db
from security_api.access import lifecycle
from security_api.access.request_views import list_requests
from security_api.access.request_views import render as render_requests
from security_api.clock import utcnow
from security_api.enums import RequestStatus

from .blueprint import bp, login_required, render
from .formatting import approvers_text, duration, status_label, time_left, when
from .permission_names import permission_names, step_up_keys
from .timeline import timeline

PAGE_SIZE = 25


@bp.get("/requests")
@login_required
def my_requests() -> Response:
    """List the caller's requests, newest first, a page at a time."""
    now = utcnow()
    page, next_cursor = list_requests(db(), actor=current_actor(), scope="own", status=None,
                                      permission=None, limit=PAGE_SIZE,
                                      cursor=request.args.get("cursor") or None, now=now)
    rows = render_requests(db(), page, now=now)
    names = permission_names(row["permission"] for row in rows)
    items = [dict(row, name=names.get(row["permission"], row["permission"]),
                  status_text=status_label(row["status"]), created=when(row["created_at"]),
                  duration=duration(row["duration_minutes"]),
                  time_left=time_left(request_row.expires_at, now)
                  if row["status"] == RequestStatus.ACTIVE else "")
             for row, request_row in zip(rows, page, strict=True)]
    more = url_for("portal.my_requests", cursor=next_cursor) if next_cursor else None
    return render("portal/requests.html", entries=items, more=more,
                  first_page=not request.args.get("cursor"))


def _actions(access_request, view: dict, actor) -> dict[str, bool]:
    """Which buttons the page shows this actor; the domain checks again on every POST."""
    mine = access_request.requester_id == actor.subject.id
    pending = access_request.status == RequestStatus.PENDING
    decided = any(item["approver"] == actor.subject.username for item in view["approvals"])
    return {
        "cancel": mine and pending,
        "revoke": (mine or actor.is_admin) and view["status"] == RequestStatus.ACTIVE,
        "decide": pending and not decided
        and lifecycle.is_eligible_approver(db(), access_request, actor),
        "retry": access_request.status == RequestStatus.FAILED
        and (actor.is_admin or lifecycle.is_eligible_approver(db(), access_request, actor)),
    }


@bp.get("/requests/<request_id>")
@login_required
def request_detail(request_id: str) -> Response:
    """Show one request (404 page for anyone who may not see it), its story and its actions."""
    actor, now = current_actor(), utcnow()
    access_request = lifecycle.visible_request(db(), request_id, actor)
    view = render_requests(db(), [access_request], now=now)[0]
    approvers = lifecycle.approver_groups(db(), access_request.id)
    name = permission_names([view["permission"]]).get(view["permission"], view["permission"])
    facts = dict(view, name=name, status_text=status_label(view["status"]),
                 duration=duration(view["duration_minutes"]), created=when(view["created_at"]),
                 decided=when(view["decided_at"]), expires=when(view["expires_at"]),
                 time_left=time_left(access_request.expires_at, now)
                 if view["status"] == RequestStatus.ACTIVE else "",
                 approvers=approvers_text(approvers),
                 step_up=bool(step_up_keys([view["permission"]])))
    return render("portal/request_detail.html", item=facts,
                  actions=_actions(access_request, view, actor),
                  timeline=timeline(view, access_request, approvers))
