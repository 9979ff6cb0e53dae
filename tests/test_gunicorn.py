"""Shared state holds across gunicorn workers: lockout, TOTP replay, token deny-list."""
import json
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

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
