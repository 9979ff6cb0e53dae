"""Audit events, appended in the caller's transaction and sealed into the keyed hash chain after.

This package is what the rest of the service imports for `record()` and `Origin`. The chain
itself (keys, hashes, checkpoints) is in chain.py, the sequencer that seals appended events in
sequencer.py and verification in verify.py; their public names are re-exported here so
`audit.verify_chain` and the like keep working.
"""
from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import event as orm_event
from sqlalchemy import insert
from sqlalchemy.orm import Session

from security_api.audit.chain import (
    GENESIS_HASH,
    HEAD_ID,
    KEYS_INFO,
    ChainKey,
    ChainKeys,
    chain_key,
    checkpoint_message,
    ensure_chain_head,
    entry_mac,
    event_hash,
    legacy_event_hash,
    seal_message,
    session_keys,
)
from security_api.audit.sequencer import SEALER_INFO, Sealer, seal_pending, sealer_of
from security_api.audit.verify import REKEY_HINT, ChainReport, SealReport, seal_legacy_events, verify_chain
from security_api.db import ServiceSession
from security_api.models import AuditEvent, new_id

__all__ = [
    "GENESIS_HASH", "HEAD_ID", "KEYS_INFO", "REKEY_HINT", "ChainKey", "ChainKeys", "ChainReport",
    "Origin", "SEALER_INFO", "SealReport", "Sealer", "chain_key", "checkpoint_message",
    "ensure_chain_head", "event_hash", "legacy_event_hash", "record", "seal_legacy_events",
    "seal_message", "seal_pending", "sealer_of", "session_keys", "verify_chain",
]
_STAGED_EVENTS = "audit_staged_events"
_APPENDED = "audit_appended_events"
_TO_SEAL = "audit_events_to_seal"
_EVENT_COLUMNS = tuple(column.key for column in AuditEvent.__table__.columns)


@dataclass(frozen=True)
class Origin:
    """Where an action came from: passed in by the HTTP layer or the CLI."""

    ip: str | None = None
    request_id: str | None = None


def _printable(value: str | None, limit: int) -> str | None:
    """Escape control characters (NUL breaks PostgreSQL, newlines forge log lines) and cap length."""
    if value is None:
        return None
    if value.isprintable():  # the usual case: nothing to escape, no walk over each character
        return value[:limit]
    cleaned = "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii")
                      for ch in value)
    return cleaned[:limit]


def record(session: Session, *, action: str, actor: str | None, target: str | None,
           origin: Origin, now: datetime, details: dict | None = None) -> AuditEvent:
    """Append an event inside the caller's transaction.

    The event is written when the transaction commits (see `_append_staged`) and sealed into the
    chain (its `seq`, `prev_hash` and `hash`) by the sequencer right after; a rollback drops it
    with everything else.
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


@orm_event.listens_for(ServiceSession, "before_commit")
def _append_staged(session: Session) -> None:
    """Append the transaction's events, unsealed, in the order recorded, just before it commits.

    No lock and no shared row: each event gets its append key (time, randomness, position in
    this transaction, so the sequencer keeps the recorded order) and its entry MAC under the
    signing key. The sequencer (sequencer.py) chains them once committed.
    """
    staged = session.info.pop(_STAGED_EVENTS, None)
    if not staged:
        return
    key = session_keys(session).signing
    stamp = f"{time.time_ns():020d}{secrets.token_hex(8)}"
    for position, staged_event in enumerate(staged):
        staged_event.append_key = f"{stamp}{position:04d}"
        staged_event.key_id = key.id
        staged_event.entry_mac = entry_mac(staged_event, key)
    # One INSERT of the rows through the transaction's connection, not the ORM's unit of work:
    # nothing reads the events back in this session, and flushing them as entities (and
    # keeping them in its identity map) cost a good part of a write's CPU.
    session.connection().execute(insert(AuditEvent.__table__), [
        {name: getattr(staged_event, name) for name in _EVENT_COLUMNS}
        for staged_event in staged])
    session.info[_APPENDED] = True


@orm_event.listens_for(ServiceSession, "after_commit")
def _note_committed(session: Session) -> None:
    # The events are committed: seal them once the transaction has given its connection back.
    if session.info.pop(_APPENDED, False):
        session.info[_TO_SEAL] = True


@orm_event.listens_for(ServiceSession, "after_transaction_end")
def _forget_uncommitted_events(session: Session, transaction) -> None:
    """Wake this process's sequencer, or seal now when there is none; forget rolled-back events.

    It runs after the connection went back to the pool, so an inline seal never needs a second
    connection while the first is held (threads committing together would drain the pool).
    """
    if transaction.parent is not None:
        return
    session.info.pop(_STAGED_EVENTS, None)  # a committed transaction took its events already
    session.info.pop(_APPENDED, None)
    if session.info.pop(_TO_SEAL, False):
        sealer_of(session).appended()
