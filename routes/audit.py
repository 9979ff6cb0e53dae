"""The audit log over HTTP: filtered pages, an NDJSON export, and the hash chain's verification."""
from __future__ import annotations

import json
import re
from datetime import datetime
from functools import wraps
from typing import Any

from flask import Blueprint, current_app, request, stream_with_context
from pydantic import BaseModel, Field

from flask_api_functions import (
    ADMIN_PERMISSION,
    AUDIT_PERMISSION,
    db,
    envelope,
    holds,
    require_token,
    services,
)
from security_api.audit import verify_chain
from security_api.audit_views import AuditFilters, iterate_events, list_events, render
from security_api.clock import parse_instant
from security_api.errors import Forbidden, InvalidParams

from . import schemas
from .openapi import CURSOR, LIMIT, Query, documented

bp = Blueprint("audit_api", __name__, url_prefix="/v1")
E = schemas.Error
MAX_LIMIT, DEFAULT_LIMIT = 200, 50
MAX_FILTER_LENGTH = 256
NDJSON = "application/x-ndjson"
# 1 to 256 characters, none of them a control character: the parser and the document share it.
FILTER_TEXT = re.compile(rf"[^\x00-\x1f\x7f-\x9f]{{1,{MAX_FILTER_LENGTH}}}")
_TEXT = {"type": "string", "pattern": f"^{FILTER_TEXT.pattern}$"}
_TIME = {"type": "string", "format": "date-time"}
FILTER_DOCS = {
    "actor": Query("exact actor (username, or system/test for built-in changes)", _TEXT),
    "action": Query("exact action, e.g. login.failed", _TEXT),
    "since": Query("ISO 8601; events at or after (no zone means UTC; must exist in UTC, else 412)", _TIME),
    "until": Query("ISO 8601; events strictly before (no zone means UTC; must exist in UTC)", _TIME),
}


# ---- responses ---------------------------------------------------------------------------------
class AuditEventOut(BaseModel):
    id: str
    seq: int = Field(description="Position in the hash chain, from 1.")
    at: str
    actor: str | None
    action: str
    target: str | None
    ip: str | None
    request_id: str | None
    details: Any = Field(description="The event's JSON details (the stored text if it is not JSON).")
    hash: str = Field(description="HMAC-SHA256 with the chain key (AUDIT_CHAIN_KEY, never stored) "
                                  "over prev_hash and the event; plain SHA-256 for events "
                                  "sealed from before the chain was keyed.")
    prev_hash: str


class AuditList(BaseModel):
    message: str | None
    events: list[AuditEventOut] = Field(description="Newest first.")
    next_cursor: str | None


class AuditVerification(BaseModel):
    message: str
    ok: bool
    events: int = Field(description="Events that verified before the first broken one (or all).")
    first_broken_seq: int | None = Field(description="seq of the first changed, removed or "
                                                     "inserted event; null when intact.")
    problem: str | None


# ---- guard and parameters ----------------------------------------------------------------------
def require_audit_reader(view):
    """Guard a view: a valid token of a holder of security-api.admin or security-api.audit."""
    @wraps(view)
    def checked(*args, **kwargs):
        if not (holds(ADMIN_PERMISSION) or holds(AUDIT_PERMISSION)):
            raise Forbidden(f"The audit log is for holders of {ADMIN_PERMISSION} or {AUDIT_PERMISSION}.")
        return view(*args, **kwargs)

    return require_token(checked)


def _parse_time(name: str, errors: list[dict]) -> datetime | None:
    raw = request.args.get(name)
    if raw is None:
        return None
    try:
        return parse_instant(raw.strip(), naive_is_utc=True)
    except ValueError:
        errors.append({"field": name, "problem": "an ISO 8601 date-time that exists in UTC "
                                                 "(years 1-9999), e.g. 2026-01-31T12:00:00Z"})
        return None


def _parse_text(name: str, errors: list[dict]) -> str | None:
    raw = request.args.get(name)
    if raw is None:
        return None
    if not FILTER_TEXT.fullmatch(raw):
        errors.append({"field": name, "problem": f"1 to {MAX_FILTER_LENGTH} printable characters"})
        return None
    return raw


def _filters(errors: list[dict]) -> AuditFilters:
    actor, action = _parse_text("actor", errors), _parse_text("action", errors)
    since, until = _parse_time("since", errors), _parse_time("until", errors)
    if since is not None and until is not None and until < since:
        errors.append({"field": "until", "problem": "must not be before since"})
    return AuditFilters(actor=actor, action=action, since=since, until=until)


def _raise_if(errors: list[dict]) -> None:
    if errors:
        raise InvalidParams(errors=errors)


# ---- routes ------------------------------------------------------------------------------------
@bp.get("/audit")
@documented(summary="The audit log, newest first (admin or audit holders)", tag="audit",
            responses={200: AuditList, 403: E, 412: E},
            query={**FILTER_DOCS, "limit": LIMIT, "cursor": CURSOR})
@require_audit_reader
def audit_list():
    """List audit events one page at a time."""
    errors: list[dict] = []
    filters = _filters(errors)
    raw_limit = request.args.get("limit", str(DEFAULT_LIMIT))
    limit = int(raw_limit) if raw_limit.isascii() and raw_limit.isdigit() and len(raw_limit) <= 4 else 0
    if not 1 <= limit <= MAX_LIMIT:
        errors.append({"field": "limit", "problem": f"a whole number from 1 to {MAX_LIMIT}"})
    _raise_if(errors)
    page, next_cursor = list_events(db(), actor=filters.actor, action=filters.action,
                                    since=filters.since, until=filters.until, limit=limit,
                                    cursor=request.args.get("cursor"))
    return envelope(None, events=[render(event) for event in page], next_cursor=next_cursor)


@bp.get("/audit/export")
@documented(summary="Export the audit log as NDJSON, oldest first (admin or audit holders)",
            tag="audit", responses={200: None, 403: E, 412: E}, query=FILTER_DOCS,
            description="`application/x-ndjson`: one event per line, in the shape of "
                        "`GET /v1/audit`, streamed without pagination. Accept "
                        "`application/x-ndjson`, `application/json` or `*/*`.")
@require_audit_reader
def audit_export():
    """Stream every matching event, one JSON object per line."""
    accepts = request.accept_mimetypes
    if request.headers.get("Accept") and not (accepts[NDJSON] or accepts.accept_json):
        return envelope("The export is NDJSON; accept application/x-ndjson.", status=406,
                        error="not_acceptable")
    errors: list[dict] = []
    filters = _filters(errors)
    _raise_if(errors)
    session_factory = services().session_factory

    def lines():
        # The stream outlives the request's own session: it owns one, closed when it ends.
        with session_factory() as session:
            for event in iterate_events(session, filters):
                yield json.dumps(render(event), ensure_ascii=False, separators=(",", ":")) + "\n"

    return current_app.response_class(
        stream_with_context(lines()), mimetype=NDJSON,
        headers={"Content-Disposition": 'attachment; filename="audit-events.ndjson"'})


# The app-wide 406 precondition only knows JSON; this view negotiates NDJSON itself (above).
audit_export.serves_assets = True


@bp.get("/audit/verify")
@documented(summary="Walk the audit hash chain and report the first broken event",
            tag="audit", responses={200: AuditVerification, 403: E},
            description="200 either way: `ok` false names the first event that was changed, "
                        "removed or inserted (`first_broken_seq`) and the `problem`. Every "
                        "hash is recomputed with the chain key, and the end of the chain must "
                        "equal the head's checkpoint signed with it, so rows re-hashed or "
                        "removed from the end by someone without the key are found (events "
                        "removed from the end: `first_broken_seq` is the first missing one).")
@require_audit_reader
def audit_verify():
    """Verify the whole chain, like `flask --app flask_api audit verify`."""
    with services().session_factory() as session:
        report = verify_chain(session)
    message = (f"Audit chain intact: {report.events} events." if report.ok else
               f"Audit chain broken at event {report.first_broken_seq}: {report.problem}.")
    return envelope(message, ok=report.ok, events=report.events,
                    first_broken_seq=report.first_broken_seq, problem=report.problem)
