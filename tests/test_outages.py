"""Dependency outages: fast 503 with the envelope (never a hang, never a 500), recovery by itself.

A proxy of our own sits between the service and PostgreSQL (or Redis): REFUSE is a server
that is down, BLACKHOLE a peer that stopped answering on connections the pool already holds.
Durations are printed (run with -s to see them) and only bounded by a generous liveness limit.
"""
from __future__ import annotations

import threading
import time

import pytest
from sqlalchemy import func, make_url, select, text
from sqlalchemy.exc import OperationalError

from security_api import audit
from security_api.db import make_engine, without_query_timeout
from security_api.enums import AuditAction, PolicyMode
from security_api.models import AccessRequest, AuditEvent
from tests.conftest import TEST_DATABASE_URL, TEST_REDIS_URL, basic, bearer
from tests.netproxy import BLACKHOLE, FORWARD, REFUSE, proxy_to
from tests.receivers import serving
from tests.servers import basic_header, call, start_gunicorn
from tests.test_concurrency import add_webhook_permission

pytestmark = pytest.mark.skipif(
    not (TEST_DATABASE_URL or "").startswith("postgresql"),
    reason="outages are simulated with a TCP proxy in front of PostgreSQL")
LIVENESS_SECONDS = 60  # far above any sane answer time: only a hang goes past it
QUERY_TIMEOUT = 2


def timed(call):
    """Run call in a thread; fail if it hangs; return (result, seconds it took)."""
    box: dict = {}

    def run():
        started = time.monotonic()
        try:
            box["result"] = call()
        except BaseException as exc:  # noqa: BLE001 -- re-raised in the test's thread
            box["error"] = exc
        box["seconds"] = time.monotonic() - started

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(LIVENESS_SECONDS)
    assert not thread.is_alive(), f"no answer within {LIVENESS_SECONDS}s: the request hangs"
    if "error" in box:
        raise box["error"]
    return box["result"], box["seconds"]


def _through(url: str, port: int) -> str:
    return make_url(url).set(host="127.0.0.1", port=port).render_as_string(hide_password=False)


@pytest.fixture
def db_proxy(database_url):
    target = make_url(database_url)
    with proxy_to(target.host or "127.0.0.1", target.port or 5432) as proxy:
        yield proxy


@pytest.fixture
def proxied(make_app, app, db_proxy, database_url):
    """An app whose database connections all go through the proxy (tables emptied by `app`)."""
    return make_app(database_url=_through(database_url, db_proxy.port),
                    database_query_timeout_seconds=QUERY_TIMEOUT)


def _count(app, model, *where) -> int:
    with app.extensions["security_api"].session_factory() as session:
        return session.scalar(select(func.count()).select_from(model).where(*where))


def _calls(client, user, token):
    """The three calls that must fail closed: health, sign-in, an authenticated read."""
    return {
        "health": lambda: client.get("/v1/health"),
        "login": lambda: client.post("/v1/login", headers=basic(user.username, user.password),
                                     json={"totp": user.next_code()}),
        "requests": lambda: client.get("/v1/requests", headers=bearer(token)),
    }


@pytest.mark.parametrize("mode", [REFUSE, BLACKHOLE])
def test_database_outage_is_a_fast_503_and_heals_by_itself(app, proxied, db_proxy, make_user,
                                                           mode):
    alice = make_user("alice")
    client = proxied.test_client()
    token = client.post("/v1/login", headers=basic(alice.username, alice.password),
                        json={"totp": alice.next_code()}).json["token"]
    for _ in range(3):  # fill the pool with established connections, the nasty case
        assert client.get("/v1/requests", headers=bearer(token)).status_code == 200

    db_proxy.mode = mode
    for name, one in _calls(client, alice, token).items():
        response, seconds = timed(one)
        print(f"\n[outage] database {mode:9s} {name:8s} -> {response.status_code} in {seconds:.2f}s")
        assert response.status_code == 503, response.json
        if name == "health":
            assert response.json["checks"]["database"] == "down"
        else:
            assert response.json["error"] == "service_unavailable"

    db_proxy.mode = FORWARD
    response, seconds = timed(lambda: client.get("/v1/health"))
    print(f"[outage] database back: health -> {response.status_code} in {seconds:.2f}s")
    assert response.status_code == 200
    assert client.get("/v1/requests", headers=bearer(token)).status_code == 200


def test_gunicorn_with_default_timeouts_answers_503_before_its_worker_timeout(
        app, db_proxy, database_url, make_user, tmp_path):
    """The worst case, a silent database under a pooled connection, still beats GUNICORN_TIMEOUT."""
    alice = make_user("alice")
    env = {"GUNICORN_TIMEOUT": "30"}
    with start_gunicorn(_through(database_url, db_proxy.port), log_dir=tmp_path, workers=1,
                        env=env) as server:
        status, tokens, _ = call(server.base, "POST", "/v1/login",
                                 headers=basic_header(alice.username, alice.password),
                                 body={"totp": alice.next_code()})
        assert status == 200, tokens
        bearer_header = {"Authorization": "Bearer " + tokens["token"]}
        assert call(server.base, "GET", "/v1/requests", headers=bearer_header)[0] == 200
        workers = server.worker_pids()
        db_proxy.mode = BLACKHOLE
        for path in ("/v1/health", "/v1/requests"):
            (status, body, _), seconds = timed(lambda p=path: call(
                server.base, "GET", p, headers=bearer_header, timeout=LIVENESS_SECONDS))
            print(f"\n[outage] gunicorn, database blackhole {path} -> {status} in {seconds:.2f}s")
            assert status == 503, body
        db_proxy.mode = FORWARD
        assert call(server.base, "GET", "/v1/health")[0] == 200
        assert call(server.base, "GET", "/v1/requests", headers=bearer_header)[0] == 200
        assert server.worker_pids() == workers  # answered by the same worker, never killed


def test_writes_during_a_database_outage_leave_nothing_behind(app, proxied, db_proxy, make_user):
    alice = make_user("alice")
    client = proxied.test_client()
    with serving() as receiver:
        add_webhook_permission(app, receiver, "vpn", mode=PolicyMode.AUTO)
        token = client.post("/v1/login", headers=basic(alice.username, alice.password),
                            json={"totp": alice.next_code()}).json["token"]
        before = _count(app, AuditEvent)
        db_proxy.mode = BLACKHOLE
        created, _ = timed(lambda: client.post("/v1/requests", headers=bearer(token), json={
            "permission": "vpn", "justification": "during the outage"}))
        login, _ = timed(lambda: client.post(
            "/v1/login", headers=basic(alice.username, alice.password),
            json={"totp": alice.next_code()}))
        assert (created.status_code, login.status_code) == (503, 503)
        db_proxy.mode = FORWARD

        assert _count(app, AccessRequest) == 0
        assert _count(app, AuditEvent) == before
        assert receiver.count("grant") == 0
        # The same service, not restarted, works again: sign-in and the request both succeed.
        assert client.post("/v1/login", headers=basic(alice.username, alice.password),
                           json={"totp": alice.next_code()}).status_code == 200
        response = client.post("/v1/requests", headers=bearer(token), json={
            "permission": "vpn", "justification": "after the outage"})
        assert response.status_code == 201, response.json
    assert _count(app, AuditEvent, AuditEvent.action == AuditAction.LOGIN_SUCCEEDED) == 2
    with app.extensions["security_api"].session_factory() as session:
        assert audit.verify_chain(session).ok


@pytest.mark.skipif(not TEST_REDIS_URL, reason="needs Redis (TEST_REDIS_URL)")
@pytest.mark.parametrize("mode", [REFUSE, BLACKHOLE])
def test_redis_outage_fails_closed_and_heals(make_app, app, make_user, mode):
    redis_url = make_url(TEST_REDIS_URL)
    with proxy_to(redis_url.host or "127.0.0.1", redis_url.port or 6379) as proxy:
        served = make_app(redis_url=_through(TEST_REDIS_URL, proxy.port))
        client = served.test_client()
        alice = make_user("alice")
        token = client.post("/v1/login", headers=basic(alice.username, alice.password),
                            json={"totp": alice.next_code()}).json["token"]
        proxy.mode = mode
        login, seconds = timed(lambda: client.post(
            "/v1/login", headers=basic(alice.username, alice.password),
            json={"totp": alice.next_code()}))
        print(f"\n[outage] redis {mode:9s} login -> {login.status_code} in {seconds:.2f}s")
        assert login.status_code == 503 and login.json["error"] == "service_unavailable"
        # The token check falls back to the database, so a valid token keeps working; a
        # logout must reach Redis (the auth versions other workers trust) or not happen: 503,
        # and the token is as it was.
        assert client.get("/v1/requests", headers=bearer(token)).status_code == 200
        logout, _ = timed(lambda: client.post("/v1/logout", headers=bearer(token)))
        assert logout.status_code == 503 and logout.json["error"] == "service_unavailable"
        assert client.get("/v1/requests", headers=bearer(token)).status_code == 200
        assert client.get("/v1/ping").status_code == 200
        health, _ = timed(lambda: client.get("/v1/health"))
        assert health.status_code == 503
        assert health.json["checks"] == {"database": "ok", "redis": "down"}

        proxy.mode = FORWARD
        assert client.get("/v1/health").status_code == 200
        again = client.post("/v1/login", headers=basic(alice.username, alice.password),
                            json={"totp": alice.next_code()})
        assert again.status_code == 200
        assert client.get("/v1/requests", headers=bearer(again.json["token"])).status_code == 200
        assert client.post("/v1/logout", headers=bearer(token)).status_code == 200
        assert client.get("/v1/requests", headers=bearer(token)).status_code == 401


def test_a_slow_statement_is_cut_except_in_migrations(database_url):
    engine = make_engine(database_url, query_timeout_seconds=1)
    try:
        with engine.connect() as connection, pytest.raises(OperationalError, match="timeout"):
            connection.execute(text("SELECT pg_sleep(2)"))
        with engine.begin() as connection, without_query_timeout(connection):
            connection.execute(text("SELECT pg_sleep(2)"))  # as long as a migration needs
        with engine.connect() as connection:  # the next transaction is bounded again
            assert connection.scalar(text("SHOW statement_timeout")) == "1s"
    finally:
        engine.dispose()
