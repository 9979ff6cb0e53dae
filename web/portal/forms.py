"""What every portal form handler shares: reading a field, checking it, saying what was wrong.

The portal checks form fields with the API's own body schemas, so a form and a JSON body obey
the same limits and fail with the same error; only the way the error is told differs.
"""
from __future__ import annotations

from flask import flash, request
from flask_babel import lazy_gettext as _l
from pydantic import BaseModel

from security_api.errors import ApiError, InvalidParams
from web.api.inputs import validate_fields

from .formatting import error_text

# How much of a form field is read at all, before any schema looks at it.
MAX_FIELD = 4096
# How people read the fields a domain error names.
FIELD_LABELS = {
    "permission": _l("Permission"), "justification": _l("Justification"),
    "duration_minutes": _l("Duration (minutes)"), "comment": _l("Comment"),
    "current_password": _l("Current password"), "new_password": _l("New password"),
    "confirm_password": _l("Confirm the new password"), "cursor": _l("Page"),
    "totp": _l("Code from your authenticator app"),
}


def field(name: str, *, limit: int = MAX_FIELD) -> str:
    """One posted form field, "" when absent, cut at `limit` characters."""
    return request.form.get(name, "")[:limit]


def step_up_code() -> str | None:
    """The step-up code field; empty or absent is no code (the domain says it is needed)."""
    code = field("totp", limit=64).strip()
    return code or None


def minutes_field(raw: str) -> int | None:
    """A minutes field as typed: empty means the domain's default (the effective maximum)."""
    raw = raw.strip()
    if not raw:
        return None
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 9):
        raise InvalidParams.one("duration_minutes", "must be a whole number of minutes")
    return int(raw)


def validated(schema: type[BaseModel], data: dict) -> BaseModel:
    """Check form fields with the API's own body schema: the same limits, the same 412."""
    return validate_fields(schema, data)


def flash_error(exc: ApiError) -> None:
    """Say what went wrong: field by field when the domain named the fields."""
    if exc.errors:
        for item in exc.errors:
            label = FIELD_LABELS.get(item.get("field"), item.get("field"))
            flash(f"{label}: {item.get('problem')}", "error")
    else:
        flash(error_text(exc.code, exc.message), "error")


def problems_text(exc: ApiError) -> str:
    """Say in one line what was wrong with the parameters, field by field when named."""
    if exc.errors:
        return "; ".join(f"{item['field']}: {item['problem']}" for item in exc.errors)
    return exc.message
