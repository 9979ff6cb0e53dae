"""OpenAPI document, interactive docs (assets from the installed package) and the JWKS."""
from __future__ import annotations

from pathlib import Path

import flask_swagger_ui
from flask import Blueprint, Response, current_app, g, render_template, send_from_directory
from werkzeug.exceptions import NotFound

from flask_api_functions import respond, services
from security_api.accounts.tokens import jwks as public_jwks
from web.api import schemas
from web.api.openapi import build_document, documented

bp = Blueprint("docs", __name__, url_prefix="/v1")
SWAGGER_DIST = Path(flask_swagger_ui.__file__).resolve().parent / "dist"
LOCAL_ASSETS = Path(__file__).resolve().parents[2] / "static" / "docs"
ASSETS = {"swagger-ui.css", "swagger-ui-bundle.js", "swagger-ui-standalone-preset.js"}
DOCS_CSP = ("default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
            "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; "
            "form-action 'none'")


@bp.get("/openapi.json")
@documented(summary="This OpenAPI 3.1 document", tag="service", responses={200: None})
def openapi():
    """Describe every route, generated from the code's own schemas."""
    document = current_app.extensions.get("openapi_document")
    if document is None:
        # The app factory hands the version down in the config: routes never import the app.
        document = build_document(current_app, version=current_app.config["API_VERSION"])
        current_app.extensions["openapi_document"] = document
    return current_app.response_class(current_app.json.dumps(document),
                                      mimetype="application/json")


@bp.get("/docs")
@documented(summary="Interactive documentation (Swagger UI, served locally)", tag="service",
            responses={200: None})
def docs_page():
    """Serve Swagger UI pointed at /v1/openapi.json."""
    g.csp = DOCS_CSP
    return Response(render_template("docs.html"), mimetype="text/html")


docs_page.serves_html = True


@bp.get("/docs/assets/<path:filename>")
def asset(filename: str):
    """Serve the Swagger UI files that ship inside the installed package."""
    if filename == "init.js":
        return send_from_directory(LOCAL_ASSETS, filename, max_age=3600)
    if filename not in ASSETS:
        raise NotFound()
    return send_from_directory(SWAGGER_DIST, filename, max_age=3600)


asset.serves_assets = True


@bp.get("/.well-known/jwks.json")
@documented(summary="Public keys to verify access tokens offline (EdDSA only)",
            tag="service", responses={200: schemas.Jwks})
def jwks():
    """Publish the public signing keys; empty when tokens use a shared HMAC secret."""
    keys = public_jwks(services().keys)["keys"]
    message = None if keys else "Tokens are signed with HS256 (shared secret): no public keys."
    return respond(message, keys=keys)
