"""GET /metrics for a Prometheus scraper: off unless configured, behind a bearer token when one is set."""
from __future__ import annotations

import hmac

from flask import Blueprint, current_app, request
from prometheus_client.exposition import choose_encoder
from werkzeug.exceptions import NotFound

from flask_api_functions import BEARER_CHALLENGE, envelope, services
from security_api import metrics
from security_api.errors import Unauthenticated
from web.api import schemas
from web.api.openapi import documented

bp = Blueprint("metrics", __name__)
TEXT_TYPES = ("text/plain", "application/openmetrics-text")


def _require_scraper_token(expected: str) -> None:
    header = request.headers.get("Authorization", "")
    scheme, _, given = header.partition(" ")
    ok = scheme.lower() == "bearer" and hmac.compare_digest(
        given.strip().encode("utf-8", "surrogatepass"), expected.encode("utf-8"))
    if not ok:
        raise Unauthenticated("The metrics token is missing or wrong.", code="invalid_token",
                              headers={"WWW-Authenticate": BEARER_CHALLENGE})


@bp.get("/metrics")
@documented(summary="Prometheus metrics (when METRICS_ENABLED; Bearer METRICS_TOKEN when set)",
            tag="service", auth="bearer", responses={200: "text/plain", 404: schemas.Error},
            description="The Prometheus text exposition format (`text/plain; version=0.0.4`, "
                        "or OpenMetrics when the scraper asks for it). 404 while metrics are "
                        "off (`METRICS_ENABLED=false`, the default); the bearer token is "
                        "`METRICS_TOKEN`, not a user's access token.")
def metrics_endpoint():
    """Expose the counters and histograms of every worker."""
    settings = services().settings
    if not settings.metrics_enabled:
        raise NotFound()
    if settings.metrics_token:
        _require_scraper_token(settings.metrics_token)
    accept = request.headers.get("Accept")
    accepts = request.accept_mimetypes
    if accept and not any(accepts[media] for media in TEXT_TYPES):
        return envelope("Metrics are text; accept text/plain.", status=406, error="not_acceptable")
    encode, content_type = choose_encoder(accept or "")
    return current_app.response_class(encode(metrics.collecting_registry()),
                                      headers={"Content-Type": content_type})


# The app-wide 406 precondition only knows JSON; this view negotiates the text formats (above).
metrics_endpoint.serves_text = True
