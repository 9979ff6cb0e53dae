"""The sequencer: integrates appended audit events into the keyed hash chain, in batches.

Writers append events without any shared lock (audit.record: a row with its append key and
entry MAC, no seq, no hash). A sealer then takes the chain head's lock, reads the pending
events in append order, gives them seq head+1, head+2, ..., chains their hashes, and writes the
events and the head's new signed checkpoint in ONE transaction. Under gunicorn each worker runs
one background sealer, woken by its own commits and every AUDIT_SEAL_INTERVAL_SECONDS; elsewhere
(CLI, tests, scripts) the commit seals at once. Readers of the chain seal first, so they see
every committed event.

Why no event is skipped: seq is assigned only here, under the head's lock, as head.seq + 1
onward, and written together with the head in one transaction; the unique index on seq refuses
a duplicate; verify reports any gap ("missing event").
Why none is reordered unnoticed: once sealed, an event's seq and its predecessor's hash are
inside its HMAC and the head's signed checkpoint covers the end; before sealing it has no
position to change. Append order is kept by the append key (time_ns, random, position in the
transaction); two concurrent transactions have no order but their commit order, and an event
committed late is simply sealed in a later batch (it may carry an earlier `at`).
Why none is lost: a pending row commits with the business change or not at all; every
committed pending row is visible to the next batch (READ COMMITTED / SQLite's latest state is
read after the head lock is taken); a batch commits atomically with the head, so a crash before
commit leaves the events pending for the next sealer, never half-sealed; two sealers serialise
on the head (the loser with SKIP LOCKED returns at once and retries shortly).
What the entry MAC protects: the event's own content between append and seal. A row changed
in that window is still sealed (hiding it would be worse) but logged, counted, and reported by
verify. The honest limit: a pending row DELETED by someone with database write access before
it is sealed leaves no trace in the chain; the window is the seal delay (milliseconds when the
appending worker lives, at most AUDIT_SEAL_INTERVAL_SECONDS after it died).
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from types import SimpleNamespace

from sqlalchemy import bindparam, select, update
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import Session

from security_api import metrics
from security_api.audit.chain import (
    HEAD_ID,
    ChainKeys,
    checkpoint_message,
    entry_mac,
    entry_mac_problem,
    event_hash,
    session_keys,
    signed_by,
)
from security_api.models import AuditChainHead, AuditEvent

log = logging.getLogger(__name__)
# The session factory carries this process's Sealer in `Session.info` under this name.
SEALER_INFO = "audit_sealer"
BATCH = 500
# A sealer that found the head taken tries again this soon while events are pending.
RETRY_SECONDS = 0.03
# Stored for a pending row that had no entry MAC at all: it can never verify, so verify tells.
NO_MAC = "0" * 64

EVENTS = AuditEvent.__table__
HEAD = AuditChainHead.__table__


class HeadNotSigned(RuntimeError):
    """The head's checkpoint is not the key's: sealing onto it would bless a moved head."""


@dataclass
class Batch:
    """What one integrated batch did: how many sealed, their append delays, MAC mismatches."""

    sealed: int = 0
    delays: list[float] = field(default_factory=list)
    mismatches: int = 0


def _lock_head(conn: Connection, wait: bool):
    """Take the head's write lock; return (seq, last_hash, key_id, signature) or None if taken."""
    if conn.dialect.name == "postgresql":
        return conn.execute(
            select(HEAD.c.seq, HEAD.c.last_hash, HEAD.c.key_id, HEAD.c.signature)
            .where(HEAD.c.id == HEAD_ID).with_for_update(skip_locked=not wait)).first()
    # SQLite serialises writers on the database lock: a no-op write takes it.
    return conn.execute(
        update(HEAD).where(HEAD.c.id == HEAD_ID).values(seq=HEAD.c.seq)
        .returning(HEAD.c.seq, HEAD.c.last_hash, HEAD.c.key_id, HEAD.c.signature)).first()


def _pending(conn: Connection, limit: int):
    stmt = (select(EVENTS).where(EVENTS.c.seq.is_(None))
            .order_by(EVENTS.c.append_key.asc().nulls_first(), EVENTS.c.id).limit(limit))
    if conn.dialect.name == "postgresql":
        stmt = stmt.with_for_update()  # nobody else may touch a row while it is being sealed
    return conn.execute(stmt).all()


def has_pending(conn: Connection) -> bool:
    """Tell whether any committed event waits to be sealed (one indexed probe)."""
    return conn.execute(select(EVENTS.c.id).where(EVENTS.c.seq.is_(None)).limit(1)).first() is not None


def _head_trusted(conn: Connection, keys: ChainKeys, head) -> bool:
    """Tell whether the head may be extended: its checkpoint is the key's for its end.

    Exceptions, as verify and rekey allow them: a chain never signed (before the key) and an
    unkeyed last event (an instance of the old version during a rolling upgrade moved the
    head without signing it; rekey seals those). Re-signing any other head would bless events
    removed from the end.
    """
    if head.signature is None or signed_by(keys, head.key_id, head.signature,
                                           checkpoint_message(head.seq, head.last_hash)):
        return True
    last_key_id = conn.execute(select(EVENTS.c.key_id).where(EVENTS.c.seq == head.seq)).first()
    return last_key_id is not None and last_key_id.key_id is None


def integrate_batch(conn: Connection, keys: ChainKeys, *, wait: bool, limit: int = BATCH) -> Batch | None:
    """Seal up to `limit` pending events in the connection's transaction; the caller commits.

    Returns None when the head is taken by another sealer (wait=False) or missing. Raises
    HeadNotSigned when the head's checkpoint is not signed by a configured key.
    """
    head = _lock_head(conn, wait)
    if head is None:
        return None
    rows = _pending(conn, limit)
    if not rows:
        return Batch()
    if not _head_trusted(conn, keys, head):
        raise HeadNotSigned("the audit chain head's checkpoint is not signed by the chain key; "
                            "events stay pending (run `flask audit verify`)")
    key, seq, prev_hash = keys.signing, head.seq, head.last_hash
    batch, updates, now_ns = Batch(), [], time.time_ns()
    for row in rows:
        seq += 1
        event = SimpleNamespace(**row._mapping)
        mac = event.entry_mac
        problem = entry_mac_problem(event, keys)
        if problem is not None:
            batch.mismatches += 1
            log.error("audit event %s (sealed as %d): %s", event.id, seq, problem)
            mac = mac or NO_MAC
        elif event.key_id != key.id:
            mac = entry_mac(event, key)  # checked just now under its old key: carry it over
        event.seq, event.prev_hash = seq, prev_hash
        prev_hash = event_hash(event, key)
        updates.append({"_id": event.id, "_seq": seq, "_prev": event.prev_hash,
                        "_hash": prev_hash, "_key": key.id, "_mac": mac})
        if event.append_key and event.append_key[:20].isdigit():
            batch.delays.append(max(0.0, (now_ns - int(event.append_key[:20])) / 1e9))
    conn.execute(update(EVENTS).where(EVENTS.c.id == bindparam("_id"), EVENTS.c.seq.is_(None))
                 .values(seq=bindparam("_seq"), prev_hash=bindparam("_prev"),
                         hash=bindparam("_hash"), key_id=bindparam("_key"),
                         entry_mac=bindparam("_mac")), updates)
    conn.execute(update(HEAD).where(HEAD.c.id == HEAD_ID).values(
        seq=seq, last_hash=prev_hash, key_id=key.id,
        signature=key.sign(checkpoint_message(seq, prev_hash))))
    batch.sealed = len(rows)
    return batch


def seal_pending(engine: Engine, *, keys: ChainKeys, wait: bool = True, limit: int = BATCH) -> int:
    """Seal every pending event, one transaction per batch; return how many were sealed.

    With wait=False a sealer that finds the head taken returns at once (what it sealed so far).
    """
    total = 0
    while True:
        with engine.connect() as conn:
            if not has_pending(conn):
                return total
            batch = integrate_batch(conn, keys, wait=wait, limit=limit)
            conn.commit()
        if batch is None:
            return total
        metrics.observe_audit_seal(batch.sealed, batch.delays, batch.mismatches)
        total += batch.sealed
        if batch.sealed < limit:
            return total


class Sealer:
    """This process's way of sealing: inline after each commit, or a background thread."""

    def __init__(self, engine: Engine, keys: ChainKeys, *, interval_seconds: float = 1.0) -> None:
        self.engine, self.keys, self.interval_seconds = engine, keys, interval_seconds
        # True under gunicorn (post_worker_init): commits only wake the thread.
        self.background = False
        self._wake = threading.Event()
        self._stop = threading.Event()

    def appended(self) -> None:
        """Events were committed: wake the thread, or seal them now when there is none."""
        if self.background:
            self._wake.set()
        else:
            self.seal_now()

    def seal_now(self) -> int:
        """Seal what is pending, waiting for the head; log a failure, never raise it.

        The caller's business change is committed already: its events wait for the next seal.
        """
        try:
            return seal_pending(self.engine, keys=self.keys, wait=True)
        except Exception:  # noqa: BLE001 - logged; the events stay pending, nothing is lost
            log.exception("sealing audit events failed; they stay pending")
            return 0

    def start(self) -> threading.Event:
        """Run the background sequencer in a daemon thread; set the returned event to stop it."""
        self.background = True
        threading.Thread(target=self._loop, name="security-api-sequencer", daemon=True).start()
        return self._stop

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.interval_seconds)
            self._wake.clear()
            try:
                self._drain()
            except Exception:  # noqa: BLE001 - a sequencer that dies silently is worse
                log.exception("audit sequencer run failed; trying again next interval")

    def _drain(self) -> None:
        # Another sealer holding the head seals what it saw; what came after is ours to take.
        while True:
            seal_pending(self.engine, keys=self.keys, wait=False)
            with self.engine.connect() as conn:
                if not has_pending(conn):
                    return
            if self._stop.wait(RETRY_SECONDS):
                return


def sealer_of(session: Session) -> Sealer:
    """Return the session factory's Sealer, or one made for this session's database and keys."""
    sealer = session.info.get(SEALER_INFO)
    if sealer is not None:
        return sealer
    bind = session.get_bind()
    engine = bind.engine if isinstance(bind, Connection) else bind
    return Sealer(engine, session_keys(session))


def sealer_for(session_factory) -> Sealer:
    """Return the Sealer a service session factory carries (see services.build_services)."""
    return session_factory.kw["info"][SEALER_INFO]


def seal_for_reader(session: Session) -> None:
    """Seal every committed event before a reader of the chain reads it (list, export, verify).

    A SQLite session that is in the middle of a write transaction holds the database lock: the
    seal then runs in that very transaction (the caller's commit or rollback decides it).
    """
    sealer = sealer_of(session)
    if session.in_transaction() and session.get_bind().dialect.name == "sqlite":
        conn = session.connection()
        if getattr(conn.connection.dbapi_connection, "in_transaction", False):
            try:
                while (batch := integrate_batch(conn, sealer.keys, wait=True)) and \
                        batch.sealed == BATCH:
                    pass
            except Exception:  # noqa: BLE001 - logged; the reader reads what is sealed
                log.exception("sealing audit events failed; they stay pending")
            return
    sealer.seal_now()
