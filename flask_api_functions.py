"""Request helpers of the HTTP layer: preconditions, credentials, envelope, headers, guards."""
from __future__ import annotations

import base64
import binascii
import json
import logging
import re
import uuid
from collections import defaultdict
from functools import wraps
from itertools import count

from flask import Response, current_app, g, request
from pydantic import BaseModel, ValidationError
from sqlalchemy.orm import Session
from werkzeug.routing import BaseConverter

from security_api.access.grants import Subject
from security_api.access.holdings import holding
from security_api.access.lifecycle import Actor
from security_api.access.powers import held
from security_api.accounts import sessions
from security_api.accounts.signin_attempts import BASIC_CHALLENGE
from security_api.audit import Origin
from security_api.clock import utcnow
from security_api.errors import ApiError, BadRequest, Forbidden, Unauthenticated
from security_api.services import Services

ADMIN_PERMISSION = "security-api.admin"
AUDIT_PERMISSION = "security-api.audit"
CHECK_PERMISSION = "security-api.check"
SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
BEARER_CHALLENGE = 'Bearer realm="security-api"'
JSON_CSP = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
SECURITY_HEADERS = {
    "Strict-Transport-Security": "max-age=63072000; includeSubDomains",
    "Cache-Control": "no-store",
    "Pragma": "no-cache",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=()",
}
SERVER_NAME = "security-api"
# Query parameters that would put a credential into logs and browser history.
CREDENTIAL_QUERY_PARAMS = {"access_token", "token", "jwt", "refresh_token", "password"}
log = logging.getLogger(__name__)
# In production one response in this many, per endpoint and worker, is checked against its model.
DRIFT_CHECK_EVERY = 64


# ---- collaborators -------------------------------------------------------------------------
def services() -> Services:
    """Return the process-wide domain services."""
    return current_app.extensions["security_api"]


def db() -> Session:
    """Return this request's database session, opened on first use."""
    if "db" not in g:
        g.db = services().session_factory()
    return g.db


def close_db(_exc=None) -> None:
    """Roll back anything uncommitted and give the connection back."""
    session = g.pop("db", None)
    if session is not None:
        session.close()


def origin() -> Origin:
    """Return where the current request comes from, for the audit log."""
    return Origin(ip=request.remote_addr, request_id=g.get("request_id"))


# ---- envelope ------------------------------------------------------------------------------
def envelope(message: str | None = None, *, status: int = 200, headers: dict | None = None,
             **payload) -> Response:
    """Build the contract's JSON response: a `message` plus named payload fields."""
    return _json_response({"message": message, **payload}, status=status, headers=headers)


def _json_response(body: dict, *, status: int, headers: dict | None) -> Response:
    try:
        data = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    except UnicodeEncodeError:
        # A lone surrogate has no UTF-8 form. Bodies holding one are refused and stored JSON
        # is read back without them (jsontext); should one still slip through, escape it
        # rather than fail after the work is done.
        data = json.dumps(body, ensure_ascii=True, separators=(",", ":")).encode("ascii")
    response = current_app.response_class(data, status=status, mimetype="application/json")
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def respond(message: str | None = None, *, status: int = 200, headers: dict | None = None,
            **payload) -> Response:
    """Send a success body, checked against the model the view documents for that status.

    The model (an *Out model from web/api/schemas.py) is the one in the view's
    `documented(responses=...)`, so what is sent is what /v1/openapi.json says. Validation is
    strict (no coercion: a field of the wrong type is drift, not something to paper over) and
    only the fields the view set are sent: the payload goes out as the view built it. Under
    test every response is checked, and a payload the model refuses or would change (a field
    missing from the model, a value it would convert) fails loudly. In production drift is
    logged and the payload still sent, rather than fail after the work is done: the check is
    an alarm there, so it runs on a sample (`_drift_check_due`): pydantic's strict validation,
    dump and comparison cost ~20 us for a profile body, a tenth of the in-process request
    (bench/auth_breakdown.py).
    """
    body = {"message": message, **payload}
    if _drift_check_due():
        _check_against_model(body, status)
    return _json_response(body, status=status, headers=headers)


_responses_sent = defaultdict(count)  # endpoint -> this worker's count of its responses


def _drift_check_due() -> bool:
    """Every response under test; in production an endpoint's first, then one in DRIFT_CHECK_EVERY.

    Drift comes from code, so it shows on an endpoint's every answer of that shape: a sample
    finds it within minutes on a used endpoint, at a 64th of the cost.
    """
    if current_app.testing:
        return True
    return next(_responses_sent[request.endpoint]) % DRIFT_CHECK_EVERY == 0


def _check_against_model(body: dict, status: int) -> None:
    """Raise under test, log in production, when the documented model refuses or changes `body`."""
    model = _documented_model(status)
    try:
        modelled = model.model_validate(body, strict=True).model_dump(mode="json", exclude_unset=True)
    except ValidationError:
        if current_app.testing:
            raise
        log.exception("response drifted from %s (%s)", model.__name__, request.endpoint)
        return
    if modelled != body:
        if current_app.testing:
            raise AssertionError(f"{model.__name__} would change the response of {request.endpoint}")
        log.error("response drifted from %s (%s): the model would change it", model.__name__,
                  request.endpoint)


def _documented_model(status: int) -> type[BaseModel]:
    doc = current_app.view_functions[request.endpoint].api_doc
    return doc.responses[status]


def error_response(exc: ApiError) -> Response:
    """Render a domain error in the envelope, with its status, code and headers."""
    payload = {**exc.fields, "error": exc.code}
    if exc.errors:
        payload["errors"] = exc.errors
    if exc.status >= 500:
        payload["request_id"] = g.get("request_id")
    return envelope(exc.message, status=exc.status, headers=exc.headers, **payload)


# ---- preconditions -------------------------------------------------------------------------
def assign_request_id() -> None:
    """Echo a sane client request id, or make one."""
    given = request.headers.get("X-Request-ID", "")
    g.request_id = given if SANE_REQUEST_ID.fullmatch(given) else uuid.uuid4().hex


def refuse_credentials_in_query() -> None:
    """Tokens and passwords never travel in a URL."""
    if CREDENTIAL_QUERY_PARAMS & set(request.args.keys()):
        raise BadRequest("Credentials are never accepted in the query string; "
                         "use the Authorization header.", code="credentials_in_query")


class NulFreeSegment(BaseConverter):
    """A path segment without NUL: no key, name or id holds one, and PostgreSQL cannot even
    compare text with one, so such a path matches no route (404) instead of reaching a query.
    The app makes it the default converter."""

    regex = "[^/\\x00]+"


# ---- credentials ---------------------------------------------------------------------------
def basic_credentials() -> tuple[str, str]:
    """Return (username, password) from a Basic header; the password may contain ':'."""
    header = request.headers.get("Authorization")
    scheme, _, value = (header or "").partition(" ")
    if not header or scheme.lower() != "basic":
        raise Unauthenticated("Basic authentication required.", code="missing_credentials",
                              headers=BASIC_CHALLENGE)
    value = value.strip()
    try:
        decoded = base64.b64decode(value, validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        decoded = None
    if not value or decoded is None or ":" not in decoded:
        raise BadRequest("Malformed Basic credentials: expected base64(username:password) in UTF-8.",
                         code="malformed_credentials")
    username, _, password = decoded.partition(":")
    return username, password


def bearer_token() -> str:
    """Return the token of an `Authorization: Bearer` header."""
    header = request.headers.get("Authorization")
    scheme, _, value = (header or "").partition(" ")
    if not header or scheme.lower() != "bearer":
        raise Unauthenticated("A Bearer token is required.", code="missing_token",
                              headers={"WWW-Authenticate": BEARER_CHALLENGE})
    return value.strip()


def require_token(view):
    """Guard a view: only a valid, unrevoked access token of an active user gets through."""
    @wraps(view)
    def guarded(*args, **kwargs):
        try:
            token = bearer_token()
            g.principal = sessions.authenticate(services(), token=token, now=utcnow())
        except Unauthenticated as exc:
            exc.headers.setdefault(
                "WWW-Authenticate", f'{BEARER_CHALLENGE}, error="invalid_token"')
            raise
        return view(*args, **kwargs)

    guarded.required_auth = "bearer"
    return guarded


def current_principal() -> sessions.Principal:
    """Return the principal set by require_token."""
    return g.principal


def current_subject() -> Subject:
    """Return the token's user as the policy engine sees it."""
    account = g.principal.account
    return Subject(id=account.id, username=account.username, role=account.role,
                   subrole=account.subrole, kind=account.kind)


def holds(permission: str) -> bool:
    """Tell whether the token's user holds a permission now (standing or active grant)."""
    return holding(db(), current_subject(), permission=permission, now=utcnow()).held


def current_actor() -> Actor:
    """Return the token's user with their administrator and auditor powers."""
    if "actor" not in g:
        # Both powers in one statement (powers.held decides as holdings.holding does).
        powers = held(db(), current_subject(), (ADMIN_PERMISSION, AUDIT_PERMISSION),
                      now=utcnow())
        g.actor = Actor(current_subject(), is_admin=ADMIN_PERMISSION in powers,
                        is_auditor=AUDIT_PERMISSION in powers)
    return g.actor


def require_permission(permission: str):
    """Guard a view: a valid token, and the permission held right now."""
    def decorate(view):
        @wraps(view)
        def checked(*args, **kwargs):
            _require_held(permission)
            return view(*args, **kwargs)

        return _guarded(checked, permission)
    return decorate


def require_permission_read_by_view(permission: str):
    """Guard a read-only view that reads its own guard with its first statement.

    Why: `GET /v1/check`'s guard and answer fit one read-only statement
    (HoldingReader.of_subject_and_username); the guard read before the view made it two round
    trips. The view reads both and hands the guard's answer to `settle_permission` before
    anything else can answer. Whatever the view does, the order of checks holds: when it
    raised (a bad query string, say) or returned without settling, the guard is read here as
    `require_permission` reads it (a second statement, on such paths only) and a caller without
    the permission gets 403, never the view's 412, 404 or answer.
    """
    def decorate(view):
        @wraps(view)
        def checked(*args, **kwargs):
            g.permission_to_settle, g.permission_settled = permission, False
            try:
                return view(*args, **kwargs)
            finally:
                # Raised or returned: a 403 from here takes the place of either.
                _settle_if_unsettled()

        return _guarded(checked, permission)
    return decorate


def settle_permission(held: bool) -> None:
    """Settle the guard of a `require_permission_read_by_view` view: 403 unless it is held."""
    g.permission_settled = True
    if not held:
        raise _forbidden(g.permission_to_settle)


def _settle_if_unsettled() -> None:
    if not g.permission_settled:
        g.permission_settled = True
        _require_held(g.permission_to_settle)


def _require_held(permission: str) -> None:
    # Before the view, or when the view used no session: the lean read-only path (one round
    # trip, no transaction) sees what the session would.
    if not services().holdings.of_subject(current_subject(), permission=permission,
                                          now=utcnow()).held:
        raise _forbidden(permission)


def _forbidden(permission: str) -> Forbidden:
    return Forbidden(f"This needs the permission {permission}.")


def _guarded(checked, permission: str):
    guarded = require_token(checked)
    guarded.required_permission = permission
    return guarded


# ---- response headers ----------------------------------------------------------------------
def apply_security_headers(response: Response) -> Response:
    """Add the contract's security headers and the request id to every response."""
    if request.method == "OPTIONS" and not response.get_data():
        # Flask's automatic OPTIONS answer is an empty text/html body: keep every body JSON.
        response.set_data(b'{"message":null}')
        response.mimetype = "application/json"
    for name, value in SECURITY_HEADERS.items():
        response.headers[name] = value
    response.headers["Content-Security-Policy"] = g.get("csp", JSON_CSP)
    response.headers["X-Request-ID"] = g.get("request_id") or uuid.uuid4().hex
    # gunicorn writes its own version-free Server header (see gunicorn.conf.py); others get ours.
    if not request.environ.get("SERVER_SOFTWARE", "").startswith("gunicorn"):
        response.headers["Server"] = SERVER_NAME
    return response
