"""gunicorn's own refusals (400, 414, 431, 501, ...) answered like the application's errors.

The one module that patches gunicorn (installed by gunicorn.conf.py), for two things it has no
setting or hook for: its refusals (below) and its Server header, which would name gunicorn
(the product is named, never a version). `install` checks that both targets still exist, and
tests/test_gunicorn_refusals.py checks that gunicorn still calls them, so an upgrade that
moves them fails the tests instead of silently undoing the patch.

Why a monkeypatch for refusals: gunicorn answers a request it cannot parse (request line too long, headers
too large, an unsupported Transfer-Encoding, ...) before any application code runs, through
`gunicorn.util.write_error`, with an HTML page and none of our headers; it has no hook or
setting for that answer. This module is the one place that replaces it (installed by
gunicorn.conf.py); tests/test_gunicorn.py checks it under a real gunicorn with raw sockets,
and tests/test_gunicorn_refusals.py checks the answer it writes.

What changes: the contract's JSON envelope, the security headers of every application
answer, a fresh `X-Request-ID` (also logged, so a refused request can be found), and a
reason phrase that matches the status (gunicorn says "Bad Request" for its 501 and 500).
gunicorn's message is left out: it echoes the request.
"""
from __future__ import annotations

import json
import logging
import re
import uuid
from http import HTTPStatus

import gunicorn.http.wsgi
import gunicorn.util

log = logging.getLogger("gunicorn.error")
SERVER_NAME = "security-api"


def reason_for(status: int, reason: str) -> str:
    """Return gunicorn's reason when it belongs to the status, else the standard phrase."""
    if status != 400 and reason == "Bad Request":
        try:
            return HTTPStatus(status).phrase
        except ValueError:
            return reason
    return reason


def refusal(status: int, reason: str, *, request_id: str | None = None) -> bytes:
    """Return the whole HTTP answer (head and JSON body) for one of gunicorn's refusals."""
    from flask_api_functions import JSON_CSP, SECURITY_HEADERS

    reason = reason_for(status, reason)
    code = re.sub(r"[^a-z0-9]+", "_", reason.lower()).strip("_") or "bad_request"
    body = json.dumps({"message": f"{reason}.", "error": code}).encode()
    headers = {**SECURITY_HEADERS, "Content-Security-Policy": JSON_CSP,
               "X-Request-ID": request_id or uuid.uuid4().hex, "Connection": "close",
               "Content-Type": "application/json", "Content-Length": str(len(body)),
               "Server": SERVER_NAME}
    head = f"HTTP/1.1 {status} {reason}\r\n" + "".join(
        f"{name}: {value}\r\n" for name, value in headers.items()) + "\r\n"
    return head.encode("latin-1") + body


def _write_error(sock, status_int, reason, mesg):
    request_id = uuid.uuid4().hex
    log.info("refused before the application: %s %s", status_int, reason_for(status_int, reason),
             extra={"request_id": request_id})
    gunicorn.util.write_nonblock(sock, refusal(status_int, reason, request_id=request_id))


def install() -> None:
    """Make gunicorn write its refusals with `refusal` and name the product (idempotent)."""
    for module, name in ((gunicorn.util, "write_error"), (gunicorn.http.wsgi, "SERVER")):
        if not hasattr(module, name):
            raise RuntimeError(f"gunicorn no longer has {module.__name__}.{name}: "
                               "revisit web/gunicorn_refusals.py")
    gunicorn.util.write_error = _write_error
    gunicorn.http.wsgi.SERVER = SERVER_NAME
