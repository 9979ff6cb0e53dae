"""The hash-chained audit log: intact chains verify, any tampering is found."""
import hashlib
import json
import secrets
import threading

import pytest
from alembic import command
from sqlalchemy import create_engine, delete, func, insert, select, text, update

from security_api import audit
from security_api.clock import utcnow
from security_api.installation import alembic_config, migrate
from security_api.models import AuditChainHead, AuditEvent, new_id
from tests.conftest import TEST_AUDIT_KEY, basic, private_database
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


def test_one_transactions_events_are_appended_without_the_head_and_sealed_in_order(app):
    with app.extensions["security_api"].session_factory() as session:
        events = [audit.record(session, action="test.batch", actor="carol", target=f"t{i}",
                               origin=audit.Origin(), now=utcnow(), details={"i": i})
                  for i in range(3)]
        with counted(app) as statements:
            session.commit()
        # The commit itself never touches the head; the inline seal after it (no background
        # sequencer here) writes it once: lock, then the new checkpoint.
        commit_part = statements[:statements.index(next(
            s for s in statements if "audit_chain_head" in s.lower()))]
        assert any(s.upper().startswith("INSERT INTO AUDIT_EVENTS") for s in commit_part)
        stored = session.execute(select(AuditEvent.seq, AuditEvent.target, AuditEvent.prev_hash,
                                        AuditEvent.hash)
                                 .where(AuditEvent.action == "test.batch")
                                 .order_by(AuditEvent.seq)).all()
        seqs = [row.seq for row in stored]
        assert seqs == list(range(seqs[0], seqs[0] + 3))
        assert [row.target for row in stored] == ["t0", "t1", "t2"]
        assert stored[1].prev_hash == stored[0].hash and stored[2].prev_hash == stored[1].hash
        assert session.get(AuditChainHead, audit.HEAD_ID).last_hash == stored[2].hash
        assert len({event.append_key for event in events}) == 3
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


# ---- keys: the right one verifies, a wrong one does not, an old one still does --------------
def test_a_chain_verified_with_another_key_is_not_intact(app):
    assert _events(app, 3).ok
    stranger = audit.ChainKeys.from_secrets([secrets.token_urlsafe(48)])
    with app.extensions["security_api"].session_factory() as session:
        report = audit.verify_chain(session, keys=stranger)
    assert not report.ok and report.first_broken_seq == 1
    assert "not configured" in report.problem


def test_rotated_key_new_first_old_after_still_verifies(app, make_app):
    old_key = TEST_AUDIT_KEY
    _events(app, 2)
    new_key = secrets.token_urlsafe(48)
    rotated = make_app(audit_chain_keys=(new_key, old_key))
    report = _events(rotated, 2)
    assert report.ok, report
    factory = rotated.extensions["security_api"].session_factory
    with factory() as session:
        key_ids = set(session.scalars(select(AuditEvent.key_id)))
        head = session.get(AuditChainHead, audit.HEAD_ID)
        assert key_ids == {audit.chain_key(old_key).id, audit.chain_key(new_key).id}
        assert head.key_id == audit.chain_key(new_key).id  # the first key signs
        # Without the old key the events it signed cannot be told from forgeries.
        without_old = audit.verify_chain(session, keys=audit.ChainKeys.from_secrets([new_key]))
        assert not without_old.ok and without_old.first_broken_seq == 1


def test_the_key_is_never_written_to_the_database(app, db_session):
    _events(app, 2)
    rows = [" ".join(str(value) for value in row) for table in ("audit_events", "audit_chain_head")
            for row in db_session.execute(text(f"SELECT * FROM {table}"))]  # noqa: S608
    assert rows and not any(TEST_AUDIT_KEY in row for row in rows)


# ---- migrating an unkeyed chain: verify it, then seal it ---------------------------------------
def _old_style_hash(row: dict) -> str:
    """The chain's hash before 0003, as that code wrote it: plain SHA-256, no key."""
    body = json.dumps({
        "seq": row["seq"], "id": row["id"], "at": row["at"].strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "actor": row["actor"], "action": row["action"], "target": row["target"],
        "ip": row["ip"], "request_id": row["request_id"], "details": row["details"],
    }, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(f"{row['prev_hash']}\n{body}".encode("ascii")).hexdigest()


def _write_as_the_old_version(engine, count: int) -> None:
    """Append events exactly as the code before 0003 did: plain hashes, head seq and hash only."""
    with engine.begin() as connection:
        last, prev = connection.execute(text(
            "UPDATE audit_chain_head SET seq = seq + :n WHERE id = 1 RETURNING seq, last_hash"),
            {"n": count}).one()
        for seq in range(last - count + 1, last + 1):
            row = {"id": new_id(), "seq": seq, "at": utcnow(), "actor": f"user{seq}",
                   "action": "legacy.event", "target": None, "ip": "10.0.0.1",
                   "request_id": None, "details": json.dumps({"seq": seq}), "prev_hash": prev}
            row["hash"] = prev = _old_style_hash(row)
            connection.execute(insert(AuditEvent.__table__).values(**row))
        connection.execute(text("UPDATE audit_chain_head SET last_hash = :h WHERE id = 1"),
                           {"h": prev})


@pytest.fixture
def legacy_database_url(tmp_path):
    """A database of its own migrated to 0002 (before the key) holding an old-style chain."""
    with private_database(tmp_path, name="test_legacy") as url:
        engine = create_engine(url)
        cfg = alembic_config()
        with engine.begin() as connection:
            cfg.attributes["connection"] = connection
            command.upgrade(cfg, "0002")
        _write_as_the_old_version(engine, LEGACY_EVENTS)
        migrate(engine)
        engine.dispose()
        yield url


LEGACY_EVENTS = 4


def test_an_old_unkeyed_chain_is_sealed_by_rekey_then_verifies(make_app, legacy_database_url):
    app = make_app(database_url=legacy_database_url)
    runner = app.test_cli_runner()
    factory = app.extensions["security_api"].session_factory
    with factory() as session:
        report = audit.verify_chain(session)
        assert not report.ok and report.first_broken_seq == 1
        assert "audit rekey" in report.problem
    # The service keeps writing (keyed) between the upgrade and the rekey.
    _events(app, 2)

    result = runner.invoke(args=["audit", "rekey"])
    assert result.exit_code == 0, result.output
    assert f"Sealed {LEGACY_EVENTS} legacy events" in result.output
    assert f"intact: {LEGACY_EVENTS + 2} events" in result.output
    assert _events(app, 1).ok
    again = runner.invoke(args=["audit", "rekey"])
    assert again.exit_code == 0 and "already sealed" in again.output
    with factory() as session:
        head = session.get(AuditChainHead, audit.HEAD_ID)
        assert head.sealed_seq == LEGACY_EVENTS + 2  # the keyed events written meanwhile too
        assert session.scalar(select(func.count()).where(AuditEvent.key_id.is_(None))) == LEGACY_EVENTS

        session.execute(update(AuditEvent).where(AuditEvent.seq == 2).values(actor="mallory"))
        session.commit()
        report = audit.verify_chain(session)
    assert not report.ok and report.first_broken_seq == 2 and "content changed" in report.problem
    result = runner.invoke(args=["audit", "verify"])
    assert result.exit_code == 1 and "broken at event 2" in result.output


def test_a_rolling_upgrade_old_and_new_instances_writing_together_is_sealed(
        make_app, legacy_database_url):
    app = make_app(database_url=legacy_database_url)
    engine = app.extensions["security_api"].engine
    _events(app, 2)                       # a new instance: keyed, signs the head
    _write_as_the_old_version(engine, 2)  # an old one still running: unkeyed, head unsigned
    _events(app, 1)
    _write_as_the_old_version(engine, 1)
    runner = app.test_cli_runner()
    result = runner.invoke(args=["audit", "rekey"])
    assert result.exit_code == 0, result.output
    assert f"Sealed {LEGACY_EVENTS + 3} legacy events" in result.output and "intact" in result.output
    assert _events(app, 1).ok
    # An unkeyed event after the seal (an old instance left running, or a forger) is reported,
    # and rekey does not seal it away.
    _write_as_the_old_version(engine, 1)
    with app.extensions["security_api"].session_factory() as session:
        report = audit.verify_chain(session)
    assert not report.ok and "unkeyed event after the sealed" in report.problem
    again = runner.invoke(args=["audit", "rekey"])
    assert again.exit_code == 1 and f"unkeyed event {report.first_broken_seq} after the seal" \
        in again.output


def test_sealed_legacy_rows_rehashed_with_plain_sha256_are_found(make_app, legacy_database_url):
    app = make_app(database_url=legacy_database_url)
    assert app.test_cli_runner().invoke(args=["audit", "rekey"]).exit_code == 0
    factory = app.extensions["security_api"].session_factory
    with factory() as session:
        assert audit.verify_chain(session).ok
        rows = list(session.scalars(select(AuditEvent).order_by(AuditEvent.seq)))
        prev = audit.GENESIS_HASH
        for row in rows:  # every legacy row re-hashed consistently after a change to the first
            row.actor = "mallory" if row.seq == 1 else row.actor
            row.prev_hash = prev
            row.hash = prev = audit.legacy_event_hash(row)
        session.execute(update(AuditChainHead).values(last_hash=prev))
        session.commit()
        report = audit.verify_chain(session)
    assert not report.ok and report.first_broken_seq == LEGACY_EVENTS
    assert "changed before the seal" in report.problem


def test_rekey_refuses_a_broken_legacy_chain_and_seals_nothing(make_app, legacy_database_url):
    app = make_app(database_url=legacy_database_url)
    factory = app.extensions["security_api"].session_factory
    with factory() as session:
        session.execute(update(AuditEvent).where(AuditEvent.seq == 3).values(ip="10.6.6.6"))
        session.commit()
    result = app.test_cli_runner().invoke(args=["audit", "rekey"])
    assert result.exit_code == 1
    assert "broken at event 3" in result.output and "not sealed" in result.output
    with factory() as session:
        head = session.get(AuditChainHead, audit.HEAD_ID)
        assert head.sealed_seq is None and head.signature is None


def test_rekey_on_a_keyed_chain_writes_nothing(app, runner, db_session):
    _events(app, 2)
    head = db_session.get(AuditChainHead, audit.HEAD_ID)
    before = (head.seq, head.last_hash, head.signature, head.sealed_seq)
    result = runner.invoke(args=["audit", "rekey"])
    assert result.exit_code == 0 and "Nothing to seal" in result.output
    db_session.expire_all()
    head = db_session.get(AuditChainHead, audit.HEAD_ID)
    assert (head.seq, head.last_hash, head.signature, head.sealed_seq) == before


def test_rekey_never_signs_a_truncated_head_whose_signature_was_erased(app, runner, db_session):
    _events(app, 4)
    last = db_session.scalar(select(AuditChainHead.seq))
    db_session.execute(delete(AuditEvent).where(AuditEvent.seq == last))
    db_session.execute(update(AuditChainHead).values(
        seq=last - 1, signature=None, key_id=None,
        last_hash=select(AuditEvent.hash).where(AuditEvent.seq == last - 1).scalar_subquery()))
    db_session.commit()
    result = runner.invoke(args=["audit", "rekey"])
    assert result.exit_code == 1 and "not signed" in result.output
    report = audit.verify_chain(db_session)
    assert not report.ok and report.first_broken_seq == last and "removed" in report.problem


def test_recorded_fields_escape_control_characters_and_are_capped(app):
    """A printable actor is kept as given (capped); control characters are escaped, never stored."""
    with app.extensions["security_api"].session_factory() as session:
        plain = audit.record(session, action="test.event", actor="ü" * 200, target="t",
                             origin=audit.Origin(ip="127.0.0.1"), now=utcnow())
        forged = audit.record(session, action="test.event", actor="eve\nINFO root\x00",
                              target="t", origin=audit.Origin(ip="127.0.0.1\r"), now=utcnow())
        session.rollback()
    assert plain.actor == "ü" * 128
    assert forged.actor == "eve\\nINFO root\\x00"
    assert forged.ip == "127.0.0.1\\r"
