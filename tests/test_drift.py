"""Drift against moto's EC2 server: real drift seeded behind the service's back, then found,
notified once, fixed, audited, and gone at the next scan."""
from __future__ import annotations

import secrets
from datetime import timedelta

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select

from security_api import audit
from security_api.access import drift
from security_api.access.catalog import ensure_permission, ensure_rule
from security_api.access.drift_schedule import claim_scan, scan_if_due
from security_api.access.reaper import reap_once
from security_api.clock import utcnow
from security_api.enums import PolicyMode
from security_api.integrations.outbox_delivery import deliver_due
from security_api.models import AuditEvent, OutboxMessage
from security_api.provisioners._aws_inventory import _marked_entries
from security_api.startup import run_startup_tasks
from tests.conftest import bearer
from tests.portal_support import post_form, signed_in_client
from tests.receivers import serving
from tests.servers import ingress

METRICS_TOKEN = "metrics-" + secrets.token_urlsafe(32)
GHOST = "00000000-dead-beef-0000-000000000001"
GHOST_DESCRIPTION = f"security-api request {GHOST} for mallory"
HAND_RULE = ("tcp", 443, 443, "10.1.0.0/16", "office VPN, added by hand")
STARTUP_ADDRESS = "198.51.100.9"


def _kw() -> dict:
    return {"actor": "test", "origin": audit.Origin(), "now": utcnow()}


@pytest.fixture
def receiver():
    with serving() as server:
        yield server


@pytest.fixture
def app(make_app, moto_endpoint, ec2, group_id, receiver):
    """The app of every fixture here (client, login_as...): its `ssh` permission opens port 22
    of a moto security group; its start-up task opened port 5432 of the same group to the
    instance's own address."""
    app = make_app(aws_endpoint_url=moto_endpoint, aws_region="eu-west-1",
                   notify_webhook_url=receiver.url, metrics_enabled=True,
                   metrics_token=METRICS_TOKEN, startup_tasks=("allow_instance_address!",),
                   instance_address=STARTUP_ADDRESS, startup_security_group_id=group_id,
                   startup_security_group_ports="5432")
    services = app.extensions["security_api"]
    with services.session_factory() as session:
        ensure_permission(session, key="ssh", name="SSH", max_duration_minutes=60,
                          provisioner="aws_security_group",
                          provisioner_config={"group_id": group_id, "ports": [22]},
                          settings=services.settings, **_kw())
        ensure_rule(session, permission="ssh", role="*", subrole="*",
                    mode=PolicyMode.AUTO, **_kw())
        session.commit()
    [started] = run_startup_tasks(services)
    assert started.ok, started.error
    return app


@pytest.fixture
def drift_app(app):
    return app


@pytest.fixture
def people(drift_app, make_user, login_as):
    """An administrator and two developers, signed in."""
    users = {"root": make_user("root", role="security", subrole="admin", email="root@example.com"),
             "alice": make_user("alice"), "bob": make_user("bob")}
    return {name: bearer(login_as(user)["token"]) for name, user in users.items()}


def _grant(client, headers, cidr: str) -> str:
    response = client.post("/v1/requests", headers=headers,
                           json={"permission": "ssh", "params": {"cidr": cidr}})
    assert response.status_code == 201, response.json
    assert response.json["request"]["status"] == "active", response.json["request"]["provisioning"]
    return response.json["request"]["id"]


def _seed(ec2, group_id, client, people) -> dict:
    """Two real grants; then behind the service's back: bob's rule deleted (missing), a rule
    with the service's marker and no grant (orphaned), a rule added by hand (not ours)."""
    alice = _grant(client, people["alice"], "203.0.113.0/24")
    bob = _grant(client, people["bob"], "198.51.100.0/24")
    ec2.revoke_security_group_ingress(GroupId=group_id, IpPermissions=[{
        "IpProtocol": "tcp", "FromPort": 22, "ToPort": 22,
        "IpRanges": [{"CidrIp": "198.51.100.0/24"}]}])
    for protocol, port, _, cidr, description in [("tcp", 22, 22, "192.0.2.0/24", GHOST_DESCRIPTION),
                                                 HAND_RULE]:
        ec2.authorize_security_group_ingress(GroupId=group_id, IpPermissions=[{
            "IpProtocol": protocol, "FromPort": port, "ToPort": port,
            "IpRanges": [{"CidrIp": cidr, "Description": description}]}])
    return {"alice": alice, "bob": bob}


def _count(db_session, model, *conditions) -> int:
    db_session.expire_all()
    return db_session.scalar(select(func.count()).select_from(model).where(*conditions))


def _audited(db_session, action: str) -> int:
    return _count(db_session, AuditEvent, AuditEvent.action == action)


def _drift_metric(client) -> dict[str, float]:
    response = client.get("/metrics", headers=bearer(METRICS_TOKEN))
    assert response.status_code == 200
    return {sample.labels["kind"]: sample.value
            for family in text_string_to_metric_families(response.get_data(as_text=True))
            for sample in family.samples if sample.name == "security_api_drift_items"}


def _said(result) -> list[str]:
    """The command's own lines (log records, JSON, share the captured output)."""
    return [line for line in result.output.splitlines() if not line.startswith("{")]


def _startup_rule() -> tuple:
    return ("tcp", 5432, 5432, f"{STARTUP_ADDRESS}/32",
            f"security-api request instance-startup for {STARTUP_ADDRESS}")


def test_drift_is_found_notified_once_fixed_and_gone(drift_app, client, people, ec2, group_id,
                                                    db_session, receiver):
    ids = _seed(ec2, group_id, client, people)

    first = client.get("/v1/admin/drift", headers=people["root"])
    assert first.status_code == 200, first.json
    body = first.json
    assert body["errors"] == []
    [missing] = body["missing"]
    assert (missing["request_id"], missing["permission"], missing["provisioner"]) == \
        (ids["bob"], "ssh", "aws_security_group")
    assert missing["target"] == f"eu-west-1/{group_id}"
    [orphaned] = body["orphaned"]
    assert (orphaned["request_id"], orphaned["permission"]) == (GHOST, None)
    assert "192.0.2.0/24" in orphaned["description"] and GHOST_DESCRIPTION in orphaned["description"]
    # Neither the start-up task's rule nor the hand-made rule is drift.
    assert STARTUP_ADDRESS not in str(body) and "10.1.0.0/16" not in str(body)

    # A second scan sees the same two findings: no new record, notification or audit event.
    again = client.get("/v1/admin/drift", headers=people["root"]).json
    assert [item["id"] for item in again["missing"] + again["orphaned"]] == \
        [missing["id"], orphaned["id"]]
    assert _count(db_session, OutboxMessage, OutboxMessage.kind == "drift.found") == 2
    assert _audited(db_session, "drift.found") == 2
    assert _drift_metric(client) == {"missing": 1.0, "orphaned": 1.0}
    # Let the background deliverer finish its run, then send whatever it left.
    drift_app.extensions["outbox_deliverer"].stop()
    deliver_due(drift_app.extensions["security_api"])
    chats = [call["json"]["text"] for call in receiver.received]
    assert len(chats) == 2 and all("Drift found" in text and "/v1/admin/drift" in text
                                   for text in chats)
    payloads = db_session.scalars(select(OutboxMessage.payload)).all()
    assert all(p["recipients"] == ["root@example.com"] for p in payloads)

    fixed = client.post("/v1/admin/drift/fix", headers=people["root"], json={})
    assert fixed.status_code == 200, fixed.json
    assert sorted(item["kind"] for item in fixed.json["fixed"]) == ["missing", "orphaned"]
    assert (fixed.json["failed"], fixed.json["skipped"]) == ([], [])
    assert _audited(db_session, "drift.fixed") == 2
    rules = ingress(ec2, group_id)
    assert ("tcp", 22, 22, "198.51.100.0/24", f"security-api request {ids['bob']} for bob") in rules
    assert ("tcp", 22, 22, "203.0.113.0/24", f"security-api request {ids['alice']} for alice") in rules
    assert not any(rule[3] == "192.0.2.0/24" for rule in rules)
    assert HAND_RULE in rules and _startup_rule() in rules
    assert len(rules) == 4

    clean = client.get("/v1/admin/drift", headers=people["root"]).json
    assert (clean["missing"], clean["orphaned"], clean["errors"]) == ([], [], [])
    assert _drift_metric(client) == {"missing": 0.0, "orphaned": 0.0}
    assert _count(db_session, OutboxMessage, OutboxMessage.kind == "drift.found") == 2


def test_findings_no_longer_seen_are_resolved_and_a_return_is_new(drift_app, client, people, ec2,
                                                                  group_id, db_session):
    ids = _seed(ec2, group_id, client, people)
    assert len(client.get("/v1/admin/drift", headers=people["root"]).json["missing"]) == 1
    # Bob's grant is revoked through the API: its missing rule is no longer drift.
    revoked = client.post(f"/v1/requests/{ids['bob']}/revoke", headers=people["bob"], json={})
    assert revoked.status_code == 200, revoked.json
    body = client.get("/v1/admin/drift", headers=people["root"]).json
    assert body["missing"] == [] and len(body["orphaned"]) == 1
    assert _audited(db_session, "drift.resolved") == 1
    # Alice's rule disappears too: a new finding, notified once more.
    ec2.revoke_security_group_ingress(GroupId=group_id, IpPermissions=[{
        "IpProtocol": "tcp", "FromPort": 22, "ToPort": 22,
        "IpRanges": [{"CidrIp": "203.0.113.0/24"}]}])
    body = client.get("/v1/admin/drift", headers=people["root"]).json
    assert [item["request_id"] for item in body["missing"]] == [ids["alice"]]
    assert _count(db_session, OutboxMessage, OutboxMessage.kind == "drift.found") == 3


def test_only_admins_see_or_fix_drift_and_fix_takes_no_fields(drift_app, client, people):
    # (The admin matrix checks every actor; here: with real drift to see, still refused.)
    for method, path in (("GET", "/v1/admin/drift"), ("POST", "/v1/admin/drift/fix")):
        response = client.open(path, method=method, headers=people["alice"], json={})
        assert response.status_code == 403 and response.json["error"] == "forbidden"
        assert client.open(path, method=method, json={}).status_code == 401
    response = client.post("/v1/admin/drift/fix", headers=people["root"], json={"all": True})
    assert response.status_code == 412


def test_cli_exit_codes(drift_app, client, people, ec2, group_id):
    runner = drift_app.test_cli_runner()
    clean = runner.invoke(args=["drift"])
    assert (clean.exit_code, _said(clean)) == (0, ["No drift."])
    _seed(ec2, group_id, client, people)
    found = runner.invoke(args=["drift"])
    assert found.exit_code == 1
    assert sorted(line.split(":", 1)[0] for line in _said(found)) == \
        ["missing", "orphaned"]
    fixed = runner.invoke(args=["drift", "--fix"])
    assert fixed.exit_code == 0, fixed.output
    assert sorted(line.split(":", 1)[0] for line in _said(fixed)) == ["fixed", "fixed"]
    assert runner.invoke(args=["drift"]).exit_code == 0


def test_an_unreadable_target_is_reported_and_keeps_its_findings(drift_app, make_app, client,
                                                                 people, ec2, group_id,
                                                                 db_session):
    _seed(ec2, group_id, client, people)
    client.get("/v1/admin/drift", headers=people["root"])
    ec2.revoke_security_group_ingress(GroupId=group_id, IpPermissions=[{
        "IpProtocol": "tcp", "FromPort": 22, "ToPort": 22,
        "IpRanges": [{"CidrIp": "192.0.2.0/24"}]}])
    # Another instance on the same database whose AWS endpoint answers nothing.
    blind = make_app(aws_endpoint_url="http://127.0.0.1:9", aws_region="eu-west-1")
    result = blind.test_cli_runner().invoke(args=["drift"])
    assert result.exit_code == 2, result.output
    assert f"unreadable: eu-west-1/{group_id}" in result.output
    # What could not be read is not declared gone: both findings stay open.
    assert _audited(db_session, "drift.resolved") == 0
    assert len(_said(result)) == 3


def test_the_reaper_scans_once_per_interval(drift_app, client, people, ec2, group_id, db_session):
    services = drift_app.extensions["security_api"]
    _seed(ec2, group_id, client, people)
    reap_once(services)
    assert _audited(db_session, "drift.found") == 2
    now = utcnow()
    with services.session_factory() as session:
        # The reaper above took this interval: no other worker scans before it ends.
        assert not claim_scan(session, now=now, interval_seconds=3600)
        assert scan_if_due(services, now=now) is None
        assert claim_scan(session, now=now + timedelta(seconds=3601), interval_seconds=3600)
        assert not claim_scan(session, now=now + timedelta(seconds=3601), interval_seconds=3600)


def test_no_scan_when_the_interval_is_zero(make_app):
    app = make_app(drift_interval_seconds=0)
    assert scan_if_due(app.extensions["security_api"], now=utcnow()) is None


def test_without_an_inspectable_permission_there_is_nothing_to_compare(make_app):
    plain = make_app()  # the catalog's permissions use `none` (and `webhook` is not inspectable)
    services = plain.extensions["security_api"]
    with services.session_factory() as session:
        ensure_permission(session, key="hook", name="Hook", max_duration_minutes=60,
                          provisioner="webhook",
                          provisioner_config={"url": "http://127.0.0.1:9/hook"},
                          settings=services.settings, **_kw())
        session.commit()
    report = drift.scan(services, actor="test", origin=audit.Origin())
    assert (report.findings, report.errors) == ([], [])


def test_the_portal_page_lists_drift_and_its_form_fixes_it(drift_app, client, people, ec2,
                                                           group_id, make_user, db_session):
    ids = _seed(ec2, group_id, client, people)
    person = signed_in_client(drift_app, make_user("carol"))
    assert person.get("/portal/admin/drift").status_code == 403
    admin = signed_in_client(drift_app, make_user("boss", role="security", subrole="admin"))
    page = admin.get("/portal/admin/drift")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert ids["bob"] in html and GHOST in html and "10.1.0.0/16" not in html
    # Without the form's CSRF token nothing is fixed.
    assert admin.post("/portal/admin/drift/fix").status_code == 400
    assert _audited(db_session, "drift.fixed") == 0
    done = post_form(admin, "/portal/admin/drift/fix", token_from="/portal/admin/drift")
    assert done.status_code == 302
    assert _audited(db_session, "drift.fixed") == 2
    after = admin.get("/portal/admin/drift", headers={"Accept-Language": "es"})
    assert "Cada concesión activa está en su destino." in after.get_data(as_text=True)


def test_only_rules_with_the_marker_are_read_as_ours():
    rule = {"IpProtocol": "-1", "IpRanges": [
        {"CidrIp": "10.0.0.0/8", "Description": "office"},
        {"CidrIp": "10.2.0.0/16"},
        {"CidrIp": "10.3.0.0/16", "Description": "security-api request " + "x" * 300},
        {"CidrIp": "10.4.0.0/16", "Description": "security-api request "}],
        "Ipv6Ranges": [{"CidrIpv6": "2001:db8::/48",
                        "Description": "security-api request abc for eve: db"}]}
    entries = _marked_entries("eu-west-1/sg-0123abcd", {}, rule)
    assert [(e.request_id, e.ref["cidr"]) for e in entries] == [
        ("x" * 128, "10.3.0.0/16"), ("abc", "2001:db8::/48")]
    assert entries[1].ref == {"region": "eu-west-1", "group_id": "sg-0123abcd", "protocol": "-1",
                              "from": None, "to": None, "cidr": "2001:db8::/48"}
