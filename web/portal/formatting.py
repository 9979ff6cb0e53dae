"""How the portal shows times, durations, statuses and outcomes to people (translated)."""
from __future__ import annotations

from datetime import datetime

from flask_babel import format_datetime, format_timedelta, get_locale, ngettext
from flask_babel import gettext as _
from flask_babel import lazy_gettext as _l

from security_api.clock import as_utc

# Status names as people read them; the badge shows the word, its colour only repeats it.
STATUS_LABELS = {
    "pending": _l("Pending"), "active": _l("Active"), "denied": _l("Denied"),
    "cancelled": _l("Cancelled"), "failed": _l("Failed"), "expired": _l("Expired"),
    "revoked": _l("Revoked"),
}


def time_left(expires_at: datetime | None, now: datetime) -> str:
    """Say how long a grant still lasts, e.g. "42 min left" or "3 h 5 min left"."""
    if expires_at is None:
        return ""
    minutes = max(0, int((as_utc(expires_at) - now).total_seconds() // 60))
    if minutes < 60:
        return ngettext("%(num)s min left", "%(num)s min left", minutes)
    hours, rest = divmod(minutes, 60)
    return ngettext("%(num)s h %(rest)s min left", "%(num)s h %(rest)s min left", hours,
                    rest=rest)


def when(value: datetime | str | None) -> str:
    """Format a time for people in the page's language (UTC, said so)."""
    if value is None:
        return ""
    if isinstance(value, str):
        value = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return format_datetime(as_utc(value), "medium") + " UTC"


def duration(minutes: int | None) -> str:
    """Say a duration the way people read it: "45 minutes", "2 hours", "1 h 30 min"."""
    if not minutes:
        return ""
    hours, rest = divmod(minutes, 60)
    if not hours:
        return ngettext("%(num)s minute", "%(num)s minutes", minutes)
    if not rest:
        return ngettext("%(num)s hour", "%(num)s hours", hours)
    return _("%(hours)s h %(minutes)s min", hours=hours, minutes=rest)


def ago(value: str | None, now: datetime) -> str:
    """Say how long ago an ISO time was, e.g. "3 hours ago"."""
    if not value:
        return ""
    at = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return format_timedelta(at - now, add_direction=True)


def approvers_text(entries) -> str:
    """Name who approves a request; a rule naming nobody means the administrators."""
    return ", ".join(entries) if entries else _("an administrator")


def provisioning_error(record: dict | None, action: str) -> str:
    """The error the provisioner reported for `action` ("grant", "revoke"), for people."""
    outcome = (record or {}).get(action) or {}
    return outcome.get("error") or _("no details")


def status_label(status: str) -> str:
    """Return a status as a translated word."""
    return str(STATUS_LABELS.get(status, status))


# The domain speaks English; these stable error codes are said in the page's language.
DOMAIN_MESSAGES = {
    "not_requestable": _l("This permission is not requestable for your role."),
    "already_requested": _l("You already have an open request for this permission."),
    "already_active": _l("You already hold an active grant of this permission."),
    "already_held": _l("You hold this permission already (standing)."),
    "request_not_pending": _l("The request is not pending."),
    "already_decided": _l("You have already decided this request."),
    "request_not_active": _l("The grant is not active."),
    "request_not_failed": _l("Only a failed request can be retried."),
    "separation_of_duties": _l("You cannot decide your own request."),
    "no_longer_eligible": _l("The requester is no longer active or allowed this permission; "
                             "the request cannot be granted."),
    # stepup
    "step_up_required": _l("This permission needs a code from your authenticator app."),
    "invalid_step_up": _l("The code from your authenticator app is wrong or was already used; "
                          "wait for the next one."),
}


# stepup: the API's text for these names the JSON field ("totp"); a page names its own field.
PORTAL_WORDED = {"step_up_required", "invalid_step_up"}


def error_text(code: str, message: str) -> str:
    """Say a domain error in the page's language when its code is a known one."""
    if code in PORTAL_WORDED or (str(get_locale()) != "en" and code in DOMAIN_MESSAGES):
        return str(DOMAIN_MESSAGES[code])
    return message
