"""Start the real service under gunicorn for tests that need real worker processes.

    with start_gunicorn(database_url, log_dir=tmp_path, workers=2) as server:
        status, body, request_id = call(server.base, "GET", "/v1/ping")
        server.worker_pids()          # live workers, read from /proc
        server.workers_of({request_id})   # which worker pid answered those requests

Each server logs every request as ``<X-Request-ID> <worker pid> <status>`` to
``server.access_log`` and gunicorn's own messages to ``server.error_log``. Two servers given
the same ``jwt_secret`` and ``redis_prefix`` behave as two instances of one deployment.
"""
from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import boto3
import pytest

from tests.conftest import TEST_AUDIT_KEY, TEST_DATA_KEY, TEST_REDIS_URL

ROOT = Path(__file__).resolve().parent.parent
GUNICORN = Path(sys.executable).parent / "gunicorn"
START_SECONDS = 30


class ServerError(RuntimeError):
    """gunicorn did not start (the message carries the end of its log)."""


@dataclass
class Gunicorn:
    """A running gunicorn: its base URL, master process and log files."""

    base: str
    process: subprocess.Popen
    access_log: Path
    error_log: Path

    def worker_pids(self) -> set[int]:
        """Return the pids of the master's live children (its workers)."""
        return children_of(self.process.pid)

    def workers_of(self, request_ids: set[str]) -> set[str]:
        """Return the pids (as text) of the workers that answered these request ids."""
        time.sleep(0.2)  # the access log is written after the answer
        pids = set()
        for line in self.access_log.read_text().splitlines():
            parts = line.strip("'").split()
            if len(parts) >= 2 and parts[0] in request_ids:
                pids.add(parts[1])
        return pids

    def log_tail(self, size: int = 3000) -> str:
        """Return the end of gunicorn's error log, for failure messages."""
        return self.error_log.read_text(errors="replace")[-size:]


def free_port() -> int:
    """Return a TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def children_of(pid: int) -> set[int]:
    """Return the pids whose parent is `pid`, read from /proc (Linux)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # the process ended meanwhile
        # "pid (comm) state ppid ...": comm may hold spaces, so split after its closing bracket.
        fields = stat[stat.rindex(")") + 2:].split()
        if fields[0] != "Z" and int(fields[1]) == pid:
            found.add(int(entry.name))
    return found


def server_env(database_url: str, port: int, *, workers: int = 2, jwt_secret: str | None = None,
               redis_url: str | None = TEST_REDIS_URL, redis_prefix: str | None = None,
               **extra: str) -> dict[str, str]:
    """The environment of a testing service on `database_url` bound to `port`; `extra` wins."""
    variables = {**os.environ, "SECURITY_API_ENV": "testing", "DATABASE_URL": database_url,
                 "JWT_SECRET": jwt_secret or "gunicorn-test-" + uuid.uuid4().hex + uuid.uuid4().hex,
                 "DATA_ENCRYPTION_KEYS": TEST_DATA_KEY, "AUDIT_CHAIN_KEY": TEST_AUDIT_KEY,
                 "BCRYPT_ROUNDS": "4",
                 "AUTH_RATE_LIMIT": "100000", "WEB_CONCURRENCY": str(workers),
                 "REAPER_INTERVAL_SECONDS": "0", "GUNICORN_BIND": f"127.0.0.1:{port}"}
    variables.pop("REDIS_URL", None)
    if redis_url:
        variables.update(REDIS_URL=redis_url,
                         REDIS_PREFIX=redis_prefix or f"test:{uuid.uuid4().hex}:")
    variables.update(extra)
    return variables


@contextmanager
def start_gunicorn(database_url: str, *, log_dir: Path, workers: int = 2,
                   jwt_secret: str | None = None, redis_url: str | None = TEST_REDIS_URL,
                   redis_prefix: str | None = None, env: dict[str, str] | None = None,
                   name: str = "gunicorn") -> Iterator[Gunicorn]:
    """Serve `database_url` with gunicorn until the block ends; wait until /v1/ping answers.

    `jwt_secret` and `redis_prefix` default to fresh random values (pass the same ones to
    several servers to make them one deployment); `env` overrides any variable last.
    """
    access_log, error_log = log_dir / f"{name}-access.log", log_dir / f"{name}-error.log"
    for attempt in range(3):  # another run on the machine may take the port first: pick again
        port = free_port()
        variables = server_env(database_url, port, workers=workers, jwt_secret=jwt_secret,
                               redis_url=redis_url, redis_prefix=redis_prefix,
                               GUNICORN_ACCESSLOG=str(access_log),
                               GUNICORN_CMD_ARGS="--access-logformat='%({x-request-id}i)s %(p)s %(s)s'",
                               **(env or {}))
        with open(error_log, "wb") as log_file:
            process = subprocess.Popen(
                [str(GUNICORN), "-c", "gunicorn.conf.py", "flask_api:application"], cwd=ROOT,
                env=variables, stdout=subprocess.DEVNULL, stderr=log_file)
        server = Gunicorn(f"http://127.0.0.1:{port}", process, access_log, error_log)
        try:
            _wait_until_up(server)
            break
        except ServerError:
            _stop(process)
            if attempt == 2 or "Connection in use" not in server.log_tail():
                raise
    try:
        yield server
    finally:
        _stop(process)


def _stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


def _wait_until_up(server: Gunicorn) -> None:
    """Wait until THIS gunicorn serves: it logged its bind and /v1/ping answers.

    The bind line matters because the port was free when picked, not when bound: another test
    run on the machine (CI runs two suites side by side) may have taken it meanwhile, and then
    its server, not ours, would answer the ping.
    """
    deadline = time.monotonic() + START_SECONDS
    listening = f"Listening at: {server.base}"
    while True:
        try:
            if listening in server.error_log.read_text(errors="replace"):
                urllib.request.urlopen(server.base + "/v1/ping", timeout=1).close()  # noqa: S310
                return
        except OSError:
            pass
        if time.monotonic() > deadline or server.process.poll() is not None:
            raise ServerError("gunicorn did not start: " + server.log_tail()) from None
        time.sleep(0.2)


def call(base: str, method: str, path: str, *, headers: dict | None = None,
         body: dict | None = None, timeout: float = 10) -> tuple[int, dict, str]:
    """Send one JSON request with a fresh X-Request-ID; return (status, json, request id)."""
    request_id = uuid.uuid4().hex
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(base + path, data=data, method=method, headers={
        "Content-Type": "application/json", "X-Request-ID": request_id, **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            return response.status, json.loads(response.read()), request_id
    except urllib.error.HTTPError as error:
        with error:
            return error.code, json.loads(error.read()), request_id


def basic_header(username: str, password: str) -> dict:
    """Return an Authorization header for Basic credentials."""
    raw = f"{username}:{password}".encode()
    return {"Authorization": "Basic " + base64.b64encode(raw).decode()}


# ---- moto's EC2 server -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def moto_endpoint():
    """moto in server mode: real HTTP calls, as boto3 makes them in production."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def aws_env(monkeypatch, tmp_path):
    """Fake credentials through the standard chain; no profile or metadata service is read."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    for name in ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_ENDPOINT_URL",
                 "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                 "AWS_WEB_IDENTITY_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def ec2(moto_endpoint, aws_env):
    return boto3.session.Session().client("ec2", region_name="eu-west-1", endpoint_url=moto_endpoint)


@pytest.fixture
def group_id(ec2):
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    return ec2.create_security_group(GroupName=f"test-{uuid.uuid4().hex[:8]}",
                                     Description="test", VpcId=vpc)["GroupId"]


def ingress(ec2, group_id: str) -> set[tuple]:
    """Return the group's rules as (protocol, from, to, cidr, description)."""
    [group] = ec2.describe_security_groups(GroupIds=[group_id])["SecurityGroups"]
    rules = set()
    for rule in group["IpPermissions"]:
        for entry in rule.get("IpRanges", []):
            rules.add((rule["IpProtocol"], rule["FromPort"], rule["ToPort"], entry["CidrIp"],
                       entry.get("Description")))
        for entry in rule.get("Ipv6Ranges", []):
            rules.add((rule["IpProtocol"], rule["FromPort"], rule["ToPort"], entry["CidrIpv6"],
                       entry.get("Description")))
    return rules
