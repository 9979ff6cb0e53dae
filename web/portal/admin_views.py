"""Administration pages: users, audit log, policy explain.

Every page calls the domain function behind the matching API endpoint, so a rule (who may be
deactivated, what an unlock records, how the chain verifies, which policy rule wins) lives in
one place; these views only read a form and show the answer.
"""
from __future__ import annotations

import json
from dataclasses import asdict, is_dataclass
from datetime import UTC, datetime
from functools import wraps

from flask import Response, flash, g, redirect, request, url_for
from flask_babel import gettext as _
from sqlalchemy import select

from flask_api_functions import current_actor, db, origin, services
from security_api.access import admin_rules
from security_api.accounts import admin_users as users_domain
from security_api.accounts.signin_attempts import lock_key
from security_api.audit import verify_chain
from security_api.audit.views import list_events
from security_api.audit.views import render as render_event
from security_api.clock import epoch, utcnow
from security_api.enums import UserKind
from security_api.errors import ApiError, InvalidParams, NotFound
from security_api.models import Role, User
from web.api.audit import FILTER_TEXT, MAX_FILTER_LENGTH

from . import error_page
from .blueprint import admin_required, bp, login_required, render
from .formatting import when
from .forms import problems_text

PAGE_SIZE = 50
MAX_PARAM = 256
DETAILS_SUMMARY = 120
USER_FILTERS = ("q", "role", "active", "cursor")
AUDIT_FILTERS = ("actor", "action", "since", "until")


def _args(names: tuple[str, ...]) -> dict[str, str]:
    """The named query parameters a form sent with a value (an empty field means "any")."""
    return {name: request.args[name].strip() for name in names if request.args.get(name, "").strip()}


# ---- users -------------------------------------------------------------------------------------
def _user_filters(args: dict[str, str]) -> users_domain.UserFilters:
    errors = [{"field": name, "problem": _("too long")} for name, value in args.items()
              if len(value) > MAX_PARAM]
    if args.get("active", "true") not in ("true", "false"):
        errors.append({"field": "active", "problem": _("true or false")})
    if errors:
        raise InvalidParams(errors=errors)
    active = args.get("active")
    return users_domain.UserFilters(role=args.get("role"), q=args.get("q"),
                                   active=None if active is None else active == "true")


def _row(user: User, now: int) -> dict:
    return {"user": user, "is_service": user.kind == UserKind.SERVICE,
            "locked": services().store.lock_state(lock_key(user.username), now=now).locked}


@bp.get("/admin/users")
@admin_required
def admin_users() -> Response:
    """Find users and act on them: deactivate or activate, unlock, reset 2FA."""
    args = _args(USER_FILTERS)
    users, next_cursor, status = [], None, 200
    try:
        page, next_cursor = users_domain.list_users(db(), filters=_user_filters(args),
                                                   limit=PAGE_SIZE, cursor=args.get("cursor"))
        now = epoch(utcnow())
        users = [_row(user, now) for user in page]
    except InvalidParams as exc:
        flash(_("Check the filters: %(problems)s", problems=problems_text(exc)), "error")
        status = exc.status
    roles = list(db().scalars(select(Role.name).order_by(Role.name)))
    filters = {name: value for name, value in args.items() if name != "cursor"}
    more = url_for("portal.admin_users", **filters, cursor=next_cursor) if next_cursor else None
    return render("portal/admin_users.html", status=status, users=users, roles=roles,
                  filters=filters, query=args, more=more, me=g.principal.account.username)


def _deactivate(user_id: str) -> User:
    return users_domain.update_user(db(), services(), user_id=user_id, active=False, **_who())


def _activate(user_id: str) -> User:
    return users_domain.update_user(db(), services(), user_id=user_id, active=True, **_who())


def _unlock(user_id: str) -> User:
    return users_domain.unlock(db(), services(), user_id=user_id, **_who())


def _reset_totp(user_id: str) -> User:
    return users_domain.reset_totp(db(), user_id=user_id, **_who())


def _who() -> dict:
    return {"actor": g.principal.account.username, "origin": origin(), "now": utcnow()}


USER_ACTIONS = {
    "deactivate": (_deactivate, lambda name: _(
        "%(user)s is deactivated; every session of theirs was signed out.", user=name)),
    "activate": (_activate, lambda name: _("%(user)s is active again.", user=name)),
    "unlock": (_unlock, lambda name: _("%(user)s is unlocked and may sign in again.", user=name)),
    "reset-totp": (_reset_totp, lambda name: _(
        "Two-factor authentication of %(user)s was reset: they set it up again at their next "
        "sign-in, and every session of theirs was signed out.", user=name)),
}


@bp.post("/admin/users/<user_id>/<action>")
@admin_required
def admin_user_action(user_id: str, action: str) -> Response:
    """Run one user action through the API's domain function, then go back to the list.

    The blueprint checked the form's CSRF token before this runs (400 page, nothing changed).
    """
    if action not in USER_ACTIONS:
        return error_page(404)
    perform, done = USER_ACTIONS[action]
    try:
        user = perform(user_id)
    except ApiError as exc:
        db().rollback()
        flash(_("Nothing was changed: %(reason)s", reason=problems_text(exc)), "error")
    else:
        flash(done(user.username), "info")
    back = {name: value for name, value in _args(USER_FILTERS).items() if len(value) <= MAX_PARAM}
    return redirect(url_for("portal.admin_users", **back))


# ---- audit -------------------------------------------------------------------------------------
def _parse_time(name: str, raw: str, errors: list[dict]) -> datetime | None:
    # The same reading as GET /v1/audit: ISO 8601, no zone means UTC.
    try:
        value = datetime.fromisoformat(raw) if raw.isascii() else None
    except ValueError:
        value = None
    if value is None:
        errors.append({"field": name, "problem": _("a date and time like 2026-01-31T12:00:00Z")})
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _audit_filters(args: dict[str, str]) -> dict:
    errors: list[dict] = []
    for name in ("actor", "action"):
        if name in args and not FILTER_TEXT.fullmatch(args[name]):
            errors.append({"field": name, "problem": _(
                "1 to %(max)s printable characters", max=MAX_FILTER_LENGTH)})
    since = _parse_time("since", args["since"], errors) if "since" in args else None
    until = _parse_time("until", args["until"], errors) if "until" in args else None
    if since is not None and until is not None and until < since:
        errors.append({"field": "until", "problem": _("must not be before since")})
    if errors:
        raise InvalidParams(errors=errors)
    return {"actor": args.get("actor"), "action": args.get("action"), "since": since,
            "until": until}


def _summary(details) -> str:
    """Shorten an event's details to one line: key=value, ... (the full JSON is one click away)."""
    if details in (None, "", {}, []):
        return ""
    if isinstance(details, dict):
        text = ", ".join(f"{key}={value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)}"
                         for key, value in details.items())
    else:
        text = details if isinstance(details, str) else json.dumps(details, ensure_ascii=False)
    return text if len(text) <= DETAILS_SUMMARY else text[:DETAILS_SUMMARY - 1] + "…"


def _verification() -> dict:
    """The chain's state, from the function behind GET /v1/audit/verify.

    Read by name, so a report that gains fields (or becomes a mapping) still shows.
    """
    with services().session_factory() as session:
        report = verify_chain(session)
    if is_dataclass(report):
        report = asdict(report)
    elif not isinstance(report, dict):
        report = vars(report)
    return {"ok": bool(report.get("ok")), "events": report.get("events"),
            "first_broken_seq": report.get("first_broken_seq"), "problem": report.get("problem")}


def audit_reader_required(view):
    """Guard a page with the API's rule for the audit log: admins and auditors."""
    @wraps(view)
    @login_required
    def guarded(*args, **kwargs):
        actor = current_actor()
        if not (actor.is_admin or actor.is_auditor):
            return render("portal/error.html", status=403, title=_("Not allowed"),
                          message=_("The audit log is for administrators and auditors."))
        return view(*args, **kwargs)
    return guarded


@bp.get("/admin/audit")
@audit_reader_required
def admin_audit() -> Response:
    """The audit log, newest first, filtered, with the hash chain's verification on top."""
    args = _args(AUDIT_FILTERS + ("cursor",))
    events, next_cursor, status = [], None, 200
    try:
        page, next_cursor = list_events(db(), **_audit_filters(args), limit=PAGE_SIZE,
                                        cursor=args.get("cursor"))
        events = [dict(event, when=when(event["at"]), summary=_summary(event["details"]),
                       details_json=json.dumps(event["details"], ensure_ascii=False, indent=2))
                  for event in map(render_event, page)]
    except InvalidParams as exc:
        flash(_("Check the filters: %(problems)s", problems=problems_text(exc)), "error")
        status = exc.status
    filters = {name: value for name, value in args.items() if name != "cursor"}
    more = url_for("portal.admin_audit", **filters, cursor=next_cursor) if next_cursor else None
    return render("portal/admin_audit.html", status=status, events=events, filters=filters,
                  more=more, verification=_verification())


# ---- explain -----------------------------------------------------------------------------------
MODE_LABELS = {"standing": ("standing", lambda: _("Standing: held always, no request needed")),
               "auto": ("auto", lambda: _("Granted at once on request")),
               "approval": ("approval", lambda: _("Needs approval")),
               "break_glass": ("break_glass", lambda: _("Break-glass: granted at once, reviewed after"))}


def _mode(mode: str | None) -> dict:
    badge, label = MODE_LABELS.get(mode or "", ("blocked", lambda: _("Not requestable")))
    return {"badge": badge, "label": label()}


def _specificity(rank: int | None) -> str:
    return {2: _("2: role and subrole"), 1: _("1: role, any subrole"),
            0: _("0: everyone")}.get(rank, _("does not apply"))


@bp.get("/admin/explain")
@admin_required
def admin_explain() -> Response:
    """Why may a user (not) request a permission: the decision, its rule, every rule weighed."""
    args = _args(("user", "permission"))
    answer, status = None, 200
    if args:
        try:
            missing = [{"field": name, "problem": _("is required")}
                       for name in ("user", "permission") if name not in args]
            too_long = [{"field": name, "problem": _("too long")}
                        for name, value in args.items() if len(value) > MAX_PARAM]
            if missing or too_long:
                raise InvalidParams(errors=missing + too_long)
            answer = admin_rules.explain(db(), username=args["user"],
                                           permission=args["permission"], now=utcnow())
        except (InvalidParams, NotFound) as exc:
            flash(problems_text(exc) if isinstance(exc, InvalidParams) else
                  _("%(reason)s Check the username and the permission key.", reason=exc.message),
                  "error")
            status = exc.status
    if answer is not None:
        answer = dict(answer, mode=_mode(answer["decision"]),
                      considered=[dict(rule, mode_label=_mode(rule["mode"]),
                                       rank=_specificity(rule["specificity"]))
                                  for rule in answer["considered"]])
    return render("portal/admin_explain.html", status=status, form=args, answer=answer)
