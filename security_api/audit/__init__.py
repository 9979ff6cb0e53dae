"""Audit events, appended to the keyed hash chain in the caller's transaction.

This package is what the rest of the service imports for `record()` and `Origin`. The chain
itself (keys, hashes, checkpoints) is in chain.py and its verification in
verify.py; their public names are re-exported here so `audit.verify_chain` and the like
keep working.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import event as orm_event
from sqlalchemy import update
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
    event_hash,
    legacy_event_hash,
    seal_message,
    session_keys,
)
from security_api.audit.verify import REKEY_HINT, ChainReport, SealReport, seal_legacy_events, verify_chain
from security_api.db import ServiceSession
from security_api.models import AuditChainHead, AuditEvent, new_id

__all__ = [
    "GENESIS_HASH", "HEAD_ID", "KEYS_INFO", "REKEY_HINT", "ChainKey", "ChainKeys", "ChainReport",
    "Origin", "SealReport", "chain_key", "checkpoint_message", "ensure_chain_head", "event_hash",
    "legacy_event_hash", "record", "seal_legacy_events", "seal_message", "session_keys",
    "verify_chain",
]
_STAGED_EVENTS = "audit_staged_events"


@dataclass(frozen=True)
class Origin:
    """Where an action came from: passed in by the HTTP layer or the CLI."""

    ip: str | None = None
    request_id: str | None = None


def _printable(value: str | None, limit: int) -> str | None:
    """Escape control characters (NUL breaks PostgreSQL, newlines forge log lines) and cap length."""
    if value is None:
        return None
    cleaned = "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii")
                      for ch in value)
    return cleaned[:limit]


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


@orm_event.listens_for(ServiceSession, "before_commit")
def _append_staged(session: Session) -> None:
    """Chain the transaction's events, in the order recorded, just before it commits.

    Taking the head row's write lock serialises writers, so the chain never forks. It is taken
    here, as late as possible, and the head is read and written once per transaction: the lock
    is held only for these three statements and the commit, not for the whole transaction.
    """
    staged = session.info.pop(_STAGED_EVENTS, None)
    if not staged:
        return
    key = session_keys(session).signing
    last_seq, prev_hash = session.execute(
        update(AuditChainHead).where(AuditChainHead.id == HEAD_ID)
        .values(seq=AuditChainHead.seq + len(staged))
        .returning(AuditChainHead.seq, AuditChainHead.last_hash)
    ).one()
    for seq, staged_event in enumerate(staged, start=last_seq - len(staged) + 1):
        staged_event.seq, staged_event.prev_hash, staged_event.key_id = seq, prev_hash, key.id
        staged_event.hash = prev_hash = event_hash(staged_event, key)
    session.add_all(staged)
    # The head is the signed checkpoint: (last seq, last hash) under the key, in the same write.
    session.execute(update(AuditChainHead).where(AuditChainHead.id == HEAD_ID).values(
        last_hash=prev_hash, key_id=key.id,
        signature=key.sign(checkpoint_message(last_seq, prev_hash))))


@orm_event.listens_for(ServiceSession, "after_transaction_end")
def _forget_uncommitted_events(session: Session, transaction) -> None:
    # A committed transaction took its events in before_commit; what is left was rolled back.
    if transaction.parent is None:
        session.info.pop(_STAGED_EVENTS, None)
