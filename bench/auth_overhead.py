"""Measure what authentication costs: /v1/profile against /v1/ping, and logins against bcrypt.

One run sets up a throw-away database (or uses DATABASE_URL / REDIS_URL), starts gunicorn on a
free local port, loads it with wrk (or a multi-process Python client when wrk is missing) and
prints ratios. It never runs as a test: timings depend on the machine. See bench/README.md.

    .venv/bin/python bench/auth_overhead.py [--duration 10] [--connections 16] [--workers N]
                                            [--bcrypt-rounds 12]
"""
from __future__ import annotations

import argparse
import base64
import http.client
import json
import multiprocessing
import os
import re
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / ".venv" / "bin"
PROFILE_TARGET = 0.8
BUSY_LOAD_AVERAGE = 0.5  # 1-minute load before we start anything: someone else uses the cores
STARTUP_SECONDS = 90
LOGIN_TIMEOUT_SECONDS = 30
BCRYPT_SAMPLES = 5


# ---- settings --------------------------------------------------------------------------------
def cpu_cores() -> int:
    """Cores this process may run on (what gunicorn's workers share)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Read the command line."""
    cores = cpu_cores()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10,
                        help="seconds per load run (default 10)")
    parser.add_argument("--connections", type=int, default=16,
                        help="concurrent connections of the load client (default 16)")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads (default 2)")
    parser.add_argument("--workers", type=int, default=cores * 2 + 1,
                        help=f"gunicorn workers (default cores*2+1 = {cores * 2 + 1})")
    parser.add_argument("--bcrypt-rounds", type=int, default=12,
                        help="bcrypt cost of the service (default 12, the production cost)")
    parser.add_argument("--rounds", type=int, default=2,
                        help="ping/profile pairs, alternated so drift hits both (default 2)")
    parser.add_argument("--warmup", type=int, default=2,
                        help="seconds of unmeasured load per endpoint first (default 2, 0 = none)")
    parser.add_argument("--client", choices=("auto", "wrk", "python"), default="auto",
                        help="load client: wrk when installed (auto), or force one")
    args = parser.parse_args(argv)
    if min(args.duration, args.connections, args.threads, args.workers, args.rounds) < 1:
        parser.error("--duration, --connections, --threads, --workers and --rounds must be >= 1")
    return args


def load_average_note() -> str:
    """Say how busy the machine already is: other processes on the cores skew every figure."""
    if not hasattr(os, "getloadavg"):
        return "machine load: unknown"
    busy = os.getloadavg()[0]
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


def service_environment(workdir: Path, *, bcrypt_rounds: int, workers: int, port: int) -> dict:
    """Environment for the CLI and gunicorn: random secret, testing mode, no throttling."""
    env = dict(os.environ)
    if not env.get("DATABASE_URL"):
        env["DATABASE_URL"] = f"sqlite:///{workdir / 'bench.sqlite3'}"
    if env.get("REDIS_URL") and not env.get("REDIS_PREFIX"):
        env["REDIS_PREFIX"] = f"bench:{secrets.token_hex(4)}:"  # keep clear of a live service
    env.update({
        "JWT_SECRET": secrets.token_urlsafe(48),
        "SECURITY_API_ENV": "testing",
        "AUTH_RATE_LIMIT": "1000000",
        "BCRYPT_ROUNDS": str(bcrypt_rounds),
        "LOG_LEVEL": "WARNING",
        "GUNICORN_BIND": f"127.0.0.1:{port}",
        "WEB_CONCURRENCY": str(workers),
        "GUNICORN_ACCESSLOG": os.devnull,
        "GUNICORN_LOGLEVEL": "warning",
    })
    return env


# ---- service ---------------------------------------------------------------------------------
def free_port() -> int:
    """Ask the kernel for a free port on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def flask_cli(env: dict, *args: str, stdin: str | None = None) -> None:
    """Run `flask --app flask_api <args>`; stop with its output when it fails."""
    command = [str(BIN / "flask"), "--app", "flask_api", *args]
    done = subprocess.run(command, cwd=ROOT, env=env, input=stdin, text=True,
                          capture_output=True, check=False)
    if done.returncode != 0:
        sys.exit(f"{' '.join(command[3:])} failed:\n{done.stdout}{done.stderr}")


def prepare_database(env: dict, *, username: str, secret: str) -> None:
    """Create the schema, a role and the service account the benchmark signs in with."""
    flask_cli(env, "init-db")
    flask_cli(env, "create-role", "developer", "--subrole", "backend")
    flask_cli(env, "create-user", username, "--role", "developer", "--subrole", "backend",
              "--service", "--password-stdin", stdin=secret + "\n")


def start_gunicorn(env: dict, log_path: Path) -> subprocess.Popen:
    """Start gunicorn with the project's config; its output goes to a log file."""
    with open(log_path, "wb") as log:
        return subprocess.Popen(
            [str(BIN / "gunicorn"), "-c", "gunicorn.conf.py", "flask_api:application"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)


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


def basic_header(username: str, secret: str) -> str:
    """Return the value of a Basic Authorization header."""
    return "Basic " + base64.b64encode(f"{username}:{secret}".encode()).decode("ascii")


def split_url(base_url: str) -> tuple[str, int]:
    """Return host and port of `http://host:port`."""
    host, port = base_url.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


def call(base_url: str, path: str, *, method: str = "GET", headers: dict | None = None,
         body: bytes | None = None, timeout: int = LOGIN_TIMEOUT_SECONDS) -> tuple[int, dict]:
    """Make one request; return the status and the decoded JSON body."""
    connection = http.client.HTTPConnection(*split_url(base_url), timeout=timeout)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, json.loads(response.read() or b"{}")
    finally:
        connection.close()


def log_in(base_url: str, authorization: str) -> str:
    """Sign in once as the service account and return the access token."""
    status, payload = call(base_url, "/v1/login", method="POST", body=b"{}",
                           headers={"Authorization": authorization,
                                    "Content-Type": "application/json"})
    if status != 200:
        sys.exit(f"login failed with {status}: {payload}")
    return payload["token"]


def check_profile(base_url: str, token: str) -> None:
    """Make sure the token works before loading /v1/profile with it."""
    status, payload = call(base_url, "/v1/profile", headers={"Authorization": f"Bearer {token}"})
    if status != 200:
        sys.exit(f"GET /v1/profile answered {status}: {payload}")


# ---- load clients ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Load:
    """What one load run sends."""

    path: str
    method: str = "GET"
    headers: tuple[tuple[str, str], ...] = ()
    body: str = ""


@dataclass(frozen=True)
class LoadResult:
    """What one load run measured."""

    requests: int
    seconds: float
    not_ok: int
    errors: int

    @property
    def per_second(self) -> float:
        """Completed requests per second (every status counted, as wrk does)."""
        return self.requests / self.seconds if self.seconds else 0.0


@dataclass(frozen=True)
class Runner:
    """A load client with the settings shared by every run."""

    client: str
    base_url: str
    workdir: Path
    threads: int
    connections: int

    def run(self, load: Load, seconds: int, *, timeout: int = 10) -> LoadResult:
        """Load one endpoint for `seconds` and return what was measured."""
        if self.client == "wrk":
            return run_wrk(self, load, seconds, timeout)
        return run_python(self, load, seconds, timeout)


def wrk_script(workdir: Path, load: Load) -> Path:
    """Write a Lua script that sets the method, the body and the headers of every request."""
    lines = [f"wrk.method = {json.dumps(load.method)}", f"wrk.body = {json.dumps(load.body)}"]
    lines += [f"wrk.headers[{json.dumps(name)}] = {json.dumps(value)}" for name, value in load.headers]
    path = workdir / f"load-{secrets.token_hex(4)}.lua"
    path.write_text("\n".join(lines) + "\n")
    return path


def parse_wrk(output: str) -> LoadResult:
    """Read requests, duration, non-2xx responses and socket errors from wrk's report."""
    total = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)\b", output)
    if total is None:
        sys.exit(f"could not read wrk's report:\n{output}")
    scale = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}[total.group(3)]
    not_ok = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    return LoadResult(requests=int(total.group(1)), seconds=float(total.group(2)) * scale,
                      not_ok=int(not_ok.group(1)) if not_ok else 0,
                      errors=sum(int(n) for n in errors.groups()) if errors else 0)


def run_wrk(runner: Runner, load: Load, seconds: int, timeout: int) -> LoadResult:
    """Load with wrk: `wrk -tT -cC -dDs --timeout Xs -s script.lua URL`."""
    script = wrk_script(runner.workdir, load)
    command = ["wrk", f"-t{min(runner.threads, runner.connections)}", f"-c{runner.connections}",
               f"-d{seconds}s", f"--timeout={timeout}s", "-s", str(script),
               runner.base_url + load.path]
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


def run_python(runner: Runner, load: Load, seconds: int, timeout: int) -> LoadResult:
    """Load with one Python process per connection (slower than wrk: compare ratios only)."""
    host, port = split_url(runner.base_url)
    start_at = time.monotonic() + 1.0  # every process is up before the clock starts
    jobs = [(host, port, load, start_at, start_at + seconds, timeout)] * runner.connections
    with multiprocessing.get_context("fork").Pool(runner.connections) as pool:
        counts = pool.starmap(_python_connection, jobs)
    done, not_ok, errors = (sum(column) for column in zip(*counts, strict=True))
    return LoadResult(requests=done, seconds=float(seconds), not_ok=not_ok, errors=errors)


# ---- measurements ----------------------------------------------------------------------------
def describe(name: str, result: LoadResult) -> str:
    """One line per run; flags answers that were not 2xx/3xx and socket errors."""
    line = f"  {name:<8} {result.per_second:9.1f} req/s  ({result.requests} in {result.seconds:.1f} s)"
    if result.not_ok or result.errors:
        line += f"  WARNING: {result.not_ok} non-2xx/3xx, {result.errors} socket errors"
    return line


def mean_rate(results: list[LoadResult]) -> float:
    """Requests per second over every run together."""
    return sum(r.requests for r in results) / sum(r.seconds for r in results)


def measure_profile_overhead(runner: Runner, token: str, *, seconds: int, rounds: int,
                             warmup: int) -> tuple[float, float]:
    """Alternate ping and profile loads; return (ping req/s, profile req/s)."""
    ping = Load("/v1/ping")
    profile = Load("/v1/profile", headers=(("Authorization", f"Bearer {token}"),))
    if warmup:
        runner.run(ping, warmup)
        runner.run(profile, warmup)
    pings, profiles = [], []
    for _ in range(rounds):
        pings.append(runner.run(ping, seconds))
        print(describe("ping", pings[-1]), flush=True)
        profiles.append(runner.run(profile, seconds))
        print(describe("profile", profiles[-1]), flush=True)
    return mean_rate(pings), mean_rate(profiles)


def bcrypt_check_seconds(rounds: int) -> float:
    """Median time of one password check at this cost, in this process (the service's code)."""
    sys.path.insert(0, str(ROOT))
    from security_api.passwords import hash_password, verify_password

    password = secrets.token_urlsafe(24)
    password_hash = hash_password(password, rounds=rounds)
    samples = []
    for _ in range(BCRYPT_SAMPLES):
        started = time.perf_counter()
        verify_password(password, password_hash)
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def measure_logins(runner: Runner, authorization: str, *, seconds: int) -> LoadResult:
    """Load POST /v1/login as the service account (Basic auth, body {}, no TOTP)."""
    login = Load("/v1/login", method="POST", body="{}",
                 headers=(("Authorization", authorization), ("Content-Type", "application/json")))
    result = runner.run(login, seconds, timeout=LOGIN_TIMEOUT_SECONDS)
    print(describe("login", result), flush=True)
    return result


# ---- main ------------------------------------------------------------------------------------
def print_summary(*, ping: float, profile: float, logins: LoadResult, check: float,
                  cores: int, settings: list[str]) -> None:
    """Print the ratios with the raw figures and the settings they were measured with."""
    ratio = profile / ping if ping else 0.0
    bound = cores / check
    verdict = "ok" if ratio >= PROFILE_TARGET else "BELOW TARGET"
    print("\n==== summary " + "=" * 60)
    print(f"profile/ping throughput ratio: {ratio:.2f} (target >= {PROFILE_TARGET}, {verdict})")
    print(f"  ping {ping:.1f} req/s, profile {profile:.1f} req/s")
    print(f"logins/s vs bcrypt bound: {logins.per_second:.1f} / {bound:.1f} = "
          f"{logins.per_second / bound:.2f}")
    print(f"  one bcrypt check {check * 1000:.1f} ms (median of {BCRYPT_SAMPLES}), "
          f"bound = {cores} cores / check")
    if logins.not_ok or logins.errors:
        print(f"  WARNING: {logins.not_ok} logins were not 2xx, {logins.errors} socket errors")
    for line in settings:
        print(line)


def main(argv: list[str] | None = None) -> None:
    """Set up, start gunicorn, measure, always stop gunicorn, print the summary."""
    args = parse_args(argv)
    cores = cpu_cores()
    client = choose_client(args.client)
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    username, secret = f"bench-bot-{secrets.token_hex(3)}", secrets.token_urlsafe(24)
    settings = [
        f"settings: {args.workers} gunicorn workers (sync), {cores} cores, bcrypt rounds "
        f"{args.bcrypt_rounds}, database: {database_kind(dict(os.environ))}",
        f"load: {client}" + (" (wrk not used: Python fallback, slower; compare ratios only)"
                             if client == "python" else f", {args.threads} threads")
        + f", {args.connections} connections, {args.duration} s per run, "
          f"{args.rounds} ping/profile pairs alternated, {args.warmup} s warm-up",
        load_average_note(),
    ]
    for line in settings:
        print(line, flush=True)
    with tempfile.TemporaryDirectory(prefix="auth-bench-") as tmp:
        workdir = Path(tmp)
        env = service_environment(workdir, bcrypt_rounds=args.bcrypt_rounds,
                                  workers=args.workers, port=port)
        prepare_database(env, username=username, secret=secret)
        log_path = workdir / "gunicorn.log"
        server = start_gunicorn(env, log_path)
        try:
            wait_until_up(base_url, server, log_path)
            authorization = basic_header(username, secret)
            token = log_in(base_url, authorization)
            check_profile(base_url, token)
            runner = Runner(client, base_url, workdir, args.threads, args.connections)
            ping, profile = measure_profile_overhead(runner, token, seconds=args.duration,
                                                     rounds=args.rounds, warmup=args.warmup)
            check = bcrypt_check_seconds(args.bcrypt_rounds)
            logins = measure_logins(runner, authorization, seconds=args.duration)
        finally:
            stop_gunicorn(server)
    print_summary(ping=ping, profile=profile, logins=logins, check=check, cores=cores,
                  settings=settings)


if __name__ == "__main__":
    main()
