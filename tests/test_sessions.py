"""Refresh rotation with reuse detection, logout, password change, and token death."""
import secrets

import pytest
from sqlalchemy import select

from security_api.accounts.sessions import invalidate_all_tokens
from security_api.clock import utcnow
from security_api.models import AuditEvent, User
from tests.conftest import basic, bearer


def _refresh(client, token):
    return client.post("/v1/token/refresh", json={"refresh_token": token})


def _profile(client, token):
    return client.get("/v1/profile", headers=bearer(token))


def test_refresh_rotates_both_tokens(client, make_user, login_as):
    first = login_as(make_user())
    second = _refresh(client, first["refresh_token"])
    assert second.status_code == 200
    assert second.json["refresh_token"] != first["refresh_token"]
    assert second.json["token"] != first["token"]
    assert _profile(client, second.json["token"]).status_code == 200


def test_refresh_reuse_revokes_the_whole_family(client, make_user, login_as):
    first = login_as(make_user())
    second = _refresh(client, first["refresh_token"]).json
    reused = _refresh(client, first["refresh_token"])
    assert reused.status_code == 401
    assert reused.json["error"] == "refresh_token_reused"
    # The thief and the victim both lose the session: newest refresh and access tokens.
    assert _refresh(client, second["refresh_token"]).status_code == 401
    assert _profile(client, second["token"]).json["error"] == "token_revoked"
    assert _profile(client, first["token"]).status_code == 401


def test_reuse_leaves_other_sessions_alone(client, make_user, login_as):
    user = make_user()
    one, two = login_as(user), login_as(user)
    _refresh(client, one["refresh_token"])
    _refresh(client, one["refresh_token"])
    assert _profile(client, two["token"]).status_code == 200
    assert _refresh(client, two["refresh_token"]).status_code == 200


def test_reuse_is_audited(client, make_user, login_as, db_session):
    first = login_as(make_user())
    _refresh(client, first["refresh_token"])
    _refresh(client, first["refresh_token"])
    actions = db_session.scalars(select(AuditEvent.action)).all()
    assert "token.refresh_reuse_detected" in actions and "token.refreshed" in actions


@pytest.mark.parametrize("body,status", [
    ({"refresh_token": "not-a-real-token"}, 401),
    ({"refresh_token": ""}, 412),
    ({"refresh_token": 12}, 412),
    ({}, 412),
    ({"refresh_token": "x" * 500}, 412),
])
def test_bad_refresh_requests(client, body, status):
    assert client.post("/v1/token/refresh", json=body).status_code == status


def test_expired_refresh_token_is_refused(make_app, make_user):
    import time

    app = make_app(refresh_token_ttl_seconds=1)
    client = app.test_client()
    user = make_user()
    tokens = client.post("/v1/login", headers=basic(user.username, user.password),
                         json={"totp": user.next_code()}).json
    time.sleep(1.1)
    response = _refresh(client, tokens["refresh_token"])
    assert response.status_code == 401 and response.json["error"] == "token_expired"


def test_logout_kills_the_access_token_and_its_refresh_family(client, make_user, login_as):
    user = make_user()
    tokens = login_as(user)
    other = login_as(user)
    assert client.post("/v1/logout", headers=bearer(tokens["token"])).status_code == 200
    assert _profile(client, tokens["token"]).json["error"] == "token_revoked"
    assert _refresh(client, tokens["refresh_token"]).status_code == 401
    assert _profile(client, other["token"]).status_code == 200


def test_logout_takes_effect_at_once_on_another_instance(make_app, make_user):
    # Two instances on one database, each with a state store namespace of its own: the
    # revocation must reach the other one through the database, not a per-instance cache.
    secret = secrets.token_urlsafe(48)
    here, there = (make_app(jwt_secret=secret).test_client() for _ in range(2))
    user = make_user()
    tokens = here.post("/v1/login", headers=basic(user.username, user.password),
                       json={"totp": user.next_code()}).json
    assert _profile(there, tokens["token"]).status_code == 200  # verified and cached there
    assert here.post("/v1/logout", headers=bearer(tokens["token"])).status_code == 200
    assert _profile(there, tokens["token"]).json["error"] == "token_revoked"


def test_logout_needs_a_token(client):
    assert client.post("/v1/logout").status_code == 401


def test_password_change_kills_every_earlier_token(client, make_user, login_as):
    user = make_user()
    one = login_as(user)
    two = _refresh(client, one["refresh_token"]).json
    one["refresh_token"] = two["refresh_token"]
    response = client.post("/v1/password", headers=bearer(one["token"]), json={
        "current_password": user.password, "new_password": "Quiet-lantern-orbit-7731"})
    assert response.status_code == 200
    for tokens in (one, two):
        assert _profile(client, tokens["token"]).json["error"] == "token_revoked"
        assert _refresh(client, tokens["refresh_token"]).status_code == 401
    user.password = "Quiet-lantern-orbit-7731"
    fresh = login_as(user)
    assert _profile(client, fresh["token"]).status_code == 200


def test_password_change_with_wrong_current_password(client, make_user, login_as):
    user = make_user()
    token = login_as(user)["token"]
    response = client.post("/v1/password", headers=bearer(token), json={
        "current_password": "not-my-password", "new_password": "Quiet-lantern-orbit-7731"})
    assert response.status_code == 403
    assert response.json["error"] == "wrong_password"
    assert _profile(client, token).status_code == 200


def test_wrong_current_passwords_count_toward_the_lockout(client, make_user, login_as):
    user = make_user()
    token = login_as(user)["token"]
    body = {"current_password": "not-my-password", "new_password": "Quiet-lantern-orbit-7731"}
    codes = [client.post("/v1/password", headers=bearer(token), json=body).status_code
             for _ in range(6)]
    assert codes == [403] * 5 + [429]


@pytest.mark.parametrize("new_password,problem", [
    ("short", "at least 12"),
    ("password1234", "weak"),
    ("alice-and-some-more", "username"),
    ("violet-harbour-kettle-42", "differ"),
])
def test_password_policy_is_412(client, make_user, login_as, new_password, problem):
    user = make_user()
    token = login_as(user)["token"]
    response = client.post("/v1/password", headers=bearer(token), json={
        "current_password": user.password, "new_password": new_password})
    assert response.status_code == 412
    assert response.json["errors"][0]["field"] == "new_password"
    assert problem in response.json["errors"][0]["problem"]


def test_password_change_is_audited(client, make_user, login_as, db_session):
    user = make_user()
    client.post("/v1/password", headers=bearer(login_as(user)["token"]), json={
        "current_password": user.password, "new_password": "Quiet-lantern-orbit-7731"})
    assert "password.changed" in db_session.scalars(select(AuditEvent.action)).all()


def test_deactivation_kills_tokens_at_once(client, make_user, login_as, db_session):
    user = make_user()
    tokens = login_as(user)
    row = db_session.get(User, user.id)
    row.active = False
    db_session.commit()
    assert _profile(client, tokens["token"]).status_code == 401
    assert _refresh(client, tokens["refresh_token"]).status_code == 401


def test_role_change_invalidation_kills_tokens(client, make_user, login_as, db_session):
    user = make_user()
    tokens = login_as(user)
    row = db_session.get(User, user.id)
    invalidate_all_tokens(db_session, user=row, reason="role_changed", now=utcnow())
    db_session.commit()
    assert _profile(client, tokens["token"]).status_code == 401
    assert _refresh(client, tokens["refresh_token"]).status_code == 401
    # A sign-in in the same second is still good: tokens are never dead on arrival.
    assert _profile(client, login_as(user)["token"]).status_code == 200
