"""The OpenAPI 3.1 document, built from the routes and their pydantic schemas."""
from __future__ import annotations

import re
from dataclasses import dataclass

from flask import Flask
from pydantic import BaseModel

from web.api import schemas

STATUS_TEXT = {
    200: "OK", 201: "Created",
    400: "Malformed request (bad JSON or nested deeper than 32 levels, bad encoding, bad "
         "header, credentials in the query string)",
    401: "Not authenticated", 403: "Authenticated but not allowed", 404: "Not found",
    405: "Method not allowed", 406: "The Accept header excludes JSON", 409: "State conflict",
    412: "Missing or invalid parameters (a NUL or lone surrogate in any body string or key, "
         "a cursor this API did not return, a time outside UTC's range)",
    413: "Body too large (over MAX_BODY_BYTES, chunked or not)",
    414: "URI too long (over 4094 bytes; answered by gunicorn)", 415: "Body is not JSON",
    431: "Request header fields too large (answered by gunicorn)",
    429: "Throttled or locked out (see Retry-After)", 500: "Internal error",
    503: "A dependency (database, Redis) is down",
}
# Any operation: a credential in the query string (400 `credentials_in_query`) is refused
# before routing, whatever the operation's own parameters; gunicorn refuses an over-long
# request line (414) or header (431) before the app (JSON too, see gunicorn.conf.py).
COMMON_ERRORS = (400, 406, 414, 431, 500, 503)
BODY_ERRORS = (412, 413, 415)


@dataclass
class ApiDoc:
    """What the document says about one operation."""

    summary: str
    tag: str
    responses: dict[int, type[BaseModel] | str | None]
    body: type[BaseModel] | None = None
    auth: str | None = None
    description: str = ""
    query: type[BaseModel] | None = None
    form: type[BaseModel] | None = None
    headers: tuple[tuple[str, str], ...] = ()


def documented(*, summary: str, tag: str, responses: dict, body=None, auth=None,
               description: str = "", query: type[BaseModel] | None = None,
               form: type[BaseModel] | None = None, headers: tuple = ()):
    """Attach OpenAPI facts to a view; put it under the route decorator.

    `query` is the model the view reads its query string with (read_query), so the
    parameters documented are the ones validated. `form` documents a form-encoded body
    (application/x-www-form-urlencoded) instead of JSON; `headers` names request headers
    the view reads, as (name, description).
    """
    def decorate(view):
        view.api_doc = ApiDoc(summary, tag, responses, body, auth, description, query, form,
                              tuple(headers))
        return view
    return decorate


NO_NUL = "^[^\\x00]*$"
CONSTRAINED_STRING = ("pattern", "enum", "const", "format")


def no_nul_in_strings(schema: dict) -> dict:
    """Say of every free-form string in an input schema that it holds no NUL character.

    The service refuses NUL in query parameters and body fields (PostgreSQL cannot store or
    compare it); a string with its own pattern, enum or format already excludes it.
    """
    if schema.get("type") == "string" and not any(key in schema for key in CONSTRAINED_STRING):
        schema["pattern"] = NO_NUL
    for key in ("properties", "$defs"):
        for child in schema.get(key, {}).values():
            no_nul_in_strings(child)
    for key in ("anyOf", "oneOf", "allOf"):
        for child in schema.get(key, []):
            no_nul_in_strings(child)
    if isinstance(schema.get("items"), dict):
        no_nul_in_strings(schema["items"])
    return schema


def _schema_ref(model: type[BaseModel], components: dict, *, request: bool = False) -> dict:
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    if request:
        no_nul_in_strings(schema)
    for name, definition in schema.pop("$defs", {}).items():
        components[name] = definition
    components[model.__name__] = schema
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _json_content(model, components, *, request: bool = False) -> dict:
    return {"application/json": {"schema": _schema_ref(model, components, request=request)}}


def _statuses(doc: ApiDoc, auth: str | None, path_params: list[str]) -> dict:
    """The operation's answers: its own, plus the errors any such operation can give."""
    statuses = dict(doc.responses)
    for status in COMMON_ERRORS + (BODY_ERRORS if doc.body else ()):
        statuses.setdefault(status, schemas.Error)
    if doc.query:
        statuses.setdefault(412, schemas.Error)  # a NUL character in any of them, at least
    if path_params:
        statuses.setdefault(404, schemas.Error)  # nothing has that id (a NUL matches no route)
    if auth:
        statuses.setdefault(401, schemas.Error)
    return statuses


def _responses(statuses: dict, components: dict) -> dict:
    responses = {}
    for status, model in sorted(statuses.items()):
        entry = {"description": STATUS_TEXT.get(status, "")}
        if isinstance(model, str):
            # A non-JSON answer, named by its media type (e.g. "text/plain").
            entry["content"] = {model: {"schema": {"type": "string"}}}
        elif model is not None:
            entry["content"] = _json_content(model, components)
        if status == 429:
            entry["headers"] = {"Retry-After": {"schema": {"type": "integer"},
                                                "description": "Seconds to wait."}}
        responses[str(status)] = entry
    return responses


def query_parameters(model: type[BaseModel]) -> list[dict]:
    """The query parameters of a read_query model, each with the schema its field pins."""
    schema = model.model_json_schema()
    required = set(schema.get("required", ()))
    parameters = []
    for name, spec in schema.get("properties", {}).items():
        spec = dict(spec)
        description = spec.pop("description", "")
        # The description says the default where it matters; absent means no filter.
        spec.pop("title", None), spec.pop("default", None)
        parameters.append({"name": name, "in": "query", "required": name in required,
                           "schema": no_nul_in_strings(spec), "description": description})
    return parameters


def _parameters(doc: ApiDoc, path_params: list[str]) -> list[dict]:
    parameters = [{"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
                  for name in path_params]
    parameters += [{"name": name, "in": "header", "required": False, "description": text,
                    "schema": {"type": "string", "pattern": NO_NUL}}
                   for name, text in doc.headers]
    return parameters + (query_parameters(doc.query) if doc.query else [])


def _operation(view, doc: ApiDoc, components: dict, path_params: list[str], *,
               operation_id: str) -> dict:
    auth = getattr(view, "required_auth", None) or doc.auth
    operation = {"summary": doc.summary, "tags": [doc.tag],
                 "responses": _responses(_statuses(doc, auth, path_params), components),
                 "operationId": operation_id}
    if doc.description:
        operation["description"] = doc.description
    operation["security"] = [{"basicAuth": []}] if auth == "basic" else \
        [{"bearerAuth": []}] if auth == "bearer" else []
    parameters = _parameters(doc, path_params)
    if parameters:
        operation["parameters"] = parameters
    if doc.body is not None:
        # An empty body counts as {}: it may be left out unless a field is required.
        required = bool(doc.body.model_json_schema().get("required"))
        operation["requestBody"] = {"required": required,
                                    "content": _json_content(doc.body, components,
                                                             request=True)}
    if doc.form is not None:
        operation["requestBody"] = {"required": True, "content": {
            "application/x-www-form-urlencoded": {
                "schema": _schema_ref(doc.form, components, request=True)}}}
    return operation


def build_document(app: Flask, *, version: str) -> dict:
    """Walk the URL map and describe every documented route."""
    components: dict = {}
    paths: dict = {}
    for rule in sorted(app.url_map.iter_rules(), key=lambda r: r.rule):
        view = app.view_functions.get(rule.endpoint)
        doc = getattr(view, "api_doc", None)
        if doc is None:
            continue
        path = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule)
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            operation_id = re.sub(r"\W+", "_", f"{method} {path}").strip("_").lower()
            paths.setdefault(path, {})[method.lower()] = _operation(
                view, doc, components, list(rule.arguments), operation_id=operation_id)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Security API", "version": version,
            "description": "Sign-in with password + TOTP, short-lived JWTs, and access requests. "
                           "Every response is JSON with a `message`; errors add `error` "
                           "(stable code) and, for parameters, `errors`. Bodies nest at most 32 "
                           "levels (400 `bad_json`); no string or key in them, free-form "
                           "objects included, may hold NUL or a lone surrogate (412 naming "
                           "it, e.g. `params.a.b[2]`). People use the same service through the "
                           "portal's HTML pages under `/portal/` (a browser asking for `/` is "
                           "redirected there); they call the same domain operations and are not "
                           "part of this JSON contract.",
        },
        "servers": [{"url": "/"}],
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {
                "basicAuth": {"type": "http", "scheme": "basic"},
                "bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
            },
        },
    }
