"""The Slack message goes through the outbox: retried while Slack is down, posted once, updated.

Also what links a Slack member to an account (admin API, CLI) and the settings' guard rails.
"""
from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from config import ConfigError, load_settings
from security_api.clock import utcnow
from security_api.integrations.outbox_delivery import deliver_due
from security_api.integrations.slack_messages import SLACK_KINDS
from security_api.models import OutboxMessage, SlackMessage, User
from tests.conftest import basic, bearer
from tests.fake_slack import fake_slack
from tests.slack_kit import IDS, TOKEN, link, press, slack_settings, world
from tests.test_announce import wait_for

LATER = timedelta(hours=2)  # past any back-off


@pytest.fixture
def fake():
    with fake_slack(TOKEN) as server:
        yield server


def _slack_rows(app) -> list[OutboxMessage]:
    with app.extensions["security_api"].session_factory() as session:
        return list(session.scalars(select(OutboxMessage).where(OutboxMessage.kind.in_(SLACK_KINDS))
                                    .order_by(OutboxMessage.created_at)))


def _ask(client, headers) -> str:
    return client.post("/v1/requests", headers=headers, json={
        "permission": "db", "justification": "x", "duration_minutes": 5}).json["request"]["id"]


def test_slack_down_then_up_message_posted_once_then_updated(make_app, fake, make_user):
    fake.down = True
    app = make_app(**slack_settings(fake))
    client = app.test_client()
    alice = make_user("alice")
    make_user("lead", role="security", subrole="lead")
    world(app)
    link(app, lead=IDS["lead"])
    login = client.post("/v1/login", headers=_basic(alice), json={"totp": alice.next_code()})
    request_id = _ask(client, bearer(login.json["token"]))
    assert press(client, user=IDS["lead"], request_id=request_id).status_code == 200
    wait_for(lambda: all(r.attempts >= 1 for r in _slack_rows(app)) and len(_slack_rows(app)) >= 2,
             what="the failed attempts")
    assert all(r.delivered_at is None and r.last_error for r in _slack_rows(app))
    assert fake.done("chat.postMessage") == []

    fake.down = False
    services = app.extensions["security_api"]
    deliver_due(services, now=utcnow() + LATER)
    deliver_due(services, now=utcnow() + 2 * LATER)  # an update whose post came second
    assert all(r.delivered_at is not None for r in _slack_rows(app))
    posted = fake.done("chat.postMessage")
    assert len(posted) == 1
    assert "approved*" in posted[0]["blocks"][0]["text"]["text"]  # the state when sent
    updates = fake.done("chat.update")
    assert updates and all(u["ts"] in fake.messages for u in updates)
    assert deliver_due(services, now=utcnow() + 3 * LATER) == 0
    assert len(fake.done("chat.postMessage")) == 1


def _basic(user):
    return basic(user.username, user.password)


def test_a_wrong_bot_token_is_retried_not_dropped(make_app, fake, make_user, login_as):
    app = make_app(**{**slack_settings(fake), "slack_bot_token": "xoxb-wrong-token-000000000"})
    request_id = _ask(app.test_client(), _setup_login(app, make_user))
    wait_for(lambda: [r for r in _slack_rows(app) if r.attempts >= 1], what="the attempt")
    row = _slack_rows(app)[0]
    assert row.delivered_at is None and "invalid_auth" in row.last_error
    assert [c["authorization"] for c in fake.calls][0] == "Bearer xoxb-wrong-token-000000000"
    with app.extensions["security_api"].session_factory() as session:
        assert session.get(SlackMessage, request_id).ts is None


def _setup_login(app, make_user) -> dict:
    alice = make_user("alice")
    make_user("lead", role="security", subrole="lead")
    world(app)
    client = app.test_client()
    login = client.post("/v1/login", headers=_basic(alice), json={"totp": alice.next_code()})
    return bearer(login.json["token"])


def test_a_deleted_message_ends_the_update_for_good(make_app, fake, make_user):
    app = make_app(**slack_settings(fake))
    client = app.test_client()
    request_id = _ask(client, _setup_login(app, make_user))
    link(app, lead=IDS["lead"])
    wait_for(lambda: fake.done("chat.postMessage"))
    wait_for(lambda: all(r.delivered_at for r in _slack_rows(app)))
    with fake.lock:
        fake.messages.clear()  # someone deleted it in Slack
    assert press(client, user=IDS["lead"], request_id=request_id, action="deny").status_code == 200
    wait_for(lambda: any(r.kind == "slack.update" for r in _slack_rows(app))
             and all(r.delivered_at for r in _slack_rows(app)), what="the update counted as done")
    assert [c["body"].get("ts") for c in fake.calls if c["method"] == "chat.update"]


# ---- linking a Slack member to an account ---------------------------------------------------
@pytest.fixture
def admin(make_user, login_as):
    """Headers of a signed-in administrator (security/admin holds security-api.admin)."""
    return bearer(login_as(make_user("root", role="security", subrole="admin"))["token"])


def test_admin_sets_shows_and_clears_slack_user_id(client, make_user, admin):
    bob = make_user("bob")
    carol = make_user("carol")
    url = f"/v1/admin/users/{bob.id}"
    set_ = client.patch(url, headers=admin, json={"slack_user_id": "U012AB3CD"})
    assert set_.status_code == 200 and set_.json["user"]["slack_user_id"] == "U012AB3CD"
    assert client.get(url, headers=admin).json["user"]["slack_user_id"] == "U012AB3CD"
    taken = client.patch(f"/v1/admin/users/{carol.id}", headers=admin,
                         json={"slack_user_id": "U012AB3CD"})
    assert taken.status_code == 409 and taken.json["error"] == "slack_user_taken"
    bad = client.patch(url, headers=admin, json={"slack_user_id": "not-an-id"})
    assert bad.status_code == 412 and bad.json["errors"][0]["field"] == "slack_user_id"
    cleared = client.patch(url, headers=admin, json={"slack_user_id": None})
    assert cleared.status_code == 200 and cleared.json["user"]["slack_user_id"] is None


def test_service_accounts_cannot_be_linked(client, make_user, admin):
    robot = make_user("robot", kind="service")
    response = client.patch(f"/v1/admin/users/{robot.id}", headers=admin,
                            json={"slack_user_id": "U0ROBOT01"})
    assert response.status_code == 412


def test_cli_links_and_unlinks(app, runner, make_user, db_session):
    make_user("bob")
    result = runner.invoke(args=["slack-link", "bob", "UBOB0001"])
    assert result.exit_code == 0, result.output
    assert db_session.scalar(select(User.slack_user_id).where(User.username == "bob")) == "UBOB0001"
    assert runner.invoke(args=["slack-link", "nobody", "UX0000001"]).exit_code != 0
    assert runner.invoke(args=["slack-link", "bob", "lowercase"]).exit_code != 0
    assert runner.invoke(args=["slack-link", "bob", "--unlink"]).exit_code == 0
    db_session.expire_all()
    assert db_session.scalar(select(User.slack_user_id).where(User.username == "bob")) is None


# ---- settings -------------------------------------------------------------------------------
PRODUCTION = {"SECURITY_API_ENV": "production", "DATABASE_URL": "postgresql://db/x",
              "JWT_SECRET": "j" * 16 + "K" * 16 + "abcdefgh", "AUDIT_CHAIN_KEY": "a1b2c3d4e5f6g7h8" * 3}


@pytest.mark.parametrize(("environ", "message"), [
    ({"SLACK_BOT_TOKEN": TOKEN}, "SLACK_CHANNEL"),
    ({"SLACK_BOT_TOKEN": TOKEN, "SLACK_CHANNEL": "C1"}, "SLACK_SIGNING_SECRET"),
    ({"SLACK_BOT_TOKEN": TOKEN, "SLACK_CHANNEL": "C1", "SLACK_SIGNING_SECRET": "short"},
     "SLACK_SIGNING_SECRET must be at least"),
    ({"SLACK_BOT_TOKEN": TOKEN, "SLACK_CHANNEL": "C1", "SLACK_SIGNING_SECRET": "a" * 40},
     "too weak"),
    ({"SLACK_BOT_TOKEN": TOKEN, "SLACK_CHANNEL": "C1", "SLACK_SIGNING_SECRET": "s0" * 8 + "X1y2Z3w4" * 3,
      "SLACK_API_URL": "http://slack.example"}, "https"),
])
def test_production_refuses_unsafe_slack_settings(environ, message):
    from cryptography.fernet import Fernet
    base = {**PRODUCTION, "DATA_ENCRYPTION_KEYS": Fernet.generate_key().decode()}
    with pytest.raises(ConfigError, match=message):
        load_settings({**base, **environ})
