"""The audit sequencer: appended events are sealed exactly once, in order, whatever crashes or races.

Crash cases of issue 13: a sealer killed mid-batch, sealers racing, an event committed late, an
event changed before it was sealed, and the background sequencer under a real gunicorn.
"""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import func, select, update

from security_api import audit
from security_api.audit import _append_staged
from security_api.audit.sequencer import integrate_batch, seal_pending, sealer_for
from security_api.clock import utcnow
from security_api.models import AuditEvent
from tests.conftest import TEST_DATABASE_URL, bearer
from tests.servers import basic_header, call, start_gunicorn

ROOT = Path(__file__).resolve().parent.parent
POSTGRES = bool(TEST_DATABASE_URL)


@contextlib.contextmanager
def deferred(app):
    """Production mode without the thread: commits append, nothing seals until told."""
    sealer = sealer_for(app.extensions["security_api"].session_factory)
    sealer.background = True
    try:
        yield sealer
    finally:
        sealer.background = False


def append(app, count: int, *, actor: str = "carol") -> list[str]:
    """Append `count` events in one transaction; return their ids."""
    with app.extensions["security_api"].session_factory() as session:
        events = [audit.record(session, action="test.seq", actor=actor, target=f"t{i}",
                               origin=audit.Origin(), now=utcnow()) for i in range(count)]
        session.commit()
        return [event.id for event in events]


def pending(db_session) -> int:
    db_session.rollback()
    return db_session.scalar(select(func.count()).select_from(AuditEvent)
                             .where(AuditEvent.seq.is_(None)))


def assert_sealed_once_in_order(app, db_session, ids: list[str]) -> None:
    """Every id sealed exactly once, seqs 1..N gap-free, and the chain verifies."""
    db_session.rollback()
    seqs = dict(db_session.execute(select(AuditEvent.id, AuditEvent.seq)).all())
    assert set(ids) <= set(seqs)
    assert sorted(seqs.values()) == list(range(1, len(seqs) + 1))
    report = audit.verify_chain(db_session)
    assert report.ok, report
    assert report.events == len(seqs)


def services_of(app):
    return app.extensions["security_api"]


def test_commit_appends_without_the_head_and_the_seal_numbers_in_append_order(app, db_session):
    with deferred(app):
        first = append(app, 3)
        second = append(app, 2)
    assert pending(db_session) == 5
    services = services_of(app)
    assert seal_pending(services.engine, keys=services.audit_keys) == 5
    assert pending(db_session) == 0
    order = list(db_session.scalars(select(AuditEvent.id).where(AuditEvent.action == "test.seq")
                                    .order_by(AuditEvent.seq)))
    assert order == first + second
    assert_sealed_once_in_order(app, db_session, first + second)


def test_a_rolled_back_transaction_leaves_no_pending_row(app, db_session):
    with deferred(app), services_of(app).session_factory() as session:
        audit.record(session, action="test.rolled", actor="mallory", target=None,
                     origin=audit.Origin(), now=utcnow())
        session.flush()
        session.rollback()
    assert pending(db_session) == 0
    assert db_session.scalar(select(func.count()).select_from(AuditEvent)
                             .where(AuditEvent.action == "test.rolled")) == 0


_KILLED_SEALER = """
import sys, time
from security_api.audit.chain import ChainKeys
from security_api.audit.sequencer import integrate_batch
from security_api.db import make_engine
engine = make_engine(sys.argv[1])
keys = ChainKeys.from_secrets([sys.argv[2]])
with engine.connect() as conn:
    batch = integrate_batch(conn, keys, wait=True, limit=1000)
    print("sealed-uncommitted", batch.sealed, flush=True)
    time.sleep(120)
"""


def test_a_sealer_killed_mid_batch_leaves_every_event_pending_for_the_next(app, db_session):
    services = services_of(app)
    with deferred(app):
        ids = append(app, 4) + append(app, 3)
    process = subprocess.Popen(
        [sys.executable, "-c", _KILLED_SEALER, services.settings.database_url,
         services.settings.audit_chain_keys[0]],
        cwd=ROOT, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        line = process.stdout.readline()
        assert line.split() == ["sealed-uncommitted", "7"], line
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
        process.stdout.close()
    assert pending(db_session) == 7  # nothing half-sealed
    assert seal_pending(services.engine, keys=services.audit_keys) == 7
    assert_sealed_once_in_order(app, db_session, ids)


def test_sealers_racing_with_writers_seal_every_event_exactly_once(app, db_session):
    services = services_of(app)
    ids: list[str] = []
    errors: list[BaseException] = []
    writers_done = threading.Event()

    def writer(name: str) -> None:
        try:
            for _ in range(8):
                ids.extend(append(app, 2, actor=name))
        except BaseException as error:  # noqa: BLE001 - reported by the assertion below
            errors.append(error)

    def sealer() -> None:
        try:
            while not writers_done.is_set():
                seal_pending(services.engine, keys=services.audit_keys, wait=False, limit=3)
            seal_pending(services.engine, keys=services.audit_keys, wait=True, limit=3)
        except BaseException as error:  # noqa: BLE001
            errors.append(error)

    with deferred(app):
        writers = [threading.Thread(target=writer, args=(f"w{n}",)) for n in range(3)]
        sealers = [threading.Thread(target=sealer) for _ in range(3)]
        for thread in writers + sealers:
            thread.start()
        for thread in writers:
            thread.join()
        writers_done.set()
        for thread in sealers:
            thread.join()
    assert errors == []
    seal_pending(services.engine, keys=services.audit_keys)
    assert len(ids) == 48
    assert pending(db_session) == 0
    assert_sealed_once_in_order(app, db_session, ids)


@pytest.mark.skipif(not POSTGRES, reason="SQLite serialises writers: a sealer waits for the lock")
def test_a_second_sealer_does_not_queue_behind_the_head(app, db_session):
    services = services_of(app)
    with deferred(app):
        ids = append(app, 2)
    with services.engine.connect() as holder:
        assert integrate_batch(holder, services.audit_keys, wait=True).sealed == 2
        # The head is held (uncommitted): the loser returns at once with nothing sealed.
        assert seal_pending(services.engine, keys=services.audit_keys, wait=False) == 0
        holder.commit()
    assert pending(db_session) == 0
    assert_sealed_once_in_order(app, db_session, ids)


@pytest.mark.skipif(not POSTGRES, reason="SQLite serialises writers: no transaction can hold "
                                         "an appended event open while another commits")
def test_an_event_committed_late_is_sealed_after_those_committed_before_it(app, db_session):
    factory = services_of(app).session_factory
    with factory() as late:
        audit.record(late, action="test.late", actor="a", target=None, origin=audit.Origin(),
                     now=utcnow())
        _append_staged(late)  # what its commit does first: the append key is taken now
        late.flush()
        with factory() as early:
            audit.record(early, action="test.early", actor="b", target=None,
                         origin=audit.Origin(), now=utcnow())
            early.commit()  # sealed at once (no background sequencer here)
        late.commit()
    db_session.rollback()
    rows = {row.action: row for row in db_session.execute(
        select(AuditEvent.action, AuditEvent.seq, AuditEvent.append_key, AuditEvent.at)
        .where(AuditEvent.action.in_(("test.late", "test.early")))).all()}
    assert rows["test.late"].append_key < rows["test.early"].append_key
    assert rows["test.late"].at < rows["test.early"].at
    assert rows["test.late"].seq > rows["test.early"].seq
    assert audit.verify_chain(db_session).ok


def _mismatches() -> float:
    return REGISTRY.get_sample_value("security_api_audit_entry_mac_mismatches_total") or 0.0


@pytest.mark.parametrize("change", [{"actor": "mallory"}, {"details": '{"forged":true}'},
                                    {"entry_mac": None}, {"entry_mac": "f" * 64},
                                    {"append_key": None}])
def test_an_event_changed_before_it_was_sealed_is_sealed_and_reported(app, db_session, change):
    services = services_of(app)
    with deferred(app):
        ids = append(app, 3)
    db_session.execute(update(AuditEvent).where(AuditEvent.id == ids[1]).values(**change))
    db_session.commit()
    before = _mismatches()
    assert seal_pending(services.engine, keys=services.audit_keys) == 3
    assert _mismatches() == before + 1
    seq = db_session.scalar(select(AuditEvent.seq).where(AuditEvent.id == ids[1]))
    report = audit.verify_chain(db_session)
    assert not report.ok
    assert report.first_broken_seq == seq
    assert "sealed" in report.problem or "entry MAC" in report.problem


def test_readers_seal_first_so_they_show_every_committed_event(app, client, make_user,
                                                                login_as, db_session):
    admin = bearer(login_as(make_user("root", role="security", subrole="admin"))["token"])
    with deferred(app):
        ids = append(app, 2, actor="reader-sees")
        assert pending(db_session) >= 2
        events = client.get("/v1/audit?actor=reader-sees", headers=admin).json["events"]
    assert sorted(event["id"] for event in events) == sorted(ids)
    assert all(event["seq"] is not None for event in events)


def test_the_background_sequencer_under_gunicorn_seals_without_a_reader(
        app, client, make_user, login_as, database_url, db_session, tmp_path):
    admin = bearer(login_as(make_user("root", role="security", subrole="admin"))["token"])
    db_session.commit()
    with start_gunicorn(database_url, log_dir=tmp_path, workers=1,
                        env={"AUDIT_SEAL_INTERVAL_SECONDS": "0.2"}) as server:
        status, _body, request_id = call(server.base, "POST", "/v1/login",
                                         headers=basic_header("nobody", "wrong-password"),
                                         body={})
        assert status == 401
        deadline = time.monotonic() + 60  # generous: a bound on the wait, not a measurement
        sealed = None
        while time.monotonic() < deadline:
            db_session.rollback()
            sealed = db_session.execute(select(AuditEvent.seq).where(
                AuditEvent.request_id == request_id)).first()
            if sealed is not None and sealed.seq is not None:
                break
            time.sleep(0.1)
        assert sealed is not None and sealed.seq is not None, server.log_tail()
        # An event another process appended and left (as an instance that died after its
        # commit): only the workers' sequencer threads, on their interval, can seal it.
        with deferred(app):
            (orphan,) = append(app, 1, actor="orphan")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and _seq_of(db_session, orphan) is None:
            time.sleep(0.1)
        assert _seq_of(db_session, orphan) is not None, server.log_tail()
    events = client.get("/v1/audit?limit=100", headers=admin).json["events"]
    assert sealed.seq in [event["seq"] for event in events]
    assert audit.verify_chain(db_session).ok


def _seq_of(db_session, event_id: str) -> int | None:
    db_session.rollback()
    return db_session.scalar(select(AuditEvent.seq).where(AuditEvent.id == event_id))
