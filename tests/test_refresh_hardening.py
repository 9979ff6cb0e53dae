"""Issue 10b, refresh families, through the HTTP API: each test failed before its fix.

- A refresh family ends REFRESH_FAMILY_MAX_SECONDS after its sign-in, however often rotated.
- Audit, part 2: every refused refresh (unknown, expired, reused, revoked) is recorded.
"""
from __future__ import annotations

import json
from datetime import timedelta

from sqlalchemy import select, update

from security_api.clock import utcnow
from security_api.models import AuditEvent, RefreshFamily, RefreshToken
from tests.conftest import basic


def _events(app, action: str) -> list[dict]:
    with app.extensions["security_api"].session_factory() as session:
        query = select(AuditEvent.details).where(AuditEvent.action == action)
        return [json.loads(details) for details in session.scalars(query)]


# ---- 10b: a refresh family has an absolute lifetime --------------------------------------------
def _age_families(app, user_id: str, age: timedelta) -> None:
    """Pretend the user's sign-ins happened `age` ago (the family's start is what counts)."""
    with app.extensions["security_api"].session_factory() as session:
        session.execute(update(RefreshFamily).where(RefreshFamily.user_id == user_id)
                        .values(created_at=utcnow() - age))
        session.commit()


def _refresh(client, token):
    return client.post("/v1/token/refresh", json={"refresh_token": token})


def test_a_refresh_past_the_family_cap_is_refused_and_audited(make_app, make_user):
    app = make_app(refresh_family_max_seconds=7 * 86400)
    client = app.test_client()
    user = make_user()
    tokens = client.post("/v1/login", headers=basic(user.username, user.password),
                         json={"totp": user.next_code()}).json
    _age_families(app, user.id, timedelta(days=7, seconds=1))
    response = _refresh(client, tokens["refresh_token"])
    assert response.status_code == 401 and response.json["error"] == "session_expired"
    assert [e["reason"] for e in _events(app, "token.refresh_refused")] == ["family_expired"]


def test_a_rotated_refresh_token_never_outlives_its_family(make_app, make_user):
    app = make_app(refresh_family_max_seconds=7 * 86400, refresh_token_ttl_seconds=28800)
    client = app.test_client()
    user = make_user()
    tokens = client.post("/v1/login", headers=basic(user.username, user.password),
                         json={"totp": user.next_code()}).json
    assert tokens["refresh_expires_in"] == 28800
    # An hour of the family left: the next refresh token lives at most that hour.
    _age_families(app, user.id, timedelta(days=7) - timedelta(hours=1))
    rotated = _refresh(client, tokens["refresh_token"])
    assert rotated.status_code == 200
    assert rotated.json["refresh_expires_in"] <= 3600


def test_a_cap_shorter_than_the_token_lifetime_bounds_the_first_token(make_app, make_user):
    app = make_app(refresh_family_max_seconds=600, refresh_token_ttl_seconds=28800)
    user = make_user()
    tokens = app.test_client().post("/v1/login", headers=basic(user.username, user.password),
                                    json={"totp": user.next_code()}).json
    assert tokens["refresh_expires_in"] == 600


# ---- Audit, part 2: every refused refresh ------------------------------------------------------
def test_every_refused_refresh_is_audited(app, client, make_user, login_as):
    user = make_user()
    assert _refresh(client, "not-a-real-token").status_code == 401
    first = login_as(user)
    second = _refresh(client, first["refresh_token"]).json
    assert _refresh(client, first["refresh_token"]).json["error"] == "refresh_token_reused"
    assert _refresh(client, second["refresh_token"]).status_code == 401  # family revoked
    third = login_as(user)
    with app.extensions["security_api"].session_factory() as session:
        session.execute(update(RefreshToken).values(expires_at=utcnow() - timedelta(seconds=1)))
        session.commit()
    assert _refresh(client, third["refresh_token"]).json["error"] == "token_expired"
    reasons = [e["reason"] for e in _events(app, "token.refresh_refused")]
    assert sorted(reasons) == ["expired", "reused", "revoked", "unknown"]
