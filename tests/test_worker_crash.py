"""A gunicorn worker killed inside a provisioner call leaves no half-written grant.

The worker commits its claim (status `granting`) before calling the provisioner, so a SIGKILL
there leaves a claim and nothing else; the master starts a new worker, and the reaper's
recovery later fails the abandoned grant and asks the provisioner to undo it.
"""
from __future__ import annotations

import json
import os
import signal
import threading
import time
from datetime import timedelta

import pytest
from sqlalchemy import select, text

from security_api import audit
from security_api.access.provisioning import claim_lease, recover
from security_api.clock import as_utc, utcnow
from security_api.enums import AuditAction, PolicyMode, RequestStatus
from security_api.models import AccessRequest, AuditEvent
from tests import test_concurrency as kit
from tests.conftest import TEST_DATABASE_URL
from tests.servers import basic_header, call, start_gunicorn
from tests.test_concurrency import SIGNING_SECRET, add_webhook_permission, audit_count

receiver = kit.receiver
WAIT_SECONDS = 30


@pytest.fixture
def app(make_app):
    return make_app(webhook_signing_secret=SIGNING_SECRET)


@pytest.fixture
def server(app, database_url, tmp_path):
    """One worker, a provisioner timeout far longer than the test needs to kill it."""
    env = {"WEBHOOK_SIGNING_SECRET": SIGNING_SECRET, "PROVISIONER_TIMEOUT_SECONDS": "120",
           "GUNICORN_TIMEOUT": "300"}
    with start_gunicorn(database_url, log_dir=tmp_path, workers=1, env=env) as running:
        yield running


def _until(predicate, what: str):
    deadline = time.monotonic() + WAIT_SECONDS
    while not (result := predicate()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)
    return result


def _ask_in_background(server, bearer: dict, body: dict) -> tuple[threading.Thread, dict]:
    """Return an unstarted thread that creates a request, and where its answer will land."""
    outcome: dict = {}

    def ask():
        try:
            outcome["answer"] = call(server.base, "POST", "/v1/requests", headers=bearer,
                                     body=body, timeout=WAIT_SECONDS * 2)
        except OSError as exc:
            outcome["error"] = exc

    return threading.Thread(target=ask), outcome


def _only_request(app) -> AccessRequest:
    with app.extensions["security_api"].session_factory() as session:
        rows = list(session.scalars(select(AccessRequest)))
    assert len(rows) == 1
    return rows[0]


def test_worker_killed_inside_the_provisioner_leaves_no_half_written_grant(
        app, server, make_user, receiver):
    alice = make_user("alice")
    add_webhook_permission(app, receiver, "vpn", mode=PolicyMode.AUTO)
    receiver.delay = WAIT_SECONDS * 4  # the grant call sits in the receiver until released
    status, tokens, _ = call(server.base, "POST", "/v1/login",
                             headers=basic_header(alice.username, alice.password),
                             body={"totp": alice.next_code()})
    assert status == 200
    bearer = {"Authorization": "Bearer " + tokens["token"]}
    outcome: dict = {}

    def ask():
        try:
            outcome["answer"] = call(server.base, "POST", "/v1/requests", headers=bearer,
                                     body={"permission": "vpn", "justification": "crash test"},
                                     timeout=WAIT_SECONDS * 2)
        except OSError as exc:  # the worker died with the connection open
            outcome["error"] = exc

    asking = threading.Thread(target=ask)
    asking.start()
    assert receiver.arrived.wait(WAIT_SECONDS), "the grant never reached the provisioner"
    (worker,) = server.worker_pids()
    os.kill(worker, signal.SIGKILL)
    asking.join(WAIT_SECONDS)
    assert not asking.is_alive()
    assert "answer" not in outcome, outcome  # no answer at all, rather than a false one
    receiver.delay = 0
    receiver.release.set()

    # The master replaces the worker and the service answers again.
    _until(lambda: server.worker_pids() - {worker}, "a new worker")
    _until(lambda: _ping(server.base), "the new worker to answer")

    # Nothing half-written: the claim is all there is, and readers see it as pending.
    row = _only_request(app)
    assert row.status == RequestStatus.GRANTING
    assert "grant" not in json.loads(row.provisioning or "{}") and row.expires_at is None
    assert audit_count(app, AuditAction.REQUEST_ACTIVATED, row.id) == 0
    assert audit_count(app, AuditAction.PROVISIONING_SUCCEEDED, row.id) == 0
    status, shown, _ = call(server.base, "GET", f"/v1/requests/{row.id}", headers=bearer)
    assert status == 200 and shown["request"]["status"] == "pending", shown
    assert receiver.count("grant", row.id) == 1

    # The reaper (run as if its stuck-claim delay had passed) fails it and has it undone.
    services = app.extensions["security_api"]
    with services.session_factory() as session:
        assert recover(session, services, origin=audit.Origin(ip="reaper"),
                       now=utcnow() + timedelta(hours=1)) == 1
    row = _only_request(app)
    assert row.status == RequestStatus.FAILED and row.provisioning_state is None
    assert receiver.count("revoke", row.id) == 1
    assert audit_count(app, AuditAction.REQUEST_FAILED, row.id) == 1
    # The undo of a grant that never became active is a cleanup, as README names it.
    record = row.provisioning
    assert record["cleanup"]["ok"] is True and "revoke" not in record
    assert _provisioning_actions(app, row.id) == ["cleanup"]
    status, shown, _ = call(server.base, "GET", f"/v1/requests/{row.id}", headers=bearer)
    assert status == 200 and shown["request"]["status"] == "failed"
    status, report, _ = call(server.base, "GET", "/v1/audit/verify",
                             headers=_admin_bearer(server, make_user))
    assert status == 200 and report["ok"] is True, report


def _provisioning_actions(app, request_id: str) -> list[str]:
    with app.extensions["security_api"].session_factory() as session:
        return [json.loads(details)["action"] for details in session.scalars(
            select(AuditEvent.details).where(
                AuditEvent.target == request_id,
                AuditEvent.action.in_([AuditAction.PROVISIONING_SUCCEEDED,
                                       AuditAction.PROVISIONING_FAILED]))
            .order_by(AuditEvent.id))]


def _sign_in(server, user) -> dict:
    status, tokens, _ = call(server.base, "POST", "/v1/login",
                             headers=basic_header(user.username, user.password),
                             body={"totp": user.next_code()})
    assert status == 200, tokens
    return {"Authorization": "Bearer " + tokens["token"]}


def test_a_live_worker_keeps_its_claim_and_a_dead_ones_claim_is_undone_within_its_lease(
        app, server, make_user, receiver):
    alice = make_user("alice")
    add_webhook_permission(app, receiver, "vpn", mode=PolicyMode.AUTO)
    receiver.delay = WAIT_SECONDS * 4
    bearer = _sign_in(server, alice)
    body = {"permission": "vpn", "justification": "crash test"}
    asking, outcome = _ask_in_background(server, bearer, body)
    asking.start()
    assert receiver.arrived.wait(WAIT_SECONDS), "the grant never reached the provisioner"
    claimed_at = _only_request(app).provisioning_started_at
    services = app.extensions["security_api"]
    # Alive and inside its provisioner timeout, past a whole lease: heartbeats keep the claim.
    _until(lambda: utcnow() - as_utc(claimed_at) > claim_lease() + timedelta(seconds=1),
           "a whole lease to pass")
    with services.session_factory() as session:
        assert recover(session, services, origin=audit.Origin(ip="reaper"), now=utcnow()) == 0
    assert _only_request(app).status == RequestStatus.GRANTING
    assert as_utc(_only_request(app).provisioning_started_at) > as_utc(claimed_at)

    (worker,) = server.worker_pids()
    os.kill(worker, signal.SIGKILL)
    asking.join(WAIT_SECONDS)
    assert not asking.is_alive() and "answer" not in outcome, outcome
    receiver.delay = 0
    receiver.release.set()
    _until(lambda: server.worker_pids() - {worker}, "a new worker")
    _until(lambda: _ping(server.base), "the new worker to answer")

    # Meanwhile the user sees `pending`, and asking again is 409 already_requested, until the
    # lease lapses; then asking again fails and undoes the abandoned claim, and grants anew.
    first = _only_request(app)
    status, shown, _ = call(server.base, "GET", f"/v1/requests/{first.id}", headers=bearer)
    assert status == 200 and shown["request"]["status"] == "pending"

    def ask_again():
        status, answer, _ = call(server.base, "POST", "/v1/requests", headers=bearer, body=body)
        if status == 409:
            assert answer["error"] == "already_requested", answer
            return None
        assert status == 201, answer
        return answer["request"]

    again = _until(ask_again, "the abandoned claim to be undone (a lease, not minutes)")
    assert again["status"] == "active" and again["id"] != first.id
    with services.session_factory() as session:
        row = session.get(AccessRequest, first.id)
        assert row.status == RequestStatus.FAILED and row.provisioning_state is None
        assert row.provisioning["cleanup"]["ok"] is True
    assert receiver.count("revoke", first.id) == 1
    assert _provisioning_actions(app, first.id) == ["cleanup"]


def test_the_reaper_undoes_a_dead_workers_claim_once_its_lease_lapsed(app, server, make_user,
                                                                       receiver):
    alice = make_user("alice")
    add_webhook_permission(app, receiver, "vpn", mode=PolicyMode.AUTO)
    receiver.delay = WAIT_SECONDS * 4
    bearer = _sign_in(server, alice)
    asking = threading.Thread(target=_swallow, args=(server.base, bearer))
    asking.start()
    assert receiver.arrived.wait(WAIT_SECONDS), "the grant never reached the provisioner"
    (worker,) = server.worker_pids()
    os.kill(worker, signal.SIGKILL)
    asking.join(WAIT_SECONDS)
    receiver.delay = 0
    receiver.release.set()
    services = app.extensions["security_api"]
    # One lease after the last possible heartbeat, far less than 4 x timeout + 60 s (540 s).
    with services.session_factory() as session:
        assert recover(session, services, origin=audit.Origin(ip="reaper"),
                       now=utcnow() + claim_lease() + timedelta(seconds=1)) == 1
    row = _only_request(app)
    assert row.status == RequestStatus.FAILED and receiver.count("revoke", row.id) == 1


def _swallow(base: str, bearer: dict) -> None:
    try:
        call(base, "POST", "/v1/requests", headers=bearer,
             body={"permission": "vpn", "justification": "crash test"}, timeout=WAIT_SECONDS * 2)
    except OSError:
        pass  # the worker died with the connection open


def _ping(base: str) -> bool:
    try:
        return call(base, "GET", "/v1/ping", timeout=2)[0] == 200
    except OSError:
        return False


def _admin_bearer(server, make_user) -> dict:
    auditor = make_user("root", role="security", subrole="admin")
    status, tokens, _ = call(server.base, "POST", "/v1/login",
                             headers=basic_header(auditor.username, auditor.password),
                             body={"totp": auditor.next_code()})
    assert status == 200, tokens
    return {"Authorization": "Bearer " + tokens["token"]}


# The worker's database backend, blocked on a lock the test holds, after it has written.
_BLOCKED_WRITER = text(
    "SELECT pid FROM pg_stat_activity WHERE :holder = ANY(pg_blocking_pids(pid)) "
    "AND backend_xid IS NOT NULL")


def _scalars(services, query, **params) -> list:
    # A fresh transaction each time: pg_stat_activity is a snapshot per transaction.
    with services.session_factory() as session:
        return list(session.scalars(query, params))


@pytest.mark.skipif(not (TEST_DATABASE_URL or "").startswith("postgresql"),
                    reason="needs PostgreSQL row locks and pg_stat_activity")
def test_worker_killed_mid_transaction_leaves_no_partial_rows(app, server, make_user, receiver):
    alice = make_user("alice")
    make_user("lead", role="security", subrole="lead")  # the approver group must exist
    add_webhook_permission(app, receiver, "vpn", mode=PolicyMode.APPROVAL)
    status, tokens, _ = call(server.base, "POST", "/v1/login",
                             headers=basic_header(alice.username, alice.password),
                             body={"totp": alice.next_code()})
    assert status == 200
    bearer = {"Authorization": "Bearer " + tokens["token"]}
    body = {"permission": "vpn", "justification": "crash test"}
    services = app.extensions["security_api"]
    asking, outcome = _ask_in_background(server, bearer, body)
    with services.session_factory() as holder:
        # Hold the audit events table against writes (writers no longer take the chain head:
        # they append): the worker inserts the request, then waits to append its event.
        holder.execute(text("LOCK TABLE audit_events IN EXCLUSIVE MODE"))
        holder_pid = holder.scalar(text("SELECT pg_backend_pid()"))
        asking.start()
        (backend,) = _until(lambda: _scalars(services, _BLOCKED_WRITER, holder=holder_pid),
                            "the worker to write and then wait to append its audit event")
        (worker,) = server.worker_pids()
        os.kill(worker, signal.SIGKILL)
        asking.join(WAIT_SECONDS)
        assert not asking.is_alive() and "answer" not in outcome, outcome
        holder.rollback()
    # Its backend ends (rolling back) when it finds the client gone.
    _until(lambda: not _scalars(services, text("SELECT pid FROM pg_stat_activity WHERE pid = :pid"),
                                pid=backend), "the dead worker's backend to end")
    assert not _scalars(services, select(AccessRequest))
    assert audit_count(app, AuditAction.REQUEST_CREATED) == 0
    _until(lambda: server.worker_pids() - {worker}, "a new worker")
    _until(lambda: _ping(server.base), "the new worker to answer")
    status, created, _ = call(server.base, "POST", "/v1/requests", headers=bearer, body=body)
    assert status == 201, created  # no half-open request blocks a new one
    with services.session_factory() as session:
        assert audit.verify_chain(session).ok
