"""The face of the service: application factory, `application`, service endpoints, error handlers."""
from __future__ import annotations

import functools
import logging

from flask import Blueprint, Flask, Response, g, redirect, render_template, request
from flask_cors import CORS
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from werkzeug.exceptions import HTTPException, MethodNotAllowed
from werkzeug.middleware.proxy_fix import ProxyFix

import config
import flask_api_functions as helpers
from flask_api_functions import envelope, error_response
from security_api.accounts.stores import StoreUnavailable
from security_api.db import probe_database
from security_api.errors import ApiError, ServiceUnavailable
from security_api.integrations import outbox_delivery
from security_api.services import build_services
from web import observability, portal, structured_logging
from web.api import (
    access,
    admin_catalog,
    admin_conflicts,
    admin_drift,
    admin_users,
    audit,
    auth,
    docs,
    inputs,
    metrics,
    schemas,
    slack,
)
from web.api.openapi import documented

VERSION = "1.0.0"
METHOD_NOT_ALLOWED_MESSAGE = "Method not allowed or missing params, check API doc to solve the problem."
log = logging.getLogger("security_api")
service_bp = Blueprint("service", __name__)


def create_app(test_config: dict | None = None) -> Flask:
    """Build the WSGI application; `test_config` overrides settings from the environment."""
    settings = config.load_settings(**(test_config or {}))
    structured_logging.configure_logging(log_format=settings.log_format, level=settings.log_level)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    app = Flask(__name__, static_folder=None)
    app.url_map.converters["default"] = app.url_map.converters["string"] = \
        helpers.NulFreeSegment
    app.config.update(MAX_CONTENT_LENGTH=settings.max_body_bytes, JSON_SORT_KEYS=False,
                      TESTING=settings.env == "testing", DEBUG=False, API_VERSION=VERSION)
    app.extensions["security_api"] = build_services(settings)
    # Notifications go out after each commit that wrote some; stop() before disposing the engine.
    app.extensions["outbox_deliverer"] = outbox_delivery.attach(app.extensions["security_api"])
    if settings.cors_origins:
        CORS(app, origins=list(settings.cors_origins), supports_credentials=False,
             allow_headers=["Authorization", "Content-Type", "X-Request-ID"],
             expose_headers=["X-Request-ID", "Retry-After"])
    observability.init_app(app)  # first: times the other hooks and sees the final response
    _trust_proxies(app, settings.trusted_proxy_count)
    _register_hooks(app)
    _register_error_handlers(app)
    app.register_blueprint(service_bp)
    app.register_blueprint(auth.bp)
    app.register_blueprint(access.bp)
    app.register_blueprint(admin_users.bp)
    app.register_blueprint(admin_catalog.bp)
    app.register_blueprint(admin_conflicts.bp)
    app.register_blueprint(admin_drift.bp)
    app.register_blueprint(audit.bp)
    app.register_blueprint(docs.bp)
    app.register_blueprint(metrics.bp)
    app.register_blueprint(slack.bp)
    portal.init_app(app)
    from web import cli
    cli.init_app(app)
    return app


def _trust_proxies(app: Flask, count: int) -> None:
    """Take the client address from X-Forwarded-For, set by exactly `count` trusted proxies.

    Each proxy appends the address it received the request from, so the entry `count` places
    from the right is the client as the outermost proxy saw it; anything further left is what
    the client itself sent and is ignored. With 0, X-Forwarded-* is never read. Only the
    address is taken: links use PUBLIC_BASE_URL, never the forwarded host or scheme.
    """
    if count > 0:
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=count, x_proto=0, x_host=0, x_port=0,
                                x_prefix=0)


def _register_hooks(app: Flask) -> None:
    @app.before_request
    def _preconditions():
        helpers.assign_request_id()
        view = app.view_functions.get(request.endpoint)
        accepts = request.accept_mimetypes
        html_ok = (getattr(view, "serves_html", False) or request.blueprint == "portal") \
            and accepts.accept_html
        # A Prometheus scraper asks for text/plain (or OpenMetrics) first.
        text_ok = getattr(view, "serves_text", False) and (
            accepts["text/plain"] or accepts["application/openmetrics-text"])
        if request.headers.get("Accept") and not accepts.accept_json and not html_ok \
                and not text_ok and not getattr(view, "serves_assets", False):
            return envelope("This API answers in JSON; accept application/json.",
                            status=406, error="not_acceptable")
        helpers.refuse_credentials_in_query()
        # JSON views refuse a NUL in what they read themselves (read_query), after deciding
        # who is asking; portal pages read `next`, `cursor` and filters by hand, so a NUL is
        # refused for all of them here, before it can reach the database.
        if request.blueprint == "portal":
            inputs.refuse_nul_in_query()
        return None

    app.after_request(helpers.apply_security_headers)
    app.teardown_appcontext(helpers.close_db)


def _register_error_handlers(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError):
        return error_response(exc)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):
        if isinstance(exc, MethodNotAllowed):
            response = envelope(METHOD_NOT_ALLOWED_MESSAGE, status=405, error="method_not_allowed")
            response.headers["Allow"] = ", ".join(sorted(exc.valid_methods or []))
            return response
        codes = {400: "bad_request", 404: "not_found", 413: "payload_too_large",
                 415: "unsupported_media_type", 431: "headers_too_large"}
        messages = {404: "Not found; check the API documentation at /v1/docs.",
                    413: "The body is too large."}
        status = exc.code or 500
        if request.path.startswith("/portal/") and status in (404, 405):
            return portal.error_page(status)
        return envelope(messages.get(status, exc.name + "."), status=status,
                        error=codes.get(status, "http_error"))

    # Only connection-level failures mean "the database is down"; a DataError is a bug (500).
    @app.errorhandler(OperationalError)
    @app.errorhandler(InterfaceError)
    def _database_down(exc):
        # The driver's class names the cause (QueryCanceled, DeadlockDetected, ...) and carries
        # no data; its message could, so it is not logged.
        log.error("database error: %s (%s)", type(exc).__name__,
                  type(getattr(exc, "orig", None) or exc).__name__)
        return error_response(ServiceUnavailable())

    @app.errorhandler(Exception)
    def _internal(exc):
        log.exception("unhandled error (request %s)", g.get("request_id"))
        return envelope("Internal error; quote the request id when reporting it.", status=500,
                        error="internal_error", request_id=g.get("request_id"))


# Index entries a browser cannot open (POST only), with what the HTML page says about them.
INDEX_POST_ONLY = {"/v1/login": "sign in: POST with Basic auth (username:password) and a JSON "
                                "body {\"totp\": \"123456\"}; see /v1/docs"}


def _index_payload() -> dict:
    return {"name": "Security API", "version": VERSION,
            "links": {"ping": "/v1/ping", "health": "/v1/health", "login": "/v1/login",
                      "openapi": "/v1/openapi.json", "docs": "/v1/docs",
                      "jwks": "/v1/.well-known/jwks.json"}}


@service_bp.get("/")
@service_bp.get("/v1")
@documented(summary="Index: HTML for browsers, JSON otherwise", tag="service",
            responses={200: schemas.Index},
            description="`GET /` from a browser (text/html preferred) answers 302 to the "
                        "portal at `/portal/`; `GET /v1` shows the HTML index.")
def index():
    """Point people and tools to the documentation."""
    accepts = request.accept_mimetypes
    if accepts.accept_html and accepts["text/html"] > accepts["application/json"]:
        if request.path == "/":
            return redirect("/portal/")
        payload = _index_payload()
        # A browser can open GET pages only: POST endpoints are described, not linked (a link
        # to /v1/login showed a 405).
        links = {label: href for label, href in payload["links"].items()
                 if href not in INDEX_POST_ONLY}
        html = render_template("index.html", **{**payload, "links": links},
                               post_only=INDEX_POST_ONLY)
        return Response(html, mimetype="text/html")
    return envelope("Security API. Documentation: /v1/docs", **_index_payload())


index.serves_html = True


@service_bp.get("/v1/ping")
@documented(summary="Liveness", tag="service", responses={200: schemas.Message})
def ping():
    """Answer pong without touching any dependency."""
    return envelope("pong")


HEALTH_DATABASE_SECONDS = 2  # health's own bound on the database check (PostgreSQL)


@service_bp.get("/v1/health")
@documented(summary="Database (and Redis) status", tag="service",
            responses={200: schemas.Health, 503: schemas.Health})
def health():
    """Check each dependency; 503 when one is down, 200 "degraded" when the database is slow."""
    services = helpers.services()
    checks = {}
    try:
        with services.session_factory() as session:
            checks["database"] = probe_database(session.connection(),
                                                seconds=HEALTH_DATABASE_SECONDS)
    except (OperationalError, DBAPIError):
        checks["database"] = "down"
    if services.settings.redis_url:
        try:
            services.store.ping()
            checks["redis"] = "ok"
        except StoreUnavailable:
            checks["redis"] = "down"
    # A slow database is not a dead instance: every instance shares it, and taking them out of
    # the load balancer would not make it faster. 200, "degraded"; 503 only for "down".
    if any(value == "down" for value in checks.values()):
        return envelope("unhealthy", status=503, checks=checks)
    healthy = all(value == "ok" for value in checks.values())
    return envelope("healthy" if healthy else "degraded", checks=checks)



@functools.cache
def _application() -> Flask:
    """Build the process's one application, the first time someone asks for it."""
    return create_app()


def __getattr__(name: str) -> Flask:
    """Serve `flask_api:application` lazily (PEP 562), built once on first access.

    Why: importing this module (tests importing create_app, tools reading it) must not build an
    app from the environment and open its database. gunicorn, `flask --app flask_api`, the
    Procfile, Dockerfile and .ebextensions all look the name up with getattr, which lands here.
    """
    if name == "application":
        return _application()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
