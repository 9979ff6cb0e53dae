"""Permissions and access requests through the HTTP API: every rule of the contract."""
from __future__ import annotations

import base64
import json
import socket
import threading
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
from sqlalchemy import make_url, select, update

from security_api import audit
from security_api.access.catalog import ensure_permission, ensure_rule
from security_api.clock import utcnow
from security_api.enums import PolicyMode
from security_api.models import AccessRequest, AuditEvent, Permission, PolicyRule
from security_api.provisioners.none import NoneProvisioner
from security_api.provisioners.webhook import SIGNATURE_HEADER, sign
from tests.conftest import basic, bearer

SIGNING_SECRET = "x" * 40
AUTO, APPROVAL, STANDING = PolicyMode.AUTO, PolicyMode.APPROVAL, PolicyMode.STANDING
USERS = {  # name: (role, subrole, extra make_user arguments)
    "alice": ("developer", "backend", {}),
    "fred": ("developer", "frontend", {}),
    "sam": ("sales", "rep", {}),
    "lead": ("security", "lead", {}),
    "lead2": ("security", "lead", {}),
    "admin": ("security", "admin", {}),
    "auditor": ("audit", "reader", {}),
    "bot": ("tools", "ci", {"kind": "service", "password": "s3rvice-secret-long-enough-42"}),
    "gone": ("developer", "backend", {"active": False}),
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class _Handler(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 -- the name http.server dispatches to
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.server.received.append({"headers": dict(self.headers), "body": body})
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


@contextmanager
def receiver(port: int):
    """A tiny webhook receiver on a fixed port, answering 200 and recording every event."""
    server = HTTPServer(("127.0.0.1", port), _Handler)
    server.received = []
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield server.received
    finally:
        server.shutdown()
        thread.join()
        server.server_close()


@pytest.fixture
def app(make_app):
    return make_app(webhook_signing_secret=SIGNING_SECRET)


@dataclass
class World:
    app: object
    client: object
    users: dict
    login_as: object
    hook_port: int
    headers: dict = field(default_factory=dict)

    def h(self, name: str) -> dict:
        """One real login per user per test."""
        if name not in self.headers:
            self.headers[name] = bearer(self.login_as(self.users[name])["token"])
        return self.headers[name]

    def get(self, who: str, path: str):
        return self.client.get(path, headers=self.h(who))

    def post(self, who: str, path: str, body: dict | None = None):
        return self.client.post(path, headers=self.h(who), json={} if body is None else body)

    def request(self, who: str, permission: str, **body):
        return self.post(who, "/v1/requests", {"permission": permission, **body})

    def open(self, who: str, permission: str, **body) -> dict:
        response = self.request(who, permission, **body)
        assert response.status_code == 201, response.json
        return response.json["request"]

    def act(self, who: str, request_id: str, action: str, body: dict | None = None):
        return self.post(who, f"/v1/requests/{request_id}/{action}", body)


def _kw():
    return {"actor": "test", "origin": audit.Origin(), "now": utcnow()}


def build_catalog(app, hook_url: str) -> None:
    services = app.extensions["security_api"]
    with services.session_factory() as session:
        for key, max_minutes, extra in [
            ("vpn", 60, {}), ("db", 120, {"requires_justification": True}), ("prod", 240, {}),
            ("badge", 60, {}), ("secret", 60, {}), ("ops", 60, {}),
            ("hook", 60, {"provisioner": "webhook", "provisioner_config": {"url": hook_url}}),
        ]:
            ensure_permission(session, key=key, name=key.title(), max_duration_minutes=max_minutes,
                              settings=services.settings, **extra, **_kw())
        for permission, role, subrole, mode, extra in [
            ("vpn", "*", "*", AUTO, {}),
            ("vpn", "developer", "*", AUTO, {"max_duration_minutes": 30}),
            ("vpn", "developer", "backend", AUTO, {"max_duration_minutes": 90}),
            ("db", "developer", "*", APPROVAL, {"approvers": ["security/lead"]}),
            ("prod", "developer", "backend", APPROVAL,
             {"approvers": ["security"], "approvals_required": 2}),
            ("badge", "developer", "backend", STANDING, {}),
            ("secret", "security", "*", AUTO, {}),
            ("ops", "*", "*", APPROVAL, {"approvers": ["security"]}),
            ("hook", "developer", "backend", APPROVAL, {"approvers": ["security/lead"]}),
            ("security-api.audit", "audit", "reader", STANDING, {}),
            ("security-api.check", "tools", "ci", STANDING, {}),
        ]:
            ensure_rule(session, permission=permission, role=role, subrole=subrole, mode=mode,
                        **extra, **_kw())
        session.commit()


@pytest.fixture
def world(app, client, make_user, login_as) -> World:
    users = {name: make_user(name, role=role, subrole=subrole, **extra)
             for name, (role, subrole, extra) in USERS.items()}
    port = free_port()  # nothing listens here unless a test starts a receiver
    build_catalog(app, f"http://127.0.0.1:{port}/hook")
    return World(app, client, users, login_as, port)


def parse(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def move_past_expiry(db_session, request_id: str) -> None:
    """Time passes: the grant's end is now one second ago (the reaper has not run)."""
    db_session.execute(update(AccessRequest).where(AccessRequest.id == request_id)
                       .values(expires_at=utcnow() - timedelta(seconds=1)))
    db_session.commit()


def audit_trail(db_session, request_id: str) -> list[tuple[str, str]]:
    """(action, actor) of every event about a request; provisioning ones name their step."""
    db_session.expire_all()
    rows = db_session.execute(select(AuditEvent.action, AuditEvent.actor, AuditEvent.details)
                              .where(AuditEvent.target == request_id).order_by(AuditEvent.seq))
    return [(f"{action}:{json.loads(details)['action']}" if action.startswith("provisioning.")
             else action, actor) for action, actor, details in rows]


# ---- GET /v1/permissions -----------------------------------------------------------------------
@pytest.mark.parametrize(("who", "expected"), [
    ("alice", {"vpn": ("auto", 60, None), "db": ("approval", 120, 1),
               "prod": ("approval", 240, 2), "ops": ("approval", 60, 1),
               "hook": ("approval", 60, 1)}),
    ("fred", {"vpn": ("auto", 30, None), "db": ("approval", 120, 1), "ops": ("approval", 60, 1)}),
    ("sam", {"vpn": ("auto", 60, None), "ops": ("approval", 60, 1)}),
    ("admin", {"vpn": ("auto", 60, None), "secret": ("auto", 60, None),
               "ops": ("approval", 60, 1)}),
    ("bot", {}),  # a service account requests nothing, even with a */* auto rule
])
def test_catalog_lists_only_requestable_with_mode_and_effective_max(world, who, expected):
    response = world.get(who, "/v1/permissions")
    assert response.status_code == 200
    items = response.json["permissions"]
    assert {i["key"]: (i["mode"], i["max_duration_minutes"], i["approvals_required"])
            for i in items} == expected
    assert [i["key"] for i in items] == sorted(expected)
    if who == "alice":
        db = next(i for i in items if i["key"] == "db")
        assert db["requires_justification"] is True and db["name"] == "Db"


# ---- GET /v1/me/permissions --------------------------------------------------------------------
@pytest.mark.parametrize(("who", "standing"), [
    ("alice", ["badge"]), ("fred", []), ("admin", ["security-api.admin", "security-api.audit"]),
    ("auditor", ["security-api.audit"]), ("bot", ["security-api.check"])])
def test_me_permissions_lists_standing_ones(world, who, standing):
    held = world.get(who, "/v1/me/permissions").json["permissions"]
    assert [(h["permission"], h["source"], h["expires_at"]) for h in held] == \
        [(key, "standing", None) for key in standing]


def test_me_permissions_shows_grants_until_they_expire_even_before_the_reaper(world, db_session):
    grant = world.open("alice", "vpn")
    held = world.get("alice", "/v1/me/permissions").json["permissions"]
    assert [(h["permission"], h["source"], h["expires_at"], h["request_id"]) for h in held] == \
        [("badge", "standing", None, None), ("vpn", "grant", grant["expires_at"], grant["id"])]
    move_past_expiry(db_session, grant["id"])
    held = world.get("alice", "/v1/me/permissions").json["permissions"]
    assert [h["permission"] for h in held] == ["badge"]
    assert db_session.get(AccessRequest, grant["id"]).status == "active"  # not reaped yet


# ---- GET /v1/check -----------------------------------------------------------------------------
@pytest.mark.parametrize("who", ["alice", "admin", "auditor"])
def test_check_needs_the_check_permission(world, who):
    response = world.get(who, "/v1/check?user=alice&permission=badge")
    assert response.status_code == 403 and response.json["error"] == "forbidden"
    assert "allowed" not in response.json


@pytest.mark.parametrize("query", ["", "?user=alice", "?user=&permission=vpn",
                                   "?user=a%00b&permission=vpn", "?user=nobody&permission=vpn",
                                   "?user=gone&permission=badge"])
@pytest.mark.parametrize("who", ["alice", "admin"])
def test_check_refuses_a_caller_without_the_check_permission_before_its_parameters(world, who,
                                                                                   query):
    """403 before 412 (bad or missing parameters) and before 404 (no such user): the guard is
    read with the answer in one statement, or alone when the parameters fail first."""
    response = world.get(who, "/v1/check" + query)
    assert response.status_code == 403 and response.json["error"] == "forbidden"
    assert response.json["message"] == "This needs the permission security-api.check."


@pytest.mark.parametrize(("query", "missing"), [
    ("", ["user", "permission"]), ("?user=alice", ["permission"]),
    ("?permission=vpn", ["user"]), ("?user=&permission=vpn", ["user"])])
def test_check_missing_params(world, query, missing):
    response = world.get("bot", "/v1/check" + query)
    assert response.status_code == 412 and response.json["error"] == "missing_params"
    assert [e["field"] for e in response.json["errors"]] == missing


def test_check_unknown_user_is_404(world):
    response = world.get("bot", "/v1/check?user=nobody&permission=vpn")
    assert response.status_code == 404 and response.json["error"] == "not_found"


def test_check_answers(world):
    grant = world.open("alice", "vpn")
    world.open("alice", "db", justification="incident")  # pending: not held
    cases = [
        ("alice", "badge", True, None),                   # standing
        ("ALICE", "badge", True, None),                   # usernames are case-insensitive
        ("alice", "vpn", True, grant["expires_at"]),      # active grant
        ("alice", "db", False, None),                     # pending is not held
        ("alice", "prod", False, None),                   # requestable, never requested
        ("alice", "no-such-permission", False, None),
        ("gone", "badge", False, None),                   # inactive user: nothing
        ("bot", "security-api.check", True, None),        # a service account's standing
        ("fred", "badge", False, None),
    ]
    for user, permission, allowed, expires_at in cases:
        response = world.get("bot", f"/v1/check?user={user}&permission={permission}")
        assert response.status_code == 200
        assert (response.json["allowed"], response.json["expires_at"]) == (allowed, expires_at), user


def _allowed(world, user: str, permission: str) -> tuple[bool, str | None]:
    response = world.get("bot", f"/v1/check?user={user}&permission={permission}")
    assert response.status_code == 200, response.json
    return response.json["allowed"], response.json["expires_at"]


def test_check_follows_the_most_specific_rule(world):
    """The answer is one SELECT: the rule it picks is the policy engine's, never a looser one."""
    services = world.app.extensions["security_api"]
    with services.session_factory() as session:
        ensure_permission(session, key="wiki", name="Wiki", max_duration_minutes=60,
                          settings=services.settings, **_kw())
        for role, subrole, mode in [("*", "*", STANDING), ("developer", "*", AUTO),
                                    ("developer", "backend", STANDING), ("sales", "*", STANDING),
                                    ("sales", "rep", APPROVAL)]:
            ensure_rule(session, permission="wiki", role=role, subrole=subrole, mode=mode,
                        **({"approvers": ["security"]} if mode == APPROVAL else {}), **_kw())
        session.commit()
    assert _allowed(world, "alice", "wiki") == (True, None)    # developer/backend standing
    assert _allowed(world, "fred", "wiki") == (False, None)    # developer/* auto beats */*
    assert _allowed(world, "sam", "wiki") == (False, None)     # sales/rep approval beats sales/*
    assert _allowed(world, "lead", "wiki") == (True, None)     # only */* names security/lead
    grant = world.open("fred", "wiki")
    assert _allowed(world, "fred", "wiki") == (True, grant["expires_at"])


def test_check_honours_only_the_users_own_unexpired_active_grant(world, db_session):
    grant = world.open("fred", "vpn")
    assert _allowed(world, "alice", "vpn") == (False, None)   # fred's grant is not alice's
    assert _allowed(world, "fred", "vpn") == (True, grant["expires_at"])
    assert parse(grant["expires_at"]) > utcnow()
    move_past_expiry(db_session, grant["id"])                  # a second ago, not reaped yet
    assert _allowed(world, "fred", "vpn") == (False, None)
    again = world.open("fred", "vpn")                           # the expired one is ended
    assert _allowed(world, "fred", "vpn") == (True, again["expires_at"])
    assert world.act("fred", again["id"], "revoke").status_code == 200
    assert _allowed(world, "fred", "vpn") == (False, None)


def test_check_never_says_a_service_account_administers(world, db_session):
    """Even a rule written straight into the table (before such rules were refused)."""
    db_session.add(PolicyRule(permission_key="security-api.admin", role="tools", subrole="ci",
                              mode=STANDING.value, approvers=[], created_at=utcnow()))
    db_session.commit()
    assert _allowed(world, "bot", "security-api.admin") == (False, None)
    assert _allowed(world, "bot", "security-api.check") == (True, None)
    assert _allowed(world, "admin", "security-api.admin") == (True, None)


def test_the_check_permission_held_by_a_grant_lets_a_person_check_until_it_ends(world,
                                                                                db_session):
    """The guard of /v1/check reads the caller's holding like the answer: grants count, to
    the second."""
    services = world.app.extensions["security_api"]
    with services.session_factory() as session:
        ensure_rule(session, permission="security-api.check", role="security", subrole="lead",
                    mode=AUTO, **_kw())
        session.commit()
    assert world.get("lead", "/v1/check?user=alice&permission=badge").status_code == 403
    grant = world.open("lead", "security-api.check", justification="a tool is down")
    response = world.get("lead", "/v1/check?user=alice&permission=badge")
    assert response.status_code == 200 and response.json["allowed"] is True
    assert _allowed(world, "lead", "security-api.check") == (True, grant["expires_at"])
    move_past_expiry(db_session, grant["id"])
    response = world.get("lead", "/v1/check?user=alice&permission=badge")
    assert response.status_code == 403 and response.json["error"] == "forbidden"


# ---- POST /v1/requests -------------------------------------------------------------------------
@pytest.mark.parametrize(("who", "body", "duration"), [
    ("alice", {}, 60),                       # default: effective max (rule 90 > permission 60)
    ("alice", {"duration_minutes": None}, 60),
    ("fred", {}, 30),                        # default: effective max of developer/* (30)
    ("alice", {"duration_minutes": 15}, 15),
    ("fred", {"duration_minutes": 30}, 30),  # exactly the maximum is fine
])
def test_auto_request_is_active_at_once_and_provisioned(world, who, body, duration):
    response = world.request(who, "vpn", **body)
    assert response.status_code == 201
    r = response.json["request"]
    assert (r["status"], r["mode"], r["requester"], r["permission"], r["duration_minutes"]) == \
        ("active", "auto", who, "vpn", duration)
    assert r["provisioning"]["grant"]["ok"] is True
    assert r["provisioning"]["grant"]["result"] == {"provisioner": "none"}
    assert r["provisioning"]["grant"]["error"] is None
    assert parse(r["expires_at"]) - parse(r["decided_at"]) == timedelta(minutes=duration)
    assert abs(parse(r["created_at"]) - utcnow()) < timedelta(minutes=1)
    assert r["approvals"] == [] and r["params"] == {}
    uuid.UUID(r["id"])


def test_approval_request_is_pending(world):
    response = world.request("alice", "db", justification="  incident 42  ")
    assert response.status_code == 201
    r = response.json["request"]
    assert (r["status"], r["mode"], r["approvals_required"], r["duration_minutes"]) == \
        ("pending", "approval", 1, 120)
    assert r["justification"] == "incident 42"
    assert (r["decided_at"], r["expires_at"], r["approvals"], r["provisioning"]) == \
        (None, None, [], {})


@pytest.mark.parametrize(("who", "permission", "status", "code"), [
    ("alice", "secret", 403, "not_requestable"),              # a rule exists, not for alice
    ("alice", "no-such-thing", 403, "not_requestable"),       # no rule (and no permission)
    ("alice", "security-api.admin", 403, "not_requestable"),
    ("fred", "prod", 403, "not_requestable"),                 # developer/backend only
    ("bot", "vpn", 403, "not_requestable"),                   # service accounts never request
    ("alice", "badge", 409, "already_held"),                  # standing
    ("admin", "security-api.admin", 409, "already_held"),
])
def test_request_refused(world, db_session, who, permission, status, code):
    response = world.request(who, permission, justification="because")
    assert response.status_code == status and response.json["error"] == code
    assert db_session.scalar(select(AccessRequest.id)) is None


@pytest.mark.parametrize(("permission", "body", "code"), [
    ("vpn", {}, "already_active"), ("db", {"justification": "x"}, "already_requested")])
def test_second_open_request_is_a_conflict(world, db_session, permission, body, code):
    first = world.open("alice", permission, **body)
    response = world.request("alice", permission, **body)
    assert response.status_code == 409 and response.json["error"] == code
    assert list(db_session.scalars(select(AccessRequest.id))) == [first["id"]]
    assert world.request("fred", permission, **body).status_code == 201  # per person


@pytest.mark.parametrize(("who", "body", "code", "field_name"), [
    ("alice", {"permission": "vpn", "duration_minutes": 61}, "invalid_params", "duration_minutes"),
    ("fred", {"permission": "vpn", "duration_minutes": 31}, "invalid_params", "duration_minutes"),
    ("alice", {"permission": "db", "duration_minutes": 121, "justification": "x"},
     "invalid_params", "duration_minutes"),
    ("alice", {"permission": "vpn", "duration_minutes": 0}, "invalid_params", "duration_minutes"),
    ("alice", {"permission": "vpn", "duration_minutes": -5}, "invalid_params", "duration_minutes"),
    ("alice", {"permission": "vpn", "duration_minutes": "5"}, "invalid_params", "duration_minutes"),
    ("alice", {"permission": "vpn", "duration_minutes": True}, "invalid_params",
     "duration_minutes"),
    ("alice", {"permission": "vpn", "duration_minutes": 1.5}, "invalid_params",
     "duration_minutes"),
    ("alice", {"permission": "db"}, "missing_params", "justification"),
    ("alice", {"permission": "db", "justification": " \n\t "}, "missing_params", "justification"),
    ("alice", {"permission": "vpn", "justification": 5}, "invalid_params", "justification"),
    ("alice", {"permission": "vpn", "justification": "j" * 2001}, "invalid_params",
     "justification"),
    ("alice", {"permission": "vpn", "colour": "red"}, "invalid_params", "colour"),
    ("alice", {"permission": 5}, "invalid_params", "permission"),
    ("alice", {"permission": None}, "invalid_params", "permission"),
    ("alice", {"permission": "VPN"}, "invalid_params", "permission"),
    ("alice", {"permission": "../vpn"}, "invalid_params", "permission"),
    ("alice", {"permission": "vpn x"}, "invalid_params", "permission"),
    ("alice", {"permission": ""}, "invalid_params", "permission"),
    ("alice", {"justification": "x"}, "missing_params", "permission"),
    ("alice", {"permission": "vpn", "params": []}, "invalid_params", "params"),
    ("alice", {"permission": "vpn", "params": {"cidr": "10.0.0.1/32"}}, "invalid_params",
     "params"),  # the `none` provisioner takes no params
    ("alice", {"permission": "hook", "params": {"k": [1]}}, "invalid_params", "params"),
])
def test_request_invalid_params(world, db_session, who, body, code, field_name):
    response = world.post(who, "/v1/requests", body)
    assert response.status_code == 412, response.json
    assert response.json["error"] == code
    assert field_name in [e["field"] for e in response.json["errors"]]
    if field_name == "colour":
        assert response.json["errors"] == [{"field": "colour", "problem": "unknown field"}]
    assert db_session.scalar(select(AccessRequest.id)) is None


def test_webhook_params_are_kept(world):
    r = world.open("alice", "hook", params={"host": "db-1", "port": 5432, "ro": True})
    assert r["params"] == {"host": "db-1", "port": 5432, "ro": True}


# ---- GET /v1/requests --------------------------------------------------------------------------
@pytest.fixture
def busy(world):
    """alice: vpn active, db and prod pending; fred: db pending; lead: ops pending."""
    made = {
        "alice-vpn": world.open("alice", "vpn"),
        "alice-db": world.open("alice", "db", justification="x"),
        "alice-prod": world.open("alice", "prod"),
        "fred-db": world.open("fred", "db", justification="y"),
        "lead-ops": world.open("lead", "ops"),
    }
    world.names = {r["id"]: name for name, r in made.items()}
    return made


def _listed(world, who, query=""):
    response = world.get(who, "/v1/requests" + query)
    assert response.status_code == 200, response.json
    assert response.json["next_cursor"] is None
    return sorted(world.names[r["id"]] for r in response.json["requests"])


ALL = ["alice-db", "alice-prod", "alice-vpn", "fred-db", "lead-ops"]


@pytest.mark.parametrize(("who", "query", "expected"), [
    ("alice", "", ["alice-db", "alice-prod", "alice-vpn"]),
    ("alice", "?scope=own", ["alice-db", "alice-prod", "alice-vpn"]),
    ("sam", "", []),
    ("lead", "?scope=approvable", ["alice-db", "alice-prod", "fred-db"]),  # never own lead-ops
    ("lead2", "?scope=approvable", ["alice-db", "alice-prod", "fred-db", "lead-ops"]),
    ("admin", "?scope=approvable", ["alice-db", "alice-prod", "fred-db", "lead-ops"]),
    ("alice", "?scope=approvable", []),
    ("fred", "?scope=approvable", []),
    ("auditor", "?scope=approvable", []),
    ("bot", "?scope=approvable", []),
    ("admin", "?scope=all", ALL),
    ("auditor", "?scope=all", ALL),
    ("admin", "?scope=all&status=pending", ["alice-db", "alice-prod", "fred-db", "lead-ops"]),
    ("admin", "?scope=all&status=active", ["alice-vpn"]),
    ("admin", "?scope=all&status=denied", []),
    ("admin", "?scope=all&permission=db", ["alice-db", "fred-db"]),
    ("admin", "?scope=all&permission=db&status=pending", ["alice-db", "fred-db"]),
    ("alice", "?permission=db", ["alice-db"]),
    ("alice", "?status=active", ["alice-vpn"]),
    ("lead", "?scope=approvable&permission=prod", ["alice-prod"]),
])
def test_list_scopes_and_filters(world, busy, who, query, expected):
    assert _listed(world, who, query) == expected


@pytest.mark.parametrize("who", ["alice", "fred", "lead", "bot"])
def test_scope_all_is_for_admin_and_audit_holders(world, busy, who):
    response = world.get(who, "/v1/requests?scope=all")
    assert response.status_code == 403 and response.json["error"] == "forbidden"


def test_status_expired_includes_active_grants_past_their_end(world, busy, db_session):
    move_past_expiry(db_session, busy["alice-vpn"]["id"])
    assert _listed(world, "alice", "?status=expired") == ["alice-vpn"]
    assert _listed(world, "alice", "?status=active") == []
    listed = world.get("alice", "/v1/requests?permission=vpn").json["requests"]
    assert [r["status"] for r in listed] == ["expired"]


def test_approvable_leaves_out_requests_the_caller_already_decided(world, busy):
    assert world.act("lead", busy["alice-prod"]["id"], "approve").status_code == 200
    assert _listed(world, "lead", "?scope=approvable") == ["alice-db", "fred-db"]


@pytest.mark.parametrize("query", [
    "?limit=0", "?limit=201", "?limit=-1", "?limit=abc", "?limit=1.5", "?limit=", "?limit=%D9%A3",
    "?limit=+5", "?scope=mine", "?scope=", "?status=done", "?status=ACTIVE"])
def test_list_refuses_bad_query_params(world, query):
    response = world.get("alice", "/v1/requests" + query)
    assert response.status_code == 412 and response.json["error"] == "invalid_params"
    assert query[1:].split("=")[0] in [e["field"] for e in response.json["errors"]]


@pytest.fixture
def many(world):
    """Seven requests of alice, made one after the other (newest last)."""
    ids = []
    for _ in range(5):
        ids.append(world.open("alice", "db", justification="again")["id"])
        assert world.act("alice", ids[-1], "cancel").status_code == 200
    ids.append(world.open("alice", "vpn")["id"])
    ids.append(world.open("alice", "prod")["id"])
    return ids


def _walk(get, query: str) -> tuple[list[str], int]:
    seen, pages, cursor = [], 0, None
    while True:
        suffix = f"&cursor={cursor}" if cursor else ""
        response = get(f"/v1/requests?{query}{suffix}")
        assert response.status_code == 200, response.json
        pages += 1
        seen += [r["id"] for r in response.json["requests"]]
        cursor = response.json["next_cursor"]
        if cursor is None:
            return seen, pages
        assert pages < 20


@pytest.mark.parametrize(("query", "pages", "count"), [
    ("limit=1", 7, 7), ("limit=2", 4, 7), ("limit=3", 3, 7), ("limit=7", 1, 7),
    ("limit=200", 1, 7), ("limit=2&permission=db", 3, 5), ("limit=5&status=cancelled", 1, 5),
    ("limit=2&status=pending", 1, 1)])
def test_cursor_pagination_walks_every_item_once(world, many, query, pages, count):
    seen, walked = _walk(lambda path: world.get("alice", path), query)
    assert walked == pages
    expected = list(reversed(many))  # newest first
    if "permission=db" in query or "cancelled" in query:
        expected = [i for i in expected if i in many[:5]]
    if "pending" in query:
        expected = [many[-1]]
    assert seen == expected and len(seen) == count


@pytest.mark.parametrize("zone", ["Asia/Tokyo", "America/Los_Angeles"])
def test_cursor_pagination_does_not_depend_on_the_database_time_zone(world, many, make_app,
                                                                      database_url, zone):
    if database_url.startswith("sqlite"):
        pytest.skip("the session time zone is PostgreSQL's")
    url = make_url(database_url)
    options = f"{url.query.get('options', '')} -ctimezone={zone}".strip()
    zoned = make_app(database_url=url.update_query_dict({"options": options})
                     .render_as_string(hide_password=False), webhook_signing_secret=SIGNING_SECRET)
    client, alice = zoned.test_client(), world.users["alice"]
    token = client.post("/v1/login", headers=basic(alice.username, alice.password),
                        json={"totp": alice.next_code()}).json["token"]
    seen, pages = _walk(lambda path: client.get(path, headers=bearer(token)), "limit=2")
    assert seen == list(reversed(many)) and pages == 4


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


@pytest.mark.parametrize("cursor", [
    "!!!", "abc", "%C3%A9", _b64(b"[1, 2]"), _b64(b'{"a": 1}'), _b64(b'"xy"'), _b64(b"7"),
    _b64(b'["not a date", "id"]'), _b64(b"\xff\xfe"), _b64(b"[NaN, 1]"), _b64(b"[]")])
def test_bad_cursor_is_412(world, cursor):
    response = world.get("alice", f"/v1/requests?cursor={cursor}")
    assert response.status_code == 412, response.json
    assert [e["field"] for e in response.json["errors"]] == ["cursor"]


# ---- GET /v1/requests/<id> ---------------------------------------------------------------------
@pytest.mark.parametrize(("who", "status"), [
    ("alice", 200), ("lead", 200), ("lead2", 200), ("admin", 200), ("auditor", 200),
    ("fred", 404), ("sam", 404), ("bot", 404)])
def test_who_sees_a_request(world, who, status):
    made = world.open("alice", "hook")  # approvers: security/lead
    response = world.get(who, f"/v1/requests/{made['id']}")
    assert response.status_code == status
    if status == 200:
        assert response.json["request"] == made
    else:
        assert response.json["error"] == "not_found" and "request" not in response.json


@pytest.mark.parametrize("action", ["", "/approve", "/deny", "/cancel", "/revoke", "/retry"])
def test_unknown_or_malformed_id_is_404(world, action):
    made = world.open("alice", "db", justification="x")
    for request_id in ["nope", "0" * 36, str(uuid.uuid4()), made["id"].upper(), made["id"] + "0",
                       made["id"][:-1], "%20", "x" * 300, "..%2F..%2Fv1%2Fping"]:
        path = f"/v1/requests/{request_id}{action}"
        response = world.post("admin", path) if action else world.get("admin", path)
        assert response.status_code == 404 and response.json["error"] == "not_found", request_id
    assert world.get("admin", f"/v1/requests/{made['id']}").json["request"]["status"] == "pending"


def test_another_users_existing_id_looks_like_a_missing_one(world):
    made = world.open("alice", "vpn")
    hidden = world.get("fred", f"/v1/requests/{made['id']}")
    missing = world.get("fred", f"/v1/requests/{uuid.uuid4()}")
    assert (hidden.status_code, hidden.json) == (missing.status_code, missing.json)


# ---- approve / deny ----------------------------------------------------------------------------
@pytest.mark.parametrize("requester", ["lead", "admin"])
@pytest.mark.parametrize("action", ["approve", "deny"])
def test_nobody_decides_their_own_request(world, db_session, requester, action):
    made = world.open(requester, "ops")  # approvers: security (both are)
    response = world.act(requester, made["id"], action)
    assert response.status_code == 403 and response.json["error"] == "separation_of_duties"
    assert db_session.get(AccessRequest, made["id"]).status == "pending"
    assert world.act("lead2", made["id"], "approve").json["request"]["status"] == "active"


@pytest.mark.parametrize(("who", "status", "code"), [
    ("fred", 404, "not_found"), ("sam", 404, "not_found"), ("bot", 404, "not_found"),
    ("auditor", 403, "forbidden"),  # may see the request, may not decide it
])
@pytest.mark.parametrize("action", ["approve", "deny"])
def test_non_approvers_cannot_decide(world, db_session, who, status, code, action):
    made = world.open("alice", "db", justification="x")
    response = world.act(who, made["id"], action, {"comment": "sure"})
    assert response.status_code == status and response.json["error"] == code
    row = db_session.get(AccessRequest, made["id"])
    assert row.status == "pending"
    assert world.get("alice", f"/v1/requests/{made['id']}").json["request"]["approvals"] == []


@pytest.mark.parametrize("approver", ["lead", "admin"])  # admins may approve too
def test_approve_grants_and_provisions(world, approver):
    made = world.open("alice", "db", justification="x", duration_minutes=45)
    response = world.act(approver, made["id"], "approve", {"comment": "ok"})
    assert response.status_code == 200
    r = response.json["request"]
    assert r["status"] == "active" and r["provisioning"]["grant"]["ok"] is True
    assert parse(r["expires_at"]) - parse(r["decided_at"]) == timedelta(minutes=45)
    assert [(a["approver"], a["decision"], a["comment"]) for a in r["approvals"]] == \
        [(approver, "approve", "ok")]
    assert parse(r["approvals"][0]["at"]) == parse(r["decided_at"])


@pytest.mark.parametrize("approver", ["lead", "admin"])
def test_deny_ends_a_request(world, approver):
    made = world.open("alice", "db", justification="x")
    r = world.act(approver, made["id"], "deny", {"comment": "no"}).json["request"]
    assert (r["status"], r["expires_at"], r["provisioning"]) == ("denied", None, {})
    assert r["decided_at"] is not None
    assert [(a["approver"], a["decision"], a["comment"]) for a in r["approvals"]] == \
        [(approver, "deny", "no")]
    assert world.request("alice", "db", justification="x").status_code == 201  # may ask again


@pytest.mark.parametrize(("first", "then", "code"), [
    ("approve", "approve", "request_not_pending"), ("approve", "deny", "request_not_pending"),
    ("deny", "approve", "request_not_pending"), ("deny", "deny", "request_not_pending")])
def test_decisions_need_a_pending_request(world, first, then, code):
    made = world.open("alice", "db", justification="x")
    assert world.act("lead", made["id"], first).status_code == 200
    response = world.act("admin", made["id"], then)
    assert response.status_code == 409 and response.json["error"] == code


@pytest.mark.parametrize("body", [{"comment": 5}, {"comment": "c" * 2001}, {"note": "x"}, []])
def test_decision_body_is_checked(world, db_session, body):
    made = world.open("alice", "db", justification="x")
    response = world.client.post(f"/v1/requests/{made['id']}/approve", headers=world.h("lead"),
                                 json=body)
    assert response.status_code == 412
    assert db_session.get(AccessRequest, made["id"]).status == "pending"


def test_multi_party_approval_needs_two_distinct_approvers(world, db_session):
    made = world.open("alice", "prod")
    assert made["approvals_required"] == 2
    first = world.act("lead", made["id"], "approve", {"comment": "one"})
    assert first.status_code == 200 and first.json["request"]["status"] == "pending"
    again = world.act("lead", made["id"], "approve", {"comment": "two"})
    assert again.status_code == 409 and again.json["error"] == "already_decided"
    assert world.get("bot", "/v1/check?user=alice&permission=prod").json["allowed"] is False
    second = world.act("lead2", made["id"], "approve", {"comment": "two"}).json["request"]
    assert second["status"] == "active" and second["provisioning"]["grant"]["ok"] is True
    assert [(a["approver"], a["decision"], a["comment"]) for a in second["approvals"]] == \
        [("lead", "approve", "one"), ("lead2", "approve", "two")]
    assert all(parse(a["at"]) for a in second["approvals"])
    late = world.act("admin", made["id"], "approve")
    assert late.status_code == 409 and late.json["error"] == "request_not_pending"
    actions = [a for a, _ in audit_trail(db_session, made["id"])]
    assert actions.count("request.approved") == 2 and actions.count("request.activated") == 1


def test_one_deny_ends_a_multi_party_request(world):
    made = world.open("alice", "prod")
    assert world.act("lead", made["id"], "approve").status_code == 200
    r = world.act("lead2", made["id"], "deny", {"comment": "no"}).json["request"]
    assert r["status"] == "denied"
    assert [(a["approver"], a["decision"]) for a in r["approvals"]] == \
        [("lead", "approve"), ("lead2", "deny")]
    assert world.act("admin", made["id"], "approve").status_code == 409


def test_approver_who_approved_cannot_then_deny(world, db_session):
    made = world.open("alice", "prod")
    assert world.act("lead", made["id"], "approve").status_code == 200
    response = world.act("lead", made["id"], "deny")
    assert response.status_code == 409 and response.json["error"] == "already_decided"
    assert db_session.get(AccessRequest, made["id"]).status == "pending"


# ---- cancel / revoke ---------------------------------------------------------------------------
def test_cancel_by_the_requester_while_pending(world, db_session):
    made = world.open("alice", "db", justification="x")
    for who, status in (("lead", 403), ("admin", 403), ("fred", 404)):
        assert world.act(who, made["id"], "cancel").status_code == status, who
    r = world.act("alice", made["id"], "cancel").json["request"]
    assert r["status"] == "cancelled" and r["decided_at"] is not None
    again = world.act("alice", made["id"], "cancel")
    assert again.status_code == 409 and again.json["error"] == "request_not_pending"
    assert world.act("lead", made["id"], "approve").status_code == 409
    assert world.request("alice", "db", justification="x").status_code == 201  # may ask again
    assert db_session.get(AccessRequest, made["id"]).status == "cancelled"


def test_cancel_refuses_active_requests(world):
    made = world.open("alice", "vpn")
    response = world.act("alice", made["id"], "cancel")
    assert response.status_code == 409 and response.json["error"] == "request_not_pending"


@pytest.mark.parametrize("revoker", ["alice", "admin"])
def test_revoke_by_requester_or_admin_while_active(world, revoker):
    made = world.open("alice", "vpn")
    r = world.act(revoker, made["id"], "revoke").json["request"]
    assert r["status"] == "revoked" and r["ended_at"] is not None
    assert r["provisioning"]["revoke"]["ok"] is True
    assert r["provisioning"]["grant"]["ok"] is True
    assert world.get("bot", "/v1/check?user=alice&permission=vpn").json["allowed"] is False
    held = world.get("alice", "/v1/me/permissions").json["permissions"]
    assert "vpn" not in [h["permission"] for h in held]
    again = world.act(revoker, made["id"], "revoke")
    assert again.status_code == 409 and again.json["error"] == "request_not_active"
    assert world.request("alice", "vpn").status_code == 201


def test_provisioners_run_while_no_database_connection_is_held(world, monkeypatch):
    """Grant and revoke run between two transactions: no lock and no connection held meanwhile."""
    pool = world.app.extensions["security_api"].engine.pool
    held_during_calls = []

    def watched(call):
        def run(self, ctx):
            held_during_calls.append((call.__name__, pool.checkedout()))
            return call(self, ctx)
        return run

    monkeypatch.setattr(NoneProvisioner, "grant", watched(NoneProvisioner.grant))
    monkeypatch.setattr(NoneProvisioner, "revoke", watched(NoneProvisioner.revoke))
    made = world.open("alice", "vpn")
    assert world.act("alice", made["id"], "revoke").status_code == 200
    assert held_during_calls == [("grant", 0), ("revoke", 0)]


def test_revoke_refusals(world):
    active = world.open("alice", "db", justification="x")
    assert world.act("lead", active["id"], "approve").status_code == 200
    pending = world.open("alice", "prod")
    # The approver who granted it is not an administrator: 403; strangers: 404.
    assert world.act("lead", active["id"], "revoke").status_code == 403
    assert world.act("fred", active["id"], "revoke").status_code == 404
    assert world.act("auditor", active["id"], "revoke").status_code == 403
    response = world.act("alice", pending["id"], "revoke")
    assert response.status_code == 409 and response.json["error"] == "request_not_active"
    assert world.get("bot", "/v1/check?user=alice&permission=db").json["allowed"] is True


# ---- provisioning failure and retry ------------------------------------------------------------
@pytest.mark.parametrize("retrier", ["lead", "admin"])
def test_failed_provisioning_is_retried(world, db_session, retrier):
    made = world.open("alice", "hook", params={"host": "db-1"})
    failed = world.act("lead", made["id"], "approve").json["request"]  # nothing listens
    assert (failed["status"], failed["expires_at"]) == ("failed", None)
    grant = failed["provisioning"]["grant"]
    assert grant["ok"] is False and grant["result"] is None
    assert grant["error"].startswith("webhook failed") and str(world.hook_port) not in grant["error"]
    assert "cleanup" in failed["provisioning"]  # asked to undo a half-done grant
    assert world.get("bot", "/v1/check?user=alice&permission=hook").json["allowed"] is False
    assert world.get("alice", "/v1/requests?status=failed").json["requests"][0]["id"] == made["id"]
    assert world.act("alice", made["id"], "retry").status_code == 403  # requester: not approver
    assert world.act("fred", made["id"], "retry").status_code == 404
    assert world.act("auditor", made["id"], "retry").status_code == 403
    with receiver(world.hook_port) as received:
        retried = world.act(retrier, made["id"], "retry")
        assert retried.status_code == 200, retried.json
        r = retried.json["request"]
        assert r["status"] == "active" and r["provisioning"]["grant"]["ok"] is True
        assert r["provisioning"]["grant"]["result"] == {"provisioner": "webhook", "status": 200}
        assert parse(r["expires_at"]) - parse(r["decided_at"]) == timedelta(minutes=60)
        assert world.get("bot", "/v1/check?user=alice&permission=hook").json["allowed"] is True
        again = world.act(retrier, made["id"], "retry")
        assert again.status_code == 409 and again.json["error"] == "request_not_failed"
        revoked = world.act("alice", made["id"], "revoke").json["request"]
        assert revoked["provisioning"]["revoke"]["ok"] is True
    events = [json.loads(e["body"]) for e in received]
    assert [(e["event"], e["request_id"], e["requester"], e["params"]) for e in events] == \
        [("grant", made["id"], "alice", {"host": "db-1"}),
         ("revoke", made["id"], "alice", {"host": "db-1"})]
    assert all(e["headers"][SIGNATURE_HEADER] == sign(e["body"], secret=SIGNING_SECRET)
               for e in received)
    actions = [a for a, _ in audit_trail(db_session, made["id"])]
    assert actions == [
        "request.created", "request.approved", "provisioning.failed:grant",
        "provisioning.failed:cleanup", "request.failed", "request.retried",
        "provisioning.succeeded:grant", "request.activated", "request.revoked",
        "provisioning.succeeded:revoke"]


@pytest.mark.parametrize("status", ["pending", "active", "denied", "cancelled"])
def test_retry_needs_a_failed_request(world, status):
    made = world.open("alice", "vpn" if status == "active" else "db", justification="x")
    if status == "denied":
        world.act("lead", made["id"], "deny")
    if status == "cancelled":
        world.act("alice", made["id"], "cancel")
    response = world.act("admin", made["id"], "retry")
    assert response.status_code == 409 and response.json["error"] == "request_not_failed"


def test_retry_while_another_request_is_open_is_a_conflict(world, db_session):
    failed = world.open("alice", "hook")
    assert world.act("lead", failed["id"], "approve").json["request"]["status"] == "failed"
    newer = world.open("alice", "hook")  # a failed request is not open: a new one is allowed
    with receiver(world.hook_port) as received:
        response = world.act("lead", failed["id"], "retry")
    assert response.status_code == 409  # (the code says request_not_failed: misleading)
    assert received == []  # the provisioner never ran
    assert db_session.get(AccessRequest, failed["id"]).status == "failed"
    assert db_session.get(AccessRequest, newer["id"]).status == "pending"


# ---- expiry ------------------------------------------------------------------------------------
def test_expiry_is_seen_at_once_and_reaped_exactly_once(world, db_session, runner):
    made = world.open("alice", "vpn")
    other = world.open("fred", "vpn")  # not due: the reaper leaves it alone
    assert world.get("bot", "/v1/check?user=alice&permission=vpn").json["allowed"] is True
    move_past_expiry(db_session, made["id"])
    path = f"/v1/requests/{made['id']}"
    assert world.get("alice", path).json["request"]["status"] == "expired"
    assert world.get("admin", path).json["request"]["status"] == "expired"
    assert world.get("bot", "/v1/check?user=alice&permission=vpn").json == \
        {"message": None, "allowed": False, "expires_at": None}
    response = world.act("alice", made["id"], "revoke")
    assert response.status_code == 409 and response.json["error"] == "request_not_active"
    row = db_session.get(AccessRequest, made["id"])
    assert (row.status, row.provisioning.get("revoke")) == ("active", None)

    first = runner.invoke(args=["reap"])
    assert first.exit_code == 0 and "Expired 1 request(s)" in first.output
    db_session.expire_all()
    row = db_session.get(AccessRequest, made["id"])
    assert row.status == "expired" and row.ended_at is not None
    assert row.provisioning["revoke"]["ok"] is True
    assert db_session.get(AccessRequest, other["id"]).status == "active"
    second = runner.invoke(args=["reap"])
    assert second.exit_code == 0 and "Expired 0 request(s)" in second.output
    assert audit_trail(db_session, made["id"]) == [
        ("request.created", "alice"), ("provisioning.succeeded:grant", "system"),
        ("request.activated", "system"), ("request.expired", "system"),
        ("provisioning.succeeded:revoke", "system")]
    assert world.get("alice", path).json["request"]["provisioning"]["revoke"]["ok"] is True


def test_a_new_request_is_accepted_once_the_old_grant_has_expired(world, db_session):
    made = world.open("alice", "vpn")
    move_past_expiry(db_session, made["id"])
    fresh = world.request("alice", "vpn")  # the reaper has not run: no 409
    assert fresh.status_code == 201 and fresh.json["request"]["status"] == "active"
    db_session.expire_all()
    old = db_session.get(AccessRequest, made["id"])
    assert old.status == "expired" and old.provisioning["revoke"]["ok"] is True
    assert [a for a, _ in audit_trail(db_session, made["id"])].count("request.expired") == 1


# ---- audit -------------------------------------------------------------------------------------
def test_every_transition_is_audited(world, db_session):
    auto = world.open("alice", "vpn")
    world.act("alice", auto["id"], "revoke")
    approved = world.open("alice", "db", justification="x")
    world.act("lead", approved["id"], "approve", {"comment": "ok"})
    denied = world.open("alice", "prod")
    world.act("lead", denied["id"], "deny")
    cancelled = world.open("alice", "ops")
    world.act("alice", cancelled["id"], "cancel")
    trails = {name: audit_trail(db_session, r["id"]) for name, r in
              (("auto", auto), ("approved", approved), ("denied", denied),
               ("cancelled", cancelled))}
    assert trails == {
        "auto": [("request.created", "alice"), ("provisioning.succeeded:grant", "system"),
                 ("request.activated", "system"), ("request.revoked", "alice"),
                 ("provisioning.succeeded:revoke", "system")],
        "approved": [("request.created", "alice"), ("request.approved", "lead"),
                     ("provisioning.succeeded:grant", "system"), ("request.activated", "system")],
        "denied": [("request.created", "alice"), ("request.denied", "lead")],
        "cancelled": [("request.created", "alice"), ("request.cancelled", "alice")],
    }
    created = db_session.scalar(select(AuditEvent).where(AuditEvent.target == approved["id"],
                                                         AuditEvent.action == "request.created"))
    assert json.loads(created.details)["permission"] == "db"
    assert created.ip == "127.0.0.1" and created.request_id


def test_refused_transitions_leave_no_audit_event(world, db_session):
    made = world.open("alice", "db", justification="x")
    before = audit_trail(db_session, made["id"])
    assert world.act("alice", made["id"], "approve").json["error"] == "separation_of_duties"
    assert world.act("fred", made["id"], "deny").status_code == 404
    assert world.act("auditor", made["id"], "approve").status_code == 403
    assert world.act("lead", made["id"], "cancel").status_code == 403
    assert world.act("alice", made["id"], "revoke").status_code == 409
    assert world.act("admin", made["id"], "retry").status_code == 409
    assert audit_trail(db_session, made["id"]) == before == [("request.created", "alice")]


# ---- CLI: create-permission / create-rule ------------------------------------------------------
def test_cli_creates_a_permission_and_a_rule_that_the_api_honours(world, runner, db_session):
    result = runner.invoke(args=["create-permission", "gitlab", "--name", "GitLab",
                                 "--description", "Source code", "--max-duration-minutes", "90",
                                 "--requires-justification", "--provisioner", "webhook",
                                 "--config", '{"url": "https://hooks.example.com/gitlab"}'])
    assert result.exit_code == 0 and "Permission gitlab exists." in result.output
    row = db_session.get(Permission, "gitlab")
    assert (row.name, row.max_duration_minutes, row.requires_justification, row.provisioner) == \
        ("GitLab", 90, True, "webhook")
    assert row.provisioner_config == {"url": "https://hooks.example.com/gitlab",
                                                  "headers": {}}
    result = runner.invoke(args=["create-rule", "gitlab", "--role", "developer", "--subrole", "*",
                                 "--mode", "approval", "--approver", "security/lead",
                                 "--approver", "security", "--approvals-required", "2",
                                 "--max-duration-minutes", "45", "--pending-ttl-minutes", "120"])
    assert result.exit_code == 0, result.output
    assert "developer/* -> gitlab (approval)" in result.output
    rule = db_session.scalar(select(PolicyRule).where(PolicyRule.permission_key == "gitlab"))
    assert (rule.role, rule.subrole, rule.mode, rule.approvals_required,
            rule.max_duration_minutes, rule.approvers, rule.pending_ttl_minutes) == \
        ("developer", "*", "approval", 2, 45, ["security/lead", "security"], 120)
    item = next(i for i in world.get("fred", "/v1/permissions").json["permissions"]
                if i["key"] == "gitlab")
    assert (item["mode"], item["max_duration_minutes"], item["approvals_required"]) == \
        ("approval", 45, 2)
    actions = list(db_session.scalars(select(AuditEvent.action).where(AuditEvent.actor == "cli")))
    assert actions == ["permission.created", "policy.created"]


@pytest.mark.parametrize(("args", "message"), [
    (["Bad_Key", "--name", "x", "--max-duration-minutes", "5"], "key"),
    (["k", "--name", "x", "--max-duration-minutes", "0"], "max_duration_minutes"),
    (["k", "--name", "x", "--max-duration-minutes", "525601"], "max_duration_minutes"),
    (["k", "--name", "x", "--max-duration-minutes", "5", "--provisioner", "nope"], "provisioner"),
    (["k", "--name", "x", "--max-duration-minutes", "5", "--provisioner", "webhook"], "config.url"),
    (["k", "--name", "x", "--max-duration-minutes", "5", "--provisioner", "webhook",
      "--config", '{"url": "ftp://files.example.com"}'], "config.url"),
    (["k", "--name", "x", "--max-duration-minutes", "5", "--provisioner", "webhook",
      "--config", '{"url": "https://x.example.com", "secret": 1}'], "unknown keys"),
    (["k", "--name", "x", "--max-duration-minutes", "5", "--provisioner", "aws_security_group",
      "--config", '{"group_id": "sg-1", "ports": [22]}'], "config.group_id"),
    (["k", "--name", "x", "--max-duration-minutes", "5", "--config", "{not json"], "not JSON"),
    (["k", "--max-duration-minutes", "5"], "--name"),
])
def test_cli_create_permission_refusals(runner, db_session, args, message):
    result = runner.invoke(args=["create-permission", *args])
    assert result.exit_code != 0 and message in result.output, result.output
    assert db_session.scalar(select(Permission).where(Permission.builtin.is_(False))) is None


@pytest.mark.parametrize(("args", "message"), [
    (["vpn", "--role", "nope", "--subrole", "*", "--mode", "auto"], "unknown role"),
    (["vpn", "--role", "developer", "--subrole", "nope", "--mode", "auto"], "unknown subrole"),
    (["vpn", "--role", "*", "--subrole", "backend", "--mode", "auto"], "must be * when role is *"),
    (["nope", "--role", "developer", "--subrole", "*", "--mode", "auto"], "unknown permission"),
    (["vpn", "--role", "developer", "--subrole", "*", "--mode", "approval"], "needs approvers"),
    (["vpn", "--role", "developer", "--subrole", "*", "--mode", "approval",
      "--approver", "nobody"], "matches no role or subrole"),
    (["vpn", "--role", "developer", "--subrole", "*", "--mode", "approval",
      "--approver", "security/nobody"], "matches no role or subrole"),
    (["vpn", "--role", "developer", "--subrole", "*", "--mode", "approval",
      "--approver", "security", "--approver", "ghosts"], "'ghosts' matches no role"),
    (["vpn", "--role", "developer", "--subrole", "*", "--mode", "approval",
      "--approver", "security", "--approvals-required", "0"], "from 1 to 10"),
    (["vpn", "--role", "developer", "--subrole", "*", "--mode", "approval",
      "--approver", "security", "--approvals-required", "11"], "from 1 to 10"),
    (["vpn", "--role", "developer", "--subrole", "*", "--mode", "sometimes"], "Invalid value"),
    (["vpn", "--role", "developer", "--subrole", "*", "--mode", "approval",
      "--approver", "security", "--pending-ttl-minutes", "0"], "from 1 to 525600"),
])
def test_cli_create_rule_refusals(runner, db_session, make_user, args, message):
    make_user("alice")  # creates developer/backend
    make_user("lead", role="security", subrole="lead")
    assert runner.invoke(args=["create-permission", "vpn", "--name", "VPN",
                               "--max-duration-minutes", "60"]).exit_code == 0
    result = runner.invoke(args=["create-rule", *args])
    assert result.exit_code != 0 and message in result.output, result.output
    assert db_session.scalar(select(PolicyRule).where(PolicyRule.permission_key == "vpn")) is None


@pytest.mark.parametrize("minutes", ["0", "-5"])
def test_cli_create_rule_refuses_a_non_positive_max(runner, db_session, make_user, minutes):
    make_user("alice")
    assert runner.invoke(args=["create-permission", "vpn", "--name", "VPN",
                               "--max-duration-minutes", "60"]).exit_code == 0
    result = runner.invoke(args=["create-rule", "vpn", "--role", "developer", "--subrole", "*",
                                 "--mode", "auto", "--max-duration-minutes", minutes])
    assert result.exit_code != 0 and "max_duration_minutes" in result.output
