"""POST /v1/totp/enroll and /v1/totp/confirm."""
import base64

import pyotp
import pytest

from tests.conftest import basic


def _enroll(client, user):
    return client.post("/v1/totp/enroll", headers=basic(user.username, user.password))


def _confirm(client, user, code):
    return client.post("/v1/totp/confirm", headers=basic(user.username, user.password),
                       json={"totp": code})


def test_enroll_returns_secret_uri_and_qr(client, make_user):
    user = make_user(totp=False)
    response = _enroll(client, user)
    assert response.status_code == 200
    body = response.json
    assert len(body["secret"]) == 32
    assert body["otpauth_uri"].startswith("otpauth://totp/Security%20API:alice?")
    assert f"secret={body['secret']}" in body["otpauth_uri"]
    assert "issuer=Security%20API" in body["otpauth_uri"]
    assert body["qr_png"].startswith("data:image/png;base64,")
    png = base64.b64decode(body["qr_png"].split(",", 1)[1])
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_enroll_again_before_confirming_replaces_the_secret(client, make_user):
    user = make_user(totp=False)
    first = _enroll(client, user).json["secret"]
    second = _enroll(client, user).json["secret"]
    assert first != second
    assert _confirm(client, user, pyotp.TOTP(first).now()).status_code == 401
    assert _confirm(client, user, pyotp.TOTP(second).now()).status_code == 200


def test_confirm_gives_ten_distinct_recovery_codes(client, make_user):
    user = make_user(totp=False)
    secret = _enroll(client, user).json["secret"]
    response = _confirm(client, user, pyotp.TOTP(secret).now())
    codes = response.json["recovery_codes"]
    assert len(codes) == 10 and len(set(codes)) == 10


def test_recovery_codes_are_stored_hashed(client, make_user, db_session):
    from sqlalchemy import select

    from security_api.models import RecoveryCode

    user = make_user(totp=False)
    secret = _enroll(client, user).json["secret"]
    codes = _confirm(client, user, pyotp.TOTP(secret).now()).json["recovery_codes"]
    stored = db_session.scalars(select(RecoveryCode.code_hash)).all()
    assert len(stored) == 10
    assert not set(codes) & set(stored)


def test_enroll_and_confirm_are_the_generic_401_once_confirmed(client, make_user):
    # Not 409: that answered only the right password, an oracle without the second factor.
    user = make_user(totp=False)
    secret = _enroll(client, user).json["secret"]
    code = pyotp.TOTP(secret).now()
    assert _confirm(client, user, code).status_code == 200
    assert _enroll(client, user).json["error"] == "invalid_credentials"
    assert _confirm(client, user, code).status_code == 401


def test_confirm_before_enroll_is_409(client, make_user):
    user = make_user(totp=False)
    response = _confirm(client, user, "123456")
    assert response.status_code == 409
    assert response.json["error"] == "totp_enrollment_not_started"


def test_confirm_code_is_single_use_for_login(client, make_user):
    user = make_user(totp=False)
    secret = _enroll(client, user).json["secret"]
    code = pyotp.TOTP(secret).now()
    _confirm(client, user, code)
    login = client.post("/v1/login", headers=basic(user.username, user.password),
                        json={"totp": code})
    assert login.status_code == 401


@pytest.mark.parametrize("password", ["wrong-password-here"])
def test_enroll_with_wrong_password_is_the_generic_401(client, make_user, password):
    user = make_user(totp=False)
    response = client.post("/v1/totp/enroll", headers=basic(user.username, password))
    assert response.status_code == 401
    assert response.json["error"] == "invalid_credentials"
    assert response.headers["WWW-Authenticate"] == 'Basic realm="security-api"'


def test_enroll_failures_count_toward_the_lockout(client, make_user):
    user = make_user(totp=False)
    for _ in range(5):
        client.post("/v1/totp/enroll", headers=basic(user.username, "wrong-password-here"))
    assert _enroll(client, user).status_code == 429


def test_wrong_confirm_code_is_401(client, make_user):
    user = make_user(totp=False)
    secret = _enroll(client, user).json["secret"]
    wrong = f"{(int(pyotp.TOTP(secret).now()) + 1) % 1_000_000:06d}"
    assert _confirm(client, user, wrong).status_code == 401


def test_service_accounts_have_no_totp(client, make_user):
    bot = make_user("bot", kind="service", password="s3rvice-secret-long-enough-42")
    response = _enroll(client, bot)
    assert response.status_code == 409
    assert response.json["error"] == "totp_not_applicable"


def test_inactive_user_cannot_enroll(client, make_user):
    user = make_user(totp=False, active=False)
    assert _enroll(client, user).status_code == 401


def test_enroll_refuses_unknown_fields(client, make_user):
    user = make_user(totp=False)
    response = client.post("/v1/totp/enroll", headers=basic(user.username, user.password),
                           json={"secret": "AAAA"})
    assert response.status_code == 412


def test_totp_secret_is_encrypted_at_rest(client, make_user, db_session):
    from security_api.models import User

    user = make_user(totp=False)
    secret = _enroll(client, user).json["secret"]
    stored = db_session.get(User, user.id).totp_secret
    assert secret not in stored and len(stored) > 100


def test_unreadable_totp_secret_fails_like_a_wrong_code(make_app, make_user):
    from cryptography.fernet import Fernet

    user = make_user()
    other_key_app = make_app(data_encryption_keys=(Fernet.generate_key().decode(),))
    response = other_key_app.test_client().post(
        "/v1/login", headers=basic(user.username, user.password), json={"totp": user.next_code()})
    assert response.status_code == 401


def test_old_keys_still_decrypt_after_rotation(make_app, make_user):
    from cryptography.fernet import Fernet

    from tests.conftest import TEST_DATA_KEY

    user = make_user()
    rotated = make_app(data_encryption_keys=(Fernet.generate_key().decode(), TEST_DATA_KEY))
    response = rotated.test_client().post(
        "/v1/login", headers=basic(user.username, user.password), json={"totp": user.next_code()})
    assert response.status_code == 200
