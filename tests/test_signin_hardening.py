"""Issue 10, hardening of sign-in, through the HTTP API: each test failed before its fix.

- 7: parallel guesses for one username check at most LOCKOUT_THRESHOLD secrets.
- 8: enroll and confirm give one answer, whatever the password, once 2FA is on.
- 11: a TOTP code works once even after Redis loses its data.
- Audit, part 2: locked attempts and password-only checks are recorded.
"""
from __future__ import annotations

import json
import threading

import pytest
import redis
from sqlalchemy import select, update

from security_api.accounts.passwords import hash_password
from security_api.errors import INVALID_CREDENTIALS_MESSAGE
from security_api.models import AuditEvent, User
from tests.conftest import TEST_REDIS_URL, basic

THREADS = 30
STORES = ["database", pytest.param("redis", marks=pytest.mark.skipif(
    not TEST_REDIS_URL, reason="TEST_REDIS_URL not set"))]
GENERIC_401 = {"message": INVALID_CREDENTIALS_MESSAGE, "error": "invalid_credentials"}


@pytest.fixture(params=STORES)
def store_app(request, make_app):
    """An app whose lockout state lives in the database, or in Redis."""
    redis_url = TEST_REDIS_URL if request.param == "redis" else None
    return make_app(redis_url=redis_url)


def _events(app, action: str, actor: str | None = None) -> list[dict]:
    with app.extensions["security_api"].session_factory() as session:
        query = select(AuditEvent).where(AuditEvent.action == action)
        if actor is not None:
            query = query.where(AuditEvent.actor == actor)
        return [json.loads(event.details) for event in session.scalars(query)]


def _in_parallel(app, call, count=THREADS) -> list:
    """Run `call(client)` in `count` threads released together; return the responses."""
    barrier = threading.Barrier(count)
    results: list = []
    errors: list[BaseException] = []

    def run():
        client = app.test_client()
        try:
            barrier.wait(timeout=30)
            results.append(call(client))
        except BaseException as exc:  # noqa: BLE001 -- re-raised in the test's thread below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    assert len(results) == count
    return results


def _slow_password(app, user) -> None:
    """Give the user a costlier hash, so parallel checks really overlap."""
    with app.extensions["security_api"].session_factory() as session:
        session.execute(update(User).where(User.id == user.id)
                        .values(password_hash=hash_password(user.password, rounds=8)))
        session.commit()


# ---- 7: lockout overshoot ----------------------------------------------------------------------
def test_parallel_wrong_passwords_check_at_most_the_threshold(store_app, make_user):
    app = store_app
    user = make_user()
    _slow_password(app, user)
    threshold = app.extensions["security_api"].settings.lockout_threshold

    answers = _in_parallel(app, lambda client: client.post(
        "/v1/login", headers=basic(user.username, "wrong-password-here"), json={"totp": "000000"}))

    # Every password check that ran left a login.failed event: no more than the threshold.
    checked = _events(app, "login.failed", user.username)
    assert len(checked) <= threshold
    statuses = [answer.status_code for answer in answers]
    assert statuses.count(401) == len(checked)
    assert statuses.count(429) == THREADS - len(checked)
    assert all(a.json["error"] == "locked" for a in answers if a.status_code == 429)
    # Locked now: even the right password and a fresh code are refused.
    right = app.test_client().post("/v1/login", headers=basic(user.username, user.password),
                                   json={"totp": user.next_code()})
    assert right.status_code == 429 and right.json["error"] == "locked"


def test_parallel_second_factor_guesses_check_at_most_the_threshold(store_app, make_user):
    app = store_app
    user = make_user()
    threshold = app.extensions["security_api"].settings.lockout_threshold

    answers = _in_parallel(app, lambda client: client.post(
        "/v1/login", headers=basic(user.username, user.password), json={"totp": "000000"}))

    guessed = [e for e in _events(app, "login.failed", user.username)
               if e["reason"] == "bad_second_factor"]
    assert len(guessed) <= threshold
    assert [a.status_code for a in answers].count(401) == len(guessed)
    assert app.test_client().post("/v1/login", headers=basic(user.username, user.password),
                                  json={"totp": user.next_code()}).status_code == 429


def test_a_right_login_still_resets_the_count(store_app, make_user):
    client = store_app.test_client()
    user = make_user()
    threshold = store_app.extensions["security_api"].settings.lockout_threshold
    for _ in range(2):
        for _ in range(threshold - 1):
            assert client.post("/v1/login", headers=basic(user.username, "wrong-password-here"),
                               json={"totp": "000000"}).status_code == 401
        assert client.post("/v1/login", headers=basic(user.username, user.password),
                           json={"totp": user.next_code()}).status_code == 200


def test_attempts_against_a_locked_username_are_audited(store_app, make_user):
    client = store_app.test_client()
    make_user("alice")
    for _ in range(5):
        client.post("/v1/login", headers=basic("alice", "wrong-password-here"), json={})
    for path in ("/v1/login", "/v1/totp/enroll"):
        assert client.post(path, headers=basic("alice", "x"), json={}).status_code == 429
    refused = _events(store_app, "login.refused_locked", "alice")
    assert sorted(e["purpose"] for e in refused) == ["login", "totp_enroll"]


# ---- 8: enroll/confirm are no password oracle once 2FA is on ----------------------------------
@pytest.mark.parametrize("path", ["/v1/totp/enroll", "/v1/totp/confirm"])
def test_enroll_and_confirm_answer_alike_whatever_the_password_once_2fa_is_on(
        client, make_user, path):
    user = make_user()  # 2FA confirmed
    answers = [client.post(path, headers=basic(name, password), json=body)
               for name, password in ((user.username, user.password),
                                      (user.username, "wrong-password-here"),
                                      ("ghost", "wrong-password-here"))
               for body in ([{}] if path.endswith("enroll") else [{"totp": "123456"}])]
    for answer in answers:
        assert answer.status_code == 401
        assert answer.json == GENERIC_401
        assert answer.headers["WWW-Authenticate"] == 'Basic realm="security-api"'


def test_right_passwords_on_enroll_count_toward_the_lockout_once_2fa_is_on(app, client,
                                                                           make_user):
    user = make_user()
    for _ in range(5):
        assert client.post("/v1/totp/enroll",
                           headers=basic(user.username, user.password)).status_code == 401
    assert client.post("/v1/totp/enroll",
                       headers=basic(user.username, user.password)).status_code == 429
    checked = _events(app, "totp.password_checked", user.username)
    assert [e["totp_confirmed"] for e in checked] == [True] * 5
    failed = _events(app, "login.failed", user.username)
    assert [e["reason"] for e in failed] == ["totp_already_enrolled"] * 5


def test_password_only_checks_on_enroll_and_confirm_are_audited(app, client, make_user):
    import pyotp

    user = make_user(totp=False)
    secret = client.post("/v1/totp/enroll",
                         headers=basic(user.username, user.password)).json["secret"]
    assert client.post("/v1/totp/confirm", headers=basic(user.username, user.password),
                       json={"totp": pyotp.TOTP(secret).now()}).status_code == 200
    checked = _events(app, "totp.password_checked", user.username)
    assert sorted(e["purpose"] for e in checked) == ["totp_confirm", "totp_enroll"]


# ---- 11: a TOTP code works once, whatever happens to Redis ------------------------------------
@pytest.mark.skipif(not TEST_REDIS_URL, reason="TEST_REDIS_URL not set")
def test_a_totp_code_is_refused_again_after_redis_loses_its_data(app, client, make_user):
    user = make_user()
    code = user.next_code()
    login = {"headers": basic(user.username, user.password), "json": {"totp": code}}
    assert client.post("/v1/login", **login).status_code == 200
    # Redis restarted without persistence: every key of this test's prefix is gone.
    prefix = app.extensions["security_api"].settings.redis_prefix
    server = redis.Redis.from_url(TEST_REDIS_URL)
    keys = list(server.scan_iter(match=f"{prefix}*"))
    if keys:
        server.delete(*keys)
    server.close()
    again = client.post("/v1/login", **login)
    assert again.status_code == 401 and again.json == GENERIC_401


def test_parallel_logins_with_one_code_give_one_token(store_app, make_user):
    user = make_user()
    code = user.next_code()
    answers = _in_parallel(store_app, lambda client: client.post(
        "/v1/login", headers=basic(user.username, user.password), json={"totp": code}),
        count=4)  # fewer than the lockout threshold: every one checks its code
    assert sorted(a.status_code for a in answers) == [200] + [401] * 3
