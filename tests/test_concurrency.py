"""Exactly once under concurrency: racing approvals, approve vs cancel, reapers, duplicate requests.

Every race runs real threads released together by a barrier, each with its own Flask test
client, so every thread holds its own pooled database connection. On SQLite writers queue on
the database lock; on PostgreSQL (TEST_DATABASE_URL) they really overlap, and the conditional
updates and the partial unique index are what keep each transition to one.
"""
from __future__ import annotations

import threading
from collections import Counter
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from security_api import audit
from security_api.access import lifecycle, reaper
from security_api.access.catalog import ensure_permission, ensure_rule
from security_api.access.grants import Subject
from security_api.clock import utcnow
from security_api.enums import PolicyMode
from security_api.models import AccessRequest, Approval, AuditEvent
from tests.conftest import bearer
from tests.receivers import serving

THREADS = 20
SIGNING_SECRET = "x" * 40


@pytest.fixture
def app(make_app):
    return make_app(webhook_signing_secret=SIGNING_SECRET)


@pytest.fixture
def receiver():
    with serving() as server:
        yield server


# ---- helpers -----------------------------------------------------------------------------------
def race(*calls):
    """Run every call in its own thread, released together; return their results in order."""
    barrier = threading.Barrier(len(calls))
    results: list = [None] * len(calls)
    errors: list[BaseException] = []

    def run(index, call):
        try:
            barrier.wait(timeout=30)
            results[index] = call()
        except BaseException as exc:  # noqa: BLE001 -- re-raised in the test's thread below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i, call)) for i, call in enumerate(calls)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads), "a racing thread hung"
    if errors:
        raise errors[0]
    return results


def post(app, path: str, token: str, body: dict | None = None):
    """Return a callable that POSTs with its own test client and gives (status, json)."""
    def call():
        response = app.test_client().post(path, headers=bearer(token), json=body or {})
        return response.status_code, response.json
    return call


def _kw():
    return {"actor": "test", "origin": audit.Origin(), "now": utcnow()}


def add_webhook_permission(app, receiver, key: str, *, mode: PolicyMode = PolicyMode.APPROVAL,
                           approvals_required: int = 1) -> None:
    """Create a webhook permission requestable by developers, decided by security/lead."""
    services = app.extensions["security_api"]
    with services.session_factory() as session:
        ensure_permission(session, key=key, name=key, max_duration_minutes=120,
                          provisioner="webhook", provisioner_config={"url": receiver.url},
                          settings=services.settings, **_kw())
        approval = {"approvers": ["security/lead"], "approvals_required": approvals_required} \
            if mode == PolicyMode.APPROVAL else {}
        ensure_rule(session, permission=key, role="developer", subrole="*", mode=mode,
                    **approval, **_kw())
        session.commit()


def subject(user, role="developer", subrole="backend") -> Subject:
    return Subject(user.id, user.username, role, subrole, "person")


def create_pending(app, user, key: str, *, now=None) -> str:
    """Ask for a permission straight in the domain (no login spent); return the request id."""
    services = app.extensions["security_api"]
    with services.session_factory() as session:
        created = lifecycle.create_request(
            session, services, requester=subject(user), permission_key=key,
            justification="race", duration_minutes=None, params={}, origin=audit.Origin(),
            now=now or utcnow())
        return created.id


def audit_count(app, action: str, target: str | None = None) -> int:
    with app.extensions["security_api"].session_factory() as session:
        stmt = select(func.count()).select_from(AuditEvent).where(AuditEvent.action == action)
        if target is not None:
            stmt = stmt.where(AuditEvent.target == target)
        return session.scalar(stmt)


def request_status(app, request_id: str) -> str:
    with app.extensions["security_api"].session_factory() as session:
        return session.scalar(select(AccessRequest.status).where(AccessRequest.id == request_id))


def assert_chain_intact(app) -> None:
    # Concurrent writers must queue on the chain head, never fork the chain.
    with app.extensions["security_api"].session_factory() as session:
        report = audit.verify_chain(session)
    assert report.ok, report


# ---- (a) racing approvals ----------------------------------------------------------------------
@pytest.mark.parametrize(("approvers", "approvals_required"),
                         [("distinct", 1), ("same", 1), ("distinct", 2), ("same", 2)])
def test_parallel_approvals_grant_once(app, make_user, login_as, receiver, approvers,
                                       approvals_required):
    alice = make_user("alice")
    count = THREADS if approvers == "distinct" else 1
    leads = [make_user(f"lead{i}", role="security", subrole="lead") for i in range(count)]
    add_webhook_permission(app, receiver, "db", approvals_required=approvals_required)
    rid = create_pending(app, alice, "db")
    tokens = [login_as(lead)["token"] for lead in leads]

    results = race(*(post(app, f"/v1/requests/{rid}/approve", tokens[i % count], {"comment": "ok"})
                     for i in range(THREADS)))

    statuses = Counter(status for status, _ in results)
    # Distinct approvers: the needed approvals land, the rest find it decided. One approver
    # twice never counts twice, so with two needed it stays pending.
    granted = approvers == "distinct" or approvals_required == 1
    wins = approvals_required if approvers == "distinct" else 1
    assert statuses == {200: wins, 409: THREADS - wins}, results
    assert {body["error"] for status, body in results if status == 409} \
        <= {"request_not_pending", "already_decided"}
    assert request_status(app, rid) == ("active" if granted else "pending")
    assert receiver.count("grant") == receiver.count("grant", rid) == (1 if granted else 0)
    assert audit_count(app, "request.activated", rid) == (1 if granted else 0)
    assert audit_count(app, "request.approved", rid) == wins
    with app.extensions["security_api"].session_factory() as session:
        assert session.scalar(select(func.count()).select_from(Approval)
                              .where(Approval.request_id == rid)) == wins
        assert session.scalar(select(func.count()).select_from(AccessRequest)
                              .where(AccessRequest.status == "active")) == (1 if granted else 0)
    assert_chain_intact(app)


# ---- (b) approve racing cancel or deny ---------------------------------------------------------
ROUNDS = 10
RIVAL_ENDS_IN = {"cancel": "cancelled", "deny": "denied"}


@pytest.mark.parametrize("rival", ["cancel", "deny"])
def test_approve_racing_a_rival_ends_in_one_state(app, make_user, login_as, receiver, rival):
    alice = make_user("alice")
    lead = make_user("lead", role="security", subrole="lead")
    # The requester cancels; another decider (an admin) denies.
    rival_user = alice if rival == "cancel" else make_user("root", role="security", subrole="admin")
    for i in range(ROUNDS):
        add_webhook_permission(app, receiver, f"race-{i}")
    lead_token, rival_token = login_as(lead)["token"], login_as(rival_user)["token"]
    rival_body = {"comment": "no"} if rival == "deny" else {}
    lost = RIVAL_ENDS_IN[rival]
    outcomes = Counter()
    for i in range(ROUNDS):
        rid = create_pending(app, alice, f"race-{i}")

        (approved, approve_body), (rivalled, rival_answer) = race(
            post(app, f"/v1/requests/{rid}/approve", lead_token, {"comment": "ok"}),
            post(app, f"/v1/requests/{rid}/{rival}", rival_token, rival_body))

        assert sorted([approved, rivalled]) == [200, 409], (approve_body, rival_answer)
        final = request_status(app, rid)
        outcomes[final] += 1
        if approved == 200:
            assert final == approve_body["request"]["status"] == "active"
            assert rival_answer["error"] == "request_not_pending"
        else:
            assert final == rival_answer["request"]["status"] == lost
            assert approve_body["error"] == "request_not_pending"
        won = final == "active"
        assert receiver.count("grant", rid) == int(won)
        assert audit_count(app, "request.activated", rid) == int(won)
        assert audit_count(app, "request.approved", rid) == int(won)
        assert audit_count(app, f"request.{lost}", rid) == int(not won)
    assert sum(outcomes.values()) == ROUNDS
    assert receiver.count("grant") == outcomes["active"]
    assert_chain_intact(app)


# ---- (c) reapers racing each other -------------------------------------------------------------
DUE = 20


def test_concurrent_reapers_revoke_each_grant_once(app, make_app, make_user, receiver):
    alice = make_user("alice")
    # Granted two hours ago for an hour: every one is an hour overdue.
    then = utcnow() - timedelta(hours=2)
    ids = []
    for i in range(DUE):
        add_webhook_permission(app, receiver, f"due-{i}", mode=PolicyMode.AUTO)
        ids.append(create_pending(app, alice, f"due-{i}", now=then))
    assert {request_status(app, rid) for rid in ids} == {"active"}
    assert receiver.count("grant") == DUE
    # A second worker: its own engine and pool on the same database.
    worker_a = app.extensions["security_api"]
    worker_b = make_app(webhook_signing_secret=SIGNING_SECRET).extensions["security_api"]

    def expire_directly(services):
        def call():
            with services.session_factory() as session:
                return lifecycle.expire_due(session, services, now=utcnow(),
                                            origin=audit.Origin(ip="test"))
        return call

    expired = race(lambda: reaper.reap_once(worker_a), lambda: reaper.reap_once(worker_b),
                   expire_directly(worker_a), expire_directly(worker_b))

    assert sum(expired) == DUE, expired
    assert {request_status(app, rid) for rid in ids} == {"expired"}
    assert receiver.count("revoke") == DUE
    assert all(receiver.count("revoke", rid) == 1 for rid in ids)
    assert all(audit_count(app, "request.expired", rid) == 1 for rid in ids)
    assert audit_count(app, "request.expired") == DUE
    assert reaper.reap_once(worker_a) == 0
    assert receiver.count("revoke") == DUE
    assert_chain_intact(app)


# ---- (d) duplicate requests racing -------------------------------------------------------------
@pytest.mark.parametrize("mode", [PolicyMode.APPROVAL, PolicyMode.AUTO])
def test_concurrent_requests_open_one(app, make_user, login_as, receiver, mode):
    alice = make_user("alice")
    make_user("lead", role="security", subrole="lead")
    add_webhook_permission(app, receiver, "db", mode=mode)
    token = login_as(alice)["token"]

    results = race(*(post(app, "/v1/requests", token, {"permission": "db", "justification": "x"})
                     for _ in range(THREADS)))

    statuses = Counter(status for status, _ in results)
    assert statuses == {201: 1, 409: THREADS - 1}, results
    assert {body["error"] for status, body in results if status == 409} \
        <= {"already_requested", "already_active"}
    created = next(body["request"] for status, body in results if status == 201)
    expected = "active" if mode == PolicyMode.AUTO else "pending"
    assert created["status"] == expected
    with app.extensions["security_api"].session_factory() as session:
        rows = session.scalars(select(AccessRequest)).all()
    assert [(row.id, row.status) for row in rows] == [(created["id"], expected)]
    assert receiver.count("grant") == receiver.count("grant", created["id"]) \
        == (1 if mode == PolicyMode.AUTO else 0)
    assert audit_count(app, "request.created") == 1
    assert_chain_intact(app)


def test_requests_racing_reapers_over_an_overdue_grant(app, make_user, login_as, receiver):
    """A new request first expires the caller's overdue grant: once, whoever gets there first."""
    alice = make_user("alice")
    add_webhook_permission(app, receiver, "db", mode=PolicyMode.AUTO)
    old = create_pending(app, alice, "db", now=utcnow() - timedelta(hours=2))
    token = login_as(alice)["token"]
    services = app.extensions["security_api"]

    results = race(*(post(app, "/v1/requests", token, {"permission": "db", "justification": "x"})
                     for _ in range(THREADS - 2)),
                   lambda: reaper.reap_once(services), lambda: reaper.reap_once(services))

    answers, reaped = results[:-2], results[-2:]
    statuses = Counter(status for status, _ in answers)
    assert statuses == {201: 1, 409: THREADS - 3}, answers
    new = next(body["request"]["id"] for status, body in answers if status == 201)
    assert request_status(app, old) == "expired"
    assert request_status(app, new) == "active"
    assert sum(reaped) <= 1
    assert receiver.count("revoke") == receiver.count("revoke", old) == 1
    assert receiver.count("grant", new) == 1
    assert audit_count(app, "request.expired", old) == 1
    assert audit_count(app, "request.activated") == 2
    assert_chain_intact(app)


# ---- (e) racing revokes, (f) racing retries ----------------------------------------------------
def test_parallel_revokes_revoke_once(app, make_user, login_as, receiver):
    alice = make_user("alice")
    lead = make_user("lead", role="security", subrole="lead")
    root = make_user("root", role="security", subrole="admin")
    add_webhook_permission(app, receiver, "db")
    rid = create_pending(app, alice, "db")
    services = app.extensions["security_api"]
    with services.session_factory() as session:
        lifecycle.approve(session, services, request_id=rid, actor=lifecycle.Actor(
            subject(lead, "security", "lead")), comment="", origin=audit.Origin(), now=utcnow())
    assert request_status(app, rid) == "active"
    # The requester and an administrator, both allowed, all at once.
    tokens = [login_as(alice)["token"], login_as(root)["token"]]

    results = race(*(post(app, f"/v1/requests/{rid}/revoke", tokens[i % 2])
                     for i in range(THREADS)))

    assert Counter(status for status, _ in results) == {200: 1, 409: THREADS - 1}, results
    assert {body["error"] for status, body in results if status == 409} == {"request_not_active"}
    assert request_status(app, rid) == "revoked"
    assert receiver.count("revoke") == receiver.count("revoke", rid) == 1
    assert audit_count(app, "request.revoked", rid) == 1
    assert_chain_intact(app)


def test_parallel_retries_provision_once(app, make_user, login_as, receiver):
    alice = make_user("alice")
    lead = make_user("lead", role="security", subrole="lead")
    root = make_user("root", role="security", subrole="admin")
    add_webhook_permission(app, receiver, "db")
    rid = create_pending(app, alice, "db")
    services = app.extensions["security_api"]
    receiver.status = 503
    with services.session_factory() as session:
        lifecycle.approve(session, services, request_id=rid, actor=lifecycle.Actor(
            subject(lead, "security", "lead")), comment="", origin=audit.Origin(), now=utcnow())
    assert request_status(app, rid) == "failed"
    receiver.status = 200
    attempts_before = receiver.count("grant", rid)
    # An eligible approver and an administrator, both allowed, all at once.
    tokens = [login_as(lead)["token"], login_as(root)["token"]]

    results = race(*(post(app, f"/v1/requests/{rid}/retry", tokens[i % 2])
                     for i in range(THREADS)))

    assert Counter(status for status, _ in results) == {200: 1, 409: THREADS - 1}, results
    assert {body["error"] for status, body in results if status == 409} == {"request_not_failed"}
    assert request_status(app, rid) == "active"
    assert receiver.count("grant", rid) - attempts_before == 1
    assert audit_count(app, "request.activated", rid) == 1
    assert audit_count(app, "request.retried", rid) == 1
    assert_chain_intact(app)


# ---- a slow provisioner and everyone else -------------------------------------------------------
HELD = 30.0  # seconds the receiver may hold the grant; released as soon as the test is done


def test_a_slow_provisioner_does_not_stall_sign_ins(app, make_user, login_as, receiver):
    alice = make_user("alice")
    lead = make_user("lead", role="security", subrole="lead")
    bob = make_user("bob", role="finance", subrole="analyst")
    add_webhook_permission(app, receiver, "db")
    rid = create_pending(app, alice, "db")
    lead_token = login_as(lead)["token"]
    # The webhook answers only when released: the grant stays in flight during the sign-in.
    receiver.delay = HELD
    approval: list = []
    approver = threading.Thread(target=lambda: approval.append(
        post(app, f"/v1/requests/{rid}/approve", lead_token, {"comment": "ok"})()))
    approver.start()
    signed_in: list = []
    try:
        assert receiver.arrived.wait(10), "the grant event never reached the receiver"
        signer = threading.Thread(target=lambda: signed_in.append(login_as(bob)))
        signer.start()
        signer.join(HELD / 2)
        # A sign-in has nothing to do with that grant: it must finish while the webhook is held.
        assert signed_in, "the sign-in waited for a provisioner call"
        assert approver.is_alive() and not approval
    finally:
        receiver.release.set()
        approver.join(30)
    assert approval and approval[0][0] == 200, approval
    assert request_status(app, rid) == "active"
