"""Reading what a request carries: the JSON body, portal form fields and the query string.

Every view reads its input through one of these, so a body or query is refused the same way
everywhere (413, 415, 400 bad_json/bad_encoding, 412 with every problem at once) before a
domain operation sees it. Kept apart from flask_api_functions, which holds the request's
context (services, db, identity, envelope); this module needs only Flask's request and config.
"""
from __future__ import annotations

import json
from itertools import islice
from typing import TypeVar

from flask import current_app, request
from pydantic import BaseModel, ValidationError
from werkzeug.exceptions import RequestEntityTooLarge

from security_api import jsontext
from security_api.errors import ApiError, BadRequest, InvalidParams

NUL = "\x00"
NO_NUL_PROBLEM = jsontext.NUL_PROBLEM
JSON_WHITESPACE = b" \t\n\r"  # RFC 8259, section 2: all a body may be and still be empty
Q = TypeVar("Q", bound=BaseModel)


def refuse_nul_in_query() -> None:
    """No query parameter holds a NUL character: PostgreSQL cannot compare text with one."""
    for name, value in request.args.items(multi=True):
        if NUL in name or NUL in value:
            raise InvalidParams.one(name.replace(NUL, "\\x00"), NO_NUL_PROBLEM)


def read_query(model: type[Q]) -> Q:
    """Validate the query string with the view's query model (web/api/queries.py).

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


def read_raw_body() -> bytes:
    """Return the body's exact bytes (bounded by MAX_BODY_BYTES, 413), for signature checks."""
    return _body_bytes()


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
