"""Query parameters as pydantic models: one model per endpoint both validates and documents them.

`read_query(Model)` (web/api/inputs.py) validates `request.args` with a model from here, and
web/api/openapi.py turns the same model into the operation's query parameters, so what is
accepted and what is documented cannot drift. Every field pins its OpenAPI schema
(WithJsonSchema) because a query parameter is always a string on the wire, whatever Python
type the view gets; and every refusal names its own problem text, which clients and tests rely
on (pydantic's own messages would change them).
"""
from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema
from pydantic_core import PydanticCustomError

from security_api.clock import parse_instant

MAX_LIMIT, DEFAULT_LIMIT = 200, 50
NON_EMPTY = {"type": "string", "minLength": 1}
CURSOR_TEXT = "next_cursor of the previous page, as given; anything else is 412"


def problem(text: str, *, kind: str = "invalid") -> PydanticCustomError:
    """An error whose message is exactly `text` (the 412's `problem`), braces and all."""
    return PydanticCustomError(kind, "{problem}", {"problem": text})


class QueryModel(BaseModel):
    """Unknown parameters are ignored, as they always were: a URL may carry tracking noise."""

    model_config = ConfigDict(extra="ignore", frozen=True)


# ---- pagination: one limit and one cursor for every paginated list ----------------------------
def _limit(raw: Any) -> int:
    # Whole ASCII digits only ("+5", " 5", "5.0" and "٥" are refused); leading zeros are
    # stripped before int() so a thousand-digit string is never converted.
    if isinstance(raw, str) and raw.isascii() and raw.isdigit() and len(raw.lstrip("0")) <= 3 \
            and 1 <= int(raw) <= MAX_LIMIT:
        return int(raw)
    raise problem(f"a whole number from 1 to {MAX_LIMIT}")


Limit = Annotated[int, BeforeValidator(_limit),
                  WithJsonSchema({"type": "integer", "minimum": 1, "maximum": MAX_LIMIT}),
                  Field(description=f"1-{MAX_LIMIT}, default {DEFAULT_LIMIT}")]
# The cursor is decoded by the one codec (security_api/cursors.py) where the list reads it;
# here it is only carried, documented the same way everywhere.
Cursor = Annotated[str | None, WithJsonSchema({"type": "string"}), Field(description=CURSOR_TEXT)]


# ---- field vocabulary -------------------------------------------------------------------------
def text(description: str) -> Any:
    """An optional free-text filter, passed on as given."""
    return Annotated[str | None, WithJsonSchema({"type": "string"}),
                     Field(description=description)]


def required_text(description: str) -> Any:
    """A parameter that must be there and not empty: both are `missing_params`."""
    def present(raw: Any) -> Any:
        if raw == "":
            raise problem("is required", kind="missing")
        return raw
    return Annotated[str, BeforeValidator(present), WithJsonSchema(NON_EMPTY),
                     Field(description=description)]


def bounded_text(description: str, *, max_length: int) -> Any:
    """Optional text of at most `max_length` characters."""
    def short(raw: Any) -> Any:
        if isinstance(raw, str) and len(raw) > max_length:
            raise problem("too long")
        return raw
    return Annotated[str | None, BeforeValidator(short),
                     WithJsonSchema({"type": "string", "maxLength": max_length}),
                     Field(description=description)]


def choice(description: str, values: Iterable[str], refusal: str) -> Any:
    """One of a fixed set of strings, refused with `refusal` otherwise."""
    allowed = list(values)

    def one_of(raw: Any) -> Any:
        if raw not in allowed:
            raise problem(refusal)
        return raw
    return Annotated[str | None, BeforeValidator(one_of),
                     WithJsonSchema({"type": "string", "enum": allowed}),
                     Field(description=description)]


def matching(description: str, pattern, refusal: str) -> Any:
    """Text that must match a compiled regular expression in full."""
    def fits(raw: Any) -> Any:
        if not isinstance(raw, str) or not pattern.fullmatch(raw):
            raise problem(refusal)
        return raw
    return Annotated[str | None, BeforeValidator(fits),
                     WithJsonSchema({"type": "string", "pattern": f"^{pattern.pattern}$"}),
                     Field(description=description)]


INSTANT_PROBLEM = ("an ISO 8601 date-time that exists in UTC (years 1-9999), "
                   "e.g. 2026-01-31T12:00:00Z")


def _instant(raw: Any) -> datetime:
    try:
        return parse_instant(raw.strip(), naive_is_utc=True)
    except (ValueError, AttributeError):
        raise problem(INSTANT_PROBLEM) from None


def instant(description: str) -> Any:
    """An ISO 8601 time; without a zone it means UTC."""
    return Annotated[datetime | None, BeforeValidator(_instant),
                     WithJsonSchema({"type": "string", "format": "date-time"}),
                     Field(description=description)]


# ---- shared models ----------------------------------------------------------------------------
Username = required_text("username")
PermissionKey = required_text("permission key")


class UserPermissionQuery(QueryModel):
    """`?user=&permission=`: who and what, both required (GET /v1/check, policies/explain)."""

    user: Username
    permission: PermissionKey
