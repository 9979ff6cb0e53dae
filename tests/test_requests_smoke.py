"""Smoke: the access story end to end (auto, approval, check, revoke)."""
from sqlalchemy import select

from security_api import audit
from security_api.access.catalog import ensure_permission, ensure_rule
from security_api.clock import utcnow
from security_api.enums import PolicyMode
from tests.conftest import bearer


def _setup(app):
    services = app.extensions["security_api"]
    with services.session_factory() as session:
        kw = {"actor": "test", "origin": audit.Origin(), "now": utcnow()}
        ensure_permission(session, key="vpn", name="VPN", max_duration_minutes=60,
                          settings=services.settings, **kw)
        ensure_permission(session, key="db", name="DB", max_duration_minutes=120,
                          requires_justification=True, settings=services.settings, **kw)
        ensure_rule(session, permission="vpn", role="*", subrole="*", mode=PolicyMode.AUTO, **kw)
        ensure_rule(session, permission="db", role="developer", subrole="*",
                    mode=PolicyMode.APPROVAL, approvers=["security/lead"], **kw)
        ensure_rule(session, permission="security-api.check", role="tools", subrole="ci",
                    mode=PolicyMode.STANDING, **kw)
        session.commit()


def test_access_story(app, client, make_user, login_as):
    alice = make_user("alice")
    lead = make_user("lead", role="security", subrole="lead")
    bot = make_user("bot", role="tools", subrole="ci", kind="service",
                    password="s3rvice-secret-long-enough-42")
    _setup(app)
    a = bearer(login_as(alice)["token"])
    lead_h = bearer(login_as(lead)["token"])
    bot_h = bearer(login_as(bot)["token"])
    catalog = client.get("/v1/permissions", headers=a).json["permissions"]
    assert {p["key"]: p["mode"] for p in catalog} == {"vpn": "auto", "db": "approval"}
    vpn = client.post("/v1/requests", headers=a, json={"permission": "vpn"})
    assert vpn.status_code == 201, vpn.json
    assert vpn.json["request"]["status"] == "active"
    db_req = client.post("/v1/requests", headers=a, json={"permission": "db",
                                                          "justification": "incident 42"})
    assert db_req.json["request"]["status"] == "pending"
    rid = db_req.json["request"]["id"]
    assert client.post(f"/v1/requests/{rid}/approve", headers=a, json={}).status_code == 403
    assert client.get("/v1/requests?scope=approvable", headers=lead_h).json["requests"][0]["id"] == rid
    approved = client.post(f"/v1/requests/{rid}/approve", headers=lead_h, json={"comment": "ok"})
    assert approved.status_code == 200, approved.json
    assert approved.json["request"]["status"] == "active"
    check = client.get("/v1/check?user=alice&permission=db", headers=bot_h)
    assert check.json["allowed"] is True and check.json["expires_at"]
    held = client.get("/v1/me/permissions", headers=a).json["permissions"]
    assert {h["permission"] for h in held} == {"vpn", "db"}
    revoked = client.post(f"/v1/requests/{rid}/revoke", headers=a, json={})
    assert revoked.json["request"]["status"] == "revoked"
    assert client.get("/v1/check?user=alice&permission=db", headers=bot_h).json["allowed"] is False
    services = app.extensions["security_api"]
    from security_api.models import AuditEvent
    with services.session_factory() as session:
        actions = session.scalars(select(AuditEvent.action)).all()
    assert "request.approved" in actions and "provisioning.succeeded" in actions
