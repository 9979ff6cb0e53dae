"""Lockout per username (existing or not) and throttling per address, failing closed."""
import pytest

from tests.conftest import basic


def _fail(client, username, password="wrong-password-here"):
    return client.post("/v1/login", headers=basic(username, password), json={"totp": "000000"})


@pytest.mark.parametrize("username", ["alice", "ghost"])
def test_five_failures_lock_the_username_existing_or_not(client, make_user, username):
    make_user("alice")
    answers = [_fail(client, username) for _ in range(5)]
    assert [r.status_code for r in answers] == [401] * 5
    locked = _fail(client, username)
    assert locked.status_code == 429
    assert locked.json["error"] == "locked"
    assert 890 <= int(locked.headers["Retry-After"]) <= 900


def test_locked_answers_are_identical_for_existing_and_unknown_users(client, make_user):
    make_user("alice")
    for name in ("alice", "ghost"):
        for _ in range(5):
            _fail(client, name)
    alice, ghost = _fail(client, "alice"), _fail(client, "ghost")
    assert alice.status_code == ghost.status_code == 429
    assert alice.json == ghost.json


def test_lock_refuses_even_the_right_credentials(client, make_user):
    user = make_user()
    for _ in range(5):
        _fail(client, user.username)
    response = client.post("/v1/login", headers=basic(user.username, user.password),
                           json={"totp": user.next_code()})
    assert response.status_code == 429


def test_failed_totp_attempts_count_toward_the_lockout(client, make_user):
    user = make_user()
    for _ in range(5):
        assert _fail(client, user.username, user.password).status_code == 401
    assert _fail(client, user.username, user.password).status_code == 429


def test_success_resets_the_count(client, make_user):
    user = make_user()
    for _ in range(4):
        _fail(client, user.username)
    ok = client.post("/v1/login", headers=basic(user.username, user.password),
                     json={"totp": user.next_code()})
    assert ok.status_code == 200
    for _ in range(4):
        assert _fail(client, user.username).status_code == 401


def test_lock_is_per_username_and_case_insensitive(client, make_user):
    make_user("alice")
    make_user("bob")
    for _ in range(5):
        _fail(client, "Alice")
    assert _fail(client, "alice").status_code == 429
    assert _fail(client, "bob").status_code == 401


def test_lock_is_audited(client, make_user, db_session):
    from sqlalchemy import select

    from security_api.models import AuditEvent

    make_user()
    for _ in range(5):
        _fail(client, "alice")
    actions = db_session.scalars(select(AuditEvent.action)).all()
    assert actions.count("login.failed") == 5 and actions.count("login.locked") == 1


def test_lock_expires(make_app, make_user):
    import time

    app = make_app(lockout_seconds=2, lockout_threshold=2)
    client = app.test_client()
    for _ in range(2):
        _fail(client, "ghost")
    assert _fail(client, "ghost").status_code == 429
    time.sleep(2.2)
    assert _fail(client, "ghost").status_code == 401


def test_address_throttling_with_retry_after(make_app):
    client = make_app(auth_rate_limit=3, auth_rate_window_seconds=60).test_client()
    answers = [_fail(client, f"user{i}").status_code for i in range(4)]
    assert answers == [401, 401, 401, 429]
    response = _fail(client, "someone-else")
    assert response.json["error"] == "throttled"
    assert 1 <= int(response.headers["Retry-After"]) <= 60


def test_throttling_covers_every_sign_in_endpoint(make_app):
    client = make_app(auth_rate_limit=2).test_client()
    client.post("/v1/token/refresh", json={"refresh_token": "x"})
    client.post("/v1/totp/enroll", headers=basic("a", "b"))
    assert client.post("/v1/totp/confirm", headers=basic("a", "b"),
                       json={"totp": "123456"}).status_code == 429


def test_unreachable_redis_fails_closed(make_app, make_user):
    app = make_app(redis_url="redis://127.0.0.1:1/0")
    response = _fail(app.test_client(), "alice")
    assert response.status_code == 503
    health = app.test_client().get("/v1/health")
    assert health.status_code == 503 and health.json["checks"]["redis"] == "down"
