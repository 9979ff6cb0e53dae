"""Step-up: permissions with `step_up` need a fresh TOTP code to create, approve or deny a request.

Codes are real (pyotp from the enrolled secret). Instead of waiting for the next 30-s step,
`fresh_code` rewinds the user's replay mark by two steps, exactly what a minute passing does
to it; the replay tests never rewind.
"""
from __future__ import annotations

import json
import time

import pyotp
import pytest
from prometheus_client import REGISTRY
from sqlalchemy import func, select, update

from security_api import audit
from security_api.access.catalog import ensure_permission, ensure_rule
from security_api.accounts.step_up import require_step_up
from security_api.clock import utcnow
from security_api.enums import PolicyMode
from security_api.errors import InvalidStepUp, StepUpRequired
from security_api.models import AccessRequest, Approval, AuditEvent, User
from tests.conftest import basic, bearer
from tests.test_concurrency import race

STEPPED, PLAIN = "deploy", "vpn"


def _kw():
    return {"actor": "test", "origin": audit.Origin(), "now": utcnow()}


@pytest.fixture
def world(app, client, make_user, login_as):
    services = app.extensions["security_api"]
    users = {"alice": make_user("alice"), "lead": make_user("lead", role="security", subrole="lead"),
             "bot": make_user("bot", role="tools", subrole="ci", kind="service",
                              password="s3rvice-secret-long-enough-42")}
    with services.session_factory() as session:
        for key, step_up in ((STEPPED, True), (PLAIN, False)):
            ensure_permission(session, key=key, name=key.title(), max_duration_minutes=60,
                              settings=services.settings, step_up=step_up, **_kw())
            ensure_rule(session, permission=key, role="developer", subrole="backend",
                        mode=PolicyMode.APPROVAL, approvers=["security/lead"], **_kw())
        session.commit()
    tokens = {name: bearer(login_as(user)["token"]) for name, user in users.items()}
    return {"users": users, "h": tokens, "services": services}


def fresh_code(db_session, user) -> str:
    """A code of a step the user has not used: the replay mark rewound as a minute would."""
    current = int(time.time()) // 30
    db_session.execute(update(User).where(User.id == user.id, User.last_totp_step >= current - 1)
                       .values(last_totp_step=current - 2))
    db_session.commit()
    user.last_step = current - 2
    return user.next_code()


def last_code(user) -> str:
    """The code of the step the user used last (replaying it)."""
    return pyotp.TOTP(user.totp_secret).at(user.last_step * 30)


def create(client, world, permission, **body):
    return client.post("/v1/requests", headers=world["h"]["alice"],
                       json={"permission": permission, "justification": "release", **body})


def count(db_session, model) -> int:
    db_session.expire_all()
    return db_session.scalar(select(func.count()).select_from(model))


def refusals(db_session) -> list[str]:
    db_session.expire_all()
    rows = db_session.scalars(select(AuditEvent.details).where(
        AuditEvent.action == "step_up.refused").order_by(AuditEvent.seq))
    return [json.loads(d)["reason"] for d in rows]


def pending(client, world, db_session) -> str:
    response = create(client, world, STEPPED, totp=fresh_code(db_session, world["users"]["alice"]))
    assert response.status_code == 201, response.json
    assert response.json["request"]["status"] == "pending"
    return response.json["request"]["id"]


# ---- catalog and creation ----------------------------------------------------------------------
def test_catalog_says_which_permissions_need_step_up(client, world):
    response = client.get("/v1/permissions", headers=world["h"]["alice"])
    assert {i["key"]: i["step_up"] for i in response.json["permissions"]} == {
        STEPPED: True, PLAIN: False}


def refusal_metric(reason: str) -> float:
    return REGISTRY.get_sample_value("security_api_step_up_refusals_total",
                                     {"reason": reason}) or 0.0


def test_missing_code_is_401_step_up_required_and_nothing_is_created(client, world, db_session):
    counted = refusal_metric("missing")
    response = create(client, world, STEPPED)
    assert response.status_code == 401
    assert response.json["error"] == "step_up_required"
    assert count(db_session, AccessRequest) == 0
    assert refusals(db_session) == ["missing"]
    assert refusal_metric("missing") == counted + 1


def wrong_code(user) -> str:
    """Six digits that are no code of the user's drift window."""
    otp = pyotp.TOTP(user.totp_secret)
    return next(c for c in ("000000", "111111", "222222") if not otp.verify(c, valid_window=1))


@pytest.mark.parametrize(("code", "reason"), [
    ("wrong", "wrong_code"), ("１２３４５６", "malformed"), ("12345", "malformed"),
    (" 123456", "malformed"), ("", "malformed")])
def test_wrong_or_malformed_code_is_401_invalid_step_up(client, world, db_session, code, reason):
    code = wrong_code(world["users"]["alice"]) if code == "wrong" else code
    response = create(client, world, STEPPED, totp=code)
    assert response.status_code == 401
    assert response.json["error"] == "invalid_step_up"
    assert count(db_session, AccessRequest) == 0
    assert refusals(db_session) == [reason]


def test_full_width_digits_of_the_right_code_are_refused(client, world, db_session):
    code = fresh_code(db_session, world["users"]["alice"])
    full_width = "".join(chr(ord(d) - ord("0") + ord("０")) for d in code)
    response = create(client, world, STEPPED, totp=full_width)
    assert (response.status_code, response.json["error"]) == (401, "invalid_step_up")
    assert count(db_session, AccessRequest) == 0


def test_a_number_instead_of_a_string_is_412(client, world, db_session):
    response = create(client, world, STEPPED, totp=123456)
    assert response.status_code == 412
    assert count(db_session, AccessRequest) == 0


def test_the_code_just_used_to_log_in_cannot_step_up(client, world, db_session):
    response = create(client, world, STEPPED, totp=last_code(world["users"]["alice"]))
    assert (response.status_code, response.json["error"]) == (401, "invalid_step_up")
    assert refusals(db_session) == ["replayed"]


def test_a_step_up_code_cannot_step_up_again_nor_log_in(client, world, db_session):
    alice = world["users"]["alice"]
    code = fresh_code(db_session, alice)
    first = create(client, world, STEPPED, totp=code)
    assert first.status_code == 201
    cancelled = client.post(f"/v1/requests/{first.json['request']['id']}/cancel",
                            headers=world["h"]["alice"], json={})
    assert cancelled.status_code == 200
    again = create(client, world, STEPPED, totp=code)
    assert (again.status_code, again.json["error"]) == (401, "invalid_step_up")
    replay = client.post("/v1/login", headers=basic(alice.username, alice.password),
                         json={"totp": code})
    assert replay.status_code == 401 and replay.json["error"] == "invalid_credentials"
    assert refusals(db_session) == ["replayed"]


def test_good_code_creates_the_request(client, world, db_session):
    request_id = pending(client, world, db_session)
    assert count(db_session, AccessRequest) == 1
    assert db_session.get(AccessRequest, request_id).permission_key == STEPPED


def test_wrong_codes_count_toward_the_lockout(client, world, db_session):
    alice = world["users"]["alice"]
    answers = [create(client, world, STEPPED, totp="abcdef").status_code for _ in range(5)]
    assert answers == [401] * 5
    locked = create(client, world, STEPPED, totp=fresh_code(db_session, alice))
    assert locked.status_code == 429 and locked.json["error"] == "locked"
    login = client.post("/v1/login", headers=basic(alice.username, alice.password),
                        json={"totp": fresh_code(db_session, alice)})
    assert login.status_code == 429 and login.json["error"] == "locked"
    assert count(db_session, AccessRequest) == 0
    db_session.expire_all()
    purposes = [e.details for e in db_session.scalars(select(AuditEvent).where(
        AuditEvent.action == "login.failed"))]
    assert sum('"step_up"' in d for d in purposes) == 5


def test_non_step_up_permissions_need_no_code(client, world, db_session):
    created = create(client, world, PLAIN)
    assert created.status_code == 201
    decided = client.post(f"/v1/requests/{created.json['request']['id']}/approve",
                          headers=world["h"]["lead"], json={})
    assert decided.status_code == 200 and decided.json["request"]["status"] == "active"


# ---- decisions ---------------------------------------------------------------------------------
@pytest.mark.parametrize("action", ["approve", "deny"])
def test_deciding_without_or_with_a_wrong_code_changes_nothing(client, world, db_session, action):
    request_id = pending(client, world, db_session)
    path = f"/v1/requests/{request_id}/{action}"
    missing = client.post(path, headers=world["h"]["lead"], json={"comment": "ok"})
    assert (missing.status_code, missing.json["error"]) == (401, "step_up_required")
    wrong = client.post(path, headers=world["h"]["lead"], json={"totp": "12345x"})
    assert (wrong.status_code, wrong.json["error"]) == (401, "invalid_step_up")
    replayed = client.post(path, headers=world["h"]["lead"],
                           json={"totp": last_code(world["users"]["lead"])})
    assert (replayed.status_code, replayed.json["error"]) == (401, "invalid_step_up")
    db_session.expire_all()
    assert db_session.get(AccessRequest, request_id).status == "pending"
    assert count(db_session, Approval) == 0


@pytest.mark.parametrize(("action", "status"), [("approve", "active"), ("deny", "denied")])
def test_deciding_with_a_good_code_works(client, world, db_session, action, status):
    request_id = pending(client, world, db_session)
    response = client.post(f"/v1/requests/{request_id}/{action}", headers=world["h"]["lead"],
                           json={"totp": fresh_code(db_session, world["users"]["lead"])})
    assert response.status_code == 200, response.json
    assert response.json["request"]["status"] == status


def test_a_service_account_never_decides_a_step_up_request(client, world, db_session):
    request_id = pending(client, world, db_session)
    response = client.post(f"/v1/requests/{request_id}/approve", headers=world["h"]["bot"],
                           json={"totp": "123456"})
    assert response.status_code in (401, 403, 404)
    db_session.expire_all()
    assert db_session.get(AccessRequest, request_id).status == "pending"
    # The gate itself refuses service accounts whatever they send.
    services = world["services"]
    for code in (None, "123456"):
        with services.session_factory() as session, pytest.raises(InvalidStepUp):
            require_step_up(session, services, user_id=world["users"]["bot"].id, code=code,
                            origin=audit.Origin(), now=utcnow())


def test_a_person_without_confirmed_totp_cannot_step_up(world, make_user):
    services = world["services"]
    nobody = make_user("carol", totp=False)
    with services.session_factory() as session:
        with pytest.raises(StepUpRequired):
            require_step_up(session, services, user_id=nobody.id, code=None,
                            origin=audit.Origin(), now=utcnow())
        with pytest.raises(InvalidStepUp) as refused:
            require_step_up(session, services, user_id=nobody.id, code="123456",
                            origin=audit.Origin(), now=utcnow())
    assert "enrolled" in refused.value.message


def test_openapi_documents_the_code_and_the_401_codes(client):
    document = client.get("/v1/openapi.json").json
    schemas = document["components"]["schemas"]
    for body in ("RequestCreateBody", "DecisionBody"):
        assert "totp" in schemas[body]["properties"], body
    assert "step_up" in schemas["CatalogItem"]["required"]
    for path in ("/v1/requests", "/v1/requests/{request_id}/approve",
                 "/v1/requests/{request_id}/deny"):
        operation = document["paths"][path]["post"]
        assert "401" in operation["responses"]
        assert "step_up_required" in operation["description"]
        assert "invalid_step_up" in operation["description"]


def test_one_code_sent_in_parallel_steps_up_once(app, world, db_session):
    """Four requests (four step-up permissions) race with one code: exactly one is created."""
    services, keys = world["services"], [f"deploy-{i}" for i in range(4)]
    with services.session_factory() as session:
        for key in keys:
            ensure_permission(session, key=key, name=key, max_duration_minutes=60,
                              settings=services.settings, step_up=True, **_kw())
            ensure_rule(session, permission=key, role="developer", subrole="backend",
                        mode=PolicyMode.APPROVAL, approvers=["security/lead"], **_kw())
        session.commit()
    code = fresh_code(db_session, world["users"]["alice"])

    def ask(key):
        return lambda: app.test_client().post("/v1/requests", headers=world["h"]["alice"], json={
            "permission": key, "totp": code}).status_code

    assert sorted(race(*(ask(key) for key in keys))) == [201, 401, 401, 401]
    assert count(db_session, AccessRequest) == 1
