"""gunicorn settings for every environment; override with environment variables."""
import multiprocessing
import os
import tempfile

from web import gunicorn_refusals

bind = os.environ.get("GUNICORN_BIND", "127.0.0.1:16381")
workers = int(os.environ.get("WEB_CONCURRENCY", multiprocessing.cpu_count() * 2 + 1))
# Threads, so /v1/ping and /v1/health do not queue behind requests waiting on the database (a
# locked table, a slow query): with sync workers one such request per worker stalled them for
# up to the query timeout, and a load balancer would kill a healthy instance. Per-process state
# is thread-safe: a session per request (Flask's g), SQLAlchemy's pools (5 + 5 overflow: keep
# GUNICORN_THREADS <= 8, the reaper takes one), the token cache's lock, the reaper's own
# thread, prometheus_client's locked multiprocess values.
worker_class = "gthread"
threads = int(os.environ.get("GUNICORN_THREADS", "4"))
# A worker takes no more connections than it has threads: one whose threads all wait stops
# accepting, and the next connection goes to a worker with a free thread instead of queueing
# behind the waits. So no keep-alive (the sync workers had none either).
worker_connections = threads
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "30"))
graceful_timeout = 20
keepalive = 0
# Requests are small JSON; big headers are an attack, not a client.
limit_request_line = 4094
limit_request_field_size = 8190
# Off by default: the application writes one structured access record per request itself.
accesslog = os.environ.get("GUNICORN_ACCESSLOG") or None
errorlog = "-"
loglevel = os.environ.get("GUNICORN_LOGLEVEL", "info")
# gunicorn >= 25.1 opens a control socket (reload, shutdown, worker count) at one path per
# user ($XDG_RUNTIME_DIR or ~/.gunicorn/gunicorn.ctl): a second instance on the host takes it
# over and deletes it when it stops. Off unless GUNICORN_CONTROL_SOCKET names a path of this
# service's own.
control_socket = os.environ.get("GUNICORN_CONTROL_SOCKET", "").strip()
control_socket_disable = not control_socket
if control_socket_disable:
    del control_socket


def post_worker_init(worker):
    """Start this worker's audit sequencer and background reaper (never on import, never in
    tests or the CLI, where each commit seals its own audit events)."""
    from security_api.access.reaper import start_background_reaper
    from security_api.audit.sequencer import sealer_for

    services = worker.wsgi.extensions["security_api"]
    sealer_for(services.session_factory).start()
    interval = services.settings.reaper_interval_seconds
    if interval > 0:
        start_background_reaper(services, interval_seconds=interval)


# ---- deployment: trusted proxies and start-up tasks ----------------------------------------
# gunicorn takes X-Forwarded-Proto (the scheme) only from these peers. The app reads
# X-Forwarded-For only when TRUSTED_PROXY_COUNT > 0 (flask_api._trust_proxies); with 0 no
# forwarded header is trusted anywhere, so gunicorn trusts no peer either.
_TRUSTS_PROXIES = os.environ.get("TRUSTED_PROXY_COUNT", "0").strip() not in ("", "0")
forwarded_allow_ips = (os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1,::1")
                       if _TRUSTS_PROXIES else "")


def when_ready(server):
    """Run STARTUP_TASKS once per instance: in the master, after binding, before any worker.

    A failing required task raises RuntimeError, which gunicorn reports ("Error: ...") before
    exiting with status 1: no worker is ever started.
    """
    from config import load_settings
    from security_api.services import build_services
    from security_api.startup import release, run_startup_tasks

    settings = load_settings()
    if not settings.startup_tasks:
        return
    services = build_services(settings)
    try:
        for result in run_startup_tasks(services):
            server.log.info("start-up task %s: %s", result.name,
                            "ok" if result.ok else f"failed ({result.error})")
    finally:
        # Workers are forked from this process: they must not inherit its connections.
        release(services)


# ---- observability: JSON error log, Prometheus multiprocess mode ----------------------------
# gunicorn's own error log in the application's LOG_FORMAT.
logger_class = "web.structured_logging.GunicornLogger"
if os.environ.get("METRICS_ENABLED", "").strip().lower() in ("1", "true", "yes", "on"):
    # Every worker writes its metrics under this directory; /metrics adds them up. It must be
    # set before prometheus_client is imported, which happens in the workers after this file.
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="security-api-metrics-")
        os.environ["SECURITY_API_OWN_METRICS_DIR"] = os.environ["PROMETHEUS_MULTIPROC_DIR"]


def on_starting(server):
    """Empty the metrics directory: numbers of an earlier run must not be added to this one."""
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        for name in os.listdir(directory):
            if name.endswith(".db"):
                os.remove(os.path.join(directory, name))


def child_exit(server, worker):
    """Let the live-worker gauges forget a worker that has gone (counters keep its numbers)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)


def on_exit(server):
    """Remove the metrics directory this file made (one given by the operator stays)."""
    own = os.environ.get("SECURITY_API_OWN_METRICS_DIR")
    if own:
        import shutil

        shutil.rmtree(own, ignore_errors=True)


# gunicorn's own refusals (414, 431, 400, 501) in the JSON envelope with our headers and a
# request id, and a Server header naming the product, never a version (gunicorn's default is
# "gunicorn"): the only monkeypatches, see web/gunicorn_refusals.py.
gunicorn_refusals.install()
