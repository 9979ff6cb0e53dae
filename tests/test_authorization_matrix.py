"""Who may call which access-request endpoint: one table of (endpoint, actor, expected status).

Every cell builds a fresh world (users, permissions, rules, and one request in the state the
endpoint needs), signs the actor in once, makes the call, and then checks what the call did
behind the API: an allowed transition moved the request and wrote its audit event, a refused
one left both untouched.
"""
from __future__ import annotations

import socket
import uuid
from dataclasses import dataclass

import pytest
from sqlalchemy import func, select

from security_api import audit
from security_api.access import lifecycle
from security_api.access.catalog import ensure_permission, ensure_rule
from security_api.access.grants import Subject
from security_api.clock import utcnow
from security_api.enums import PolicyMode
from security_api.models import AccessRequest, AuditEvent
from tests.conftest import bearer

SERVICE_SECRET = "s3rvice-secret-long-enough-42"
# name -> (role, subrole, kind)
PEOPLE = {
    "requester": ("developer", "backend", "person"),
    "other": ("finance", "analyst", "person"),
    "approver": ("security", "lead", "person"),
    # security/admin holds security-api.admin and security-api.audit standing (init-db bootstrap).
    "admin": ("security", "admin", "person"),
    "auditor": ("audit", "reader", "person"),
    "service": ("tools", "ci", "service"),
}
ACTORS = (*PEOPLE, "anonymous")


@pytest.fixture
def app(make_app):
    """An app that signs webhook events, so a failed grant is the network's doing, not config's."""
    return make_app(webhook_signing_secret="x" * 40)


# ---- the endpoints ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Endpoint:
    """One call, the request state it needs, and what an allowed call leaves behind."""

    method: str
    path: str
    state: str | None = None      # status of the world's request before the call (None: no request)
    body: dict | None = None
    after: str | None = None      # the request's status after an allowed call
    audited: str | None = None    # the audit action an allowed call writes (and a refused one not)


DECISION = {"comment": "matrix"}
ENDPOINTS = {
    "catalog": Endpoint("GET", "/v1/permissions"),
    "held": Endpoint("GET", "/v1/me/permissions"),
    "check": Endpoint("GET", "/v1/check?user=requester&permission=db"),
    "create": Endpoint("POST", "/v1/requests", body={"permission": "db", "justification": "ticket 7"},
                       audited="request.created"),
    "list-own": Endpoint("GET", "/v1/requests", state="pending"),
    "list-approvable": Endpoint("GET", "/v1/requests?scope=approvable", state="pending"),
    "list-all": Endpoint("GET", "/v1/requests?scope=all", state="pending"),
    "detail": Endpoint("GET", "/v1/requests/{id}", state="pending"),
    "approve": Endpoint("POST", "/v1/requests/{id}/approve", state="pending", body=DECISION,
                        after="active", audited="request.approved"),
    "deny": Endpoint("POST", "/v1/requests/{id}/deny", state="pending", body=DECISION,
                     after="denied", audited="request.denied"),
    "cancel": Endpoint("POST", "/v1/requests/{id}/cancel", state="pending", body={},
                       after="cancelled", audited="request.cancelled"),
    "revoke": Endpoint("POST", "/v1/requests/{id}/revoke", state="active", body={},
                       after="revoked", audited="request.revoked"),
    # Under approval an extension is a new pending request: the grant itself stays active.
    "extend": Endpoint("POST", "/v1/requests/{id}/extend", state="active",
                       body={"duration_minutes": 30, "justification": "more"},
                       audited="request.extension_requested"),
    # The webhook still points at a closed port: a retry runs, and fails again.
    "retry": Endpoint("POST", "/v1/requests/{id}/retry", state="failed", body={},
                      after="failed", audited="request.retried"),
    # The world's request is no break-glass use: those who may see it learn that (409); the
    # reviewers' own rules are tested in test_break_glass.py.
    "review": Endpoint("POST", "/v1/requests/{id}/review", state="pending",
                       body={"verdict": "justified"}, audited="request.reviewed"),
}


@dataclass(frozen=True)
class Expect:
    """An expected answer: status, error code, and whether the world's request shows in it."""

    status: int
    error: str | None = None
    sees: bool | None = None


OK = Expect(200)
NEW = Expect(201)
SEES = Expect(200, sees=True)         # 200, and the world's request is in the answer
BLIND = Expect(200, sees=False)       # 200, and it is not
ANON = Expect(401, "missing_token")
NO = Expect(403, "forbidden")
SOD = Expect(403, "separation_of_duties")
NOREQ = Expect(403, "not_requestable")
HIDE = Expect(404, "not_found")
NOTBG = Expect(409, "not_break_glass")

# The table.
#                     requester other   approver admin   auditor service anonymous
MATRIX = {
    "catalog":         (OK,     OK,     OK,     OK,     OK,     OK,     ANON),
    "held":            (OK,     OK,     OK,     OK,     OK,     OK,     ANON),
    "check":           (NO,     NO,     NO,     NO,     NO,     OK,     ANON),
    "create":          (NEW,    NOREQ,  NOREQ,  NOREQ,  NOREQ,  NOREQ,  ANON),
    "list-own":        (SEES,   BLIND,  BLIND,  BLIND,  BLIND,  BLIND,  ANON),
    "list-approvable": (BLIND,  BLIND,  SEES,   SEES,   BLIND,  BLIND,  ANON),
    "list-all":        (NO,     NO,     NO,     SEES,   SEES,   NO,     ANON),
    "detail":          (SEES,   HIDE,   SEES,   SEES,   SEES,   HIDE,   ANON),
    "approve":         (SOD,    HIDE,   OK,     OK,     NO,     HIDE,   ANON),
    "deny":            (SOD,    HIDE,   OK,     OK,     NO,     HIDE,   ANON),
    "cancel":          (OK,     HIDE,   NO,     NO,     NO,     HIDE,   ANON),
    "revoke":          (OK,     HIDE,   NO,     OK,     NO,     HIDE,   ANON),
    "retry":           (NO,     HIDE,   OK,     OK,     NO,     HIDE,   ANON),
    "extend":          (NEW,    HIDE,   NO,     NO,     NO,     HIDE,   ANON),
    "review":          (NOTBG,  HIDE,   NOTBG,  NOTBG,  NOTBG,  HIDE,   ANON),
}


CELLS = [pytest.param(endpoint, actor, expected, id=f"{endpoint}-{actor}")
         for endpoint, row in MATRIX.items() for actor, expected in zip(ACTORS, row, strict=True)]


def test_the_table_covers_every_endpoint_and_actor():
    assert set(MATRIX) == set(ENDPOINTS)
    assert len(CELLS) == len(ENDPOINTS) * len(ACTORS)


def test_every_access_route_is_in_the_table(app):
    routes = {(method, rule.rule) for rule in app.url_map.iter_rules()
              if rule.endpoint.startswith("access.") for method in rule.methods - {"HEAD", "OPTIONS"}}
    tabled = {(e.method, e.path.split("?")[0].replace("{id}", "<request_id>"))
              for e in ENDPOINTS.values()}
    assert routes == tabled


# ---- the world ----------------------------------------------------------------------------------
def _closed_port_url() -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/hook"


def _subject(user, name: str) -> Subject:
    role, subrole, kind = PEOPLE[name]
    return Subject(user.id, user.username, role, subrole, kind)


def build_world(app, make_user, state: str | None):
    """Create the actors, the catalog and rules, and one request in `state`; return (users, id)."""
    users = {}
    for name, (role, subrole, kind) in PEOPLE.items():
        password = {"password": SERVICE_SECRET} if kind == "service" else {}
        users[name] = make_user(name, role=role, subrole=subrole, kind=kind, **password)
    services = app.extensions["security_api"]
    when = {"origin": audit.Origin(), "now": utcnow()}
    kw = {"actor": "test", **when}
    with services.session_factory() as session:
        ensure_permission(session, key="db", name="DB", max_duration_minutes=120,
                          requires_justification=True, settings=services.settings, **kw)
        ensure_permission(session, key="hook", name="Hook", max_duration_minutes=60,
                          provisioner="webhook", provisioner_config={"url": _closed_port_url()},
                          settings=services.settings, **kw)
        for key in ("db", "hook"):
            ensure_rule(session, permission=key, role="developer", subrole="*",
                        mode=PolicyMode.APPROVAL, approvers=["security/lead"], **kw)
        ensure_rule(session, permission="security-api.audit", role="audit", subrole="reader",
                    mode=PolicyMode.STANDING, **kw)
        ensure_rule(session, permission="security-api.check", role="tools", subrole="ci",
                    mode=PolicyMode.STANDING, **kw)
        session.commit()
        if state is None:
            return users, None
        requester = _subject(users["requester"], "requester")
        created = lifecycle.create_request(
            session, services, requester=requester, permission_key="hook" if state == "failed" else "db",
            justification="needed", duration_minutes=None, params={}, **when)
        if state in ("active", "failed"):
            approver = lifecycle.Actor(_subject(users["approver"], "approver"))
            lifecycle.approve(session, services, request_id=created.id, actor=approver,
                              comment="setup", **when)
        status = session.scalar(select(AccessRequest.status).where(AccessRequest.id == created.id))
        assert status == state
        return users, created.id


def _status_and_audit(app, request_id: str | None, action: str | None) -> tuple[str | None, int]:
    with app.extensions["security_api"].session_factory() as session:
        status = session.scalar(select(AccessRequest.status).where(AccessRequest.id == request_id)) \
            if request_id else None
        count = 0
        if action:
            stmt = select(func.count()).select_from(AuditEvent).where(AuditEvent.action == action)
            if request_id:
                stmt = stmt.where(AuditEvent.target == request_id)
            count = session.scalar(stmt)
        return status, count


# ---- the test -----------------------------------------------------------------------------------
@pytest.mark.parametrize(("endpoint", "actor", "expected"), CELLS)
def test_authorization(app, client, make_user, login_as, endpoint, actor, expected):
    spec = ENDPOINTS[endpoint]
    users, request_id = build_world(app, make_user, spec.state)
    _, audited_before = _status_and_audit(app, request_id, spec.audited)
    headers = {} if actor == "anonymous" else bearer(login_as(users[actor])["token"])

    response = client.open(spec.path.format(id=request_id), method=spec.method, headers=headers,
                           json=spec.body)

    assert response.status_code == expected.status, response.json
    assert response.is_json
    if expected.error:
        assert response.json["error"] == expected.error, response.json
    if expected.status == 401:
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    if expected is HIDE:
        # Hidden must look exactly like absent: no oracle for which ids exist.
        absent = client.open(spec.path.format(id=uuid.uuid4()), method=spec.method,
                             headers=headers, json=spec.body)
        assert (absent.status_code, absent.json) == (response.status_code, response.json)
    if expected.sees is not None:
        body = response.json
        shown = [item["id"] for item in body["requests"]] if "requests" in body \
            else [body["request"]["id"]]
        assert (request_id in shown) is expected.sees, shown
    allowed = expected.status < 300
    status, audited = _status_and_audit(app, request_id, spec.audited)
    if spec.state:
        assert status == (spec.after if allowed and spec.after else spec.state)
    if spec.audited:
        assert audited - audited_before == (1 if allowed else 0)
    if allowed and spec.after:
        assert response.json["request"]["status"] == spec.after
