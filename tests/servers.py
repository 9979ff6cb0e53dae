"""Real servers a test needs: the service under gunicorn, moto's EC2. Shared, never copied."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import boto3
import pytest

from tests.conftest import TEST_DATA_KEY, TEST_REDIS_URL

ROOT = Path(__file__).resolve().parent.parent
GUNICORN = Path(sys.executable).parent / "gunicorn"


def free_port() -> int:
    """Return a port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def server_env(database_url: str, port: int, **extra: str) -> dict:
    """The environment of a 2-worker testing service on the test database."""
    env = {**os.environ, "SECURITY_API_ENV": "testing", "DATABASE_URL": database_url,
           "JWT_SECRET": "gunicorn-test-" + uuid.uuid4().hex + uuid.uuid4().hex,
           "DATA_ENCRYPTION_KEYS": TEST_DATA_KEY,
           "BCRYPT_ROUNDS": "4", "AUTH_RATE_LIMIT": "100000", "WEB_CONCURRENCY": "2",
           "GUNICORN_BIND": f"127.0.0.1:{port}"}
    if TEST_REDIS_URL:
        env.update(REDIS_URL=TEST_REDIS_URL, REDIS_PREFIX=f"test:{uuid.uuid4().hex}:")
    env.update(extra)
    return env


@contextmanager
def running_gunicorn(env: dict, port: int, log_path: Path | None = None) -> Iterator[str]:
    """Run `gunicorn -c gunicorn.conf.py flask_api:application` until /v1/ping answers; yield its URL.

    Its stderr (the application's logs too) goes to a file: a pipe nobody reads would fill
    up after a few hundred requests and block the workers.
    """
    if log_path is None:
        log_path = Path(tempfile.mkstemp(prefix="gunicorn-", suffix=".log")[1])
    with log_path.open("wb") as stderr:
        process = subprocess.Popen(
            [str(GUNICORN), "-c", "gunicorn.conf.py", "flask_api:application"],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=stderr)
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 30
    try:
        while True:
            try:
                urllib.request.urlopen(base + "/v1/ping", timeout=1).close()  # noqa: S310
                break
            except OSError:
                if time.time() > deadline or process.poll() is not None:
                    pytest.fail("gunicorn did not start: " + log_path.read_text()[-2000:])
                time.sleep(0.2)
        yield base
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)


@contextmanager
def gunicorn_server(database_url: str, tmp_path: Path, **extra_env: str):
    """Yield (base URL, access log, error log) of a 2-worker gunicorn on the test database.

    gunicorn's access log names the worker (pid) that answered each request id.
    """
    port = free_port()
    access_log = tmp_path / "access.log"
    error_log = tmp_path / "gunicorn.log"
    env = server_env(database_url, port, GUNICORN_ACCESSLOG=str(access_log),
                     GUNICORN_CMD_ARGS="--access-logformat='%({x-request-id}i)s %(p)s %(s)s'",
                     **extra_env)
    with running_gunicorn(env, port, error_log) as base:
        yield base, access_log, error_log


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
