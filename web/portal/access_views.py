"""Requests: catalog, create, my requests, one request with its timeline, approvals, password.

Every rule is the domain's: these views call the same functions as routes/access.py and
routes/auth.py, and only translate between forms and HTML. What a page shows (a button, a
form) is a convenience; the POST handlers rely on the domain's own checks.
"""
from __future__ import annotations

from datetime import datetime

from flask import Response, flash, g, redirect, request, session, url_for
from flask_babel import format_timedelta, ngettext
from flask_babel import gettext as _
from flask_babel import lazy_gettext as _l
from pydantic import BaseModel
from sqlalchemy import select

from flask_api_functions import current_actor, current_subject, db, origin, services, validate_fields
from routes import schemas
from security_api import grants, lifecycle, signin
from security_api.announce import announce
from security_api.clock import utcnow
from security_api.enums import PolicyMode, RequestStatus
from security_api.errors import ApiError, Forbidden, InvalidParams, NotFound, Throttled
from security_api.models import AccessRequest, Permission, User
from security_api.request_views import effective_status, list_requests
from security_api.request_views import render as render_requests

from .blueprint import bp, login_required, render, safe_next
from .formatting import error_text, status_label, time_left, when

PAGE_SIZE = 25
DEFAULT_DURATION = 60  # what the form suggests, when the maximum allows it
MAX_FIELD = 4096
# How people read the fields a domain error names.
FIELD_LABELS = {
    "permission": _l("Permission"), "justification": _l("Justification"),
    "duration_minutes": _l("Duration (minutes)"), "comment": _l("Comment"),
    "current_password": _l("Current password"), "new_password": _l("New password"),
    "confirm_password": _l("Confirm the new password"), "cursor": _l("Page"),
}
OPEN = (RequestStatus.PENDING, RequestStatus.GRANTING, RequestStatus.ACTIVE)


# ---- small helpers -----------------------------------------------------------------------------
def _field(name: str) -> str:
    return request.form.get(name, "")[:MAX_FIELD]


def _validated(schema: type[BaseModel], data: dict) -> BaseModel:
    """Check form fields with the API's own body schema: the same limits, the same 412."""
    return validate_fields(schema, data)


def _flash_error(exc: ApiError) -> None:
    """Say what went wrong: field by field when the domain named the fields."""
    if exc.errors:
        for item in exc.errors:
            label = FIELD_LABELS.get(item.get("field"), item.get("field"))
            flash(f"{label}: {item.get('problem')}", "error")
    else:
        flash(error_text(exc.code, exc.message), "error")


def _duration(minutes: int | None) -> str:
    """Say a duration the way people read it: "45 minutes", "2 hours", "1 h 30 min"."""
    if not minutes:
        return ""
    hours, rest = divmod(minutes, 60)
    if not hours:
        return ngettext("%(num)s minute", "%(num)s minutes", minutes)
    if not rest:
        return ngettext("%(num)s hour", "%(num)s hours", hours)
    return _("%(hours)s h %(minutes)s min", hours=hours, minutes=rest)


def _approvers_text(entries) -> str:
    return ", ".join(entries) if entries else _("an administrator")


def _names(keys) -> dict[str, str]:
    """Permission names by key, for the keys on a page (one query)."""
    keys = set(keys)
    if not keys:
        return {}
    return dict(db().execute(select(Permission.key, Permission.name)
                             .where(Permission.key.in_(keys))).all())


def _ago(value: str | None, now: datetime) -> str:
    if not value:
        return ""
    at = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return format_timedelta(at - now, add_direction=True)


def _back(request_id: str) -> Response:
    """Go back to where the form was (a portal path), else to the request's page."""
    target = request.form.get("next")
    return redirect(safe_next(target) if target else
                    url_for("portal.request_detail", request_id=request_id))


# ---- catalog and creating a request ------------------------------------------------------------
def _outcome(decision) -> str:
    """What will happen when one asks: said before asking."""
    limit = decision.max_duration_minutes
    if decision.mode == PolicyMode.AUTO:
        return ngettext("Granted at once for up to %(num)s minute",
                        "Granted at once for up to %(num)s minutes", limit)
    needed = decision.rule.approvals_required
    return ngettext("Needs approval by %(approvers)s (%(num)s approval)",
                    "Needs approval by %(approvers)s (%(num)s approvals)", needed,
                    approvers=_approvers_text(decision.rule.approvers))


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
    open_requests = _open_requests([permission.key for permission, _decision in catalog])
    cards = []
    for permission, decision in catalog:
        limit = decision.max_duration_minutes
        mine = submitted if submitted and submitted.get("permission") == permission.key else {}
        cards.append({
            "key": permission.key, "name": permission.name, "description": permission.description,
            "mode": str(decision.mode), "outcome": _outcome(decision),
            "requires_justification": permission.requires_justification,
            "max_minutes": limit, "max_text": _duration(limit),
            "duration": mine.get("duration_minutes") or min(DEFAULT_DURATION, limit),
            "justification": mine.get("justification", ""),
            "open": open_requests.get(permission.key),
        })
    return render("portal/catalog.html", status=status, cards=cards)


@bp.get("/catalog")
@login_required
def catalog() -> Response:
    """Show what the caller may request and what will happen for each, before asking."""
    return _catalog_page()


def _duration_field(raw: str) -> int | None:
    raw = raw.strip()
    if not raw:
        return None  # the domain's default: the effective maximum
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 9):
        raise InvalidParams.one("duration_minutes", "must be a whole number of minutes")
    return int(raw)


@bp.post("/requests")
@login_required
def create_request() -> Response:
    """Ask for a permission exactly as POST /v1/requests does; re-show the catalog on a refusal."""
    submitted = {"permission": _field("permission"), "justification": _field("justification"),
                 "duration_minutes": _field("duration_minutes").strip()}
    try:
        body = _validated(schemas.RequestCreateBody, {
            "permission": submitted["permission"], "justification": submitted["justification"],
            "duration_minutes": _duration_field(submitted["duration_minutes"])})
        created = lifecycle.create_request(
            db(), services(), requester=current_subject(), permission_key=body.permission,
            justification=body.justification, duration_minutes=body.duration_minutes,
            params=body.params, origin=origin(), now=utcnow())
    except ApiError as exc:
        _flash_error(exc)
        return _catalog_page(status=exc.status, submitted=submitted)
    announce(db(), services(), created, just_created=True)
    _flash_created(created)
    return redirect(url_for("portal.request_detail", request_id=created.id))


def _flash_created(created: AccessRequest) -> None:
    name = _names([created.permission_key]).get(created.permission_key, created.permission_key)
    if created.status == RequestStatus.ACTIVE:
        flash(_("Granted: you hold %(name)s until %(when)s.", name=name,
                when=when(created.expires_at)), "info")
    elif created.status == RequestStatus.PENDING:
        flash(_("Sent for approval to %(approvers)s.",
                approvers=_approvers_text(lifecycle.approver_groups(db(), created.id))), "info")
    elif created.status == RequestStatus.FAILED:
        flash(_("Your request was accepted, but setting up the access failed: %(error)s",
                error=_provisioning_error(created.provisioning, "grant")), "error")
    else:
        flash(_("Your request was accepted; the access is being set up."), "info")


def _provisioning_error(record: dict | None, action: str) -> str:
    outcome = (record or {}).get(action) or {}
    return outcome.get("error") or _("no details")


# ---- my requests -------------------------------------------------------------------------------
@bp.get("/requests")
@login_required
def my_requests() -> Response:
    """List the caller's requests, newest first, a page at a time."""
    now = utcnow()
    page, next_cursor = list_requests(db(), actor=current_actor(), scope="own", status=None,
                                      permission=None, limit=PAGE_SIZE,
                                      cursor=request.args.get("cursor") or None, now=now)
    rows = render_requests(db(), page, now=now)
    names = _names(row["permission"] for row in rows)
    items = [dict(row, name=names.get(row["permission"], row["permission"]),
                  status_text=status_label(row["status"]), created=when(row["created_at"]),
                  duration=_duration(row["duration_minutes"]),
                  time_left=time_left(request_row.expires_at, now)
                  if row["status"] == RequestStatus.ACTIVE else "")
             for row, request_row in zip(rows, page, strict=True)]
    more = url_for("portal.my_requests", cursor=next_cursor) if next_cursor else None
    return render("portal/requests.html", entries=items, more=more,
                  first_page=not request.args.get("cursor"))


# ---- one request -------------------------------------------------------------------------------
def _timeline(view: dict, access_request: AccessRequest, approvers: list[str]) -> list[dict]:
    """The request's story, from its own fields and its decisions."""
    events = [{"at": view["created_at"], "kind": "created",
               "text": _("Requested by %(user)s for %(duration)s", user=view["requester"],
                         duration=_duration(view["duration_minutes"]))}]
    for decision in view["approvals"]:
        text = (_("Approved by %(user)s", user=decision["approver"])
                if decision["decision"] == "approve"
                else _("Denied by %(user)s", user=decision["approver"]))
        events.append({"at": decision["at"], "kind": decision["decision"], "text": text,
                       "comment": decision["comment"]})
    status, stored = view["status"], access_request.status
    provisioning = view["provisioning"]
    grant = provisioning.get("grant") or {}
    if stored == RequestStatus.PENDING:
        missing = view["approvals_required"] - sum(
            1 for decision in view["approvals"] if decision["decision"] == "approve")
        events.append({"at": None, "kind": "waiting", "text": ngettext(
            "Waiting for %(num)s more approval by %(approvers)s",
            "Waiting for %(num)s more approvals by %(approvers)s", max(missing, 1),
            approvers=_approvers_text(approvers))})
    elif stored == RequestStatus.GRANTING:
        events.append({"at": view["decided_at"], "kind": "granting",
                       "text": _("The access is being set up")})
    if status in (RequestStatus.ACTIVE, RequestStatus.EXPIRED, RequestStatus.REVOKED) \
            and view["expires_at"]:
        events.append({"at": grant.get("at") or view["decided_at"], "kind": "active",
                       "text": _("Granted until %(when)s", when=when(view["expires_at"]))})
    if status == RequestStatus.FAILED:
        events.append({"at": grant.get("at") or view["decided_at"], "kind": "failed",
                       "text": _("Setting up the access failed: %(error)s",
                                 error=_provisioning_error(provisioning, "grant"))})
    if status == RequestStatus.CANCELLED:
        events.append({"at": view["decided_at"], "kind": "cancelled",
                       "text": _("Cancelled by %(user)s", user=view["requester"])})
    if status == RequestStatus.REVOKED:
        events.append({"at": view["ended_at"], "kind": "revoked", "text": _("Revoked")})
    if status == RequestStatus.EXPIRED:
        events.append({"at": view["ended_at"] or view["expires_at"], "kind": "expired",
                       "text": _("Expired")})
    revoke = provisioning.get("revoke") or {}
    if revoke and not revoke.get("ok"):
        events.append({"at": revoke.get("at"), "kind": "failed",
                       "text": _("Removing the access failed: %(error)s (it is retried)",
                                 error=revoke.get("error") or _("no details"))})
    for event in events:
        event["when"] = when(event["at"]) if event["at"] else ""
    return events


@bp.get("/requests/<request_id>")
@login_required
def request_detail(request_id: str) -> Response:
    """Show one request (404 page for anyone who may not see it), its story and its actions."""
    actor, now = current_actor(), utcnow()
    access_request = lifecycle.visible_request(db(), request_id, actor)
    view = render_requests(db(), [access_request], now=now)[0]
    approvers = lifecycle.approver_groups(db(), access_request.id)
    mine = access_request.requester_id == actor.subject.id
    pending = access_request.status == RequestStatus.PENDING
    decided = any(item["approver"] == actor.subject.username for item in view["approvals"])
    actions = {
        "cancel": mine and pending,
        "revoke": (mine or actor.is_admin) and view["status"] == RequestStatus.ACTIVE,
        "decide": pending and not decided
        and lifecycle.is_eligible_approver(db(), access_request, actor),
        "retry": access_request.status == RequestStatus.FAILED
        and (actor.is_admin or lifecycle.is_eligible_approver(db(), access_request, actor)),
    }
    name = _names([view["permission"]]).get(view["permission"], view["permission"])
    facts = dict(view, name=name, status_text=status_label(view["status"]),
                 duration=_duration(view["duration_minutes"]), created=when(view["created_at"]),
                 decided=when(view["decided_at"]), expires=when(view["expires_at"]),
                 time_left=time_left(access_request.expires_at, now)
                 if view["status"] == RequestStatus.ACTIVE else "",
                 approvers=_approvers_text(approvers))
    return render("portal/request_detail.html", item=facts, actions=actions,
                  timeline=_timeline(view, access_request, approvers))


# ---- actions on a request ----------------------------------------------------------------------
def _act(transition, request_id: str, *, with_comment: bool) -> Response:
    """Run a transition exactly as the API does; flash the outcome and go back."""
    kwargs = {}
    try:
        if with_comment:
            kwargs["comment"] = _validated(schemas.DecisionBody,
                                           {"comment": _field("comment")}).comment
        changed = transition(db(), services(), request_id=request_id, actor=current_actor(),
                             origin=origin(), now=utcnow(), **kwargs)
    except NotFound:
        raise  # the error page: as if the request did not exist
    except ApiError as exc:
        _flash_error(exc)
        return _back(request_id)
    announce(db(), services(), changed, just_created=False)
    flash(*_outcome_message(transition, changed))
    return _back(request_id)


def _outcome_message(transition, changed: AccessRequest) -> tuple[str, str]:
    status = changed.status
    if transition is lifecycle.cancel:
        return _("The request is cancelled."), "info"
    if transition is lifecycle.revoke:
        return _("The access is revoked."), "info"
    if transition is lifecycle.deny:
        return _("The request is denied."), "info"
    if transition is lifecycle.retry:
        if status == RequestStatus.ACTIVE:
            return _("Set up again: the access is granted until %(when)s.",
                     when=when(changed.expires_at)), "info"
        if status == RequestStatus.FAILED:
            return _("Setting up the access failed again: %(error)s",
                     error=_provisioning_error(changed.provisioning, "grant")), "error"
        return _("The access is being set up again."), "info"
    if status == RequestStatus.ACTIVE:
        return _("Approved: the access is granted until %(when)s.",
                 when=when(changed.expires_at)), "info"
    if status == RequestStatus.FAILED:
        return _("Approved, but setting up the access failed: %(error)s",
                 error=_provisioning_error(changed.provisioning, "grant")), "error"
    if status == RequestStatus.PENDING:
        return _("Your approval is recorded; more approvals are needed."), "info"
    return _("Approved; the access is being set up."), "info"


@bp.post("/requests/<request_id>/cancel")
@login_required
def cancel(request_id: str) -> Response:
    """Withdraw one's own pending request."""
    return _act(lifecycle.cancel, request_id, with_comment=False)


@bp.post("/requests/<request_id>/revoke")
@login_required
def revoke(request_id: str) -> Response:
    """End an active grant now (requester or admin)."""
    return _act(lifecycle.revoke, request_id, with_comment=False)


@bp.post("/requests/<request_id>/approve")
@login_required
def approve(request_id: str) -> Response:
    """Approve a pending request (eligible approvers, never the requester)."""
    return _act(lifecycle.approve, request_id, with_comment=True)


@bp.post("/requests/<request_id>/deny")
@login_required
def deny(request_id: str) -> Response:
    """Deny a pending request (eligible approvers, never the requester)."""
    return _act(lifecycle.deny, request_id, with_comment=True)


@bp.post("/requests/<request_id>/retry")
@login_required
def retry(request_id: str) -> Response:
    """Set up a failed request's access again (its approvers and administrators)."""
    return _act(lifecycle.retry, request_id, with_comment=False)


# ---- approvals ---------------------------------------------------------------------------------
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
    names = _names(row["permission"] for row in rows)
    items = [dict(row, name=names.get(row["permission"], row["permission"]),
                  duration=_duration(row["duration_minutes"]), age=_ago(row["created_at"], now),
                  created=when(row["created_at"]),
                  approvals_given=sum(1 for a in row["approvals"] if a["decision"] == "approve"))
             for row in rows]
    more = url_for("portal.approvals", cursor=next_cursor) if next_cursor else None
    return render("portal/approvals.html", entries=items, more=more,
                  here=url_for("portal.approvals"))


# ---- password ----------------------------------------------------------------------------------
def _password_page(*, status: int = 200) -> Response:
    return render("portal/password.html", status=status)


@bp.get("/password")
@login_required
def password() -> Response:
    """Show the form to change one's password."""
    return _password_page()


@bp.post("/password")
@login_required
def password_submit() -> Response:
    """Change the password exactly as POST /v1/password does; then sign in again."""
    try:
        signin.throttle_address(services(), ip=origin().ip, scope="auth", now=utcnow())
        body = _validated(schemas.PasswordBody, {"current_password": _field("current_password"),
                                                 "new_password": _field("new_password")})
        if _field("confirm_password") != body.new_password:
            raise InvalidParams.one("confirm_password", "does not match the new password")
        user = db().get(User, g.principal.account.id)
        signin.change_password(db(), services(), user=user,
                               current_password=body.current_password,
                               new_password=body.new_password, origin=origin(), now=utcnow())
    except Throttled as exc:
        minutes = max(1, -(-exc.retry_after // 60))
        flash(_("Too many failed attempts: this account is locked for %(minutes)s minutes.",
                minutes=minutes) if exc.code == "locked" else
              _("Too many attempts from your address; wait %(minutes)s minutes.",
                minutes=minutes), "error")
        response = _password_page(status=429)
        response.headers["Retry-After"] = str(exc.retry_after)
        return response
    except Forbidden as exc:
        flash(_("The current password is wrong.") if exc.code == "wrong_password"
              else exc.message, "error")
        return _password_page(status=exc.status)
    except ApiError as exc:
        if exc.errors and exc.errors[0].get("field") == "confirm_password":
            flash(_("The new password and its confirmation differ. Nothing was changed."),
                  "error")
        else:
            _flash_error(exc)
        return _password_page(status=exc.status)
    # Every sign-in of this user was revoked, this one too: end this browser's session now.
    session.end()
    flash(_("Password changed. Sign in again."), "info")
    return redirect(url_for("portal.sign_in"))
