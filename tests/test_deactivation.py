"""Deactivation and role changes take access back; approvals and retries re-check eligibility.

Through the HTTP API, with the webhook receiver's call log as the witness of what reached the
outside world: the revoke is sent on deactivation, the grant is never sent on a late approval.
"""
from __future__ import annotations

import pytest
from sqlalchemy import select, update

from security_api import audit
from security_api.access.catalog import ensure_rule
from security_api.accounts import principal_cache
from security_api.clock import utcnow
from security_api.enums import PolicyMode
from security_api.models import AuditEvent, PolicyRule, User
from tests import test_concurrency as kit
from tests.conftest import bearer
from tests.receivers import serving
from tests.test_announce import undelivered, wait_for

receiver = kit.receiver
USERS = "/v1/admin/users"


@pytest.fixture
def chat():
    with serving("/chat") as server:
        yield server


@pytest.fixture
def app(make_app, chat):
    return make_app(webhook_signing_secret=kit.SIGNING_SECRET, notify_webhook_url=chat.url)


@pytest.fixture
def world(app, client, make_user, login_as, receiver):
    """alice (developer), a lead who approves, an admin, and a bot that may check."""
    alice = make_user("alice", role="developer", subrole="backend", email="alice@example.com")
    lead = make_user("lead", role="security", subrole="lead")
    root = make_user("root", role="security", subrole="admin")
    bot = make_user("bot", role="tools", subrole="ci", kind="service",
                    password="s3rvice-secret-long-enough-42")
    kit.add_webhook_permission(app, receiver, "vpn", mode=PolicyMode.AUTO)
    kit.add_webhook_permission(app, receiver, "db", mode=PolicyMode.APPROVAL)
    services = app.extensions["security_api"]
    with services.session_factory() as session:
        ensure_rule(session, permission="security-api.check", role="tools", subrole="ci",
                    mode=PolicyMode.STANDING, actor="test", origin=audit.Origin(), now=utcnow())
        session.commit()
    return {"alice": alice, "alice_h": bearer(login_as(alice)["token"]),
            "lead_h": bearer(login_as(lead)["token"]), "admin_h": bearer(login_as(root)["token"]),
            "bot_h": bearer(login_as(bot)["token"])}


def _request(client, headers, permission) -> dict:
    response = client.post("/v1/requests", headers=headers,
                           json={"permission": permission, "justification": "work"})
    assert response.status_code == 201, response.json
    return response.json["request"]


def _status(client, world, request_id) -> str:
    response = client.get(f"/v1/requests/{request_id}", headers=world["admin_h"])
    assert response.status_code == 200, response.json
    return response.json["request"]["status"]


def _patch(client, world, **fields):
    response = client.patch(f"{USERS}/{world['alice'].id}", headers=world["admin_h"], json=fields)
    assert response.status_code == 200, response.json
    return response


def _allowed(client, world, permission) -> bool:
    response = client.get(f"/v1/check?user=alice&permission={permission}", headers=world["bot_h"])
    assert response.status_code == 200, response.json
    return response.json["allowed"]


def _reasons(db_session, action, target) -> list:
    db_session.expire_all()
    return [event.details for event in db_session.scalars(select(AuditEvent).where(
                AuditEvent.action == action, AuditEvent.target == target))]


def test_deactivation_revokes_grants_cancels_requests_and_reactivation_gives_nothing_back(
        app, client, world, receiver, chat, db_session):
    granted = _request(client, world["alice_h"], "vpn")
    assert granted["status"] == "active" and receiver.count("grant", granted["id"]) == 1
    pending = _request(client, world["alice_h"], "db")
    assert pending["status"] == "pending"
    assert _allowed(client, world, "vpn") is True
    # Notifications go out after the commit, in the background: count once all are out.
    wait_for(lambda: undelivered(app) == 0, what="the pending notification")
    told_before = len(chat.received)

    _patch(client, world, active=False)

    # The grant ends through the state machine, and the provisioner's revoke is sent.
    assert _status(client, world, granted["id"]) == "revoked"
    assert receiver.count("revoke", granted["id"]) == 1
    assert _status(client, world, pending["id"]) == "cancelled"
    assert "deactivated" in str(_reasons(db_session, "request.revoked", granted["id"]))
    assert "deactivated" in str(_reasons(db_session, "request.cancelled", pending["id"]))
    wait_for(lambda: undelivered(app) == 0, what="the ending notifications")
    assert len(chat.received) - told_before == 2  # told like any other decision

    # The late approval grants nothing: no grant call reaches the outside.
    response = client.post(f"/v1/requests/{pending['id']}/approve", headers=world["lead_h"],
                           json={"comment": "late"})
    assert response.status_code == 409, response.json
    assert receiver.count("grant", pending["id"]) == 0

    # Reactivation brings nothing back.
    _patch(client, world, active=True)
    assert _allowed(client, world, "vpn") is False
    assert _allowed(client, world, "db") is False
    assert receiver.count("grant") == 1


def test_approval_of_a_deactivated_requester_is_refused(app, client, world, receiver):
    pending = _request(client, world["alice_h"], "db")
    # As if the deactivation raced the approval (or was written before this rule existed).
    with app.extensions["security_api"].session_factory() as session:
        principal_cache.changed(session, world["alice"].id)  # a bulk update must register
        session.execute(update(User).where(User.id == world["alice"].id).values(active=False))
        session.commit()
    response = client.post(f"/v1/requests/{pending['id']}/approve", headers=world["lead_h"],
                           json={"comment": "ok"})
    assert response.status_code == 409 and response.json["error"] == "no_longer_eligible", \
        response.json
    assert receiver.count("grant", pending["id"]) == 0
    assert _status(client, world, pending["id"]) == "pending"


def test_approval_after_the_policy_stopped_allowing_it_is_refused(
        app, client, world, receiver, db_session):
    pending = _request(client, world["alice_h"], "db")
    rule_id = db_session.scalar(select(PolicyRule.id).where(PolicyRule.permission_key == "db"))
    response = client.delete(f"/v1/admin/policies/{rule_id}", headers=world["admin_h"])
    assert response.status_code in (200, 204), response.json
    response = client.post(f"/v1/requests/{pending['id']}/approve", headers=world["lead_h"],
                           json={"comment": "ok"})
    assert response.status_code == 409 and response.json["error"] == "no_longer_eligible"
    assert receiver.count("grant", pending["id"]) == 0


def test_retry_of_a_deactivated_requester_is_refused(client, world, receiver):
    receiver.status = 500
    failed = _request(client, world["alice_h"], "vpn")
    assert failed["status"] == "failed" and receiver.count("grant", failed["id"]) == 1
    receiver.status = 200
    _patch(client, world, active=False)
    response = client.post(f"/v1/requests/{failed['id']}/retry", headers=world["admin_h"], json={})
    assert response.status_code == 409 and response.json["error"] == "no_longer_eligible"
    assert receiver.count("grant", failed["id"]) == 1


def test_role_change_takes_back_only_what_the_new_role_could_not_request(
        app, client, world, receiver, db_session):
    services = app.extensions["security_api"]
    with services.session_factory() as session:
        # Everyone may have `wiki`, so moving roles keeps it.
        kit.add_webhook_permission(app, receiver, "wiki", mode=PolicyMode.AUTO)
        ensure_rule(session, permission="wiki", role="*", subrole="*", mode=PolicyMode.AUTO,
                    actor="test", origin=audit.Origin(), now=utcnow())
        session.commit()
    vpn = _request(client, world["alice_h"], "vpn")
    wiki = _request(client, world["alice_h"], "wiki")
    db = _request(client, world["alice_h"], "db")
    with services.session_factory() as session:
        from security_api.accounts import users as accounts
        accounts.create_role(session, name="sales", subroles=["emea"], actor="test",
                             origin=audit.Origin(), now=utcnow())
        session.commit()

    _patch(client, world, role="sales", subrole="emea")

    assert _status(client, world, vpn["id"]) == "revoked"
    assert receiver.count("revoke", vpn["id"]) == 1
    assert _status(client, world, db["id"]) == "cancelled"
    assert "role_changed" in str(_reasons(db_session, "request.revoked", vpn["id"]))
    assert "role_changed" in str(_reasons(db_session, "request.cancelled", db["id"]))
    assert _status(client, world, wiki["id"]) == "active"
    assert receiver.count("revoke", wiki["id"]) == 0
