"""Who may call which admin or audit endpoint: one table of (endpoint, actor, expected status).

Every cell builds a fresh world (the actor, a target user, a role, a permission, a policy rule, a
locked-out sign-in), signs the actor in once, makes the call, and then looks behind the API: an
allowed change wrote its audit event, a refused call (or a read) left every row as it was.
"""
from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pytest
from sqlalchemy import func, select

from security_api import audit
from security_api.access.admin_conflicts import set_members
from security_api.access.catalog import ensure_permission, ensure_rule
from security_api.accounts import users as accounts
from security_api.accounts.signin_attempts import lock_key
from security_api.clock import utcnow
from security_api.db import Base
from security_api.enums import AuditAction, PolicyMode
from security_api.models import AuditEvent, ConflictSet
from tests.conftest import bearer

if TYPE_CHECKING:  # imported by name, pytest would try to collect it as a test class
    from tests.conftest import TestUser

SERVICE_SECRET = "s3rvice-secret-long-enough-42"
# name -> (role, subrole, kind)
PEOPLE = {
    # security/admin holds security-api.admin and security-api.audit standing (bootstrap).
    "admin": ("security", "admin", "person"),
    "auditor": ("audit", "reader", "person"),
    # An approver of the world's rule, but no administrator.
    "approver": ("security", "lead", "person"),
    "employee": ("developer", "backend", "person"),
    "service": ("tools", "ci", "service"),
}
ACTORS = (*PEOPLE, "anonymous")
TARGET = "target"
# Sign-in state lives in these (Redis stands in for them when given): not what a call "changes".
VOLATILE_TABLES = {"login_failures", "rate_counters"}


# ---- the endpoints ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Endpoint:
    """One call: its url_map rule (<args> filled from the world), body, and what success writes."""

    method: str
    rule: str
    query: str = ""
    body: dict | None = None
    audited: str | None = None    # the audit action an allowed call writes; None: a read

    @property
    def mutates(self) -> bool:
        return self.audited is not None


ENDPOINTS = {
    # users
    "users-list": Endpoint("GET", "/v1/admin/users"),
    "users-create": Endpoint("POST", "/v1/admin/users",
                             body={"username": "newbie", "role": "developer", "subrole": "backend"},
                             audited=AuditAction.USER_CREATED),
    "user-detail": Endpoint("GET", "/v1/admin/users/<user_id>"),
    "user-update": Endpoint("PATCH", "/v1/admin/users/<user_id>", body={"active": False},
                            audited=AuditAction.USER_UPDATED),
    "user-reset-totp": Endpoint("POST", "/v1/admin/users/<user_id>/reset-totp", body={},
                                audited=AuditAction.USER_TOTP_RESET),
    "user-reset-password": Endpoint("POST", "/v1/admin/users/<user_id>/reset-password", body={},
                                    audited=AuditAction.USER_PASSWORD_RESET),
    "user-unlock": Endpoint("POST", "/v1/admin/users/<user_id>/unlock", body={},
                            audited=AuditAction.USER_UNLOCKED),
    # roles
    "roles-list": Endpoint("GET", "/v1/admin/roles"),
    "roles-create": Endpoint("POST", "/v1/admin/roles", body={"name": "newrole", "subroles": ["a"]},
                             audited=AuditAction.ROLE_CREATED),
    "role-detail": Endpoint("GET", "/v1/admin/roles/<name>"),
    "role-update": Endpoint("PATCH", "/v1/admin/roles/<name>", body={"description": "changed"},
                            audited=AuditAction.ROLE_UPDATED),
    "role-delete": Endpoint("DELETE", "/v1/admin/roles/<name>", audited=AuditAction.ROLE_DELETED),
    "subrole-create": Endpoint("POST", "/v1/admin/roles/<name>/subroles", body={"name": "three"},
                               audited=AuditAction.ROLE_UPDATED),
    "subrole-delete": Endpoint("DELETE", "/v1/admin/roles/<name>/subroles/<subrole>",
                               audited=AuditAction.SUBROLE_DELETED),
    # permissions
    "permissions-list": Endpoint("GET", "/v1/admin/permissions"),
    "permissions-create": Endpoint("POST", "/v1/admin/permissions",
                                   body={"key": "new-perm", "name": "New", "max_duration_minutes": 60},
                                   audited=AuditAction.PERMISSION_CREATED),
    "permission-detail": Endpoint("GET", "/v1/admin/permissions/<key>"),
    "permission-update": Endpoint("PATCH", "/v1/admin/permissions/<key>",
                                  body={"max_duration_minutes": 30},
                                  audited=AuditAction.PERMISSION_UPDATED),
    "permission-delete": Endpoint("DELETE", "/v1/admin/permissions/<key>",
                                  audited=AuditAction.PERMISSION_DELETED),
    # policy rules
    "policies-list": Endpoint("GET", "/v1/admin/policies"),
    "policies-create": Endpoint("POST", "/v1/admin/policies",
                                body={"permission": "vpn", "role": "developer", "mode": "auto"},
                                audited=AuditAction.POLICY_CREATED),
    "policy-explain": Endpoint("GET", "/v1/admin/policies/explain",
                               query="?user=target&permission=db"),
    "policy-detail": Endpoint("GET", "/v1/admin/policies/<rule_id:rule_id>"),
    "policy-update": Endpoint("PATCH", "/v1/admin/policies/<rule_id:rule_id>", body={"approvals_required": 2},
                              audited=AuditAction.POLICY_UPDATED),
    "policy-delete": Endpoint("DELETE", "/v1/admin/policies/<rule_id:rule_id>",
                              audited=AuditAction.POLICY_DELETED),
    # drift (the world's permissions use `none`: nothing to find, so nothing to fix or write)
    "drift-list": Endpoint("GET", "/v1/admin/drift"),
    "drift-fix": Endpoint("POST", "/v1/admin/drift/fix", body={}),
    # conflict sets (separation of duties)
    "conflicts-list": Endpoint("GET", "/v1/admin/conflicts"),
    "conflicts-create": Endpoint("POST", "/v1/admin/conflicts",
                                 body={"name": "new-set", "permissions": ["db", "vpn"]},
                                 audited=AuditAction.CONFLICT_CREATED),
    "conflict-detail": Endpoint("GET", "/v1/admin/conflicts/<name>"),
    "conflict-update": Endpoint("PATCH", "/v1/admin/conflicts/<name>", body={"description": "x"},
                                audited=AuditAction.CONFLICT_UPDATED),
    "conflict-delete": Endpoint("DELETE", "/v1/admin/conflicts/<name>",
                                audited=AuditAction.CONFLICT_DELETED),
    # the audit log
    "audit-list": Endpoint("GET", "/v1/audit"),
    "audit-export": Endpoint("GET", "/v1/audit/export"),
    "audit-verify": Endpoint("GET", "/v1/audit/verify"),
}


@dataclass(frozen=True)
class Expect:
    """An expected answer: status and error code."""

    status: int
    error: str | None = None


OK = Expect(200)
NEW = Expect(201)
ANON = Expect(401, "missing_token")
NO = Expect(403, "forbidden")

# The table.
#                        admin   auditor approver employee service anonymous
MATRIX = {
    "users-list":          (OK,    NO,     NO,     NO,     NO,     ANON),
    "users-create":        (NEW,   NO,     NO,     NO,     NO,     ANON),
    "user-detail":         (OK,    NO,     NO,     NO,     NO,     ANON),
    "user-update":         (OK,    NO,     NO,     NO,     NO,     ANON),
    "user-reset-totp":     (OK,    NO,     NO,     NO,     NO,     ANON),
    "user-reset-password": (OK,    NO,     NO,     NO,     NO,     ANON),
    "user-unlock":         (OK,    NO,     NO,     NO,     NO,     ANON),
    "roles-list":          (OK,    NO,     NO,     NO,     NO,     ANON),
    "roles-create":        (NEW,   NO,     NO,     NO,     NO,     ANON),
    "role-detail":         (OK,    NO,     NO,     NO,     NO,     ANON),
    "role-update":         (OK,    NO,     NO,     NO,     NO,     ANON),
    "role-delete":         (OK,    NO,     NO,     NO,     NO,     ANON),
    "subrole-create":      (NEW,   NO,     NO,     NO,     NO,     ANON),
    "subrole-delete":      (OK,    NO,     NO,     NO,     NO,     ANON),
    "permissions-list":    (OK,    NO,     NO,     NO,     NO,     ANON),
    "permissions-create":  (NEW,   NO,     NO,     NO,     NO,     ANON),
    "permission-detail":   (OK,    NO,     NO,     NO,     NO,     ANON),
    "permission-update":   (OK,    NO,     NO,     NO,     NO,     ANON),
    "permission-delete":   (OK,    NO,     NO,     NO,     NO,     ANON),
    "policies-list":       (OK,    NO,     NO,     NO,     NO,     ANON),
    "policies-create":     (NEW,   NO,     NO,     NO,     NO,     ANON),
    "policy-explain":      (OK,    NO,     NO,     NO,     NO,     ANON),
    "policy-detail":       (OK,    NO,     NO,     NO,     NO,     ANON),
    "policy-update":       (OK,    NO,     NO,     NO,     NO,     ANON),
    "policy-delete":       (OK,    NO,     NO,     NO,     NO,     ANON),
    "drift-list":          (OK,    NO,     NO,     NO,     NO,     ANON),
    "drift-fix":           (OK,    NO,     NO,     NO,     NO,     ANON),
    "conflicts-list":      (OK,    NO,     NO,     NO,     NO,     ANON),
    "conflicts-create":    (NEW,   NO,     NO,     NO,     NO,     ANON),
    "conflict-detail":     (OK,    NO,     NO,     NO,     NO,     ANON),
    "conflict-update":     (OK,    NO,     NO,     NO,     NO,     ANON),
    "conflict-delete":     (OK,    NO,     NO,     NO,     NO,     ANON),
    "audit-list":          (OK,    OK,     NO,     NO,     NO,     ANON),
    "audit-export":        (OK,    OK,     NO,     NO,     NO,     ANON),
    "audit-verify":        (OK,    OK,     NO,     NO,     NO,     ANON),
}


CELLS = [pytest.param(endpoint, actor, expected, id=f"{endpoint}-{actor}")
         for endpoint, row in MATRIX.items() for actor, expected in zip(ACTORS, row, strict=True)]


def test_the_table_covers_every_endpoint_and_actor():
    assert set(MATRIX) == set(ENDPOINTS)
    assert len(CELLS) == len(ENDPOINTS) * len(ACTORS)


def test_every_admin_and_audit_route_is_in_the_table(app):
    routes = {(method, rule.rule) for rule in app.url_map.iter_rules()
              if rule.rule.startswith(("/v1/admin", "/v1/audit"))
              for method in rule.methods - {"HEAD", "OPTIONS"}}
    tabled = {(e.method, e.rule) for e in ENDPOINTS.values()}
    assert routes == tabled


# ---- the world ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class World:
    """What the calls act on, by the url_map argument that names it."""

    args: dict[str, str]
    target_username: str

    def path(self, spec: Endpoint) -> str:
        return re.sub(r"<(?:\w+:)?(\w+)>", lambda match: self.args[match[1]], spec.rule) + spec.query


def build_world(app, make_user, actor: str) -> tuple[World, TestUser | None]:
    """Create the actor, a target user, the catalog and rules; return (world, the actor's user)."""
    services = app.extensions["security_api"]
    kw = {"actor": "test", "origin": audit.Origin(), "now": utcnow()}
    with services.session_factory() as session:
        for role, subrole, _ in PEOPLE.values():
            accounts.create_role(session, name=role, subroles=[subrole], **kw)
        # No user and no rule names sandbox: an admin may delete it, or any of its subroles.
        accounts.create_role(session, name="sandbox", subroles=["one", "two"], **kw)
        for key in ("db", "vpn"):
            ensure_permission(session, key=key, name=key.upper(), max_duration_minutes=120,
                              settings=services.settings, **kw)
        rule = ensure_rule(session, permission="db", role="developer", subrole="*",
                           mode=PolicyMode.APPROVAL, approvers=["security/lead"], **kw)
        ensure_rule(session, permission="security-api.audit", role="audit", subrole="reader",
                    mode=PolicyMode.STANDING, **kw)
        ensure_rule(session, permission="security-api.check", role="tools", subrole="ci",
                    mode=PolicyMode.STANDING, **kw)
        # A conflict set named like the sandbox role (both routes say <name>), of its own permissions.
        for key in ("left", "right"):
            ensure_permission(session, key=key, name=key, max_duration_minutes=60,
                              settings=services.settings, **kw)
        session.add(ConflictSet(name="sandbox", description="", created_at=kw["now"]))
        session.flush()
        set_members(session, "sandbox", ["left", "right"])
        session.commit()
        rule_id = rule.id
    target = make_user(TARGET)
    _lock_out(app, TARGET)
    user = None
    if actor in PEOPLE:
        role, subrole, kind = PEOPLE[actor]
        password = {"password": SERVICE_SECRET} if kind == "service" else {}
        user = make_user(actor, role=role, subrole=subrole, kind=kind, **password)
    args = {"user_id": target.id, "name": "sandbox", "subrole": "two", "key": "vpn",
            "rule_id": rule_id}
    return World(args, target.username), user


def _lock_out(app, username: str) -> None:
    services = app.extensions["security_api"]
    settings = services.settings
    limits = {"threshold": settings.lockout_threshold, "lock_seconds": settings.lockout_seconds}
    for _ in range(settings.lockout_threshold):
        services.store.reserve_attempt(lock_key(username), **limits, now=int(time.time()))
        services.store.record_failure(lock_key(username), **limits, now=int(time.time()))
    assert _locked(app, username)


def _locked(app, username: str) -> bool:
    store = app.extensions["security_api"].store
    return store.lock_state(lock_key(username), now=int(time.time())).locked


def snapshot(app) -> dict[str, list[str]]:
    """Every row of every table a call could change, in a stable order."""
    engine = app.extensions["security_api"].session_factory.kw["bind"]
    with engine.connect() as connection:
        return {table.name: sorted(repr(tuple(row)) for row in connection.execute(table.select()))
                for table in Base.metadata.sorted_tables if table.name not in VOLATILE_TABLES}


def _audited(app, action: str) -> int:
    with app.extensions["security_api"].session_factory() as session:
        return session.scalar(select(func.count()).select_from(AuditEvent)
                              .where(AuditEvent.action == str(action)))


def _check_success_body(endpoint: str, response) -> None:
    """The admin's call really did what it says, not merely answered 2xx."""
    if endpoint == "audit-export":
        assert response.mimetype == "application/x-ndjson"
        lines = response.get_data(as_text=True).splitlines()
        assert lines and all("action" in json.loads(line) for line in lines)
        response.close()
        return
    assert response.is_json
    body = response.json
    if endpoint == "audit-verify":
        assert body["ok"] is True, body
    elif endpoint == "audit-list":
        assert body["events"], body
    elif endpoint == "user-update":
        assert body["user"]["active"] is False
    elif endpoint == "user-reset-totp":
        assert body["user"]["totp_enabled"] is False
    elif endpoint in ("drift-list", "drift-fix"):
        assert (body["missing"], body["orphaned"], body["errors"]) == ([], [], []), body
    elif endpoint == "policy-explain":
        assert body["decision"] == "approval", body


# ---- the test -----------------------------------------------------------------------------------
@pytest.mark.parametrize(("endpoint", "actor", "expected"), CELLS)
def test_authorization(app, client, make_user, login_as, endpoint, actor, expected):
    spec = ENDPOINTS[endpoint]
    world, user = build_world(app, make_user, actor)
    headers = bearer(login_as(user)["token"]) if user else {}
    before = snapshot(app)
    audited_before = _audited(app, spec.audited) if spec.mutates else 0

    response = client.open(world.path(spec), method=spec.method, headers=headers, json=spec.body)

    assert response.status_code == expected.status, response.get_data(as_text=True)
    allowed = expected.status < 300
    if allowed:
        _check_success_body(endpoint, response)
    else:
        assert response.is_json
        assert response.json["error"] == expected.error, response.json
    if expected.status == 401:
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    after = snapshot(app)
    if allowed and spec.mutates:
        assert after != before
        assert _audited(app, spec.audited) - audited_before == 1
    else:
        # A refusal, or a read, changes nothing: not a row, not an audit event.
        assert after == before
    assert _locked(app, world.target_username) is not (allowed and endpoint == "user-unlock")
