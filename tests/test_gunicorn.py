"""Shared state holds across gunicorn workers: lockout, TOTP replay, logout."""
import json
import re
import socket
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

from flask_api_functions import JSON_CSP, SECURITY_HEADERS
from tests.servers import basic_header, call, start_gunicorn


@pytest.fixture
def server(app, database_url, tmp_path):
    """Serve the test database with gunicorn and 2 workers; log which worker answered what."""
    with start_gunicorn(database_url, log_dir=tmp_path, workers=2) as running:
        yield running


def _until_two_workers(server, call_once, *, minimum=8, maximum=80):
    """Repeat a call until two different workers have answered it; return every status."""
    statuses, ids = [], set()
    for attempt in range(maximum):
        status, _body, request_id = call_once()
        statuses.append(status)
        ids.add(request_id)
        if attempt + 1 >= minimum and len(server.workers_of(ids)) >= 2:
            return statuses
    pytest.fail("only one gunicorn worker ever answered")


def test_lockout_holds_across_workers(server, make_user):
    user = make_user()
    wrong = basic_header(user.username, "wrong-password-here")
    first = [call(server.base, "POST", "/v1/login", headers=wrong, body={"totp": "000000"})[0]
             for _ in range(5)]
    assert first == [401] * 5
    statuses = _until_two_workers(server, lambda: call(
        server.base, "POST", "/v1/login", headers=wrong, body={"totp": "000000"}))
    assert set(statuses) == {429}


def _worker_of(server, request_id: str) -> str | None:
    pids = server.workers_of({request_id})
    return pids.pop() if pids else None


def test_totp_replay_is_refused_by_another_worker(server, make_user):
    crossed = False
    for i in range(20):
        user = make_user(f"user{i}")
        headers = basic_header(user.username, user.password)
        code = user.next_code()
        status, _, first_id = call(server.base, "POST", "/v1/login", headers=headers,
                                   body={"totp": code})
        assert status == 200
        # Sent among concurrent pings: both workers are busy, so either may take the replay
        # (one by one, an idle machine may hand every request to the same worker).
        with ThreadPoolExecutor(max_workers=7) as pool:
            pings = [pool.submit(call, server.base, "GET", "/v1/ping") for _ in range(6)]
            status, _, replay_id = call(server.base, "POST", "/v1/login", headers=headers,
                                        body={"totp": code})
            assert all(ping.result()[0] == 200 for ping in pings)
        assert status == 401
        if _worker_of(server, first_id) != _worker_of(server, replay_id):
            crossed = True
            break
    assert crossed, "no replay ever reached a second worker"


def test_logout_holds_across_workers(server, make_user):
    user = make_user()
    headers = basic_header(user.username, user.password)
    status, tokens, _ = call(server.base, "POST", "/v1/login", headers=headers,
                             body={"totp": user.next_code()})
    assert status == 200
    bearer = {"Authorization": "Bearer " + tokens["token"]}
    assert call(server.base, "POST", "/v1/logout", headers=bearer)[0] == 200
    after = _until_two_workers(server, lambda: call(
        server.base, "GET", "/v1/profile", headers=bearer))
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
    base = server.base
    status, headers, body = _raw(base, "/v1/ping?q=" + "x" * 5000)
    assert status == 414
    assert headers["Content-Type"] == "application/json"
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert json.loads(body) == {"message": "URI Too Long.", "error": "uri_too_long"}
    status, headers, body = _raw(base, "/v1/ping", headers={"X-Big": "x" * 9000})
    assert status == 431
    assert json.loads(body)["error"] == "request_header_fields_too_large"


# ---- gunicorn's refusals: X-Request-ID, security headers, 501 for a Transfer-Encoding --------
def _raw_socket(base: str, request: bytes) -> tuple[int, str, dict, bytes]:
    """Send bytes as they are; return (status, reason, headers, body) of the answer."""
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    _version, status, reason = status_line.split(" ", 2)
    headers = {name.lower(): value for name, value in (line.split(": ", 1) for line in lines)}
    return int(status), reason, headers, body


REFUSED = [
    (b"GET /v1/ping?q=" + b"x" * 5000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
     414, "URI Too Long", "uri_too_long"),
    (b"GET /v1/ping HTTP/1.1\r\nHost: x\r\nX-Big: " + b"x" * 9000 + b"\r\n\r\n",
     431, "Request Header Fields Too Large", "request_header_fields_too_large"),
    (b"GARBAGE\r\n\r\n", 400, "Bad Request", "bad_request"),
    (b"POST /v1/login HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: br, chunked\r\n\r\n0\r\n\r\n",
     501, "Not Implemented", "not_implemented"),
]


def test_gunicorn_refusals_carry_a_request_id_and_the_security_headers(server):
    ids = set()
    for request, status, reason, code in REFUSED:
        got_status, got_reason, headers, body = _raw_socket(server.base, request)
        assert (got_status, got_reason) == (status, reason), request[:40]
        assert json.loads(body) == {"message": reason + ".", "error": code}
        assert headers["content-type"] == "application/json"
        assert re.fullmatch(r"[0-9a-f]{32}", headers["x-request-id"])
        ids.add(headers["x-request-id"])
        for name, value in {**SECURITY_HEADERS, "Content-Security-Policy": JSON_CSP}.items():
            assert headers[name.lower()] == value, name
        assert headers["server"] == "security-api"
    assert len(ids) == len(REFUSED)  # a fresh id each time
    # The id is logged, so a refused request can be found in gunicorn's log.
    assert all(request_id in server.error_log.read_text() for request_id in ids)


# ---- gunicorn's control socket: off, or a path of the service's own ---------------------------
def test_two_gunicorns_on_one_host_leave_each_others_control_socket_alone(app, database_url,
                                                                          tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    shared = {"HOME": str(home), "XDG_RUNTIME_DIR": ""}
    own = tmp_path / "own.ctl"
    with start_gunicorn(database_url, log_dir=tmp_path, workers=1, name="default",
                        env=shared) as first:
        with start_gunicorn(database_url, log_dir=tmp_path, workers=1, name="own",
                            env={**shared, "GUNICORN_CONTROL_SOCKET": str(own)}) as second:
            assert own.is_socket()
            with start_gunicorn(database_url, log_dir=tmp_path, workers=1, name="third",
                                env=shared):
                pass  # started and stopped: must not take or remove anyone's socket
            assert own.is_socket()
            assert call(second.base, "GET", "/v1/ping")[0] == 200
        assert call(first.base, "GET", "/v1/ping")[0] == 200
    # By default no control socket anywhere in the user's home (gunicorn's shared default).
    assert not any(path.is_socket() for path in home.rglob("*"))
    assert not (home / ".gunicorn").exists()
