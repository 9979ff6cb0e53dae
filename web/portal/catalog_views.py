"""The catalog: what the caller may request and what will happen, and asking for it.

Creating a request calls the same domain function as POST /v1/requests; the form only
translates between fields and HTML, and a refusal re-shows the catalog with what was typed.
"""
from __future__ import annotations

from flask import Response, flash, redirect, url_for
from flask_babel import gettext as _
from flask_babel import ngettext
from sqlalchemy import select

from flask_api_functions import current_subject, db, origin, services
from security_api.access import conflicts, grants, lifecycle
from security_api.access.request_views import effective_status
from security_api.clock import utcnow
from security_api.enums import PolicyMode, RequestStatus
from security_api.errors import ApiError
from security_api.models import AccessRequest
from web.api import schemas

from .blueprint import bp, login_required, render
from .formatting import approvers_text, duration, provisioning_error, time_left, when
from .forms import field, flash_error, minutes_field, step_up_code, validated
from .permission_names import permission_names

DEFAULT_DURATION = 60  # what the form suggests, when the maximum allows it
OPEN = (RequestStatus.PENDING, RequestStatus.GRANTING, RequestStatus.ACTIVE)


def _outcome(decision) -> str:
    """What will happen when one asks: said before asking."""
    limit = decision.max_duration_minutes
    if decision.mode == PolicyMode.AUTO:
        return ngettext("Granted at once for up to %(num)s minute",
                        "Granted at once for up to %(num)s minutes", limit)
    if decision.mode == PolicyMode.BREAK_GLASS:
        return _("Emergency only: granted at once for up to %(num)s minutes, then reviewed by "
                 "%(approvers)s within %(review)s.", num=limit,
                 approvers=approvers_text(decision.rule.approvers),
                 review=duration(decision.rule.review_within_minutes))
    needed = decision.rule.approvals_required
    return ngettext("Needs approval by %(approvers)s (%(num)s approval)",
                    "Needs approval by %(approvers)s (%(num)s approvals)", needed,
                    approvers=approvers_text(decision.rule.approvers))


def _open_requests(keys) -> dict[str, dict]:
    """The caller's open request per permission, to say "you hold it already" on its card."""
    if not keys:
        return {}
    now = utcnow()
    rows = db().scalars(select(AccessRequest).where(
        AccessRequest.requester_id == current_subject().id,
        AccessRequest.permission_key.in_(list(keys)), AccessRequest.status.in_(OPEN)))
    found = {}
    for row in rows:
        status = effective_status(row, now)
        if status in (RequestStatus.PENDING, RequestStatus.ACTIVE):
            found[row.permission_key] = {"id": row.id, "status": str(status),
                                         "time_left": time_left(row.expires_at, now)}
    return found


def _catalog_page(*, status: int = 200, submitted: dict | None = None) -> Response:
    catalog = grants.requestable_catalog(db(), current_subject())
    keys = [permission.key for permission, _decision in catalog]
    open_requests = _open_requests(keys)
    # Separation of duties: a card blocked by a conflict set says by what, and offers no button.
    blocked = conflicts.blocked_by(db(), current_subject(), keys, now=utcnow())
    names = permission_names(sorted({key for rivals in blocked.values() for key in rivals}))
    cards = []
    for permission, decision in catalog:
        limit = decision.max_duration_minutes
        mine = submitted if submitted and submitted.get("permission") == permission.key else {}
        cards.append({
            "key": permission.key, "name": permission.name, "description": permission.description,
            "mode": str(decision.mode), "outcome": _outcome(decision),
            "requires_justification": permission.requires_justification
            or decision.mode == PolicyMode.BREAK_GLASS,
            "step_up": permission.step_up,
            "max_minutes": limit, "max_text": duration(limit),
            "duration": mine.get("duration_minutes") or min(DEFAULT_DURATION, limit),
            "justification": mine.get("justification", ""),
            "open": open_requests.get(permission.key),
            "blocked_by": [names.get(key, key) for key in blocked[permission.key]],
        })
    return render("portal/catalog.html", status=status, cards=cards)


@bp.get("/catalog")
@login_required
def catalog() -> Response:
    """Show what the caller may request and what will happen for each, before asking."""
    return _catalog_page()


@bp.post("/requests")
@login_required
def create_request() -> Response:
    """Ask for a permission exactly as POST /v1/requests does; re-show the catalog on a refusal."""
    created, refused = submit_catalog_form()
    if refused is not None:
        return refused
    _flash_created(created)
    return redirect(url_for("portal.request_detail", request_id=created.id))


def submit_catalog_form() -> tuple[AccessRequest | None, Response | None]:
    """Create what a catalog card's form asks for (a request, or a break-glass use), exactly as
    POST /v1/requests does; return (the request, None), or (None, the page re-shown refusing)."""
    submitted = {"permission": field("permission"), "justification": field("justification"),
                 "duration_minutes": field("duration_minutes").strip()}
    try:
        body = validated(schemas.RequestCreateBody, {
            "permission": submitted["permission"], "justification": submitted["justification"],
            "duration_minutes": minutes_field(submitted["duration_minutes"]),
            "totp": step_up_code()})
        return lifecycle.create_request(
            db(), services(), requester=current_subject(), permission_key=body.permission,
            justification=body.justification, duration_minutes=body.duration_minutes,
            params=body.params, origin=origin(), now=utcnow(), totp=body.totp), None
    except ApiError as exc:
        flash_error(exc)
        return None, _catalog_page(status=exc.status, submitted=submitted)


def _flash_created(created: AccessRequest) -> None:
    """Say what became of the new request: granted, sent for approval, or failed."""
    key = created.permission_key
    name = permission_names([key]).get(key, key)
    if created.status == RequestStatus.ACTIVE:
        flash(_("Granted: you hold %(name)s until %(when)s.", name=name,
                when=when(created.expires_at)), "info")
    elif created.status == RequestStatus.PENDING:
        flash(_("Sent for approval to %(approvers)s.",
                approvers=approvers_text(lifecycle.approver_groups(db(), created.id))), "info")
    elif created.status == RequestStatus.FAILED:
        flash(_("Your request was accepted, but setting up the access failed: %(error)s",
                error=provisioning_error(created.provisioning, "grant")), "error")
    else:
        flash(_("Your request was accepted; the access is being set up."), "info")
