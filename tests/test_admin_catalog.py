"""Administration of roles, permissions and policy rules, through the HTTP API."""
from __future__ import annotations

import pytest
from sqlalchemy import select

from security_api.clock import utcnow
from security_api.enums import AuditAction, RequestStatus
from security_api.models import AccessRequest, AuditEvent, Permission, PolicyRule, Role, Subrole
from tests.conftest import bearer
from web.api import admin_catalog

WEBHOOK = {"url": "https://hooks.example.com/grant"}


@pytest.fixture
def app(make_app):
    built = make_app()
    # Flask refuses new blueprints once a request was handled: register right away.
    if "admin_catalog" not in built.blueprints:
        built.register_blueprint(admin_catalog.bp)
    return built


@pytest.fixture
def admin(make_user, login_as):
    """Headers of a signed-in security/admin (holds security-api.admin standing)."""
    return bearer(login_as(make_user("root", role="security", subrole="admin"))["token"])


def _audited(db_session, action: AuditAction, target: str | None = None) -> list[AuditEvent]:
    db_session.expire_all()
    stmt = select(AuditEvent).where(AuditEvent.action == str(action))
    if target is not None:
        stmt = stmt.where(AuditEvent.target == target)
    return list(db_session.scalars(stmt))


def _permission(client, admin, key="vpn", **fields):
    body = {"key": key, "name": key.upper(), "max_duration_minutes": 60, **fields}
    response = client.post("/v1/admin/permissions", json=body, headers=admin)
    assert response.status_code == 201, response.json
    return response.json["permission"]


def _role(client, admin, name="developer", subroles=("backend",)):
    response = client.post("/v1/admin/roles", json={"name": name, "subroles": list(subroles)},
                           headers=admin)
    assert response.status_code == 201, response.json
    return response.json["role"]


def _rule(client, admin, **fields):
    body = {"permission": "vpn", "role": "developer", "subrole": "*", "mode": "auto", **fields}
    response = client.post("/v1/admin/policies", json=body, headers=admin)
    assert response.status_code == 201, response.json
    return response.json["policy"]


def _problem(response, status=412):
    assert response.status_code == status, response.json
    return response.json


# ---- who may call ------------------------------------------------------------------------------
ROUTES = [
    ("GET", "/v1/admin/roles"), ("POST", "/v1/admin/roles"),
    ("GET", "/v1/admin/roles/security"), ("PATCH", "/v1/admin/roles/security"),
    ("DELETE", "/v1/admin/roles/security"), ("POST", "/v1/admin/roles/security/subroles"),
    ("DELETE", "/v1/admin/roles/security/subroles/admin"),
    ("GET", "/v1/admin/permissions"), ("POST", "/v1/admin/permissions"),
    ("GET", "/v1/admin/permissions/vpn"), ("PATCH", "/v1/admin/permissions/vpn"),
    ("DELETE", "/v1/admin/permissions/vpn"),
    ("GET", "/v1/admin/policies"), ("POST", "/v1/admin/policies"),
    ("GET", "/v1/admin/policies/x"), ("PATCH", "/v1/admin/policies/x"),
    ("DELETE", "/v1/admin/policies/x"),
    ("GET", "/v1/admin/policies/explain?user=root&permission=vpn"),
]


def test_every_route_is_listed_here(app):
    routes = {(method, rule.rule) for rule in app.url_map.iter_rules()
              if rule.endpoint.startswith("admin_catalog.")
              for method in rule.methods - {"HEAD", "OPTIONS"}}
    assert len(routes) == len(ROUTES)


@pytest.mark.parametrize(("method", "path"), ROUTES)
def test_anonymous_gets_401(client, method, path):
    response = client.open(path, method=method, json={})
    assert response.status_code == 401
    assert response.json["error"] == "missing_token"


@pytest.mark.parametrize(("method", "path"), ROUTES)
def test_non_admin_gets_403_and_changes_nothing(client, make_user, login_as, db_session,
                                                method, path):
    token = login_as(make_user("dev", role="developer", subrole="backend"))["token"]
    response = client.open(path, method=method, json={"name": "x"}, headers=bearer(token))
    assert response.status_code == 403
    assert db_session.get(Role, "security") is not None
    assert not _audited(db_session, AuditAction.ROLE_DELETED)


def test_routes_are_in_the_openapi_document(client):
    paths = client.get("/v1/openapi.json").json["paths"]
    assert paths["/v1/admin/roles/{name}"]["delete"]["security"] == [{"bearerAuth": []}]
    assert "/v1/admin/policies/explain" in paths


# ---- roles -------------------------------------------------------------------------------------
def test_role_lifecycle(client, admin, db_session):
    created = _role(client, admin, "finance", ["analyst", "lead"])
    assert [s["name"] for s in created["subroles"]] == ["analyst", "lead"]
    assert _audited(db_session, AuditAction.ROLE_CREATED, "finance")

    names = [r["name"] for r in client.get("/v1/admin/roles", headers=admin).json["roles"]]
    assert {"finance", "security"} <= set(names)
    one = client.get("/v1/admin/roles/finance", headers=admin)
    assert one.status_code == 200 and one.json["role"]["name"] == "finance"

    patched = client.patch("/v1/admin/roles/finance", json={"description": "Money"}, headers=admin)
    assert patched.status_code == 200
    assert patched.json["role"]["description"] == "Money" and patched.json["message"]
    assert _audited(db_session, AuditAction.ROLE_UPDATED, "finance")

    added = client.post("/v1/admin/roles/finance/subroles", json={"name": "intern"}, headers=admin)
    assert added.status_code == 201
    assert "intern" in [s["name"] for s in added.json["role"]["subroles"]]
    assert _problem(client.post("/v1/admin/roles/finance/subroles", json={"name": "intern"},
                                headers=admin), 409)["error"] == "subrole_exists"

    removed = client.delete("/v1/admin/roles/finance/subroles/intern", headers=admin)
    assert removed.status_code == 200
    assert "intern" not in [s["name"] for s in removed.json["role"]["subroles"]]
    assert _audited(db_session, AuditAction.SUBROLE_DELETED, "finance/intern")

    assert client.delete("/v1/admin/roles/finance", headers=admin).status_code == 200
    assert db_session.get(Role, "finance") is None
    assert db_session.get(Subrole, ("finance", "analyst")) is None
    assert _audited(db_session, AuditAction.ROLE_DELETED, "finance")


def test_role_create_conflicts_and_validation(client, admin):
    _role(client, admin, "finance")
    assert _problem(client.post("/v1/admin/roles", json={"name": "finance", "subroles": ["x"]},
                                headers=admin), 409)["error"] == "role_exists"
    for body, field in [({"name": "Bad Name", "subroles": ["a"]}, "name"),
                        ({"name": "ok", "subroles": []}, "subroles"),
                        ({"name": "ok", "subroles": "a"}, "subroles"),
                        ({"name": "ok", "subroles": ["a"], "admin": True}, "admin"),
                        ({"name": 5, "subroles": ["a"]}, "name")]:
        problem = _problem(client.post("/v1/admin/roles", json=body, headers=admin))
        assert problem["errors"][0]["field"] == field, body
    bad_subrole = _problem(client.post("/v1/admin/roles", json={"name": "ok", "subroles": ["A B"]},
                                       headers=admin))
    assert bad_subrole["error"] == "invalid_params"
    problem = _problem(client.patch("/v1/admin/roles/finance", json={"description": "", "name": "x"},
                                    headers=admin))
    assert problem["errors"] == [{"field": "name", "problem": "unknown field"}]


@pytest.mark.parametrize(("method", "path", "body"), [
    ("GET", "/v1/admin/roles/nobody", None),
    ("PATCH", "/v1/admin/roles/nobody", {"description": "x"}),
    ("DELETE", "/v1/admin/roles/nobody", None),
    ("POST", "/v1/admin/roles/nobody/subroles", {"name": "x"}),
    ("DELETE", "/v1/admin/roles/nobody/subroles/x", None),
    ("DELETE", "/v1/admin/roles/security/subroles/nobody", None),
    ("GET", "/v1/admin/permissions/nothing", None),
    ("PATCH", "/v1/admin/permissions/nothing", {"name": "x"}),
    ("DELETE", "/v1/admin/permissions/nothing", None),
    ("GET", "/v1/admin/policies/no-such-rule", None),
    ("PATCH", "/v1/admin/policies/no-such-rule", {"mode": "auto"}),
    ("DELETE", "/v1/admin/policies/no-such-rule", None),
    ("GET", "/v1/admin/policies/explain?user=nobody&permission=security-api.admin", None),
    ("GET", "/v1/admin/policies/explain?user=root&permission=nothing", None),
])
def test_unknown_objects_are_404(client, admin, method, path, body):
    assert client.open(path, method=method, json=body, headers=admin).status_code == 404


def test_role_in_use_by_a_user_cannot_be_deleted(client, admin, make_user, db_session):
    make_user("dev", role="developer", subrole="backend", active=False)
    client.post("/v1/admin/roles/developer/subroles", json={"name": "frontend"}, headers=admin)
    assert _problem(client.delete("/v1/admin/roles/developer", headers=admin), 409)["error"] == "in_use"
    assert _problem(client.delete("/v1/admin/roles/developer/subroles/backend", headers=admin),
                    409)["error"] == "in_use"
    # An unused subrole of a role in use can go.
    assert client.delete("/v1/admin/roles/developer/subroles/frontend", headers=admin).status_code == 200
    assert db_session.get(Role, "developer") is not None
    assert not _audited(db_session, AuditAction.ROLE_DELETED, "developer")


def test_role_named_by_a_rule_cannot_be_deleted(client, admin):
    _permission(client, admin)
    _role(client, admin, "developer", ["backend"])
    _rule(client, admin, role="developer", subrole="backend")
    assert _problem(client.delete("/v1/admin/roles/developer", headers=admin), 409)["error"] == "in_use"
    assert _problem(client.delete("/v1/admin/roles/developer/subroles/backend", headers=admin),
                    409)["error"] == "in_use"
    # The bootstrap rule gives security/admin its powers.
    assert _problem(client.delete("/v1/admin/roles/security", headers=admin), 409)["error"] == "in_use"


def test_role_named_as_approver_cannot_be_deleted(client, admin):
    _permission(client, admin)
    _role(client, admin, "developer", ["backend"])
    _role(client, admin, "leads", ["eng", "ops"])
    _rule(client, admin, mode="approval", approvers=["leads/eng"])
    assert _problem(client.delete("/v1/admin/roles/leads", headers=admin), 409)["error"] == "in_use"
    assert _problem(client.delete("/v1/admin/roles/leads/subroles/eng", headers=admin),
                    409)["error"] == "in_use"
    assert client.delete("/v1/admin/roles/leads/subroles/ops", headers=admin).status_code == 200


def test_role_whole_named_as_approver_cannot_be_deleted(client, admin):
    _permission(client, admin)
    _role(client, admin, "developer", ["backend"])
    _role(client, admin, "leads", ["eng"])
    _rule(client, admin, mode="approval", approvers=["leads"])
    assert _problem(client.delete("/v1/admin/roles/leads", headers=admin), 409)["error"] == "in_use"


# ---- permissions -------------------------------------------------------------------------------
def test_permission_lifecycle(client, admin, db_session):
    created = _permission(client, admin, "prod-db", description="Read prod",
                          requires_justification=True, provisioner="webhook",
                          provisioner_config=WEBHOOK)
    assert created["provisioner_config"]["url"] == WEBHOOK["url"]
    assert created["builtin"] is False and created["requires_justification"] is True
    assert _audited(db_session, AuditAction.PERMISSION_CREATED, "prod-db")

    keys = [p["key"] for p in client.get("/v1/admin/permissions", headers=admin).json["permissions"]]
    assert {"prod-db", "security-api.admin"} <= set(keys)
    assert client.get("/v1/admin/permissions/prod-db",
                      headers=admin).json["permission"]["name"] == "PROD-DB"

    patched = client.patch("/v1/admin/permissions/prod-db", headers=admin, json={
        "name": "Production DB", "max_duration_minutes": 30, "requires_justification": False,
        "provisioner_config": {"url": "https://hooks.example.com/v2"}})
    assert patched.status_code == 200, patched.json
    permission = patched.json["permission"]
    assert (permission["name"], permission["max_duration_minutes"]) == ("Production DB", 30)
    assert permission["provisioner_config"]["url"] == "https://hooks.example.com/v2"
    assert permission["description"] == "Read prod"
    assert _audited(db_session, AuditAction.PERMISSION_UPDATED, "prod-db")

    switched = client.patch("/v1/admin/permissions/prod-db", json={"provisioner": "none"},
                            headers=admin)
    assert switched.json["permission"]["provisioner"] == "none"
    assert switched.json["permission"]["provisioner_config"] == {}

    assert client.delete("/v1/admin/permissions/prod-db", headers=admin).status_code == 200
    assert db_session.get(Permission, "prod-db") is None
    assert _audited(db_session, AuditAction.PERMISSION_DELETED, "prod-db")


def test_permission_create_conflict_and_validation(client, admin, db_session):
    _permission(client, admin)
    assert _problem(client.post("/v1/admin/permissions", headers=admin, json={
        "key": "vpn", "name": "again", "max_duration_minutes": 60}), 409)["error"] == "permission_exists"
    base = {"key": "new", "name": "New", "max_duration_minutes": 60}
    for changes, field in [({"max_duration_minutes": 0}, "max_duration_minutes"),
                           ({"max_duration_minutes": 10**7}, "max_duration_minutes"),
                           ({"max_duration_minutes": "60"}, "max_duration_minutes"),
                           ({"key": "Not A Slug"}, "key"),
                           ({"requires_justification": "yes"}, "requires_justification"),
                           ({"provisioner": "teleport"}, "provisioner"),
                           ({"provisioner": "webhook"}, "config.url"),
                           ({"provisioner": "webhook", "provisioner_config": {"url": "ftp://x"}},
                            "config.url"),
                           ({"builtin": True}, "builtin")]:
        problem = _problem(client.post("/v1/admin/permissions", json={**base, **changes},
                                       headers=admin))
        assert problem["errors"][0]["field"].startswith(field.split(".")[0]), (changes, problem)
    assert db_session.get(Permission, "new") is None


def test_permission_update_validation(client, admin, db_session):
    _permission(client, admin)
    for body in [{"max_duration_minutes": 0}, {"name": None}, {"key": "other"},
                 {"provisioner": "webhook"}, {"provisioner": "teleport"},
                 {"provisioner": "webhook", "provisioner_config": {"url": "ftp://x"}},
                 {"requires_justification": 1}, {"builtin": True}]:
        _problem(client.patch("/v1/admin/permissions/vpn", json=body, headers=admin))
    _permission(client, admin, "hook", provisioner="webhook", provisioner_config=WEBHOOK)
    for config in [{"url": "not a url"}, {"url": WEBHOOK["url"], "extra": 1}, {}]:
        _problem(client.patch("/v1/admin/permissions/hook", json={"provisioner_config": config},
                              headers=admin))
    db_session.expire_all()
    assert db_session.get(Permission, "vpn").provisioner == "none"
    assert not _audited(db_session, AuditAction.PERMISSION_UPDATED, "vpn")


@pytest.mark.parametrize("key", ["security-api.admin", "security-api.audit", "security-api.check"])
def test_builtin_permissions_cannot_be_deleted(client, admin, key):
    assert _problem(client.delete(f"/v1/admin/permissions/{key}", headers=admin),
                    409)["error"] == "builtin_permission"


def test_permission_with_a_rule_cannot_be_deleted(client, admin):
    _permission(client, admin)
    _role(client, admin)
    rule = _rule(client, admin)
    assert _problem(client.delete("/v1/admin/permissions/vpn", headers=admin), 409)["error"] == "in_use"
    client.delete(f"/v1/admin/policies/{rule['id']}", headers=admin)
    assert client.delete("/v1/admin/permissions/vpn", headers=admin).status_code == 200


@pytest.mark.parametrize(("status", "error"), [
    (RequestStatus.PENDING, "in_use"), (RequestStatus.GRANTING, "in_use"),
    (RequestStatus.ACTIVE, "in_use"), (RequestStatus.FAILED, "in_use"),
    (RequestStatus.EXPIRED, "has_history"), (RequestStatus.DENIED, "has_history")])
def test_permission_with_requests_cannot_be_deleted(client, admin, make_user, db_session,
                                                    status, error):
    _permission(client, admin)
    requester = make_user("dev")
    db_session.add(AccessRequest(requester_id=requester.id, permission_key="vpn",
                                 duration_minutes=30, status=str(status), mode="auto",
                                 created_at=utcnow()))
    db_session.commit()
    assert _problem(client.delete("/v1/admin/permissions/vpn", headers=admin), 409)["error"] == error
    db_session.expire_all()
    assert db_session.get(Permission, "vpn") is not None


# ---- policy rules ------------------------------------------------------------------------------
def test_policy_lifecycle(client, admin, db_session):
    _permission(client, admin)
    _permission(client, admin, "wiki")
    _role(client, admin, "developer", ["backend"])
    _role(client, admin, "leads", ["eng"])
    rule = _rule(client, admin, mode="approval", approvers=["leads", "security/admin"],
                 approvals_required=2, max_duration_minutes=30)
    assert rule["approvers"] == ["leads", "security/admin"] and rule["approvals_required"] == 2
    assert _audited(db_session, AuditAction.POLICY_CREATED, rule["id"])
    other = _rule(client, admin, permission="wiki", role="*", subrole="*")

    listed = client.get("/v1/admin/policies", headers=admin).json["policies"]
    assert {rule["id"], other["id"]} <= {p["id"] for p in listed}
    by_permission = client.get("/v1/admin/policies?permission=wiki", headers=admin).json["policies"]
    assert [p["id"] for p in by_permission] == [other["id"]]
    by_role = client.get("/v1/admin/policies?role=developer", headers=admin).json["policies"]
    assert [p["id"] for p in by_role] == [rule["id"]]
    assert client.get(f"/v1/admin/policies/{rule['id']}",
                      headers=admin).json["policy"]["mode"] == "approval"

    patched = client.patch(f"/v1/admin/policies/{rule['id']}", headers=admin,
                           json={"mode": "auto", "max_duration_minutes": None})
    assert patched.status_code == 200, patched.json
    assert patched.json["policy"]["mode"] == "auto"
    assert patched.json["policy"]["max_duration_minutes"] is None
    assert patched.json["policy"]["approvers"] == ["leads", "security/admin"]
    assert _audited(db_session, AuditAction.POLICY_UPDATED, rule["id"])

    assert client.delete(f"/v1/admin/policies/{rule['id']}", headers=admin).status_code == 200
    assert db_session.get(PolicyRule, rule["id"]) is None
    assert _audited(db_session, AuditAction.POLICY_DELETED, rule["id"])


def test_policy_conflict_and_validation(client, admin, db_session):
    _permission(client, admin)
    _role(client, admin, "developer", ["backend"])
    _rule(client, admin)
    assert _problem(client.post("/v1/admin/policies", headers=admin, json={
        "permission": "vpn", "role": "developer", "mode": "standing"}), 409)["error"] == "rule_exists"
    base = {"permission": "vpn", "role": "developer", "subrole": "backend", "mode": "auto"}
    for changes, field in [({"role": "nobody", "subrole": "*"}, "role"),
                           ({"subrole": "nobody"}, "subrole"),
                           ({"role": "*", "subrole": "backend"}, "subrole"),
                           ({"permission": "nothing"}, "permission"),
                           ({"max_duration_minutes": 0}, "max_duration_minutes"),
                           ({"max_duration_minutes": 30.5}, "max_duration_minutes"),
                           ({"mode": "sometimes"}, "mode"),
                           ({"mode": "approval"}, "approvers"),
                           ({"mode": "approval", "approvers": ["ghosts"]}, "approvers"),
                           ({"mode": "approval", "approvers": ["developer/ghost"]}, "approvers"),
                           ({"mode": "approval", "approvers": ["*"]}, "approvers"),
                           ({"mode": "approval", "approvers": ["developer"],
                             "approvals_required": 11}, "approvals_required"),
                           ({"approvers": "developer"}, "approvers"),
                           ({"priority": 1}, "priority")]:
        problem = _problem(client.post("/v1/admin/policies", json={**base, **changes}, headers=admin))
        assert problem["errors"][0]["field"] == field, (changes, problem)
    db_session.expire_all()
    assert len(list(db_session.scalars(select(PolicyRule).where(PolicyRule.permission_key == "vpn")))) == 1


def test_policy_update_is_validated_as_a_whole(client, admin, db_session):
    _permission(client, admin)
    _role(client, admin, "developer", ["backend"])
    rule = _rule(client, admin)
    for body, field in [({"mode": "approval"}, "approvers"),
                        ({"approvers": ["ghosts"]}, "approvers"),
                        ({"max_duration_minutes": 0}, "max_duration_minutes"),
                        ({"mode": None}, "mode"),
                        ({"role": "*"}, "role"),
                        ({"approvals_required": "2"}, "approvals_required")]:
        problem = _problem(client.patch(f"/v1/admin/policies/{rule['id']}", json=body, headers=admin))
        assert problem["errors"][0]["field"] == field, (body, problem)
    assert client.get(f"/v1/admin/policies/{rule['id']}", headers=admin).json["policy"] == rule
    assert not _audited(db_session, AuditAction.POLICY_UPDATED, rule["id"])


# ---- explain -----------------------------------------------------------------------------------
def test_explain_shows_the_most_specific_rule_and_the_considered_ones(client, admin, make_user):
    make_user("dev", role="developer", subrole="backend")
    _permission(client, admin, max_duration_minutes=120)
    _role(client, admin, "finance", ["analyst"])
    everyone = _rule(client, admin, role="*", subrole="*", mode="auto")
    role_wide = _rule(client, admin, role="developer", subrole="*", mode="approval",
                      approvers=["security"])
    exact = _rule(client, admin, role="developer", subrole="backend", mode="auto",
                  max_duration_minutes=45)
    _rule(client, admin, role="finance", subrole="*", mode="standing")

    response = client.get("/v1/admin/policies/explain?user=dev&permission=vpn", headers=admin)
    assert response.status_code == 200, response.json
    body = response.json
    assert body["decision"] == "auto" and body["max_duration_minutes"] == 45
    assert body["rule"]["id"] == exact["id"]
    considered = [(c["id"], c["specificity"], c["matched"]) for c in body["considered"]]
    assert considered == [(exact["id"], 2, True), (role_wide["id"], 1, False),
                          (everyone["id"], 0, False)]

    client.delete(f"/v1/admin/policies/{exact['id']}", headers=admin)
    body = client.get("/v1/admin/policies/explain?user=dev&permission=vpn", headers=admin).json
    assert body["decision"] == "approval" and body["rule"]["id"] == role_wide["id"]
    assert body["max_duration_minutes"] == 120


def test_explain_without_a_rule_and_missing_params(client, admin, make_user):
    make_user("dev", role="developer", subrole="backend")
    _permission(client, admin)
    body = client.get("/v1/admin/policies/explain?user=DEV&permission=vpn", headers=admin).json
    assert body["decision"] is None and body["rule"] is None and body["considered"] == []
    assert body["max_duration_minutes"] is None
    problem = _problem(client.get("/v1/admin/policies/explain?user=dev", headers=admin))
    assert problem["errors"] == [{"field": "permission", "problem": "is required"}]


def test_explain_admin_standing(client, admin):
    body = client.get("/v1/admin/policies/explain?user=root&permission=security-api.admin",
                      headers=admin).json
    assert body["decision"] == "standing"
    assert (body["rule"]["role"], body["rule"]["subrole"]) == ("security", "admin")



def test_the_admin_standing_rule_cannot_be_removed_or_weakened(client, admin, db_session):
    from sqlalchemy import select

    from security_api.models import PolicyRule

    rule_id = db_session.scalar(select(PolicyRule.id).where(
        PolicyRule.permission_key == "security-api.admin", PolicyRule.role == "security"))
    deleted = client.delete(f"/v1/admin/policies/{rule_id}", headers=admin)
    weakened = client.patch(f"/v1/admin/policies/{rule_id}", headers=admin,
                            json={"mode": "auto"})
    assert (deleted.status_code, weakened.status_code) == (409, 409)
    assert deleted.json["error"] == "builtin_rule"
    assert client.get("/v1/admin/users", headers=admin).status_code == 200
