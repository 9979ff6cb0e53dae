"""POST /v1/login: every success and failure of the contract, through the HTTP API."""
import base64
import threading
import time

import pyotp
import pytest

from security_api.errors import INVALID_CREDENTIALS_MESSAGE
from tests.conftest import DEFAULT_PASSWORD, basic, bearer


def _login(client, username, password, body=None, **kwargs):
    return client.post("/v1/login", headers=basic(username, password),
                       json={} if body is None else body, **kwargs)


def _clear_of_step_boundary():
    """Wait out the last seconds of a TOTP step so a code made now stays in its window."""
    if time.time() % 30 > 27:
        time.sleep(30 - time.time() % 30 + 0.1)


def _assert_generic_failure(response):
    assert response.status_code == 401
    assert response.json == {"message": INVALID_CREDENTIALS_MESSAGE, "error": "invalid_credentials"}
    assert response.headers["WWW-Authenticate"] == 'Basic realm="security-api"'


def test_login_returns_the_contract_token_response(client, make_user):
    user = make_user()
    response = _login(client, user.username, user.password, {"totp": user.next_code()})
    assert response.status_code == 200
    body = response.json
    assert set(body) == {"message", "token", "token_type", "expires_in", "refresh_token",
                         "refresh_expires_in"}
    assert body["message"] is None and body["token_type"] == "Bearer"
    assert body["expires_in"] == 900 and body["refresh_expires_in"] == 28800
    assert client.get("/v1/profile", headers=bearer(body["token"])).status_code == 200


def test_username_is_case_insensitive(client, make_user):
    user = make_user()
    assert _login(client, "ALICE", user.password, {"totp": user.next_code()}).status_code == 200


def test_password_may_contain_colons(client, make_user):
    user = make_user(password="tea:time:at:the:harbour")
    assert _login(client, user.username, user.password, {"totp": user.next_code()}).status_code == 200


def test_every_failure_gives_the_same_answer(client, make_user):
    user = make_user()
    make_user("ivan", active=False)
    _clear_of_step_boundary()
    good_code = pyotp.TOTP(user.totp_secret).now()
    wrong_code = f"{(int(good_code) + 1) % 1_000_000:06d}"
    failures = [
        _login(client, "nobody", DEFAULT_PASSWORD, {"totp": good_code}),
        _login(client, user.username, "wrong-password-entirely", {"totp": good_code}),
        _login(client, user.username, user.password, {"totp": wrong_code}),
        _login(client, user.username, user.password, {}),
        _login(client, user.username, user.password, {"recovery_code": "aaaa-bbbb-cccc-dddd"}),
        _login(client, "ivan", DEFAULT_PASSWORD, {"totp": good_code}),
        _login(client, user.username, "", {"totp": good_code}),
        _login(client, "", user.password, {"totp": good_code}),
    ]
    for response in failures:
        _assert_generic_failure(response)


def test_unknown_user_costs_a_bcrypt_check_like_a_known_one(app, monkeypatch, make_user):
    from security_api.accounts import signin

    checked = []
    real = signin.verify_password
    monkeypatch.setattr(signin, "verify_password", lambda p, h: checked.append(h) or real(p, h))
    user = make_user()
    client = app.test_client()
    _login(client, "nobody", "whatever-password", {"totp": "123456"})
    _login(client, user.username, "whatever-password", {"totp": "123456"})
    assert len(checked) == 2 and all(h.startswith("$2b$") for h in checked)


def test_a_sign_in_runs_bcrypt_once_and_never_rehashes(app, monkeypatch, make_user):
    """bcrypt is what a login is meant to cost: one check, no second one, no new hash."""
    from security_api.accounts import passwords

    calls = []
    for name in ("checkpw", "hashpw", "gensalt"):
        real = getattr(passwords.bcrypt, name)
        monkeypatch.setattr(passwords.bcrypt, name,
                            lambda *args, _real=real, _name=name: calls.append(_name) or
                            _real(*args))
    person = make_user()
    bot = make_user("deploy-bot", kind="service", password="s3rvice-secret-long-enough-42")
    client = app.test_client()
    calls.clear()
    assert _login(client, person.username, person.password,
                  {"totp": person.next_code()}).status_code == 200
    assert _login(client, bot.username, bot.password).status_code == 200
    _assert_generic_failure(_login(client, "nobody", "whatever-password", {"totp": "123456"}))
    assert calls == ["checkpw"] * 3


def test_unenrolled_user_with_right_password_gets_403(client, make_user):
    user = make_user(totp=False)
    response = _login(client, user.username, user.password, {"totp": "123456"})
    assert response.status_code == 403
    assert response.json["error"] == "totp_enrollment_required"


def test_unenrolled_user_with_wrong_password_gets_the_generic_401(client, make_user):
    make_user(totp=False)
    _assert_generic_failure(_login(client, "alice", "not-the-password", {"totp": "123456"}))


def test_totp_replay_is_refused(client, make_user):
    user = make_user()
    code = user.next_code()
    assert _login(client, user.username, user.password, {"totp": code}).status_code == 200
    _assert_generic_failure(_login(client, user.username, user.password, {"totp": code}))


def test_older_step_inside_the_window_is_refused_after_a_newer_one(client, make_user):
    user = make_user()
    totp = pyotp.TOTP(user.totp_secret)
    _clear_of_step_boundary()
    now = time.time()
    assert _login(client, user.username, user.password, {"totp": totp.at(now + 30)}).status_code == 200
    _assert_generic_failure(_login(client, user.username, user.password, {"totp": totp.at(now)}))


@pytest.mark.parametrize("offset", [-30, 30])
def test_one_step_of_drift_is_accepted(client, make_user, offset):
    user = make_user()
    _clear_of_step_boundary()
    code = pyotp.TOTP(user.totp_secret).at(time.time() + offset)
    assert _login(client, user.username, user.password, {"totp": code}).status_code == 200


@pytest.mark.parametrize("offset", [-90, 90])
def test_more_drift_is_refused(client, make_user, offset):
    user = make_user()
    code = pyotp.TOTP(user.totp_secret).at(time.time() + offset)
    _assert_generic_failure(_login(client, user.username, user.password, {"totp": code}))


def test_two_parallel_logins_with_one_code_give_one_token(app, make_user):
    user = make_user()
    code = user.next_code()
    results = []
    barrier = threading.Barrier(2)

    def attempt():
        client = app.test_client()
        barrier.wait()
        results.append(_login(client, user.username, user.password, {"totp": code}).status_code)

    threads = [threading.Thread(target=attempt) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == [200, 401]


@pytest.mark.parametrize("code", ["１２３４５６", "١٢٣٤٥٦", "12345", "1234567", "12 456",
                                  "123456\n", " 123456", "abcdef", ""])
def test_badly_formed_codes_are_412(client, make_user, code):
    user = make_user()
    response = _login(client, user.username, user.password, {"totp": code})
    assert response.status_code == 412
    assert response.json["errors"][0]["field"] == "totp"


def test_full_width_digits_of_the_right_code_are_refused(client, make_user):
    user = make_user()
    _clear_of_step_boundary()
    code = pyotp.TOTP(user.totp_secret).now()
    full_width = "".join(chr(ord("０") + int(d)) for d in code)
    assert _login(client, user.username, user.password, {"totp": full_width}).status_code == 412
    # The ASCII code is still unused: the refused attempt did not burn it.
    assert _login(client, user.username, user.password, {"totp": code}).status_code == 200


@pytest.mark.parametrize("body,field", [
    ({"totp": 123456}, "totp"),
    ({"totp": None, "recovery_code": 5}, "recovery_code"),
    ({"totp": "123456", "admin": True}, "admin"),
])
def test_wrong_types_and_unknown_fields_are_412(client, make_user, body, field):
    user = make_user()
    response = _login(client, user.username, user.password, body)
    assert response.status_code == 412
    assert response.json["error"] == "invalid_params"
    assert [e["field"] for e in response.json["errors"]] == [field]


def test_recovery_code_signs_in_once(client, make_user):
    user = make_user(totp=False)
    headers = basic(user.username, user.password)
    secret = client.post("/v1/totp/enroll", headers=headers).json["secret"]
    codes = client.post("/v1/totp/confirm", headers=headers,
                        json={"totp": pyotp.TOTP(secret).now()}).json["recovery_codes"]
    assert _login(client, user.username, user.password,
                  {"recovery_code": codes[0].upper()}).status_code == 200
    _assert_generic_failure(_login(client, user.username, user.password,
                                   {"recovery_code": codes[0]}))
    assert _login(client, user.username, user.password,
                  {"recovery_code": codes[1]}).status_code == 200


def test_service_account_signs_in_without_totp(client, make_user):
    bot = make_user("deploy-bot", kind="service", password="s3rvice-secret-long-enough-42")
    response = _login(client, bot.username, bot.password, {})
    assert response.status_code == 200
    profile = client.get("/v1/profile", headers=bearer(response.json["token"])).json
    assert profile["user"]["kind"] == "service"


@pytest.mark.parametrize("header", [
    "Basic " + base64.b64encode(b"no-colon-here").decode(),
    "Basic !!!not-base64!!!",
    "Basic " + base64.b64encode(b"\xff\xfe:\xfa").decode(),
    "Basic ",
    "Basic",
])
def test_malformed_basic_headers_are_400(client, header):
    response = client.post("/v1/login", headers={"Authorization": header}, json={"totp": "123456"})
    assert response.status_code == 400
    assert response.json["error"] == "malformed_credentials"


def test_missing_or_non_basic_authorization_is_401_with_challenge(client):
    for headers in ({}, {"Authorization": "Bearer abc"}):
        response = client.post("/v1/login", headers=headers, json={"totp": "123456"})
        assert response.status_code == 401
        assert response.headers["WWW-Authenticate"] == 'Basic realm="security-api"'


def test_bad_json_is_400(client, make_user):
    response = client.post("/v1/login", headers=basic("alice", "x" * 12), data="{nope",
                           content_type="application/json")
    assert response.status_code == 400
    assert response.json["error"] == "bad_json"


def test_non_utf8_body_is_400(client):
    response = client.post("/v1/login", headers=basic("alice", "x" * 12), data=b'{"totp": "\xff"}',
                           content_type="application/json")
    assert response.status_code == 400
    assert response.json["error"] == "bad_encoding"


def test_nan_is_not_json(client):
    response = client.post("/v1/login", headers=basic("alice", "x" * 12), data='{"totp": NaN}',
                           content_type="application/json")
    assert response.status_code == 400


def test_wrong_content_type_is_415(client):
    response = client.post("/v1/login", headers=basic("alice", "x" * 12), data="totp=123456",
                           content_type="application/x-www-form-urlencoded")
    assert response.status_code == 415
    assert response.json["error"] == "unsupported_media_type"


@pytest.mark.parametrize("body", ["[]", '"text"', "123", "null"])
def test_non_object_body_is_412(client, body):
    response = client.post("/v1/login", headers=basic("alice", "x" * 12), data=body,
                           content_type="application/json")
    assert response.status_code == 412


def test_oversized_body_is_413(client):
    response = client.post("/v1/login", headers=basic("alice", "x" * 12),
                           data='{"totp": "' + "1" * 70_000 + '"}', content_type="application/json")
    assert response.status_code == 413
    assert response.json["error"] == "payload_too_large"


def test_successful_and_failed_logins_are_audited(client, make_user, db_session):
    from sqlalchemy import select

    from security_api.models import AuditEvent

    user = make_user()
    _login(client, user.username, "wrong-password-here", {"totp": "123456"})
    _login(client, user.username, user.password, {"totp": user.next_code()})
    events = db_session.scalars(select(AuditEvent).order_by(AuditEvent.seq)).all()
    actions = [(e.action, e.actor) for e in events if e.action.startswith("login")]
    assert actions == [("login.failed", "alice"), ("login.succeeded", "alice")]
    failed = next(e for e in events if e.action == "login.failed")
    assert '"reason":"bad_password"' in failed.details
    assert failed.ip == "127.0.0.1" and failed.request_id


def test_control_characters_in_the_username_are_a_plain_401(client, db_session):
    from sqlalchemy import select

    from security_api.models import AuditEvent

    response = client.post("/v1/login", headers=basic("al\x00ice\nforged", "some-password-1"),
                           json={"totp": "123456"})
    _assert_generic_failure(response)
    actor = db_session.scalar(select(AuditEvent.actor).where(AuditEvent.action == "login.failed"))
    assert actor == "al\\x00ice\\nforged"
