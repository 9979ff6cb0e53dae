"""Hash-chained audit events, written in the caller's transaction."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import event as orm_event
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from .models import AuditChainHead, AuditEvent, new_id

GENESIS_HASH = "0" * 64
HEAD_ID = 1
_STAGED_EVENTS = "audit_staged_events"


@dataclass(frozen=True)
class Origin:
    """Where an action came from: passed in by the HTTP layer or the CLI."""

    ip: str | None = None
    request_id: str | None = None


def _canonical_time(value: datetime) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def event_hash(event: AuditEvent) -> str:
    """Return the hash of an event, chained to the hash before it."""
    body = json.dumps({
        "seq": event.seq, "id": event.id, "at": _canonical_time(event.at),
        "actor": event.actor, "action": event.action, "target": event.target,
        "ip": event.ip, "request_id": event.request_id, "details": event.details,
    }, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(f"{event.prev_hash}\n{body}".encode("ascii")).hexdigest()


def _printable(value: str | None, limit: int) -> str | None:
    """Escape control characters (NUL breaks PostgreSQL, newlines forge log lines) and cap length."""
    if value is None:
        return None
    cleaned = "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii")
                      for ch in value)
    return cleaned[:limit]


def ensure_chain_head(session: Session) -> None:
    """Create the chain's head row if the database has none yet."""
    if session.get(AuditChainHead, HEAD_ID) is None:
        session.add(AuditChainHead(id=HEAD_ID, seq=0, last_hash=GENESIS_HASH))
        session.flush()


def record(session: Session, *, action: str, actor: str | None, target: str | None,
           origin: Origin, now: datetime, details: dict | None = None) -> AuditEvent:
    """Append an event to the chain inside the caller's transaction.

    The event joins the chain when the transaction commits (see `_append_staged`): its `seq`,
    `prev_hash` and `hash` are set then, and a rollback drops it with everything else.
    """
    event = AuditEvent(
        id=new_id(), at=now, actor=_printable(actor, 128),
        action=str(action), target=_printable(target, 256), ip=_printable(origin.ip, 64),
        request_id=_printable(origin.request_id, 128),
        details=json.dumps(details or {}, sort_keys=True, separators=(",", ":")),
    )
    if not session.in_transaction():
        session.begin()  # so a rollback, even with no statement sent yet, drops the event
    session.info.setdefault(_STAGED_EVENTS, []).append(event)
    return event


@orm_event.listens_for(Session, "before_commit")
def _append_staged(session: Session) -> None:
    """Chain the transaction's events, in the order recorded, just before it commits.

    Taking the head row's write lock serialises writers, so the chain never forks. It is taken
    here, as late as possible, and the head is read and written once per transaction: the lock
    is held only for these three statements and the commit, not for the whole transaction.
    """
    staged = session.info.pop(_STAGED_EVENTS, None)
    if not staged:
        return
    last_seq, prev_hash = session.execute(
        update(AuditChainHead).where(AuditChainHead.id == HEAD_ID)
        .values(seq=AuditChainHead.seq + len(staged))
        .returning(AuditChainHead.seq, AuditChainHead.last_hash)
    ).one()
    for seq, staged_event in enumerate(staged, start=last_seq - len(staged) + 1):
        staged_event.seq, staged_event.prev_hash = seq, prev_hash
        staged_event.hash = prev_hash = event_hash(staged_event)
    session.add_all(staged)
    session.execute(update(AuditChainHead).where(AuditChainHead.id == HEAD_ID)
                    .values(last_hash=prev_hash))


@orm_event.listens_for(Session, "after_transaction_end")
def _forget_uncommitted_events(session: Session, transaction) -> None:
    # A committed transaction took its events in before_commit; what is left was rolled back.
    if transaction.parent is None:
        session.info.pop(_STAGED_EVENTS, None)


@dataclass(frozen=True)
class ChainReport:
    """The result of walking the chain: where it first breaks, if anywhere."""

    ok: bool
    events: int
    first_broken_seq: int | None = None
    problem: str | None = None


def verify_chain(session: Session, *, batch: int = 1000) -> ChainReport:
    """Walk every event in order and report the first one changed, removed or inserted."""
    expected_prev, expected_seq, count = GENESIS_HASH, 1, 0
    last_seen = 0
    head = session.get(AuditChainHead, HEAD_ID)
    head_seq = head.seq if head is not None else None
    while True:
        rows = session.execute(
            select(AuditEvent).where(AuditEvent.seq > last_seen)
            .order_by(AuditEvent.seq).limit(batch)).scalars().all()
        if not rows:
            break
        for event in rows:
            if head_seq is not None and event.seq > head_seq:
                # The head is written with every real event: a row past it was slipped in.
                return ChainReport(False, count, event.seq, "event inserted after the last one")
            if event.seq != expected_seq:
                return ChainReport(False, count, expected_seq, "missing event")
            if event.prev_hash != expected_prev:
                return ChainReport(False, count, event.seq, "link to previous event broken")
            if event_hash(event) != event.hash:
                return ChainReport(False, count, event.seq, "event content changed")
            expected_prev, expected_seq, count = event.hash, event.seq + 1, count + 1
            last_seen = event.seq
    if head is not None and (head.seq != count or head.last_hash != expected_prev):
        return ChainReport(False, count, expected_seq, "events after the last one were removed")
    return ChainReport(True, count)
