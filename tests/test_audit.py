"""The hash-chained audit log: intact chains verify, any tampering is found."""
import threading

import pytest
from sqlalchemy import delete, func, select, text, update

from security_api import audit
from security_api.clock import utcnow
from security_api.models import AuditChainHead, AuditEvent
from tests.conftest import basic
from tests.test_query_counts import counted


def _events(app, count):
    with app.extensions["security_api"].session_factory() as session:
        for i in range(count):
            audit.record(session, action="test.event", actor=f"user{i}", target=None,
                         origin=audit.Origin(ip="127.0.0.1"), now=utcnow(), details={"i": i})
        session.commit()
        return audit.verify_chain(session)


def test_intact_chain_verifies(app):
    report = _events(app, 5)
    assert report.ok and report.events >= 5


@pytest.mark.parametrize("tamper,problem", [
    (lambda s: s.execute(update(AuditEvent).where(AuditEvent.seq == 3)
                         .values(actor="mallory")), "content changed"),
    (lambda s: s.execute(text("UPDATE audit_events SET details = :d WHERE seq = 3"),
                         {"d": '{"i":99}'}), "content changed"),
    (lambda s: s.execute(delete(AuditEvent).where(AuditEvent.seq == 3)), "missing"),
    (lambda s: s.execute(delete(AuditEvent).where(AuditEvent.seq == s.scalar(
        select(AuditChainHead.seq)))), "removed"),
])
def test_tampering_is_found_at_the_first_broken_event(app, db_session, tamper, problem):
    _events(app, 5)
    tamper(db_session)
    db_session.commit()
    report = audit.verify_chain(db_session)
    assert not report.ok
    assert problem in report.problem
    assert report.first_broken_seq is not None


def test_concurrent_writers_never_fork_the_chain(app):
    def write():
        _events(app, 5)

    threads = [threading.Thread(target=write) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    with app.extensions["security_api"].session_factory() as session:
        report = audit.verify_chain(session)
        assert report.ok, report
        assert report.events == session.scalar(select(AuditChainHead.seq))


def test_cli_reports_a_broken_chain(app, runner, client, db_session):
    client.post("/v1/login", headers=basic("nobody", "wrong-password"), json={})
    client.post("/v1/login", headers=basic("nobody", "wrong-password"), json={})
    db_session.execute(update(AuditEvent).where(AuditEvent.seq == 1).values(ip="10.9.9.9"))
    db_session.commit()
    result = runner.invoke(args=["audit", "verify"])
    assert result.exit_code == 1
    assert "broken at event 1" in result.output


def test_one_transactions_events_are_chained_in_order_with_one_head_read_and_write(app):
    with app.extensions["security_api"].session_factory() as session:
        events = [audit.record(session, action="test.batch", actor="carol", target=f"t{i}",
                               origin=audit.Origin(), now=utcnow(), details={"i": i})
                  for i in range(3)]
        with counted(app) as statements:
            session.commit()
        head_updates = [s for s in statements if s.upper().startswith("UPDATE AUDIT_CHAIN_HEAD")]
        assert len(head_updates) == 2  # take the lock and number the events; store the last hash
        seqs = [event.seq for event in events]
        assert seqs == list(range(seqs[0], seqs[0] + 3))
        stored = session.execute(select(AuditEvent.seq, AuditEvent.target)
                                 .where(AuditEvent.action == "test.batch")
                                 .order_by(AuditEvent.seq)).all()
        assert stored == [(seq, f"t{i}") for i, seq in enumerate(seqs)]
        assert events[1].prev_hash == events[0].hash and events[2].prev_hash == events[1].hash
        assert session.get(AuditChainHead, audit.HEAD_ID).last_hash == events[2].hash
        report = audit.verify_chain(session)
        assert report.ok, report


def test_events_of_a_rolled_back_transaction_never_join_the_chain(app):
    factory = app.extensions["security_api"].session_factory
    with factory() as session:
        before = session.scalar(select(AuditChainHead.seq))
        session.rollback()
        for sent_a_statement_first in (False, True):
            if sent_a_statement_first:
                session.execute(select(AuditChainHead.seq))
            # Without a statement sent, the event must still belong to the transaction rolled back.
            audit.record(session, action="test.dropped", actor="mallory", target=None,
                         origin=audit.Origin(), now=utcnow())
            session.rollback()
            audit.record(session, action="test.kept", actor="carol", target=None,
                         origin=audit.Origin(), now=utcnow())
            session.commit()
        assert session.scalar(select(func.count()).select_from(AuditEvent)
                              .where(AuditEvent.action == "test.dropped")) == 0
        assert session.scalar(select(AuditChainHead.seq)) == before + 2
        report = audit.verify_chain(session)
        assert report.ok, report
