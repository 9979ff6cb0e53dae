"""Shared benchmark plumbing: a throw-away service under gunicorn, the load clients, wrk parsing.

Every script in bench/ uses these helpers so each one sets up the service, loads it and reads
wrk's report the same way. Nothing here asserts timings: the scripts print them. See README.md.
"""
from __future__ import annotations

import base64
import contextlib
import http.client
import json
import multiprocessing
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / ".venv" / "bin"
BUSY_LOAD_AVERAGE = 0.5  # 1-minute load before we start anything: someone else uses the cores
STARTUP_SECONDS = 90
LONG_TIMEOUT_SECONDS = 30
UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


# ---- machine and settings --------------------------------------------------------------------
PRODUCTION_BCRYPT_ROUNDS = 12  # the least production accepts (config.py)


def cpu_cores() -> int:
    """Cores this process may run on (what gunicorn's workers share)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def load_average() -> float | None:
    """The 1-minute load average, or None where the OS does not say."""
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


def load_average_note() -> str:
    """Say how busy the machine already is: other processes on the cores skew every figure."""
    busy = load_average()
    if busy is None:
        return "machine load: unknown"
    note = f"machine load before the run: {busy:.2f} (1-minute average)"
    if busy > BUSY_LOAD_AVERAGE:
        note += " - WARNING: other processes compete for the cores; figures are noisy"
    return note


def choose_client(requested: str) -> str:
    """Return 'wrk' or 'python'; refuse a forced wrk that is not installed."""
    has_wrk = shutil.which("wrk") is not None
    if requested == "wrk" and not has_wrk:
        sys.exit("wrk is not installed (apt-get install -y wrk), or use --client python")
    return "wrk" if requested != "python" and has_wrk else "python"


def database_kind(environ: dict[str, str]) -> str:
    """Name the database and state store without printing any URL (it may hold a password)."""
    url = environ.get("DATABASE_URL", "")
    database = url.split(":", 1)[0] if url else "sqlite (temporary file)"
    store = "redis" if environ.get("REDIS_URL") else "database"
    return f"{database}, state store: {store}"


def free_port() -> int:
    """Ask the kernel for a free port on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def service_environment(workdir: Path, *, bcrypt_rounds: int, workers: int, port: int) -> dict:
    """Environment for the CLI and gunicorn: production mode, random secrets, no throttling.

    Production mode, as deployed (with cost 12 or more, which production requires): the
    testing mode checks every response body against its model, which production samples
    (README "Success bodies"), so a testing-mode figure is not the service's. A lower cost
    runs in testing mode.

    No lockout either: a sign-in reserves its place in the username's lockout count before
    bcrypt runs, so more than LOCKOUT_THRESHOLD (5) concurrent correct logins of the one
    benchmark account answered 429 `locked` (PostgreSQL + Redis) and counted as fast logins.
    """
    from cryptography.fernet import Fernet

    env = dict(os.environ)
    if not env.get("DATABASE_URL"):
        env["DATABASE_URL"] = f"sqlite:///{workdir / 'bench.sqlite3'}"
    if env.get("REDIS_URL") and not env.get("REDIS_PREFIX"):
        env["REDIS_PREFIX"] = f"bench:{secrets.token_hex(4)}:"  # keep clear of a live service
    env.update({
        "JWT_SECRET": secrets.token_urlsafe(48),
        "AUDIT_CHAIN_KEY": secrets.token_urlsafe(48),
        "DATA_ENCRYPTION_KEYS": Fernet.generate_key().decode("ascii"),
        "SECURITY_API_ENV": "production" if bcrypt_rounds >= PRODUCTION_BCRYPT_ROUNDS else "testing",
        "AUTH_RATE_LIMIT": "1000000",
        "LOCKOUT_THRESHOLD": "1000000",
        "BCRYPT_ROUNDS": str(bcrypt_rounds),
        "LOG_LEVEL": "WARNING",
        "GUNICORN_BIND": f"127.0.0.1:{port}",
        "WEB_CONCURRENCY": str(workers),
        "GUNICORN_ACCESSLOG": os.devnull,
        "GUNICORN_LOGLEVEL": "warning",
    })
    return env


@contextlib.contextmanager
def private_database(env: dict) -> Iterator[dict]:
    """On PostgreSQL, point DATABASE_URL at a new schema and drop it afterwards.

    The benchmark's users, requests and rules then never mix with anyone's data, and several
    runs (or a test suite) can share the server. SQLite files are private already.
    """
    url = env.get("DATABASE_URL", "")
    if not url.startswith("postgresql"):
        yield env
        return
    from sqlalchemy import create_engine, make_url, text

    schema = f"bench_{uuid.uuid4().hex[:12]}"
    admin = create_engine(url)
    with admin.begin() as connection:
        connection.execute(text(f"CREATE SCHEMA {schema}"))
    private = make_url(url).update_query_dict({"options": f"-csearch_path={schema}"})
    try:
        yield {**env, "DATABASE_URL": private.render_as_string(hide_password=False)}
    finally:
        with admin.begin() as connection:
            connection.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


@contextlib.contextmanager
def environment(env: dict) -> Iterator[None]:
    """Run in-process code (create_app reads os.environ) with the service's environment."""
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def build_app(env: dict):
    """Build the Flask app in this process on the benchmark's database and settings."""
    with environment(env):
        from flask_api import create_app

        return create_app()


# ---- service ---------------------------------------------------------------------------------
def flask_cli(env: dict, *args: str, stdin: str | None = None) -> None:
    """Run `flask --app flask_api <args>`; stop with its output when it fails."""
    command = [str(BIN / "flask"), "--app", "flask_api", *args]
    done = subprocess.run(command, cwd=ROOT, env=env, input=stdin, text=True,
                          capture_output=True, check=False)
    if done.returncode != 0:
        sys.exit(f"{' '.join(command[3:])} failed:\n{done.stdout}{done.stderr}")


def start_gunicorn(env: dict, log_path: Path, *, cpu: int | None = None) -> subprocess.Popen:
    """Start gunicorn with the project's config; its output goes to a log file.

    With `cpu`, the master and its workers run on that one core only (sched_setaffinity is
    inherited by the workers): an instance then has a core of its own, as a host would.
    """
    def pin() -> None:
        os.sched_setaffinity(0, {cpu})

    with open(log_path, "wb") as log:
        return subprocess.Popen(
            [str(BIN / "gunicorn"), "-c", "gunicorn.conf.py", "flask_api:application"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
            preexec_fn=pin if cpu is not None else None)


def wait_until_up(base_url: str, server: subprocess.Popen, log_path: Path) -> None:
    """Poll /v1/ping until it answers; stop when gunicorn dies or takes too long."""
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if server.poll() is not None:
            sys.exit(f"gunicorn exited with {server.returncode}:\n{log_path.read_text()[-3000:]}")
        try:
            if call(base_url, "/v1/ping", timeout=2)[0] == 200:
                return
        except (OSError, http.client.HTTPException, ValueError):
            pass  # not listening yet, or not answering JSON yet
        time.sleep(0.2)
    sys.exit(f"gunicorn did not answer /v1/ping within {STARTUP_SECONDS} s")


def stop_gunicorn(server: subprocess.Popen) -> None:
    """Ask the master to stop its workers; kill it if it does not."""
    if server.poll() is not None:
        return
    server.send_signal(signal.SIGTERM)
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


@dataclass(frozen=True)
class Service:
    """Running gunicorn instances (usually one) on one throw-away database."""

    base_urls: tuple[str, ...]
    env: dict
    workdir: Path

    @property
    def base_url(self) -> str:
        """The first instance: the only one unless `instances` asked for more."""
        return self.base_urls[0]


@contextlib.contextmanager
def running_service(*, workers: int, bcrypt_rounds: int, prepare=None,
                    instances: int = 1, pin_cpus: bool = False) -> Iterator[Service]:
    """Make a database, run `prepare(env)` on it, start gunicorn; always stop and clean up.

    With `instances` > 1, as many gunicorn masters of `workers` workers each share the
    database, the Redis prefix and the secrets, on ports of their own: what two instances of
    a deployment behind a load balancer are. With `pin_cpus`, instance i runs on core
    i mod cores only (the database and the load client still use every core).
    """
    ports: list[int] = []
    while len(ports) < instances:  # the kernel may hand the same free port out twice
        port = free_port()
        if port not in ports:
            ports.append(port)
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp, contextlib.ExitStack() as servers:
        workdir = Path(tmp)
        base_env = service_environment(workdir, bcrypt_rounds=bcrypt_rounds, workers=workers,
                                       port=ports[0])
        with private_database(base_env) as env:
            flask_cli(env, "init-db")
            if prepare is not None:
                prepare(env)
            started = []
            try:
                for number, port in enumerate(ports):
                    log_path = workdir / f"gunicorn-{number}.log"
                    server = start_gunicorn({**env, "GUNICORN_BIND": f"127.0.0.1:{port}"},
                                            log_path,
                                            cpu=number % cpu_cores() if pin_cpus else None)
                    servers.callback(stop_gunicorn, server)
                    started.append((f"http://127.0.0.1:{port}", server, log_path))
                for base_url, server, log_path in started:
                    wait_until_up(base_url, server, log_path)
                yield Service(tuple(url for url, _, _ in started), env, workdir)
            finally:
                servers.close()


# ---- one request -----------------------------------------------------------------------------
def basic_header(username: str, secret: str) -> str:
    """Return the value of a Basic Authorization header."""
    return "Basic " + base64.b64encode(f"{username}:{secret}".encode()).decode("ascii")


def split_url(base_url: str) -> tuple[str, int]:
    """Return host and port of `http://host:port`."""
    host, port = base_url.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


def call(base_url: str, path: str, *, method: str = "GET", headers: dict | None = None,
         body: bytes | None = None, timeout: int = LONG_TIMEOUT_SECONDS) -> tuple[int, dict]:
    """Make one request; return the status and the decoded JSON body."""
    connection = http.client.HTTPConnection(*split_url(base_url), timeout=timeout)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, json.loads(response.read() or b"{}")
    finally:
        connection.close()


def settle(base_url: str, *, quick: float = 0.1, limit: float = 60.0) -> None:
    """Wait until the service has worked off the previous run's queue (a quick ping).

    wrk stops sending when its time is up, but the workers still answer what was queued: a
    slow endpoint's backlog would otherwise eat into the next run.
    """
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        started = time.monotonic()
        with contextlib.suppress(OSError, http.client.HTTPException, ValueError):
            call(base_url, "/v1/ping", timeout=int(limit))
        if time.monotonic() - started < quick:
            return
        time.sleep(0.2)


def expect(status_and_body: tuple[int, dict], wanted: int, what: str) -> dict:
    """Stop the benchmark when a set-up request does not answer as expected."""
    status, body = status_and_body
    if status != wanted:
        sys.exit(f"{what} answered {status}: {body}")
    return body


# ---- load clients ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Load:
    """What one load run sends: the same request every time (the write load is writes.py)."""

    path: str
    method: str = "GET"
    headers: tuple[tuple[str, str], ...] = ()
    body: str = ""


@dataclass(frozen=True)
class LoadResult:
    """What one load run measured; latencies in seconds (wrk --latency only)."""

    requests: int
    seconds: float
    not_ok: int
    errors: int
    latency: dict[int, float] = field(default_factory=dict)

    @property
    def per_second(self) -> float:
        """Completed requests per second (every status counted, as wrk does)."""
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def ok_per_second(self) -> float:
        """2xx/3xx answers per second: what the figures use, so refusals never look fast."""
        return (self.requests - self.not_ok) / self.seconds if self.seconds else 0.0


@dataclass(frozen=True)
class Runner:
    """A load client with the settings shared by every run."""

    client: str
    base_url: str
    workdir: Path
    threads: int
    connections: int

    def run(self, load: Load, seconds: int, *, timeout: int = 10,
            connections: int | None = None) -> LoadResult:
        """Load one endpoint for `seconds` and return what was measured."""
        connections = connections or self.connections
        settle(self.base_url)
        if self.client == "wrk":
            return run_wrk(self, load, seconds, timeout, connections)
        return run_python(self, load, seconds, timeout, connections)


def wrk_script(workdir: Path, load: Load) -> Path:
    """Write a Lua script: fixed method, body and headers."""
    lines = [f"wrk.method = {json.dumps(load.method)}", f"wrk.body = {json.dumps(load.body)}"]
    lines += [f"wrk.headers[{json.dumps(name)}] = {json.dumps(value)}" for name, value in load.headers]
    path = workdir / f"load-{secrets.token_hex(4)}.lua"
    path.write_text("\n".join(lines) + "\n")
    return path


def _seconds(number: str, unit: str) -> float:
    return float(number) * UNITS[unit]


def parse_wrk(output: str) -> LoadResult:
    """Read requests, duration, non-2xx, socket errors and latency percentiles from wrk."""
    total = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)\b", output)
    if total is None:
        sys.exit(f"could not read wrk's report:\n{output}")
    not_ok = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    latency = {int(p): _seconds(n, u) for p, n, u in
               re.findall(r"^\s+(50|75|90|99)%\s+([\d.]+)(us|ms|s|m)\s*$", output, re.MULTILINE)}
    return LoadResult(requests=int(total.group(1)), seconds=_seconds(total.group(2), total.group(3)),
                      not_ok=int(not_ok.group(1)) if not_ok else 0,
                      errors=sum(int(n) for n in errors.groups()) if errors else 0,
                      latency=latency)


def run_wrk(runner: Runner, load: Load, seconds: int, timeout: int, connections: int) -> LoadResult:
    """Load with wrk: `wrk -tT -cC -dDs --latency --timeout Xs -s script.lua URL`."""
    threads = min(runner.threads, connections)
    script = wrk_script(runner.workdir, load)
    command = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency",
               f"--timeout={timeout}s", "-s", str(script), runner.base_url + load.path]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    script.unlink()
    if done.returncode != 0:
        sys.exit(f"wrk failed:\n{done.stdout}{done.stderr}")
    return parse_wrk(done.stdout)


def _python_connection(host: str, port: int, load: Load, start_at: float, stop_at: float,
                       timeout: int) -> tuple[int, int, int]:
    """One client process: one connection, requests back to back inside [start_at, stop_at)."""
    connection = http.client.HTTPConnection(host, port, timeout=timeout)
    headers = dict(load.headers)
    body = load.body.encode() if load.method != "GET" else None
    done = not_ok = errors = 0
    time.sleep(max(0.0, start_at - time.monotonic()))
    while time.monotonic() < stop_at:
        try:
            connection.request(load.method, load.path, body=body, headers=headers)
            response = connection.getresponse()
            response.read()  # a closed connection reopens on the next request
        except (OSError, http.client.HTTPException):
            errors += 1
            connection.close()
            continue
        if time.monotonic() <= stop_at:
            done += 1
            not_ok += not 200 <= response.status < 400
    connection.close()
    return done, not_ok, errors


def run_python(runner: Runner, load: Load, seconds: int, timeout: int,
               connections: int) -> LoadResult:
    """Load with one Python process per connection (slower than wrk: compare ratios only)."""
    host, port = split_url(runner.base_url)
    start_at = time.monotonic() + 1.0  # every process is up before the clock starts
    jobs = [(host, port, load, start_at, start_at + seconds, timeout)] * connections
    with multiprocessing.get_context("fork").Pool(connections) as pool:
        counts = pool.starmap(_python_connection, jobs)
    done, not_ok, errors = (sum(column) for column in zip(*counts, strict=True))
    return LoadResult(requests=done, seconds=float(seconds), not_ok=not_ok, errors=errors)


# ---- reporting -------------------------------------------------------------------------------
def describe(name: str, result: LoadResult) -> str:
    """One line per run; latencies when measured; flags non-2xx/3xx answers and socket errors."""
    line = f"  {name:<10} {result.per_second:9.1f} req/s  ({result.requests} in {result.seconds:.1f} s)"
    if result.latency:
        line += "  " + ", ".join(f"p{p} {result.latency[p] * 1000:.1f} ms"
                                 for p in (50, 99) if p in result.latency)
    if result.not_ok or result.errors:
        line += f"  WARNING: {result.not_ok} non-2xx/3xx, {result.errors} socket errors"
    return line


def mean_rate(results: list[LoadResult]) -> float:
    """2xx/3xx answers per second over every run together (refusals are not throughput)."""
    return sum(r.requests - r.not_ok for r in results) / sum(r.seconds for r in results)


def write_json(path: str | None, data: dict) -> None:
    """Write a script's figures for run_all.py (no file when no path was given)."""
    if path:
        Path(path).write_text(json.dumps(data, indent=2) + "\n")


# ---- seeding, in process ---------------------------------------------------------------------
def person_username(prefix: str, number: int) -> str:
    """The username seed_people gives its `number`th person (the write load names pairs by it)."""
    return f"{prefix}-{number:05d}"


def seed_people(app, *, count: int, role: str, subrole: str, prefix: str = "bench-user",
                kind=None) -> list[str]:
    """Create `count` people (cheap bcrypt: nobody signs in with a password) with a session each.

    Returns their access tokens. People, not service accounts (unless `kind` says
    UserKind.SERVICE): only people may request.
    """
    from security_api import audit
    from security_api.accounts import users as accounts
    from security_api.accounts.sessions import start_session
    from security_api.clock import utcnow
    from security_api.enums import UserKind
    from security_api.models import Subrole

    services = app.extensions["security_api"]
    tokens = []
    with services.session_factory() as session:
        if session.get(Subrole, (role, subrole)) is None:
            accounts.create_role(session, name=role, subroles=[subrole], actor="bench",
                                 origin=audit.Origin(), now=utcnow())
        for number in range(count):
            user = accounts.create_user(
                session, username=person_username(prefix, number), role=role, subrole=subrole,
                email=None, kind=kind or UserKind.PERSON, password=None, bcrypt_rounds=4,
                actor="bench", origin=audit.Origin(), now=utcnow()).user
            tokens.append(start_session(session, services, user=user, now=utcnow()).access_token)
        session.commit()
    return tokens


def seed_auto_permissions(app, *, count: int, role: str, subrole: str,
                          prefix: str = "bench-perm") -> list[str]:
    """Create `count` permissions (provisioner none) that `role/subrole` gets at once (auto)."""
    from security_api import audit
    from security_api.access.catalog import ensure_permission, ensure_rule
    from security_api.clock import utcnow
    from security_api.enums import PolicyMode

    services = app.extensions["security_api"]
    keys = [f"{prefix}-{number:03d}" for number in range(count)]
    with services.session_factory() as session:
        for key in keys:
            ensure_permission(session, key=key, name=key, max_duration_minutes=60,
                              settings=services.settings, actor="bench", origin=audit.Origin(),
                              now=utcnow())
            ensure_rule(session, permission=key, role=role, subrole=subrole, mode=PolicyMode.AUTO,
                        actor="bench", origin=audit.Origin(), now=utcnow())
        session.commit()
    return keys


@contextlib.contextmanager
def in_process_service(prefix: str, *, bcrypt_rounds: int = PRODUCTION_BCRYPT_ROUNDS,
                       prepare=None) -> Iterator:
    """The service's app built in this process on a fresh database (or private PostgreSQL schema).

    For the in-process parts (no gunicorn, no network): the schema made by `flask init-db`,
    `prepare(env)` run first when given (CLI seeding), the app disposed of afterwards.
    """
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        base = service_environment(Path(tmp), bcrypt_rounds=bcrypt_rounds, workers=1, port=0)
        with private_database(base) as env:
            flask_cli(env, "init-db")
            if prepare is not None:
                prepare(env)
            app = build_app(env)
            try:
                yield app
            finally:
                dispose(app)


def dispose(app) -> None:
    """Close the in-process app's database connections."""
    app.extensions["security_api"].engine.dispose()
