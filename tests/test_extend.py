"""Extending a grant without a gap, through the HTTP API (POST /v1/requests/<id>/extend).

The permissions here use the webhook provisioner pointed at a local receiver: its call log is
how the tests see that an extension neither revokes nor grants again (tests/receivers.py).
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import pytest
from sqlalchemy import delete, select, update

from security_api import audit
from security_api.access import reaper
from security_api.access.catalog import ensure_permission, ensure_rule
from security_api.clock import utcnow
from security_api.enums import PolicyMode
from security_api.models import AccessRequest, AuditEvent, PolicyRule
from tests.conftest import bearer
from tests.receivers import serving

SIGNING_SECRET = "x" * 40
AUTO, APPROVAL = PolicyMode.AUTO, PolicyMode.APPROVAL
# key: (mode, max minutes, requires justification)
PERMISSIONS = {"ext-auto": (AUTO, 60, False), "ext-just": (AUTO, 60, True),
               "ext-appr": (APPROVAL, 120, False)}


@pytest.fixture
def app(make_app):
    return make_app(webhook_signing_secret=SIGNING_SECRET)


@dataclass
class World:
    app: object
    client: object
    hook: object
    users: dict
    login_as: object
    headers: dict = field(default_factory=dict)

    def h(self, name: str) -> dict:
        """One real login per user per test."""
        if name not in self.headers:
            self.headers[name] = bearer(self.login_as(self.users[name])["token"])
        return self.headers[name]

    def post(self, who: str, path: str, body: dict | None = None):
        return self.client.post(path, headers=self.h(who), json={} if body is None else body)

    def get(self, who: str, request_id: str) -> dict:
        response = self.client.get(f"/v1/requests/{request_id}", headers=self.h(who))
        assert response.status_code == 200, response.json
        return response.json["request"]

    def extend(self, who: str, request_id: str, **body):
        return self.post(who, f"/v1/requests/{request_id}/extend", body)

    def grant(self, permission: str, **body) -> dict:
        """alice holds `permission`: created (and approved by lead under approval)."""
        response = self.post("alice", "/v1/requests", {"permission": permission, **body})
        assert response.status_code == 201, response.json
        created = response.json["request"]
        if created["status"] == "pending":
            response = self.post("lead", f"/v1/requests/{created['id']}/approve")
            assert response.status_code == 200, response.json
            created = response.json["request"]
        assert created["status"] == "active", created
        return created


@pytest.fixture
def world(app, client, make_user, login_as):
    users = {"alice": make_user("alice", role="developer", subrole="backend"),
             "fred": make_user("fred", role="developer", subrole="frontend"),
             "lead": make_user("lead", role="security", subrole="lead"),
             "admin": make_user("admin", role="security", subrole="admin")}
    services = app.extensions["security_api"]
    kw = {"actor": "test", "origin": audit.Origin(), "now": utcnow()}
    with serving() as hook:
        with services.session_factory() as session:
            for key, (mode, minutes, justified) in PERMISSIONS.items():
                ensure_permission(session, key=key, name=key.title(), max_duration_minutes=minutes,
                                  requires_justification=justified, provisioner="webhook",
                                  provisioner_config={"url": hook.url},
                                  settings=services.settings, **kw)
                ensure_rule(session, permission=key, role="developer", subrole="*", mode=mode,
                            approvers=["security/lead"] if mode == APPROVAL else None, **kw)
            ensure_rule(session, permission="security-api.admin", role="security",
                        subrole="admin", mode=PolicyMode.STANDING, **kw)
            session.commit()
        yield World(app, client, hook, users, login_as)


def parse(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def calls(world: World, event: str, request_id: str) -> int:
    return world.hook.count(event, request_id)


def audit_actions(db_session, target: str) -> list[str]:
    db_session.expire_all()
    return list(db_session.scalars(select(AuditEvent.action).where(AuditEvent.target == target)
                                   .order_by(AuditEvent.seq)))


def move_past_expiry(db_session, *request_ids: str) -> None:
    """Time passes: the grants' end is one second ago (the reaper has not run)."""
    db_session.execute(update(AccessRequest).where(AccessRequest.id.in_(request_ids))
                       .values(expires_at=utcnow() - timedelta(seconds=1)))
    db_session.commit()


# ---- auto -------------------------------------------------------------------------------------
def test_auto_extend_moves_the_end_at_once_and_calls_no_provisioner(world, db_session):
    grant = world.grant("ext-auto", duration_minutes=5)
    assert (calls(world, "grant", grant["id"]), grant["extends"], grant["extended_by"]) == \
        (1, None, [])
    before = utcnow().replace(microsecond=0)  # rendered to the second
    response = world.extend("alice", grant["id"], duration_minutes=45, justification="more")
    assert response.status_code == 200, response.json
    extended = response.json["request"]
    assert extended["id"] == grant["id"] and extended["status"] == "active"
    expires = parse(extended["expires_at"])
    assert before + timedelta(minutes=45) <= expires <= utcnow() + timedelta(minutes=45)
    assert expires > parse(grant["expires_at"])
    assert (calls(world, "grant", grant["id"]), calls(world, "revoke", grant["id"])) == (1, 0)
    assert audit_actions(db_session, grant["id"])[-1] == "request.extended"
    held = world.client.get("/v1/me/permissions", headers=world.h("alice")).json["permissions"]
    assert [(h["request_id"], h["expires_at"]) for h in held] == \
        [(grant["id"], extended["expires_at"])]


def test_auto_extend_refuses_more_than_the_maximum_and_a_missing_justification(world):
    grant = world.grant("ext-auto", duration_minutes=5)
    response = world.extend("alice", grant["id"], duration_minutes=61)
    assert (response.status_code, response.json["error"]) == (412, "invalid_params")
    justified = world.grant("ext-just", duration_minutes=5, justification="why")
    response = world.extend("alice", justified["id"], duration_minutes=10)
    assert (response.status_code, response.json["error"]) == (412, "missing_params")
    assert world.get("alice", grant["id"])["expires_at"] == grant["expires_at"]
    response = world.extend("alice", grant["id"], duration_minutes="10")
    assert response.status_code in (400, 412) and "request" not in response.json


def test_extend_refuses_what_is_not_active_and_other_peoples_grants(world, db_session):
    pending = world.post("alice", "/v1/requests", {"permission": "ext-appr"}).json["request"]
    response = world.extend("alice", pending["id"], duration_minutes=5)
    assert (response.status_code, response.json["error"]) == (409, "request_not_active")
    grant = world.grant("ext-auto", duration_minutes=5)
    # Others: 404 for who may not see it, 403 for who may (an admin, an approver of it).
    assert [world.extend(who, grant["id"]).status_code for who in ("fred", "lead", "admin")] \
        == [404, 404, 403]
    assert world.extend("lead", pending["id"]).status_code == 403
    assert world.extend("alice", "no-such-id").status_code == 404
    move_past_expiry(db_session, grant["id"])  # past its end, not reaped yet: not active
    response = world.extend("alice", grant["id"], duration_minutes=5)
    assert (response.status_code, response.json["error"]) == (409, "request_not_active")
    assert db_session.get(AccessRequest, grant["id"]).status == "active"  # nothing moved
    revoked = world.grant("ext-just", duration_minutes=5, justification="why")
    assert world.post("alice", f"/v1/requests/{revoked['id']}/revoke").status_code == 200
    response = world.extend("alice", revoked["id"], duration_minutes=5, justification="why")
    assert (response.status_code, response.json["error"]) == (409, "request_not_active")


def test_extend_is_refused_when_the_policy_no_longer_allows_it(world, db_session):
    grant = world.grant("ext-auto", duration_minutes=5)
    db_session.execute(delete(PolicyRule).where(PolicyRule.permission_key == "ext-auto"))
    db_session.commit()
    response = world.extend("alice", grant["id"], duration_minutes=5)
    assert (response.status_code, response.json["error"]) == (403, "not_requestable")
    assert world.get("alice", grant["id"])["expires_at"] == grant["expires_at"]


def test_the_rule_of_today_decides_an_auto_grant_now_under_approval_waits(world, db_session):
    grant = world.grant("ext-auto", duration_minutes=5)
    db_session.execute(update(PolicyRule).where(PolicyRule.permission_key == "ext-auto")
                       .values(mode="approval", approvers=["security/lead"]))
    db_session.commit()
    response = world.extend("alice", grant["id"], duration_minutes=30)
    assert response.status_code == 201, response.json
    assert response.json["request"]["status"] == "pending"
    assert world.get("alice", grant["id"])["expires_at"] == grant["expires_at"]


# ---- approval -------------------------------------------------------------------------------------
def test_approval_extension_approved_in_time_continues_the_grant(world, db_session):
    grant = world.grant("ext-appr", duration_minutes=10)
    response = world.extend("alice", grant["id"], duration_minutes=90, justification="longer")
    assert response.status_code == 201, response.json
    extension = response.json["request"]
    assert (extension["status"], extension["extends"], extension["permission"]) == \
        ("pending", grant["id"], "ext-appr")
    assert world.get("alice", grant["id"])["extended_by"] == [extension["id"]]
    again = world.extend("alice", grant["id"], duration_minutes=60)
    assert (again.status_code, again.json["error"]) == (409, "extension_pending")
    own = world.post("alice", f"/v1/requests/{extension['id']}/approve")
    assert own.status_code == 403  # separation of duties, as for any request
    response = world.post("lead", f"/v1/requests/{extension['id']}/approve", {"comment": "ok"})
    assert response.status_code == 200, response.json
    approved, original = response.json["request"], world.get("alice", grant["id"])
    assert approved["status"] == "active" and original["status"] == "active"
    assert approved["expires_at"] == original["expires_at"] != grant["expires_at"]
    assert parse(original["expires_at"]) > utcnow() + timedelta(minutes=85)
    # No gap, no second provisioning: one grant call in all, no revoke.
    assert (calls(world, "grant", grant["id"]), calls(world, "grant", extension["id"]),
            calls(world, "revoke", grant["id"])) == (1, 0, 0)
    assert "request.extension_requested" in audit_actions(db_session, grant["id"])
    assert audit_actions(db_session, grant["id"])[-1] == "request.extended"
    assert audit_actions(db_session, extension["id"])[-1] == "request.activated"
    held = world.client.get("/v1/me/permissions", headers=world.h("alice")).json["permissions"]
    assert [h["request_id"] for h in held] == [grant["id"]]  # one grant, shown once


def test_revoking_the_original_also_ends_its_extension_with_one_revoke(world, db_session):
    grant = world.grant("ext-appr", duration_minutes=10)
    extension = world.extend("alice", grant["id"], duration_minutes=60).json["request"]
    assert world.post("lead", f"/v1/requests/{extension['id']}/approve").status_code == 200
    response = world.post("alice", f"/v1/requests/{grant['id']}/revoke")
    assert response.status_code == 200, response.json
    assert world.get("alice", extension["id"])["status"] == "revoked"
    assert world.get("alice", grant["id"])["status"] == "revoked"
    move_past_expiry(db_session, grant["id"], extension["id"])
    reaper.reap_once(world.app.extensions["security_api"])
    assert (calls(world, "revoke", grant["id"]), calls(world, "revoke", extension["id"])) == (1, 0)
    response = world.extend("alice", extension["id"], duration_minutes=5)
    assert (response.status_code, response.json["error"]) == (409, "request_not_active")


def test_revoking_the_extension_revokes_the_grant_it_continues(world):
    grant = world.grant("ext-appr", duration_minutes=10)
    extension = world.extend("alice", grant["id"], duration_minutes=60).json["request"]
    world.post("lead", f"/v1/requests/{extension['id']}/approve")
    response = world.post("alice", f"/v1/requests/{extension['id']}/revoke")
    assert (response.status_code, response.json["request"]["status"]) == (200, "revoked")
    assert world.get("alice", grant["id"])["status"] == "revoked"
    assert calls(world, "revoke", grant["id"]) == 1


def test_revoking_the_original_cancels_a_waiting_extension(world):
    grant = world.grant("ext-appr", duration_minutes=10)
    extension = world.extend("alice", grant["id"], duration_minutes=60).json["request"]
    assert world.post("alice", f"/v1/requests/{grant['id']}/revoke").status_code == 200
    assert world.get("alice", extension["id"])["status"] == "cancelled"
    response = world.post("lead", f"/v1/requests/{extension['id']}/approve")
    assert (response.status_code, response.json["error"]) == (409, "request_not_pending")


def test_grant_and_its_extension_expire_together_with_one_revoke(world, db_session):
    grant = world.grant("ext-appr", duration_minutes=10)
    extension = world.extend("alice", grant["id"], duration_minutes=60).json["request"]
    world.post("lead", f"/v1/requests/{extension['id']}/approve")
    move_past_expiry(db_session, grant["id"], extension["id"])
    assert reaper.reap_once(world.app.extensions["security_api"]) >= 1
    reaper.reap_once(world.app.extensions["security_api"])  # a second run finds nothing
    db_session.expire_all()
    assert [db_session.get(AccessRequest, i).status for i in (grant["id"], extension["id"])] == \
        ["expired", "expired"]
    assert (calls(world, "revoke", grant["id"]), calls(world, "revoke", extension["id"])) == (1, 0)


def test_extension_approved_after_the_original_expired_is_an_ordinary_grant(world, db_session):
    grant = world.grant("ext-appr", duration_minutes=10)
    extension = world.extend("alice", grant["id"], duration_minutes=60).json["request"]
    move_past_expiry(db_session, grant["id"])  # the reaper has not run: approval ends it
    response = world.post("lead", f"/v1/requests/{extension['id']}/approve")
    assert response.status_code == 200, response.json
    approved = response.json["request"]
    assert (approved["status"], approved["extends"]) == ("active", grant["id"])
    assert world.get("alice", grant["id"])["status"] == "expired"
    assert parse(approved["expires_at"]) > utcnow() + timedelta(minutes=55)
    # The old grant's revoke ran before the new grant: one of each, in that order.
    assert (calls(world, "revoke", grant["id"]), calls(world, "grant", extension["id"])) == (1, 1)
    events = [(c["json"]["event"], c["json"]["request_id"]) for c in world.hook.received]
    assert events.index(("revoke", grant["id"])) < events.index(("grant", extension["id"]))
    # It holds the slot now: a new request for the permission is refused as already active.
    response = world.post("alice", "/v1/requests", {"permission": "ext-appr"})
    assert (response.status_code, response.json["error"]) == (409, "already_active")
    # Expiring it is an ordinary expiry: its own revoke, once.
    move_past_expiry(db_session, extension["id"])
    reaper.reap_once(world.app.extensions["security_api"])
    assert calls(world, "revoke", extension["id"]) == 1


# ---- races ---------------------------------------------------------------------------------------
def race(*calls_):
    barrier = threading.Barrier(len(calls_))
    results: list = [None] * len(calls_)

    def run(index, call):
        barrier.wait(timeout=30)
        results[index] = call()

    threads = [threading.Thread(target=run, args=(i, c)) for i, c in enumerate(calls_)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return results


def poster(world: World, path: str, body: dict | None = None):
    headers = world.h("alice")

    def call():
        response = world.app.test_client().post(path, headers=headers, json=body or {})
        return response.status_code, response.json
    return call


def test_two_concurrent_approval_extends_make_one_extension(world, db_session):
    grant = world.grant("ext-appr", duration_minutes=10)
    path = f"/v1/requests/{grant['id']}/extend"
    results = race(*[poster(world, path, {"duration_minutes": 30}) for _ in range(4)])
    statuses = sorted(status for status, _ in results)
    assert statuses == [201, 409, 409, 409], results
    assert {body["error"] for status, body in results if status == 409} == {"extension_pending"}
    db_session.expire_all()
    assert len(world.get("alice", grant["id"])["extended_by"]) == 1


def test_extend_racing_a_revoke_never_leaves_a_revoked_grant_extended(world, db_session):
    for _ in range(3):
        grant = world.grant("ext-auto", duration_minutes=5)
        extend = poster(world, f"/v1/requests/{grant['id']}/extend", {"duration_minutes": 50})
        revoke = poster(world, f"/v1/requests/{grant['id']}/revoke")
        (extend_status, _), (revoke_status, _) = race(extend, revoke)
        assert revoke_status == 200 and extend_status in (200, 409)
        db_session.expire_all()
        row = db_session.get(AccessRequest, grant["id"])
        assert row.status == "revoked" and calls(world, "revoke", grant["id"]) == 1
        if extend_status == 409:  # revoked first: the end was never moved
            assert world.get("alice", grant["id"])["expires_at"] == grant["expires_at"]


def test_approving_an_extension_racing_a_revoke_never_leaves_it_active(world, db_session):
    lead = world.h("lead")
    for _ in range(3):
        grant = world.grant("ext-appr", duration_minutes=10)
        extension = world.extend("alice", grant["id"], duration_minutes=60).json["request"]

        def approve(extension_id=extension["id"]):
            response = world.app.test_client().post(
                f"/v1/requests/{extension_id}/approve", headers=lead, json={})
            return response.status_code, response.json

        revoke = poster(world, f"/v1/requests/{grant['id']}/revoke")
        (approve_status, _), (revoke_status, _) = race(approve, revoke)
        assert revoke_status == 200 and approve_status in (200, 409)
        db_session.expire_all()
        statuses = [db_session.get(AccessRequest, i).status for i in (grant["id"], extension["id"])]
        assert statuses == ["revoked", "revoked" if approve_status == 200 else "cancelled"]
        assert (calls(world, "revoke", grant["id"]), calls(world, "grant", extension["id"]),
                calls(world, "revoke", extension["id"])) == (1, 0, 0)
