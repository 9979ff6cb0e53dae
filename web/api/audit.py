"""The audit log over HTTP: filtered pages, an NDJSON export, and the hash chain's verification."""
from __future__ import annotations

import json
import re
from datetime import datetime
from functools import wraps
from typing import Annotated, Any

from flask import Blueprint, current_app, request, stream_with_context
from pydantic import AfterValidator, BaseModel, Field, ValidationInfo

from flask_api_functions import (
    ADMIN_PERMISSION,
    AUDIT_PERMISSION,
    db,
    envelope,
    holds,
    require_token,
    respond,
    services,
)
from security_api.audit import verify_chain
from security_api.audit.views import AuditFilters, iterate_events, list_events, render
from security_api.errors import Forbidden
from web.api import schemas
from web.api.inputs import read_query
from web.api.openapi import documented
from web.api.queries import DEFAULT_LIMIT, Cursor, Limit, QueryModel, instant, matching, problem

bp = Blueprint("audit_api", __name__, url_prefix="/v1")
E = schemas.Error
MAX_FILTER_LENGTH = 256
NDJSON = "application/x-ndjson"
# 1 to 256 characters, none of them a control character: the parser and the document share it.
FILTER_TEXT = re.compile(rf"[^\x00-\x1f\x7f-\x9f]{{1,{MAX_FILTER_LENGTH}}}")
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


TEXT_PROBLEM = f"1 to {MAX_FILTER_LENGTH} printable characters"


def _not_before_since(until: datetime | None, info: ValidationInfo) -> datetime | None:
    since = info.data.get("since")
    if until is not None and since is not None and until < since:
        raise problem("must not be before since")
    return until


class AuditFilterQuery(QueryModel):
    """The filters of GET /v1/audit and its export."""

    actor: matching("exact actor (username, or system/test for built-in changes)",
                    FILTER_TEXT, TEXT_PROBLEM) = None
    action: matching("exact action, e.g. login.failed", FILTER_TEXT, TEXT_PROBLEM) = None
    since: instant("ISO 8601; events at or after (no zone means UTC; must exist in UTC, "
                   "else 412)") = None
    until: Annotated[instant("ISO 8601; events strictly before (no zone means UTC; must exist "
                             "in UTC)"), AfterValidator(_not_before_since)] = None

    def filters(self) -> AuditFilters:
        """The domain's filters for these parameters."""
        return AuditFilters(actor=self.actor, action=self.action, since=self.since,
                            until=self.until)


class AuditListQuery(AuditFilterQuery):
    """GET /v1/audit: the filters, then the page."""

    limit: Limit = DEFAULT_LIMIT
    cursor: Cursor = None


# ---- routes ------------------------------------------------------------------------------------
@bp.get("/audit")
@documented(summary="The audit log, newest first (admin or audit holders)", tag="audit",
            responses={200: AuditList, 403: E, 412: E},
            query=AuditListQuery)
@require_audit_reader
def audit_list():
    """List audit events one page at a time."""
    query = read_query(AuditListQuery)
    page, next_cursor = list_events(db(), actor=query.actor, action=query.action,
                                    since=query.since, until=query.until, limit=query.limit,
                                    cursor=query.cursor)
    return respond(None, events=[render(event) for event in page], next_cursor=next_cursor)


@bp.get("/audit/export")
@documented(summary="Export the audit log as NDJSON, oldest first (admin or audit holders)",
            tag="audit", responses={200: None, 403: E, 412: E}, query=AuditFilterQuery,
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
    filters = read_query(AuditFilterQuery).filters()
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
    return respond(message, ok=report.ok, events=report.events,
                    first_broken_seq=report.first_broken_seq, problem=report.problem)
