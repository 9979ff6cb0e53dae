"""Pending requests expire after their rule's pending_ttl_minutes; grants that end say so;
holders are warned once before a grant ends (issue 14, API.md part 2).

Time moves the way the other tests move it: the deadlines are written back into the rows,
then the reaper (`reap_once`, as `flask reap` and the background thread run it) is called.
"""
from __future__ import annotations

import json
import threading
from datetime import timedelta

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import select, update

from security_api import audit
from security_api.access.catalog import ensure_permission, ensure_rule
from security_api.access.reaper import reap_once
from security_api.clock import as_utc, utcnow
from security_api.enums import AuditAction, PolicyMode
from security_api.integrations import outbox
from security_api.models import AccessRequest, AuditEvent, OutboxMessage
from tests import test_notify as kit
from tests.conftest import bearer
from tests.test_announce import undelivered, wait_for

inbox, receiver = kit.inbox, kit.receiver


@pytest.fixture
def app(make_app, inbox, receiver):
    return make_app(smtp_host="127.0.0.1", smtp_port=inbox.port, smtp_starttls=False,
                    notify_webhook_url=receiver.url)


def _services(app):
    return app.extensions["security_api"]


def _world(app, *, pending_ttl_minutes: int = 30):
    services = _services(app)
    with services.session_factory() as session:
        kw = {"actor": "test", "origin": audit.Origin(), "now": utcnow()}
        for key in ("db", "vpn"):
            ensure_permission(session, key=key, name=key.upper(), max_duration_minutes=60,
                              settings=services.settings, **kw)
        ensure_rule(session, permission="db", role="developer", subrole="*",
                    mode=PolicyMode.APPROVAL, approvers=["security/lead"],
                    pending_ttl_minutes=pending_ttl_minutes, **kw)
        ensure_rule(session, permission="vpn", role="*", subrole="*", mode=PolicyMode.AUTO, **kw)
        session.commit()


def _people(make_user, login_as):
    alice = make_user("alice", email="alice@example.com")
    lead = make_user("lead", role="security", subrole="lead", email="lead@example.com")
    return bearer(login_as(alice)["token"]), bearer(login_as(lead)["token"])


def _move(app, request_id: str, **values) -> None:
    with _services(app).session_factory() as session:
        session.execute(update(AccessRequest).where(AccessRequest.id == request_id).values(**values))
        session.commit()


def _outbox(app, kind: str) -> list[OutboxMessage]:
    with _services(app).session_factory() as session:
        return list(session.scalars(select(OutboxMessage).where(OutboxMessage.kind == kind)))


def _audits(app, action: str) -> list[AuditEvent]:
    with _services(app).session_factory() as session:
        return list(session.scalars(select(AuditEvent).where(AuditEvent.action == action)))


def _metric(name: str, **labels) -> float:
    return REGISTRY.get_sample_value(name, labels or None) or 0.0


def _pending(app, client, alice_h) -> dict:
    response = client.post("/v1/requests", headers=alice_h,
                           json={"permission": "db", "justification": "incident"})
    assert response.status_code == 201, response.json
    return response.json["request"]


# ---- pending expiry ----------------------------------------------------------------------------
def test_a_pending_request_records_its_deadline_from_the_rule(app, client, make_user, login_as):
    alice_h, _ = _people(make_user, login_as)
    _world(app, pending_ttl_minutes=30)
    created = _pending(app, client, alice_h)
    assert created["status"] == "pending" and created["expired_reason"] is None
    with _services(app).session_factory() as session:
        row = session.get(AccessRequest, created["id"])
        assert as_utc(row.pending_expires_at) - as_utc(row.created_at) == timedelta(minutes=30)
    auto = client.post("/v1/requests", headers=alice_h, json={"permission": "vpn"}).json["request"]
    assert auto["status"] == "active" and auto["pending_expires_at"] is None
    assert auto["expired_reason"] is None


def test_a_rule_change_does_not_move_a_waiting_requests_deadline(app, client, make_user,
                                                                 login_as):
    alice_h, _ = _people(make_user, login_as)
    admin = make_user("root", role="security", subrole="admin")
    admin_h = bearer(login_as(admin)["token"])
    _world(app, pending_ttl_minutes=30)
    created = _pending(app, client, alice_h)
    rule_id = client.get("/v1/admin/policies?permission=db", headers=admin_h).json["policies"][0]["id"]
    patched = client.patch(f"/v1/admin/policies/{rule_id}", headers=admin_h,
                           json={"pending_ttl_minutes": 5})
    assert patched.status_code == 200 and patched.json["policy"]["pending_ttl_minutes"] == 5
    again = client.get(f"/v1/requests/{created['id']}", headers=alice_h).json["request"]
    assert again["pending_expires_at"] == created["pending_expires_at"]


def test_pending_expires_once_with_reason_and_the_requester_is_told(app, client, make_user,
                                                                    login_as, inbox, receiver):
    alice_h, lead_h = _people(make_user, login_as)
    _world(app)
    created = _pending(app, client, alice_h)
    wait_for(lambda: undelivered(app) == 0, what="the pending notification")
    before = _metric("security_api_access_requests_expired_total", reason="not_decided")
    _move(app, created["id"], pending_expires_at=utcnow() - timedelta(seconds=1))

    # Past the deadline it reads as expired at once, before any reaper ran.
    read = client.get(f"/v1/requests/{created['id']}", headers=alice_h).json["request"]
    assert read["status"] == "expired" and read["expired_reason"] == "not_decided"
    assert client.get("/v1/requests?scope=approvable", headers=lead_h).json["requests"] == []

    assert reap_once(_services(app)) == 1
    assert reap_once(_services(app)) == 0  # exactly once
    with _services(app).session_factory() as session:
        row = session.get(AccessRequest, created["id"])
        assert (row.status, row.expired_reason) == ("expired", "not_decided")
    [told] = _outbox(app, outbox.DECIDED)
    assert told.payload["recipients"] == ["alice@example.com"]
    assert told.payload["request"]["expired_reason"] == "not_decided"
    [event] = _audits(app, AuditAction.REQUEST_EXPIRED)
    assert event.target == created["id"] and json.loads(event.details) == {"reason": "not_decided"}
    assert _metric("security_api_access_requests_expired_total",
                   reason="not_decided") == before + 1
    wait_for(lambda: undelivered(app) == 0, what="the expiry notification")
    mails = [m for rcpts, m in inbox.messages() if rcpts == ["alice@example.com"]]
    assert len(mails) == 1 and "expired before anyone decided it" in mails[0]["Subject"]


@pytest.mark.parametrize("action", ["approve", "deny"])
def test_deciding_after_the_deadline_is_409(app, client, make_user, login_as, action):
    alice_h, lead_h = _people(make_user, login_as)
    _world(app)
    created = _pending(app, client, alice_h)
    _move(app, created["id"], pending_expires_at=utcnow() - timedelta(seconds=1))
    late = client.post(f"/v1/requests/{created['id']}/{action}", headers=lead_h, json={})
    assert late.status_code == 409 and late.json["error"] == "request_not_pending"
    reap_once(_services(app))
    again = client.post(f"/v1/requests/{created['id']}/{action}", headers=lead_h, json={})
    assert again.status_code == 409
    cancel = client.post(f"/v1/requests/{created['id']}/cancel", headers=alice_h)
    assert cancel.status_code == 409


def test_an_approval_racing_the_expiry_exactly_one_wins(app, client, make_user, login_as):
    alice_h, lead_h = _people(make_user, login_as)
    _world(app)
    created = _pending(app, client, alice_h)
    # The deadline is a moment away: the reaper (told it is later) and the approval race.
    _move(app, created["id"], pending_expires_at=utcnow() + timedelta(seconds=30))
    services, barrier, results = _services(app), threading.Barrier(2), {}

    def reaper():
        from security_api.access.pending_expiry import expire_pending_due
        barrier.wait()
        with services.session_factory() as session:
            results["expired"] = expire_pending_due(session, now=utcnow() + timedelta(minutes=1),
                                                    origin=audit.Origin(ip="reaper"))

    def approver():
        with app.test_client() as other:
            barrier.wait()
            results["approve"] = other.post(f"/v1/requests/{created['id']}/approve",
                                            headers=lead_h, json={}).status_code

    threads = [threading.Thread(target=reaper), threading.Thread(target=approver)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert (results["expired"] == 1) != (results["approve"] == 200), results
    final = client.get(f"/v1/requests/{created['id']}", headers=alice_h).json["request"]
    assert final["status"] == ("expired" if results["expired"] else "active")


def test_an_ended_grant_says_ended(app, client, make_user, login_as):
    alice_h, _ = _people(make_user, login_as)
    _world(app)
    grant = client.post("/v1/requests", headers=alice_h, json={"permission": "vpn"}).json["request"]
    _move(app, grant["id"], expires_at=utcnow() - timedelta(seconds=1))
    read = client.get(f"/v1/requests/{grant['id']}", headers=alice_h).json["request"]
    assert (read["status"], read["expired_reason"]) == ("expired", "ended")
    assert reap_once(_services(app)) == 1
    read = client.get(f"/v1/requests/{grant['id']}", headers=alice_h).json["request"]
    assert (read["status"], read["expired_reason"]) == ("expired", "ended")
    [event] = _audits(app, AuditAction.REQUEST_EXPIRED)
    assert json.loads(event.details) == {"reason": "ended"}


# ---- expiry warnings ---------------------------------------------------------------------------
def _grant_ending_in(app, client, alice_h, minutes: int) -> str:
    grant = client.post("/v1/requests", headers=alice_h, json={"permission": "vpn"}).json["request"]
    _move(app, grant["id"], expires_at=utcnow() + timedelta(minutes=minutes))
    return grant["id"]


def test_the_holder_is_warned_once_with_a_link_to_extend(app, client, make_user, login_as,
                                                         inbox, receiver):
    alice_h, _ = _people(make_user, login_as)
    _world(app)
    before = _metric("security_api_expiry_warnings_sent_total")
    soon = _grant_ending_in(app, client, alice_h, 10)
    wait_for(lambda: undelivered(app) == 0, what="quiet")
    assert reap_once(_services(app)) == 0 and reap_once(_services(app)) == 0
    [warning] = _outbox(app, outbox.EXPIRY_WARNING)
    assert warning.payload["recipients"] == ["alice@example.com"]
    assert warning.payload["request"]["id"] == soon
    assert len(_audits(app, AuditAction.REQUEST_EXPIRY_WARNING_SENT)) == 1
    assert _metric("security_api_expiry_warnings_sent_total") == before + 1
    wait_for(lambda: undelivered(app) == 0, what="the warning")
    [(rcpts, mail)] = inbox.messages()
    assert rcpts == ["alice@example.com"] and "ends at" in mail["Subject"]
    assert f"/portal/requests/{soon}" in mail.get_content()
    with receiver.lock:
        assert [c for c in receiver.received if f"/portal/requests/{soon}" in c["json"]["text"]]


def test_grants_far_from_their_end_are_not_warned(app, client, make_user, login_as):
    alice_h, _ = _people(make_user, login_as)
    _world(app)
    _grant_ending_in(app, client, alice_h, 40)
    reap_once(_services(app))
    assert _outbox(app, outbox.EXPIRY_WARNING) == []


def test_a_moved_end_can_be_warned_about_again(app, client, make_user, login_as):
    """An extension moves expires_at: the new end is a new warning, the old one is not repeated."""
    alice_h, _ = _people(make_user, login_as)
    _world(app)
    grant_id = _grant_ending_in(app, client, alice_h, 10)
    reap_once(_services(app))
    _move(app, grant_id, expires_at=utcnow() + timedelta(minutes=12))  # as extend would
    reap_once(_services(app))
    reap_once(_services(app))
    assert len(_outbox(app, outbox.EXPIRY_WARNING)) == 2


def test_warnings_off_with_zero(app, make_app, client, make_user, login_as):
    alice_h, _ = _people(make_user, login_as)
    _world(app)
    _grant_ending_in(app, client, alice_h, 1)
    quiet = make_app(expiry_warning_minutes=0)  # another instance, same database
    reap_once(_services(quiet))
    assert _outbox(app, outbox.EXPIRY_WARNING) == []
