"""The outbox: notifications written with the change, delivered after commit, once, never lost.

Through HTTP (and the CLI, and the reaper) against the real local receivers: a webhook
receiver and an aiosmtpd mail server.
"""
from __future__ import annotations

import threading
import time
from collections import Counter
from datetime import timedelta

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import select, update

from security_api.access.reaper import reap_once
from security_api.clock import utcnow
from security_api.integrations import outbox
from security_api.integrations.notify_channels import DELIVERY_HEADER
from security_api.integrations.outbox_delivery import BACKOFF_CAP_SECONDS, backoff, deliver_due
from security_api.models import AccessRequest, OutboxMessage
from tests import test_notify as kit
from tests.conftest import bearer
from tests.mail_server import MailServer
from tests.test_announce import _world, undelivered, wait_for

inbox, receiver = kit.inbox, kit.receiver
LATER = timedelta(hours=2)  # past any back-off: a delivery run "two hours on"


def _services(app):
    return app.extensions["security_api"]


def _rows(app) -> list[OutboxMessage]:
    with _services(app).session_factory() as session:
        return list(session.scalars(select(OutboxMessage).order_by(OutboxMessage.created_at)))


def _people(make_user, login_as):
    alice = make_user("alice", email="alice@example.com")
    lead = make_user("lead", role="security", subrole="lead", email="lead@example.com")
    make_user("lead2", role="security", subrole="lead", email="lead2@example.com")
    return bearer(login_as(alice)["token"]), bearer(login_as(lead)["token"])


def _metric(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


def _delivery_ids(receiver) -> list[str]:
    with receiver.lock:
        return [call["headers"][DELIVERY_HEADER] for call in receiver.received]


def _mail_keys(inbox) -> list[tuple[str, str]]:
    return [(rcpts[0], message[DELIVERY_HEADER]) for rcpts, message in inbox.messages()]


# ---- receivers down, then up --------------------------------------------------------------------
@pytest.fixture
def smtp_port():
    return kit.free_port()


@pytest.fixture
def app(request, make_app, inbox, receiver, smtp_port):
    """Working receivers by default; `failing` (webhook 503, no mail server), `hanging`."""
    kind = getattr(request, "param", "working")
    if kind == "hanging":
        receiver.delay = 60  # answers only when the test ends
        return make_app(notify_webhook_url=receiver.url, provisioner_timeout_seconds=30)
    if kind == "failing":
        receiver.status = 503
    return make_app(smtp_host="127.0.0.1", smtp_port=smtp_port if kind == "failing" else inbox.port,
                    smtp_starttls=False, notify_webhook_url=receiver.url)


failing = pytest.mark.parametrize("app", ["failing"], indirect=True)
hanging = pytest.mark.parametrize("app", ["hanging"], indirect=True)


@failing
def test_receivers_down_then_up_each_notification_delivered_once(
        app, client, make_user, login_as, receiver, smtp_port):
    failed_before = _metric("security_api_outbox_failed_attempts_total")
    delivered_before = _metric("security_api_outbox_delivered_total")
    alice_h, lead_h = _people(make_user, login_as)
    _world(app)
    created = client.post("/v1/requests", headers=alice_h,
                          json={"permission": "db", "justification": "incident"}).json["request"]
    approved = client.post(f"/v1/requests/{created['id']}/approve", headers=lead_h,
                           json={"comment": "ok"})
    assert approved.status_code == 200 and approved.json["request"]["status"] == "active"

    # Both attempted in the background, both failed, both kept with what went wrong.
    wait_for(lambda: all(row.attempts >= 1 for row in _rows(app)) and len(_rows(app)) == 2,
             what="the failed attempts")
    rows = _rows(app)
    assert [row.kind for row in rows] == [outbox.PENDING, outbox.DECIDED]
    assert all(row.delivered_at is None and "webhook: HTTP 503" in row.last_error
               and "email: ConnectionRefusedError" in row.last_error for row in rows)
    # Backing off: the next attempt waits at least the first back-off after the failed one.
    assert all(row.next_attempt_at - row.created_at >= backoff(1) for row in rows)
    assert deliver_due(_services(app)) == 0  # still down (or not due yet): nothing delivered
    assert _metric("security_api_outbox_pending") == 2
    assert _metric("security_api_outbox_oldest_pending_age_seconds") > 0
    assert _metric("security_api_outbox_failed_attempts_total") >= failed_before + 2

    receiver.status = 200
    with receiver.lock:
        receiver.received.clear()
    handler = kit.Inbox()
    controller = MailServer(handler, hostname="127.0.0.1", port=smtp_port)
    controller.start()
    try:
        assert deliver_due(_services(app), now=utcnow() + LATER) == 2
        assert deliver_due(_services(app), now=utcnow() + LATER) == 0  # delivered means done
        ids = [row.id for row in rows]
        assert sorted(_delivery_ids(receiver)) == sorted(ids)
        assert sorted(_mail_keys(handler)) == sorted([
            ("lead2@example.com", ids[0]), ("lead@example.com", ids[0]),
            ("alice@example.com", ids[1])])
        assert undelivered(app) == 0
        assert _metric("security_api_outbox_delivered_total") == delivered_before + 2
        assert _metric("security_api_outbox_pending") == 0
    finally:
        controller.stop()


def test_a_retry_skips_the_channels_already_reached(app, client, make_user, login_as,
                                                    inbox, receiver):
    alice_h, _ = _people(make_user, login_as)
    _world(app)
    receiver.status = 500
    client.post("/v1/requests", headers=alice_h, json={"permission": "db", "justification": "x"})
    wait_for(lambda: len(inbox.messages()) == 2 and _rows(app)[0].attempts == 1)
    [row] = _rows(app)
    assert row.delivered_at is None and "email:lead@example.com" in row.sent_channels

    receiver.status = 200
    assert deliver_due(_services(app), now=utcnow() + LATER) == 1
    assert len(inbox.messages()) == 2  # the mail went once, only the webhook was tried again
    assert _delivery_ids(receiver) == [row.id, row.id]  # the failed call, then the good one
    [row] = _rows(app)
    assert row.attempts == 2 and row.last_error is None and row.delivered_at is not None


def test_delivery_carries_the_outbox_id(app, client, make_user, login_as, inbox,
                                        receiver):
    alice_h, _ = _people(make_user, login_as)
    _world(app)
    client.post("/v1/requests", headers=alice_h, json={"permission": "db", "justification": "x"})
    wait_for(lambda: undelivered(app) == 0 and len(inbox.messages()) == 2)
    [row] = _rows(app)
    assert _delivery_ids(receiver) == [row.id]
    for _, message in inbox.messages():
        assert message[DELIVERY_HEADER] == row.id
        assert message["Message-ID"].startswith(f"<{row.id}.")
    assert len({message["Message-ID"] for _, message in inbox.messages()}) == 2


# ---- exactly one deliverer sends a row ----------------------------------------------------------
def test_racing_deliverers_send_each_notification_once(app, receiver):
    services = _services(app)
    receiver.delay = 0.2  # long enough for the racers to overlap
    with services.session_factory() as session:
        ids = [outbox.enqueue(session, outbox.DECIDED, {
            "request": kit.a_request(id=f"r{n}", status="denied"), "recipients": []})
            for n in range(6)]
        session.commit()  # also wakes the background deliverer: a third racer
    start = threading.Barrier(2)
    counts = []

    def racer():
        start.wait()
        counts.append(deliver_due(services))

    threads = [threading.Thread(target=racer) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wait_for(lambda: undelivered(app) == 0, what="every delivery")
    assert Counter(_delivery_ids(receiver)) == Counter(ids)  # each exactly once
    assert sum(counts) <= len(ids)


def test_a_lapsed_lease_lets_another_deliverer_take_over(app, receiver):
    """A deliverer that died holding a row: its lease lapses and the row is sent, not lost."""
    services = _services(app)
    with services.session_factory() as session:
        message_id = outbox.enqueue(session, outbox.DECIDED, {
            "request": kit.a_request(status="denied"), "recipients": []})
        session.execute(update(OutboxMessage).values(claimed_until=utcnow() + timedelta(minutes=5),
                                                     claim_token="dead-worker"))
        session.info.pop(outbox.WROTE_INFO)  # as if that worker died before waking anyone
        session.commit()
    assert deliver_due(services) == 0  # held by the (dead) worker's lease
    assert deliver_due(services, now=utcnow() + timedelta(minutes=6)) == 1
    assert _delivery_ids(receiver) == [message_id]


# ---- every path that changes a request notifies -------------------------------------------------
def _expire_grant(app, request_id: str) -> None:
    with _services(app).session_factory() as session:
        session.execute(update(AccessRequest).where(AccessRequest.id == request_id)
                        .values(expires_at=utcnow() - timedelta(minutes=1)))
        session.commit()


def _granted(app, client, make_user, login_as) -> str:
    alice_h, _ = _people(make_user, login_as)
    _world(app)
    grant = client.post("/v1/requests", headers=alice_h, json={"permission": "vpn"}).json
    assert grant["request"]["status"] == "active"
    _expire_grant(app, grant["request"]["id"])
    return grant["request"]["id"]


def test_the_reaper_expiry_notifies_the_requester(app, client, make_user, login_as,
                                                  inbox):
    request_id = _granted(app, client, make_user, login_as)
    assert reap_once(_services(app)) == 1
    rcpts, message = wait_for(lambda: inbox.messages() and inbox.messages()[0])
    assert rcpts == ["alice@example.com"] and "expired" in message["Subject"]
    assert f"/v1/requests/{request_id}" in message.get_content()
    wait_for(lambda: undelivered(app) == 0, what="the delivery mark")
    assert len(inbox.messages()) == 1


def test_the_cli_reap_command_notifies_the_requester(app, client, make_user, login_as,
                                                     inbox, receiver):
    _granted(app, client, make_user, login_as)
    result = app.test_cli_runner().invoke(args=["reap"])
    assert result.exit_code == 0 and "Expired 1 request(s)" in result.output
    wait_for(lambda: undelivered(app) == 0 and inbox.messages())
    [(rcpts, message)] = inbox.messages()
    assert rcpts == ["alice@example.com"] and "expired" in message["Subject"]
    assert "expired" in receiver.received[0]["json"]["text"]


def test_nothing_is_written_when_the_change_rolls_back(app):
    services = _services(app)
    with services.session_factory() as session:
        outbox.enqueue(session, outbox.PENDING, {"request": kit.a_request(), "recipients": []})
        session.rollback()
        assert outbox.WROTE_INFO not in session.info
    assert _rows(app) == []


# ---- the API call never waits for a receiver ----------------------------------------------------
@hanging
def test_a_hanging_receiver_does_not_slow_the_api_call(app, client, make_user, login_as,
                                                       receiver):
    alice_h, _ = _people(make_user, login_as)
    _world(app)
    started = time.monotonic()
    response = client.post("/v1/requests", headers=alice_h,
                           json={"permission": "db", "justification": "x"})
    took = time.monotonic() - started
    assert response.status_code == 201
    assert receiver.arrived.wait(10)  # the notification is on its way, in the background
    assert took < 5, f"POST /v1/requests waited {took:.1f} s for the receiver"
    assert undelivered(app) == 1  # still out there: not marked until the receiver answers


# ---- back-off -----------------------------------------------------------------------------------
def test_backoff_doubles_and_is_capped():
    assert [backoff(n).total_seconds() for n in (1, 2, 3, 4)] == [5, 10, 20, 40]
    assert backoff(50).total_seconds() == BACKOFF_CAP_SECONDS


# ---- the kinds added with pending expiry and warnings (pendingexp) ------------------------------
@failing
def test_expiry_and_warning_survive_receivers_down_then_up(app, client, make_user, login_as,
                                                           receiver, smtp_port):
    """A pending request expired by the reaper and a grant ending soon: both written while the
    receivers are down, both delivered once when they are back."""
    alice_h, _ = _people(make_user, login_as)
    _world(app)
    waiting = client.post("/v1/requests", headers=alice_h,
                          json={"permission": "db", "justification": "x"}).json["request"]
    grant = client.post("/v1/requests", headers=alice_h, json={"permission": "vpn"}).json["request"]
    with _services(app).session_factory() as session:
        session.execute(update(AccessRequest).where(AccessRequest.id == waiting["id"])
                        .values(pending_expires_at=utcnow() - timedelta(seconds=1)))
        session.execute(update(AccessRequest).where(AccessRequest.id == grant["id"])
                        .values(expires_at=utcnow() + timedelta(minutes=5)))
        session.commit()
    assert reap_once(_services(app)) == 1
    kinds = [outbox.PENDING, outbox.DECIDED, outbox.EXPIRY_WARNING]
    wait_for(lambda: sorted(row.kind for row in _rows(app) if row.attempts >= 1) == sorted(kinds),
             what="the failed attempts")
    assert undelivered(app) == 3

    receiver.status = 200
    with receiver.lock:
        receiver.received.clear()
    handler = kit.Inbox()
    controller = MailServer(handler, hostname="127.0.0.1", port=smtp_port)
    controller.start()
    try:
        assert deliver_due(_services(app), now=utcnow() + LATER) == 3
        assert deliver_due(_services(app), now=utcnow() + LATER) == 0
        assert reap_once(_services(app)) == 0  # the reaper writes no second warning or expiry
        assert deliver_due(_services(app), now=utcnow() + LATER) == 0
        ids = {row.kind: row.id for row in _rows(app)}
        assert sorted(_delivery_ids(receiver)) == sorted(ids.values())
        alice_mail = sorted(key for key in _mail_keys(handler) if key[0] == "alice@example.com")
        assert alice_mail == sorted([("alice@example.com", ids[outbox.DECIDED]),
                                     ("alice@example.com", ids[outbox.EXPIRY_WARNING])])
    finally:
        controller.stop()
