"""Per-request observability: one structured access record and the HTTP metrics for every answer."""
from __future__ import annotations

import logging
import time

from flask import Flask, Response, g, request

from security_api import metrics

access_log = logging.getLogger("security_api.access")
UNMATCHED_ROUTE = "unmatched"
# Any other method token a client invents is counted as OTHER: labels stay a short list.
KNOWN_METHODS = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"}


def init_app(app: Flask) -> None:
    """Time every request and account for it; register before any other request hook."""
    app.before_request(_start_clock)
    app.after_request(_account_for)


def _start_clock() -> None:
    g.started_at = time.perf_counter()


def route_template() -> str:
    """The matched URL rule (never the raw path, which holds ids); `unmatched` for 404 and 405."""
    rule = request.url_rule
    return rule.rule if rule is not None else UNMATCHED_ROUTE


def _user_id() -> str | None:
    principal = g.get("principal")
    return principal.account.id if principal is not None else None


def _account_for(response: Response) -> Response:
    # after_request hooks run in reverse order: registered first, this one sees the final answer.
    seconds = time.perf_counter() - g.get("started_at", time.perf_counter())
    route, status = route_template(), response.status_code
    method = request.method if request.method in KNOWN_METHODS else "OTHER"
    metrics.observe_http(route=route, method=method, status=status, seconds=seconds)
    access_log.info("%s %s %s", method, route, status, extra={
        "event": "access", "method": method, "route": route, "status": status,
        "latency_ms": round(seconds * 1000, 3), "user_id": _user_id(),
        "client": request.remote_addr})
    return response
