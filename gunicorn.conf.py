"""gunicorn settings for every environment; override with environment variables."""
import multiprocessing
import os

import gunicorn.http.wsgi

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
