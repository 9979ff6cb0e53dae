"""gunicorn settings for every environment; override with environment variables."""
import json
import multiprocessing
import os
import re

import gunicorn.http.wsgi
import gunicorn.util

bind = os.environ.get("GUNICORN_BIND", "127.0.0.1:16381")
workers = int(os.environ.get("WEB_CONCURRENCY", multiprocessing.cpu_count() * 2 + 1))
worker_class = "sync"
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "30"))
graceful_timeout = 20
keepalive = 5
# Requests are small JSON; big headers are an attack, not a client.
limit_request_line = 4094
limit_request_field_size = 8190
accesslog = os.environ.get("GUNICORN_ACCESSLOG", "-")
errorlog = "-"
loglevel = os.environ.get("GUNICORN_LOGLEVEL", "info")
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1")



def post_worker_init(worker):
    """Start this worker's background reaper (never on import, never in tests or the CLI)."""
    from security_api.reaper import start_background_reaper

    services = worker.wsgi.extensions["security_api"]
    interval = services.settings.reaper_interval_seconds
    if interval > 0:
        start_background_reaper(services, interval_seconds=interval)


# The Server header names the product, never a version (gunicorn's default is "gunicorn").
gunicorn.http.wsgi.SERVER = "security-api"


def _write_json_error(sock, status_int, reason, mesg):
    """gunicorn's own refusals (request line too long, bad headers) in the contract's envelope.

    gunicorn answers these before the app sees the request, with an HTML page; the contract
    says never a framework HTML page. `mesg` echoes the request, so it is left out.
    """
    from flask_api_functions import JSON_CSP, SECURITY_HEADERS

    code = re.sub(r"[^a-z0-9]+", "_", reason.lower()).strip("_") or "bad_request"
    body = json.dumps({"message": f"{reason}.", "error": code}).encode()
    headers = {**SECURITY_HEADERS, "Content-Security-Policy": JSON_CSP, "Connection": "close",
               "Content-Type": "application/json", "Content-Length": str(len(body)),
               "Server": gunicorn.http.wsgi.SERVER}
    head = f"HTTP/1.1 {status_int} {reason}\r\n" + "".join(
        f"{name}: {value}\r\n" for name, value in headers.items()) + "\r\n"
    gunicorn.util.write_nonblock(sock, head.encode("latin-1") + body)


gunicorn.util.write_error = _write_json_error
