"""Request helpers of the HTTP layer: preconditions, credentials, envelope, headers, guards."""
from __future__ import annotations

import base64
import binascii
import json
import logging
import re
import uuid
from functools import wraps
from itertools import islice
from typing import TypeVar

from flask import Response, current_app, g, request
from pydantic import BaseModel, ValidationError
from sqlalchemy.orm import Session
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.routing import BaseConverter

from security_api import grants, jsontext, sessions
from security_api.audit import Origin
from security_api.clock import utcnow
from security_api.errors import ApiError, BadRequest, Forbidden, InvalidParams, Unauthenticated
from security_api.grants import Subject
from security_api.lifecycle import Actor
from security_api.services import Services
from security_api.signin import BASIC_CHALLENGE

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
NUL = "\x00"
NO_NUL_PROBLEM = jsontext.NUL_PROBLEM
JSON_WHITESPACE = b" \t\n\r"  # RFC 8259, section 2: all a body may be and still be empty
CREDENTIAL_QUERY_PARAMS = {"access_token", "token", "jwt", "refresh_token", "password"}
Q = TypeVar("Q", bound=BaseModel)
log = logging.getLogger(__name__)


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
    """Send a success body through the model the view documents for that status.

    The model (an *Out model from routes/schemas.py) is the one in the view's
    `documented(responses=...)`, so what is sent is what /v1/openapi.json says. Validation is
    strict (no coercion: a field of the wrong type is drift, not something to paper over) and
    only the fields the view set are sent. Under test, a payload the model would change
    (a field missing from the model, a value it would convert) fails loudly; in production
    the drift is logged and the payload sent as it is, rather than fail after the work is done.
    """
    body = {"message": message, **payload}
    model = _documented_model(status)
    try:
        sent = model.model_validate(body, strict=True).model_dump(mode="json", exclude_unset=True)
    except ValidationError:
        if current_app.testing:
            raise
        log.exception("response drifted from %s (%s)", model.__name__, request.endpoint)
        sent = body
    if current_app.testing and sent != body:
        raise AssertionError(f"{model.__name__} would change the response of {request.endpoint}")
    return _json_response(sent, status=status, headers=headers)


def _documented_model(status: int) -> type[BaseModel]:
    doc = current_app.view_functions[request.endpoint].api_doc
    return doc.responses[status]


def error_response(exc: ApiError) -> Response:
    """Render a domain error in the envelope, with its status, code and headers."""
    payload = {"error": exc.code}
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


def refuse_nul_in_query() -> None:
    """No query parameter holds a NUL character: PostgreSQL cannot compare text with one."""
    for name, value in request.args.items(multi=True):
        if NUL in name or NUL in value:
            raise InvalidParams.one(name.replace(NUL, "\\x00"), NO_NUL_PROBLEM)


def read_query(model: type[Q]) -> Q:
    """Validate the query string with the view's query model (routes/queries.py).

    It runs inside the view, after the authentication decorators: a request without a valid
    token is a 401 whatever its query says. A NUL anywhere in the query string is refused
    first (412 naming the parameter), as PostgreSQL cannot compare text with one; then the
    model's own rules, every problem at once. A missing or empty required parameter makes the
    error `missing_params`.
    """
    refuse_nul_in_query()
    try:
        return model.model_validate(request.args.to_dict())
    except ValidationError as exc:
        raise _invalid_query(exc) from None


def read_json(schema: type[BaseModel]) -> BaseModel:
    """Parse and validate the JSON body; an empty body counts as {}.

    Only JSON's own whitespace makes a body empty: bytes.strip() would also drop form feeds
    and vertical tabs, and a body of b"\\x0c" would then pass as {} instead of bad JSON.
    Nesting is bounded before parsing (Python's json recurses per level), and no key or
    string anywhere may hold what the database cannot store (jsontext.unstorable).
    """
    raw = _body_bytes()
    data: object = {}
    if raw.strip(JSON_WHITESPACE):
        if request.mimetype != "application/json":
            raise _unsupported_media_type()
        charset = request.mimetype_params.get("charset", "utf-8").lower()
        if charset not in ("utf-8", "utf8"):
            raise BadRequest("Bodies must be UTF-8.", code="bad_encoding")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise BadRequest("The body is not valid UTF-8.", code="bad_encoding") from None
        if jsontext.too_deep(raw):
            raise BadRequest(f"The body nests arrays and objects more than "
                             f"{jsontext.MAX_DEPTH} deep.", code="bad_json")
        try:
            data = json.loads(text, parse_constant=_refuse_constant)
        except (ValueError, RecursionError):
            raise BadRequest("The body is not valid JSON.", code="bad_json") from None
    if not isinstance(data, dict):
        raise InvalidParams.one("(body)", "must be a JSON object")
    return validate_fields(schema, data)


def validate_fields(schema: type[BaseModel], data: dict) -> BaseModel:
    """Validate fields with a body schema, whatever carried them (a JSON body, a portal form).

    What the database cannot store (NUL, a lone surrogate, in any key or string at any depth)
    is refused first, 412 naming it; then the schema's own rules, 412 with `errors`.
    """
    unstorable = list(islice(jsontext.unstorable(data), jsontext.MAX_REPORTED))
    if unstorable:
        raise InvalidParams(errors=unstorable)
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        raise _invalid_params(exc) from None


def _body_bytes() -> bytes:
    """Return the body; 413 when it is larger than MAX_BODY_BYTES, however it was sent.

    With Content-Length, werkzeug refuses an oversized body itself. A chunked body has no
    length: werkzeug stops reading at the limit and hands back the first MAX_BODY_BYTES as
    if that were all, so one more byte is asked of the server's stream to tell "exactly at
    the limit" from "cut off".
    """
    raw = request.get_data(cache=True)
    limit = current_app.config.get("MAX_CONTENT_LENGTH")
    if request.content_length is None and limit is not None and len(raw) >= limit \
            and request.environ.get("wsgi.input_terminated") \
            and request.environ["wsgi.input"].read(1):
        raise RequestEntityTooLarge()
    return raw


class _UnsupportedMediaType(ApiError):
    status, code, default_message = 415, "unsupported_media_type", \
        "Send the body as application/json."


def _unsupported_media_type() -> ApiError:
    return _UnsupportedMediaType()


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def _invalid_params(exc: ValidationError) -> InvalidParams:
    errors, missing = [], False
    for item in exc.errors(include_url=False, include_input=False):
        field = ".".join(str(part) for part in item["loc"]) or "(body)"
        problem = "unknown field" if item["type"] == "extra_forbidden" else item["msg"]
        missing = missing or item["type"] == "missing"
        errors.append({"field": field, "problem": problem})
    return InvalidParams(code="missing_params" if missing else "invalid_params", errors=errors)


def _invalid_query(exc: ValidationError) -> InvalidParams:
    errors, missing = [], False
    for item in exc.errors(include_url=False, include_input=False):
        missing = missing or item["type"] == "missing"
        problem = "is required" if item["type"] == "missing" else item["msg"]
        errors.append({"field": ".".join(str(part) for part in item["loc"]), "problem": problem})
    return InvalidParams(code="missing_params" if missing else "invalid_params", errors=errors)


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
    return grants.holding(db(), current_subject(), permission=permission, now=utcnow()).held


def current_actor() -> Actor:
    """Return the token's user with their administrator and auditor powers."""
    if "actor" not in g:
        g.actor = Actor(current_subject(), is_admin=holds(ADMIN_PERMISSION),
                        is_auditor=holds(AUDIT_PERMISSION))
    return g.actor


def require_permission(permission: str):
    """Guard a view: a valid token, and the permission held right now."""
    def decorate(view):
        @wraps(view)
        def checked(*args, **kwargs):
            if not holds(permission):
                raise Forbidden(f"This needs the permission {permission}.")
            return view(*args, **kwargs)

        guarded = require_token(checked)
        guarded.required_permission = permission
        return guarded
    return decorate


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
