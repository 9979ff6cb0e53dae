"""Through the API: approvers hear of new pending requests, requesters of decisions.

Notifications go out after the commit from the outbox, in a background thread: the tests wait
for them (polling with a deadline), then check nothing more arrived.
"""
import time

import pytest
from sqlalchemy import func, select

from security_api import audit
from security_api.access.catalog import ensure_permission, ensure_rule
from security_api.clock import utcnow
from security_api.enums import PolicyMode
from security_api.models import OutboxMessage
from tests import test_notify as kit
from tests.conftest import bearer

inbox, receiver = kit.inbox, kit.receiver


def wait_for(predicate, *, timeout: float = 10.0, what: str = "the notification"):
    """Poll until `predicate()` is truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not arrive within {timeout} s")
        time.sleep(0.02)
    return value


def outbox_rows(app) -> int:
    with app.extensions["security_api"].session_factory() as session:
        return session.scalar(select(func.count()).select_from(OutboxMessage))


def undelivered(app) -> int:
    with app.extensions["security_api"].session_factory() as session:
        return session.scalar(select(func.count()).select_from(OutboxMessage)
                              .where(OutboxMessage.delivered_at.is_(None)))


def _world(app):
    services = app.extensions["security_api"]
    with services.session_factory() as session:
        kw = {"actor": "test", "origin": audit.Origin(), "now": utcnow()}
        ensure_permission(session, key="db", name="DB", max_duration_minutes=60,
                          settings=services.settings, **kw)
        ensure_permission(session, key="vpn", name="VPN", max_duration_minutes=60,
                          settings=services.settings, **kw)
        ensure_rule(session, permission="db", role="developer", subrole="*",
                    mode=PolicyMode.APPROVAL, approvers=["security/lead"], **kw)
        ensure_rule(session, permission="vpn", role="*", subrole="*", mode=PolicyMode.AUTO, **kw)
        session.commit()


@pytest.fixture
def app(make_app, inbox, receiver):
    return make_app(smtp_host="127.0.0.1", smtp_port=inbox.port, smtp_starttls=False,
                    notify_webhook_url=receiver.url)


def test_pending_and_decided_notifications(app, client, make_user, login_as, inbox, receiver):
    alice = make_user("alice", email="alice@example.com")
    lead = make_user("lead", role="security", subrole="lead", email="lead@example.com")
    make_user("lead2", role="security", subrole="lead", email="lead2@example.com")
    make_user("bob", role="developer", subrole="frontend", email="bob@example.com")
    _world(app)
    alice_token = login_as(alice)["token"]
    lead_token = login_as(lead)["token"]

    auto = client.post("/v1/requests", headers=bearer(alice_token), json={"permission": "vpn"})
    assert auto.json["request"]["status"] == "active"
    assert outbox_rows(app) == 0  # auto grants need no news

    created = client.post("/v1/requests", headers=bearer(alice_token),
                          json={"permission": "db", "justification": "incident"}).json["request"]
    wait_for(lambda: len(inbox.messages()) == 2 and receiver.received)
    wait_for(lambda: undelivered(app) == 0, what="the delivery mark")
    recipients = sorted(tuple(rcpts) for rcpts, _ in inbox.messages())
    assert recipients == [("lead2@example.com",), ("lead@example.com",)]
    assert "alice" in receiver.received[0]["json"]["text"]

    client.post(f"/v1/requests/{created['id']}/approve", headers=bearer(lead_token),
                json={"comment": "ok"})
    wait_for(lambda: len(inbox.messages()) == 3 and len(receiver.received) == 2)
    wait_for(lambda: undelivered(app) == 0, what="the delivery mark")
    rcpts, message = inbox.messages()[-1]
    assert rcpts == ["alice@example.com"]
    assert "db" in message["Subject"] and "approved" in message["Subject"]
    assert len(receiver.received) == 2 and len(inbox.messages()) == 3
