"""List endpoints: the number of SQL statements does not grow with the page size (no N+1)."""
from __future__ import annotations

import contextlib

import pytest
from sqlalchemy import event

from security_api import audit
from security_api.access.catalog import ensure_permission, ensure_rule
from security_api.audit.sequencer import sealer_for
from security_api.clock import utcnow
from security_api.db import ReadOnlyQuery
from security_api.enums import PolicyMode
from tests.conftest import bearer

PEOPLE = 30
PERMISSIONS = 4  # PEOPLE x PERMISSIONS requests: more than the largest page
PAGE_SIZES = (1, 10, 100)


@contextlib.contextmanager
def engine_events(app, name: str, keep):
    """Collect `keep(*event arguments)` for each engine event `name` while the block runs."""
    engine = app.extensions["security_api"].engine
    kept = []

    def record(*args):
        kept.append(keep(*args))

    event.listen(engine, name, record)
    try:
        yield kept
    finally:
        event.remove(engine, name, record)


def counted(app):
    """Count the statements sent to the database while the block runs."""
    return engine_events(app, "before_cursor_execute",
                         lambda conn, cursor, statement, *rest: statement)


def transactions_begun(app):
    """Count the transactions begun while the block runs (each one a pool checkout, a BEGIN and
    its end: round trips and CPU on top of its statements)."""
    return engine_events(app, "begin", lambda conn: conn)


@pytest.fixture
def admin(app, make_user, login_as, db_session):
    """An administrator's headers, after many people made many requests (auto-granted)."""
    keys = [f"qc-perm-{n}" for n in range(PERMISSIONS)]
    services = app.extensions["security_api"]
    people = [make_user(f"person-{n:02d}") for n in range(PEOPLE)]
    for key in keys:
        auto_permission(db_session, services, key)
    db_session.commit()
    client = app.test_client()
    for person in people:
        headers = bearer(login_as(person)["token"])
        for key in keys:
            response = client.post("/v1/requests", headers=headers,
                                   json={"permission": key, "justification": "count"})
            assert response.status_code == 201, response.json
    return bearer(login_as(make_user("root", role="security", subrole="admin"))["token"])


@pytest.mark.parametrize(("path", "field"), [
    ("/v1/requests?scope=all", "requests"),
    ("/v1/admin/users", "users"),
    ("/v1/audit", "events"),
])
def test_list_query_count_does_not_depend_on_the_page_size(app, client, admin, path, field):
    counts = {}
    for size in PAGE_SIZES:
        separator = "&" if "?" in path else "?"
        with counted(app) as statements:
            response = client.get(f"{path}{separator}limit={size}", headers=admin)
        assert response.status_code == 200, response.json
        # The page is full: a per-row query would show as more statements for bigger pages.
        rows = PEOPLE + 1 if field == "users" else size  # people and root; plenty of the others
        assert len(response.json[field]) == min(size, rows)
        counts[size] = len(statements)
    assert counts[1] > 0  # the listener saw the statements
    assert len(set(counts.values())) == 1, counts


# Statements of one auto-granted POST /v1/requests (provisioner `none`). It was 33, then 23 (the
# permission loaded 4 times, its rules 3 times, the request re-read 4 times, the audit chain's
# head locked and written in every event-writing transaction). Left now, 9 (the token check
# reads no table): the permission with the requester's candidate rules and its conflict-set
# rivals 1; one select of the open requests of the slot (each marked whether it is a due grant
# or an abandoned claim, ended here) 1; the insert 1 and its audit event 1 (appended: the
# sequencer seals it off the request, no head lock or head write); after the commit the grant
# runs on what the claim knew (no read back): the landing reads the provisioning record 1,
# moves granting -> active 1, its audit events 1; the second look for a deactivation or role
# change: the request with its requester under a share lock 1, the requester's rules 1. The
# answer reads nothing: the session's copy is the second look's, the requester is the caller,
# and a request created a moment ago has no approvals or extensions. Measured 9 on SQLite and
# PostgreSQL in production mode (the background sequencer switch on, no thread here: the
# events stay pending during the count); the bound allows 1 of headroom.
CREATE_STATEMENTS = 10


@contextlib.contextmanager
def sealed_later(services):
    """Seal as under gunicorn: commits only wake the (absent here) background sequencer."""
    sealer = sealer_for(services.session_factory)
    sealer.background = True
    try:
        yield sealer
    finally:
        sealer.background = False


def auto_permission(db_session, services, key: str) -> None:
    """A permission (provisioner none) that developer/backend gets at once (auto)."""
    ensure_permission(db_session, key=key, name=key, max_duration_minutes=60,
                      settings=services.settings, actor="test", origin=audit.Origin(),
                      now=utcnow())
    ensure_rule(db_session, permission=key, role="developer", subrole="backend",
                mode=PolicyMode.AUTO, actor="test", origin=audit.Origin(), now=utcnow())


def test_creating_a_request_sends_a_bounded_number_of_statements(app, client, make_user,
                                                                  login_as, db_session):
    services = app.extensions["security_api"]
    person = make_user("counted-person")
    auto_permission(db_session, services, "qc-create")
    db_session.commit()
    headers = bearer(login_as(person)["token"])
    with sealed_later(services) as sealer, counted(app) as statements:
        response = client.post("/v1/requests", headers=headers,
                               json={"permission": "qc-create", "justification": "count"})
    assert response.status_code == 201, response.json
    assert response.json["request"]["status"] == "active"
    head_statements = [s for s in statements if "AUDIT_CHAIN_HEAD" in s.upper()]
    assert head_statements == []  # the request never queues behind the chain's head
    assert sum(s.upper().startswith("INSERT INTO AUDIT_EVENTS") for s in statements) == 2
    assert sealer.seal_now() >= 3  # its events were appended, pending, and seal now
    assert 0 < len(statements) <= CREATE_STATEMENTS, "\n".join(statements)


# Statements of the requester's POST /v1/requests/<id>/revoke of an auto grant (provisioner
# `none`). It was 23 (the caller's administrator and auditor powers took 6, the extensions
# leaning on the grant 2, the audit head 4), then 13 (the answer read the request twice: the
# copy's id, expired by a rollback, loaded it first). Left now, 12 (the token check reads no
# table): the caller's two powers 1; the request 1; the move active -> revoked 1; the
# extensions leaning on the grant 1; the revoke's context (request, permission, requester) 1,
# read in this transaction rather than in one of its own after the commit; audit 1; after
# the commit the landing reads the provisioning record 1, records the outcome 1, audit 1; the
# answer: the request re-read 1, its approvals 1, its extensions 1 (the requester's name is
# the caller's). Measured 12 on SQLite and PostgreSQL in production mode (audit events
# appended, sealed off the request); 1 of headroom.
REVOKE_STATEMENTS = 13
REVOKE_TRANSACTIONS = 3


def test_revoking_a_grant_sends_a_bounded_number_of_statements(app, client, make_user, login_as,
                                                               db_session):
    services = app.extensions["security_api"]
    person = make_user("counted-revoker")
    auto_permission(db_session, services, "qc-revoke")
    db_session.commit()
    headers = bearer(login_as(person)["token"])
    created = client.post("/v1/requests", headers=headers,
                          json={"permission": "qc-revoke", "justification": "count"})
    assert created.status_code == 201, created.json
    with sealed_later(services), counted(app) as statements, \
            transactions_begun(app) as transactions:
        response = client.post(f"/v1/requests/{created.json['request']['id']}/revoke",
                               headers=headers, json={})
    assert response.status_code == 200, response.json
    assert response.json["request"]["status"] == "revoked"
    assert response.json["request"]["requester"] == "counted-revoker"
    assert [s for s in statements if "AUDIT_CHAIN_HEAD" in s.upper()] == []
    assert 0 < len(statements) <= REVOKE_STATEMENTS, "\n".join(statements)
    # The revoke's unit of work, the landing of its outcome, the answer: the revoke's context
    # is read in the first (it was a transaction of its own).
    assert len(transactions) == REVOKE_TRANSACTIONS


# ---- GET /v1/check ----------------------------------------------------------------------------
@contextlib.contextmanager
def read_only_reads(monkeypatch):
    """Record the SQL of every read made on the raw driver (db.ReadOnlyQuery), which the engine's
    events never see: each is one round trip, outside any transaction."""
    reads = []
    first = ReadOnlyQuery.first

    def recorded(self, params):
        reads.append(self._sql)
        return first(self, params)

    monkeypatch.setattr(ReadOnlyQuery, "first", recorded)
    yield reads


# One GET /v1/check by a service account: the token check (db.ReadOnlyQuery) and one read-only
# select for both the caller's security-api.check and the answer (it was 2: the guard, then the
# answer; before that 6: the permission and its rules, then the user, the permission, its rules,
# the grant). No session is opened: no BEGIN, no ROLLBACK, no pool pre-ping.
CHECK_READS = 2


def _check_world(app, make_user, login_as, db_session, client):
    """A person holding an auto grant of qc-check, and a service account that may check;
    returns the grant and the account's headers."""
    services = app.extensions["security_api"]
    person = make_user("checked-person")
    bot = make_user("check-bot", role="tools", subrole="ci", kind="service",
                    password="s3rvice-secret-long-enough-42")
    ensure_permission(db_session, key="qc-check", name="qc-check", max_duration_minutes=60,
                      settings=services.settings, actor="test", origin=audit.Origin(),
                      now=utcnow())
    ensure_rule(db_session, permission="qc-check", role="developer", subrole="backend",
                mode=PolicyMode.AUTO, actor="test", origin=audit.Origin(), now=utcnow())
    ensure_rule(db_session, permission="security-api.check", role="tools", subrole="ci",
                mode=PolicyMode.STANDING, actor="test", origin=audit.Origin(), now=utcnow())
    db_session.commit()
    granted = client.post("/v1/requests", headers=bearer(login_as(person)["token"]),
                          json={"permission": "qc-check", "justification": "count"})
    assert granted.status_code == 201, granted.json
    return granted.json["request"], bearer(login_as(bot)["token"])


def test_a_check_is_answered_by_few_read_only_statements(app, client, make_user, login_as,
                                                         db_session, monkeypatch):
    grant, headers = _check_world(app, make_user, login_as, db_session, client)
    with counted(app) as statements, read_only_reads(monkeypatch) as reads:
        response = client.get("/v1/check?user=Checked-Person&permission=qc-check",
                              headers=headers)
    assert response.status_code == 200, response.json
    assert response.json["allowed"] is True
    assert response.json["expires_at"] == grant["expires_at"]
    assert statements == []  # nothing through the engine: no session was opened
    assert 0 < len(reads) <= CHECK_READS, "\n".join(reads)
    # The guard and the answer are one statement, whatever the token check costs.
    assert sum("policy_rules" in sql for sql in reads) == 1, "\n".join(reads)


@pytest.mark.parametrize(("query", "status", "holding_reads"), [
    ("?user=nobody&permission=qc-check", 404, 1),  # the one statement finds no such user
    ("?user=checked-person", 412, 1),             # the guard alone, read after the 412
])
def test_a_check_refused_reads_the_guard_once(app, client, make_user, login_as, db_session,
                                              monkeypatch, query, status, holding_reads):
    _, headers = _check_world(app, make_user, login_as, db_session, client)
    with counted(app) as statements, read_only_reads(monkeypatch) as reads:
        response = client.get("/v1/check" + query, headers=headers)
    assert response.status_code == status, response.json
    assert statements == []
    assert sum("policy_rules" in sql for sql in reads) == holding_reads, "\n".join(reads)
