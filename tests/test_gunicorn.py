"""Shared state holds across gunicorn workers: lockout, TOTP replay, token deny-list."""
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
from pathlib import Path

import pytest

from tests.conftest import TEST_DATA_KEY, TEST_REDIS_URL

ROOT = Path(__file__).resolve().parent.parent
GUNICORN = Path(sys.executable).parent / "gunicorn"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def server(app, database_url, tmp_path):
    """Serve the test database with gunicorn and 2 workers; log which worker answered what."""
    port = _free_port()
    access_log = tmp_path / "access.log"
    env = {**os.environ, "SECURITY_API_ENV": "testing", "DATABASE_URL": database_url,
           "JWT_SECRET": "gunicorn-test-" + uuid.uuid4().hex + uuid.uuid4().hex,
           "DATA_ENCRYPTION_KEYS": TEST_DATA_KEY,
           "BCRYPT_ROUNDS": "4", "AUTH_RATE_LIMIT": "100000", "WEB_CONCURRENCY": "2",
           "GUNICORN_BIND": f"127.0.0.1:{port}", "GUNICORN_ACCESSLOG": str(access_log),
           "GUNICORN_CMD_ARGS": "--access-logformat='%({x-request-id}i)s %(p)s %(s)s'"}
    if TEST_REDIS_URL:
        env.update(REDIS_URL=TEST_REDIS_URL, REDIS_PREFIX=f"test:{uuid.uuid4().hex}:")
    process = subprocess.Popen([str(GUNICORN), "-c", "gunicorn.conf.py", "flask_api:application"],
                               cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 30
    while True:
        try:
            urllib.request.urlopen(base + "/v1/ping", timeout=1).close()  # noqa: S310
            break
        except OSError:
            if time.time() > deadline or process.poll() is not None:
                process.kill()
                pytest.fail("gunicorn did not start: " + process.stderr.read().decode()[-2000:])
            time.sleep(0.2)
    yield base, access_log
    process.terminate()
    process.wait(timeout=20)
    process.stderr.close()


def _call(base, method, path, *, headers=None, body=None):
    request_id = uuid.uuid4().hex
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(base + path, data=data, method=method, headers={
        "Content-Type": "application/json", "X-Request-ID": request_id, **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            return response.status, json.loads(response.read()), request_id
    except urllib.error.HTTPError as error:
        with error:
            return error.code, json.loads(error.read()), request_id


def _workers(access_log: Path, request_ids: set[str]) -> set[str]:
    time.sleep(0.2)
    pids = set()
    for line in access_log.read_text().splitlines():
        parts = line.strip("'").split()
        if len(parts) >= 2 and parts[0] in request_ids:
            pids.add(parts[1])
    return pids


def _until_two_workers(base, access_log, call, *, minimum=8, maximum=80):
    """Repeat a call until two different workers have answered it; return every status."""
    statuses, ids = [], set()
    for attempt in range(maximum):
        status, _body, request_id = call()
        statuses.append(status)
        ids.add(request_id)
        if attempt + 1 >= minimum and len(_workers(access_log, ids)) >= 2:
            return statuses
    pytest.fail("only one gunicorn worker ever answered")


def _basic(username, password):
    return {"Authorization": "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()}


def test_lockout_holds_across_workers(server, make_user):
    base, access_log = server
    user = make_user()
    wrong = _basic(user.username, "wrong-password-here")
    first = [_call(base, "POST", "/v1/login", headers=wrong, body={"totp": "000000"})[0]
             for _ in range(5)]
    assert first == [401] * 5
    statuses = _until_two_workers(base, access_log, lambda: _call(
        base, "POST", "/v1/login", headers=wrong, body={"totp": "000000"}))
    assert set(statuses) == {429}


def _worker_of(access_log: Path, request_id: str) -> str | None:
    pids = _workers(access_log, {request_id})
    return pids.pop() if pids else None


def test_totp_replay_is_refused_by_another_worker(server, make_user):
    base, access_log = server
    crossed = False
    for i in range(20):
        user = make_user(f"user{i}")
        headers = _basic(user.username, user.password)
        code = user.next_code()
        status, _, first_id = _call(base, "POST", "/v1/login", headers=headers, body={"totp": code})
        assert status == 200
        status, _, replay_id = _call(base, "POST", "/v1/login", headers=headers, body={"totp": code})
        assert status == 401
        if _worker_of(access_log, first_id) != _worker_of(access_log, replay_id):
            crossed = True
            break
    assert crossed, "no replay ever reached a second worker"


def test_logout_holds_across_workers(server, make_user):
    base, access_log = server
    user = make_user()
    headers = _basic(user.username, user.password)
    status, tokens, _ = _call(base, "POST", "/v1/login", headers=headers,
                              body={"totp": user.next_code()})
    assert status == 200
    bearer = {"Authorization": "Bearer " + tokens["token"]}
    assert _call(base, "POST", "/v1/logout", headers=bearer)[0] == 200
    after = _until_two_workers(base, access_log, lambda: _call(
        base, "GET", "/v1/profile", headers=bearer))
    assert set(after) == {401}


# ---- schemathesis: GET /v1/admin/users?q=<6 KB> answered gunicorn's HTML 414 -----------------
def _raw(base, path, headers=None):
    request = urllib.request.Request(base + path, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.headers, error.read()


def test_gunicorn_refusals_are_json_in_the_envelope(server):
    base, _log = server
    status, headers, body = _raw(base, "/v1/ping?q=" + "x" * 5000)
    assert status == 414
    assert headers["Content-Type"] == "application/json"
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert json.loads(body) == {"message": "URI Too Long.", "error": "uri_too_long"}
    status, headers, body = _raw(base, "/v1/ping", headers={"X-Big": "x" * 9000})
    assert status == 431
    assert json.loads(body)["error"] == "request_header_fields_too_large"
