"""Conflict sets (separation of duties): admin API, refusals on create/approve, blocked_by, explain.

World: alice and bob are developer/backend (standing `ledger`); `pay-create` is auto, `pay-approve`
needs security/lead's approval, `vpn` is in no set. The set `payments` holds pay-create and
pay-approve; `books` holds ledger and pay-approve (so alice's standing ledger blocks pay-approve).
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import func, select, update

from security_api import audit
from security_api.access.catalog import ensure_permission, ensure_rule
from security_api.clock import utcnow
from security_api.enums import AuditAction, PolicyMode
from security_api.models import AccessRequest, AuditEvent, ConflictSet
from tests.conftest import basic, bearer
from tests.portal_support import signed_in_client

PERMISSIONS = {"pay-create": (PolicyMode.AUTO, []),
               "pay-approve": (PolicyMode.APPROVAL, ["security/lead"]),
               "vpn": (PolicyMode.AUTO, []), "ledger": (PolicyMode.STANDING, [])}


@dataclass
class World:
    client: object
    headers: dict

    def post(self, who, path, body=None):
        return self.client.post(path, json=body or {}, headers=self.headers[who])

    def ask(self, who, permission):
        return self.post(who, "/v1/requests", {"permission": permission, "justification": "work"})

    def catalog(self, who) -> dict:
        response = self.client.get("/v1/permissions", headers=self.headers[who])
        assert response.status_code == 200, response.json
        return {item["key"]: item["blocked_by"] for item in response.json["permissions"]}


def _setup_catalog(app, session, *, role, subrole, ledger=PolicyMode.STANDING):
    services = app.extensions["security_api"]
    who = {"actor": "test", "origin": audit.Origin(), "now": utcnow()}
    for key, (mode, approvers) in PERMISSIONS.items():
        ensure_permission(session, key=key, name=key.title(), max_duration_minutes=60,
                          settings=services.settings, **who)
        ensure_rule(session, permission=key, role=role, subrole=subrole,
                    mode=ledger if key == "ledger" else mode, approvers=approvers, **who)
    session.commit()


@pytest.fixture
def world(app, client, make_user, login_as, db_session):
    people = {"alice": make_user("alice"), "bob": make_user("bob", role="finance", subrole="ops"),
              "lead": make_user("lead", role="security", subrole="lead"),
              "root": make_user("root", role="security", subrole="admin")}
    _setup_catalog(app, db_session, role="developer", subrole="backend")
    # bob holds no standing ledger: he may ask for it.
    _setup_catalog(app, db_session, role="finance", subrole="ops", ledger=PolicyMode.AUTO)
    return World(client, {name: bearer(login_as(user)["token"]) for name, user in people.items()})


def _make_set(world, name="payments", permissions=("pay-create", "pay-approve"), **fields):
    response = world.post("root", "/v1/admin/conflicts",
                          {"name": name, "permissions": list(permissions), **fields})
    assert response.status_code == 201, response.json
    return response.json["conflict"]


def _events(db_session, action) -> list[AuditEvent]:
    db_session.expire_all()
    return list(db_session.scalars(select(AuditEvent).where(AuditEvent.action == str(action))))


# ---- admin API ---------------------------------------------------------------------------------
def test_conflict_set_lifecycle_is_audited(world, db_session):
    made = _make_set(world, description="Makers never check")
    assert made["permissions"] == ["pay-approve", "pay-create"]
    assert made["description"] == "Makers never check" and made["created_at"].endswith("Z")
    client, root = world.client, world.headers["root"]
    listed = client.get("/v1/admin/conflicts", headers=root).json["conflicts"]
    assert [c["name"] for c in listed] == ["payments"]
    assert client.get("/v1/admin/conflicts/payments", headers=root).json["conflict"] == made

    patched = client.patch("/v1/admin/conflicts/payments", headers=root,
                           json={"permissions": ["vpn", "pay-create", "pay-approve"]})
    assert patched.status_code == 200, patched.json
    assert patched.json["conflict"]["permissions"] == ["pay-approve", "pay-create", "vpn"]
    assert patched.json["conflict"]["description"] == "Makers never check"  # left alone
    described = client.patch("/v1/admin/conflicts/payments", headers=root, json={"description": ""})
    assert described.json["conflict"]["permissions"] == ["pay-approve", "pay-create", "vpn"]

    assert client.delete("/v1/admin/conflicts/payments", headers=root).status_code == 200
    assert client.get("/v1/admin/conflicts/payments", headers=root).status_code == 404
    assert client.delete("/v1/admin/conflicts/payments", headers=root).status_code == 404
    for action in (AuditAction.CONFLICT_CREATED, AuditAction.CONFLICT_DELETED):
        assert [e.target for e in _events(db_session, action)] == ["payments"]
    assert len(_events(db_session, AuditAction.CONFLICT_UPDATED)) == 2


@pytest.mark.parametrize(("body", "status", "field"), [
    ({"name": "s", "permissions": ["pay-create"]}, 412, "permissions"),
    ({"name": "s", "permissions": ["pay-create", "pay-create"]}, 412, "permissions"),
    ({"name": "s", "permissions": ["pay-create", "nope"]}, 412, "permissions"),
    ({"name": "Bad.Slug", "permissions": ["pay-create", "vpn"]}, 412, "name"),
    ({"name": "s", "permissions": ["pay-create", 7]}, 412, "permissions.1"),
    ({"name": "s", "permissions": "pay-create"}, 412, "permissions"),
    ({"name": "s", "permissions": ["pay-create", "vpn"], "extra": 1}, 412, "extra"),
    ({"permissions": ["pay-create", "vpn"]}, 412, "name"),
])
def test_bad_conflict_sets_are_refused_and_nothing_is_written(world, db_session, body, status,
                                                              field):
    response = world.post("root", "/v1/admin/conflicts", body)
    assert response.status_code == status, response.json
    assert field in {error["field"] for error in response.json["errors"]}
    assert db_session.scalar(select(func.count()).select_from(ConflictSet)) == 0


def test_duplicate_name_is_409_and_bad_patch_is_412(world):
    _make_set(world)
    again = world.post("root", "/v1/admin/conflicts",
                       {"name": "payments", "permissions": ["vpn", "ledger"]})
    assert again.status_code == 409 and again.json["error"] == "conflict_set_exists"
    client, root = world.client, world.headers["root"]
    for body in ({"permissions": ["vpn"]}, {"permissions": None}, {"permissions": ["vpn", "x"]}):
        assert client.patch("/v1/admin/conflicts/payments", headers=root, json=body).status_code == 412
    assert client.patch("/v1/admin/conflicts/none", headers=root, json={}).status_code == 404


@pytest.mark.parametrize(("method", "path"), [
    ("GET", "/v1/admin/conflicts"), ("POST", "/v1/admin/conflicts"),
    ("GET", "/v1/admin/conflicts/payments"), ("PATCH", "/v1/admin/conflicts/payments"),
    ("DELETE", "/v1/admin/conflicts/payments")])
def test_only_admins_manage_conflict_sets(world, db_session, method, path):
    _make_set(world)
    assert world.client.open(path, method=method, json={}).status_code == 401
    response = world.client.open(path, method=method, headers=world.headers["lead"],
                                 json={"name": "x", "permissions": ["vpn", "ledger"]})
    assert response.status_code == 403
    assert db_session.scalar(select(func.count()).select_from(ConflictSet)) == 1


def test_a_permission_in_a_set_cannot_be_deleted(world, db_session):
    world.client.post("/v1/admin/permissions", headers=world.headers["root"],
                      json={"key": "spare", "name": "Spare", "max_duration_minutes": 5})
    _make_set(world, "spares", ["spare", "vpn"])
    refused = world.client.delete("/v1/admin/permissions/spare", headers=world.headers["root"])
    assert refused.status_code == 409 and refused.json["error"] == "in_use"
    assert "spares" in refused.json["message"]
    world.client.delete("/v1/admin/conflicts/spares", headers=world.headers["root"])
    assert world.client.delete("/v1/admin/permissions/spare",
                               headers=world.headers["root"]).status_code == 200


def test_routes_and_fields_are_in_the_openapi_document(world):
    document = world.client.get("/v1/openapi.json").json
    paths, schemas = document["paths"], document["components"]["schemas"]
    assert set(paths["/v1/admin/conflicts/{name}"]) >= {"get", "patch", "delete"}
    assert set(paths["/v1/admin/conflicts"]) >= {"get", "post"}
    assert "conflicts_with" in schemas["Error"]["properties"]
    assert "blocked_by" in schemas["CatalogItem"]["properties"]
    assert "conflicts" in schemas["Explanation"]["properties"]


# ---- enforcement -------------------------------------------------------------------------------
def _refusals(stage: str) -> float:
    return REGISTRY.get_sample_value("security_api_conflict_refusals_total", {"stage": stage}) or 0


def test_create_is_refused_while_the_other_side_is_held(world, db_session):
    _make_set(world)
    counted = _refusals("create")
    assert world.ask("bob", "pay-create").json["request"]["status"] == "active"
    refused = world.ask("bob", "pay-approve")
    assert refused.status_code == 409, refused.json
    assert refused.json["error"] == "conflicting_permission"
    assert refused.json["conflicts_with"] == ["pay-create"]
    assert db_session.scalar(select(func.count()).select_from(AccessRequest)
                             .where(AccessRequest.permission_key == "pay-approve")) == 0
    [event] = _events(db_session, AuditAction.REQUEST_REFUSED_CONFLICT)
    assert event.actor == "bob" and event.target == "pay-approve"
    assert '"stage":"create"' in event.details and '"conflicts_with":["pay-create"]' in event.details
    assert world.ask("bob", "vpn").status_code == 201  # in no set: never blocked
    assert _refusals("create") == counted + 1


def test_pending_counts_and_a_grant_past_its_end_does_not(world, db_session):
    _make_set(world)
    assert world.ask("bob", "pay-approve").json["request"]["status"] == "pending"
    refused = world.ask("bob", "pay-create")
    assert refused.status_code == 409 and refused.json["conflicts_with"] == ["pay-approve"]
    # Withdrawn, it blocks nothing; a grant whose time is up blocks nothing either.
    pending = db_session.scalar(select(AccessRequest.id).where(AccessRequest.permission_key == "pay-approve"))
    assert world.post("bob", f"/v1/requests/{pending}/cancel").status_code == 200
    grant = world.ask("bob", "pay-create").json["request"]
    db_session.execute(update(AccessRequest).where(AccessRequest.id == grant["id"])
                       .values(expires_at=utcnow() - timedelta(seconds=1)))
    db_session.commit()
    assert world.ask("bob", "pay-approve").status_code == 201


def test_standing_permissions_count(world):
    _make_set(world, "books", ["ledger", "pay-approve"])
    refused = world.ask("alice", "pay-approve")
    assert refused.status_code == 409 and refused.json["conflicts_with"] == ["ledger"]
    assert world.catalog("alice")["pay-approve"] == ["ledger"]


def test_approval_is_refused_when_the_other_side_became_held_meanwhile(world, db_session):
    waiting = world.ask("bob", "pay-approve").json["request"]
    assert world.ask("bob", "pay-create").status_code == 201  # no set yet
    _make_set(world)
    refused = world.post("lead", f"/v1/requests/{waiting['id']}/approve", {"comment": "ok"})
    assert refused.status_code == 409, refused.json
    assert refused.json["error"] == "conflicting_permission"
    assert refused.json["conflicts_with"] == ["pay-create"]
    db_session.expire_all()
    assert db_session.get(AccessRequest, waiting["id"]).status == "pending"
    [event] = _events(db_session, AuditAction.REQUEST_REFUSED_CONFLICT)
    assert event.actor == "lead" and event.target == waiting["id"] and '"stage":"approve"' in event.details
    # Once bob gives up the other side, the approval goes through.
    grant = db_session.scalar(select(AccessRequest.id).where(AccessRequest.permission_key == "pay-create"))
    assert world.post("bob", f"/v1/requests/{grant}/revoke").status_code == 200
    approved = world.post("lead", f"/v1/requests/{waiting['id']}/approve", {"comment": "ok"})
    assert approved.status_code == 200 and approved.json["request"]["status"] == "active"


def test_catalog_blocked_by(world):
    _make_set(world)
    assert world.catalog("bob") == {"pay-create": [], "pay-approve": [], "vpn": [], "ledger": []}
    world.ask("bob", "pay-create")
    assert world.catalog("bob") == {"pay-create": [], "pay-approve": ["pay-create"], "vpn": [],
                                    "ledger": []}


def test_explain_names_the_conflict(world):
    _make_set(world)
    _make_set(world, "books", ["ledger", "pay-approve"])
    response = world.client.get("/v1/admin/policies/explain?user=alice&permission=pay-approve",
                                headers=world.headers["root"])
    assert response.status_code == 200, response.json
    assert response.json["conflicts"] == [
        {"name": "books", "permissions": ["ledger", "pay-approve"], "blocked_by": ["ledger"]},
        {"name": "payments", "permissions": ["pay-approve", "pay-create"], "blocked_by": []}]
    free = world.client.get("/v1/admin/policies/explain?user=alice&permission=vpn",
                            headers=world.headers["root"])
    assert free.json["conflicts"] == []


# ---- portal ------------------------------------------------------------------------------------
def test_portal_shows_blocked_cards_without_a_request_button(app, world, make_user):
    _make_set(world, "books", ["ledger", "pay-approve"])
    carol = make_user("carol")
    browser = signed_in_client(app, carol)
    page = browser.get("/portal/catalog").get_data(as_text=True)
    card = page[page.index('id="perm-pay-approve"'):]
    card = card[:card.index("</section>")]
    assert "Blocked by a conflict with Ledger." in card
    assert 'name="permission" value="pay-approve"' not in page
    assert 'name="permission" value="pay-create"' in page
    spanish = browser.get("/portal/catalog", headers={"Accept-Language": "es"}).get_data(as_text=True)
    assert "Bloqueado por un conflicto con Ledger." in spanish


# ---- races -------------------------------------------------------------------------------------
def test_concurrent_requests_for_the_sides_of_a_set_open_one_per_person(world, make_app,
                                                                         make_user, db_session):
    """Threads released together ask for every side of one set: one request per person wins.

    The eighteen queue on each person's lock and on the audit chain; on a loaded machine (CI
    runs two suites side by side) that queue can outlast the default 10-s statement timeout,
    a 503 that proves nothing here, so this app's timeout is generous."""
    from tests.test_concurrency import race

    patient = make_app(database_query_timeout_seconds=120)
    _make_set(world, "all", ["pay-create", "pay-approve", "vpn"])
    tokens = {}
    for name in ("p1", "p2", "p3"):
        user = make_user(name, role="finance", subrole="ops")
        tokens[name] = patient.test_client().post(
            "/v1/login", headers=basic(user.username, user.password),
            json={"totp": user.next_code()}).json["token"]

    def ask(token, permission):
        def call():
            response = patient.test_client().post("/v1/requests", headers=bearer(token),
                                              json={"permission": permission, "justification": "x"})
            return response.status_code, response.json
        return call

    calls, owners = [], []
    for name, token in tokens.items():
        for permission in ("pay-create", "pay-approve", "vpn") * 2:
            calls.append(ask(token, permission))
            owners.append(name)
    results = race(*calls)
    for name in tokens:
        mine = [result for owner, result in zip(owners, results, strict=True) if owner == name]
        assert sorted(status for status, _ in mine) == [201] + [409] * 5, mine
        assert {body["error"] for status, body in mine if status == 409} <= {
            "conflicting_permission", "already_requested", "already_active"}
    db_session.expire_all()
    open_rows = db_session.execute(
        select(AccessRequest.requester_id, func.count()).where(
            AccessRequest.status.in_(["pending", "granting", "active"]))
        .group_by(AccessRequest.requester_id)).all()
    assert sorted(count for _, count in open_rows) == [1, 1, 1]


def test_portal_explain_names_the_conflict(app, world, make_user):
    _make_set(world, "books", ["ledger", "pay-approve"])
    browser = signed_in_client(app, make_user("root2", role="security", subrole="admin"))
    page = browser.get("/portal/admin/explain?user=alice&permission=pay-approve").get_data(as_text=True)
    assert "Conflict set books" in page
    assert "blocked: the user holds or waits for ledger" in page


def test_the_permission_its_rules_and_rivals_come_back_whole_from_one_query(app, world, db_session):
    """permission_and_rivals joins rules and rivals: each rival and each rule kept once, and the
    most specific rule still decides (the product of the two joins must not mislead it)."""
    from security_api.access.conflicts import permission_and_rivals
    from security_api.access.grants import Subject
    from security_api.access.policy import decide
    from security_api.models import User
    _make_set(world)
    _make_set(world, name="books", permissions=("ledger", "pay-approve"))
    # A role-wide rule beside alice's developer/backend one: two candidate rules.
    ensure_rule(db_session, permission="pay-approve", role="developer", subrole="*",
                mode=PolicyMode.AUTO, actor="test", origin=audit.Origin(), now=utcnow())
    db_session.commit()
    alice = db_session.scalars(select(User).where(User.username == "alice")).one()
    subject = Subject(alice.id, alice.username, alice.role, alice.subrole, alice.kind)
    permission, rules, rivals = permission_and_rivals(db_session, "pay-approve", subject)
    assert permission.key == "pay-approve"
    assert rivals == {"pay-create", "ledger"}
    assert sorted((rule.role, rule.subrole) for rule in rules) == [("developer", "*"),
                                                                   ("developer", "backend")]
    decision = decide(role="developer", subrole="backend", permission="pay-approve",
                      permission_max_minutes=60, candidates=rules)
    assert decision.mode == PolicyMode.APPROVAL  # developer/backend's own rule, not the wildcard
    # vpn is in no set; an unknown key finds nothing at all.
    assert permission_and_rivals(db_session, "vpn", subject)[2] == set()
    assert permission_and_rivals(db_session, "no-such-permission", subject) == (None, [], set())
