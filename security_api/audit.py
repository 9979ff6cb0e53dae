"""Hash-chained audit events, written in the caller's transaction.

The chain is keyed: each event's hash is an HMAC-SHA256 over the previous hash and the event,
with a key (AUDIT_CHAIN_KEY) that never reaches the database, and the head row carries a
checkpoint signed with that key. Whoever can write the database but lacks the key can neither
re-hash a changed history nor move the head back over events removed from the end.
"""
from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import event as orm_event
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from .db import ServiceSession
from .models import AuditChainHead, AuditEvent, new_id

GENESIS_HASH = "0" * 64
HEAD_ID = 1
_STAGED_EVENTS = "audit_staged_events"
# The session factory carries the chain keys in `Session.info` under this name (see services).
KEYS_INFO = "audit_chain_keys"
REKEY_HINT = "run `flask --app flask_api audit rekey`"


@dataclass(frozen=True)
class ChainKey:
    """One AUDIT_CHAIN_KEY: its public id (recorded on rows) and its secret (never stored)."""

    id: str
    secret: bytes = field(repr=False)

    def sign(self, message: str) -> str:
        """Return the hex HMAC-SHA256 of `message` under this key."""
        return hmac.new(self.secret, message.encode("ascii"), hashlib.sha256).hexdigest()


def chain_key(secret: str) -> ChainKey:
    """Return the key for a secret; its id is an HMAC of a constant, which reveals nothing."""
    raw = secret.encode("utf-8")
    key_id = hmac.new(raw, b"security-api audit chain key id", hashlib.sha256).hexdigest()[:16]
    return ChainKey(id=key_id, secret=raw)


@dataclass(frozen=True)
class ChainKeys:
    """The configured keys: the first signs new events and checkpoints, all of them verify."""

    keys: tuple[ChainKey, ...]

    @classmethod
    def from_secrets(cls, secrets: Sequence[str]) -> ChainKeys:
        """Build from AUDIT_CHAIN_KEY's comma-separated values, newest first."""
        if not secrets:
            raise ValueError("the audit chain needs at least one key")
        return cls(tuple(chain_key(secret) for secret in secrets))

    @property
    def signing(self) -> ChainKey:
        """Return the key that signs from now on."""
        return self.keys[0]

    def get(self, key_id: str | None) -> ChainKey | None:
        """Return the key with this id, or None when it is not configured."""
        return next((key for key in self.keys if key.id == key_id), None)


def session_keys(session: Session) -> ChainKeys:
    """Return the chain keys the session's factory was given."""
    keys = session.info.get(KEYS_INFO)
    if keys is None:
        raise RuntimeError("this session has no audit chain keys (make it with the service's "
                           "session factory)")
    return keys


@dataclass(frozen=True)
class Origin:
    """Where an action came from: passed in by the HTTP layer or the CLI."""

    ip: str | None = None
    request_id: str | None = None


def _canonical_time(value: datetime) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _chained_text(event: AuditEvent) -> str:
    body = json.dumps({
        "seq": event.seq, "id": event.id, "at": _canonical_time(event.at),
        "actor": event.actor, "action": event.action, "target": event.target,
        "ip": event.ip, "request_id": event.request_id, "details": event.details,
    }, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return f"{event.prev_hash}\n{body}"


def event_hash(event: AuditEvent, key: ChainKey) -> str:
    """Return the keyed hash (HMAC-SHA256) of an event, chained to the hash before it."""
    return key.sign(_chained_text(event))


def legacy_event_hash(event: AuditEvent) -> str:
    """Return the plain SHA-256 the chain used before it was keyed (rows up to the seal)."""
    return hashlib.sha256(_chained_text(event).encode("ascii")).hexdigest()


def checkpoint_message(seq: int, last_hash: str) -> str:
    """Return the text the head's checkpoint signature covers."""
    # Distinct prefixes: an event hash can never pass for a checkpoint or a seal, nor back.
    return f"audit-checkpoint\n{seq}\n{last_hash}"


def seal_message(seq: int, last_hash: str) -> str:
    """Return the text the legacy seal's signature covers."""
    return f"audit-legacy-seal\n{seq}\n{last_hash}"


def _signed_by(keys: ChainKeys, key_id: str | None, signature: str | None, message: str) -> bool:
    key = keys.get(key_id)
    return key is not None and signature is not None and hmac.compare_digest(
        key.sign(message), signature)


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


@dataclass(frozen=True)
class ChainReport:
    """The result of walking the chain: where it first breaks, if anywhere."""

    ok: bool
    events: int
    first_broken_seq: int | None = None
    problem: str | None = None


def _walk(session: Session, batch: int):
    """Yield every event oldest first, `batch` rows per query."""
    last_seen = 0
    while True:
        rows = session.execute(
            select(AuditEvent).where(AuditEvent.seq > last_seen)
            .order_by(AuditEvent.seq).limit(batch)).scalars().all()
        if not rows:
            return
        yield from rows
        last_seen = rows[-1].seq


def _computed_hash(event: AuditEvent, keys: ChainKeys) -> str | None:
    """Return what the event's hash must be, or None when no key can tell (unknown key id)."""
    if event.key_id is None:
        return legacy_event_hash(event)
    key = keys.get(event.key_id)
    return None if key is None else event_hash(event, key)


def _event_problem(event: AuditEvent, keys: ChainKeys, head: AuditChainHead) -> str | None:
    """Return what is wrong with one event read in its place in the chain, if anything."""
    sealed_seq = head.sealed_seq or 0
    if event.key_id is None and event.seq > sealed_seq:
        # Plain SHA-256 is anyone's to compute: it is trusted only up to the signed seal.
        return ("unkeyed event after the sealed legacy events" if head.sealed_seq is not None
                else f"legacy unkeyed events are not sealed yet ({REKEY_HINT})")
    computed = _computed_hash(event, keys)
    if computed is None:
        return "event hashed with a key that is not configured (AUDIT_CHAIN_KEY)"
    if not hmac.compare_digest(computed, event.hash):
        return "event content changed"
    if event.seq == head.sealed_seq and event.hash != head.sealed_hash:
        # Legacy rows re-hashed consistently: only the seal, signed with the key, knows.
        return "legacy events changed before the seal"
    return None


def verify_chain(session: Session, *, keys: ChainKeys | None = None,
                 batch: int = 1000) -> ChainReport:
    """Walk every event in order and report the first one changed, removed or inserted.

    Every hash is recomputed with the keys (plain SHA-256 only for legacy rows up to the signed
    seal), and the end of the chain must equal the head's checkpoint signed with a key.
    """
    keys = keys or session_keys(session)
    head = session.get(AuditChainHead, HEAD_ID)
    if head is None:
        return ChainReport(False, 0, 1, "the chain head is missing")
    if head.sealed_seq is not None and not _signed_by(
            keys, head.seal_key_id, head.seal_signature,
            seal_message(head.sealed_seq, head.sealed_hash or "")):
        return ChainReport(False, 0, 1, "the legacy seal is not signed by the chain key")
    expected_prev, expected_seq, count = GENESIS_HASH, 1, 0
    for event in _walk(session, batch):
        if event.seq > head.seq:
            # The head is written with every real event: a row past it was slipped in.
            return ChainReport(False, count, event.seq, "event inserted after the last one")
        if event.seq != expected_seq:
            return ChainReport(False, count, expected_seq, "missing event")
        if event.prev_hash != expected_prev:
            return ChainReport(False, count, event.seq, "link to previous event broken")
        problem = _event_problem(event, keys, head)
        if problem is not None:
            return ChainReport(False, count, event.seq, problem)
        expected_prev, expected_seq, count = event.hash, event.seq + 1, count + 1
    if head.seq != count or head.last_hash != expected_prev:
        return ChainReport(False, count, expected_seq, "events after the last one were removed")
    if not _signed_by(keys, head.key_id, head.signature,
                      checkpoint_message(head.seq, head.last_hash)):
        # Rows removed from the end and the head moved back to the new last row: the rows
        # left all verify, but only the key could have signed the earlier checkpoint.
        return ChainReport(False, count, expected_seq, "events after the last one were removed "
                                                       "(the head's checkpoint is not signed "
                                                       "by the chain key)")
    return ChainReport(True, count)


@dataclass(frozen=True)
class SealReport:
    """What `seal_legacy_events` found and did."""

    ok: bool
    sealed_seq: int | None
    message: str
    first_broken_seq: int | None = None
    wrote: bool = False


@dataclass
class _Walked:
    """The chain as rekey found it: where it ends, its last keyed event, any unkeyed ones."""

    seq: int = 0
    last_hash: str = GENESIS_HASH
    last_keyed: tuple[int, str] | None = None
    unkeyed: int = 0
    broken: ChainReport | None = None


def _walk_for_seal(session: Session, keys: ChainKeys, head_seq: int, batch: int) -> _Walked:
    """Verify every event by its own kind (keyed: HMAC; unkeyed: plain SHA-256), in order."""
    walked = _Walked()
    for event in _walk(session, batch):
        expected = walked.seq + 1
        problem, at = None, event.seq
        if event.seq > head_seq:
            problem = "event inserted after the last one"
        elif event.seq != expected:
            problem, at = "missing event", expected
        elif event.prev_hash != walked.last_hash:
            problem = "link to previous event broken"
        else:
            computed = _computed_hash(event, keys)
            if computed is None:
                problem = "event hashed with a key that is not configured (AUDIT_CHAIN_KEY)"
            elif not hmac.compare_digest(computed, event.hash):
                problem = "event content changed"
        if problem is not None:
            walked.broken = ChainReport(False, walked.seq, at, problem)
            return walked
        walked.seq, walked.last_hash = event.seq, event.hash
        if event.key_id is None:
            walked.unkeyed += 1
        else:
            walked.last_keyed = (event.seq, event.hash)
    return walked


def _head_explained(keys: ChainKeys, head: AuditChainHead, walked: _Walked) -> bool:
    """Tell whether the head's checkpoint is one the key made for these very events.

    Either it signs their end; or nothing keyed was ever written (a chain from before the key,
    whose head was never signed); or it signs the last keyed event and only unkeyed events,
    written by instances of the old version during the upgrade, follow. Anything else is a head
    moved without the key (events removed from the end): sealing must not bless it.
    """
    def signs(seq: int, last_hash: str) -> bool:
        return _signed_by(keys, head.key_id, head.signature, checkpoint_message(seq, last_hash))

    if signs(walked.seq, walked.last_hash):
        return True
    if walked.last_keyed is None:
        return head.signature is None
    return signs(*walked.last_keyed)


def _refused(message: str, first_broken_seq: int | None) -> SealReport:
    return SealReport(False, None, f"{message}; not sealed.", first_broken_seq)


def seal_legacy_events(session: Session, *, keys: ChainKeys | None = None,
                       batch: int = 1000) -> SealReport:
    """Verify the events written before the chain was keyed, then seal them under the key.

    Run once, after every instance runs the keyed version (during a rolling upgrade old
    instances still append unkeyed events). Every event up to the head is verified by its own
    kind and the head's checkpoint must be one the key made for them (`_head_explained`);
    anything broken is refused and nothing is written. The seal is the head's last seq and hash
    signed with the key: unkeyed events stay verifiable by their plain hashes up to it, and
    everything after must be keyed. Sealing happens once; running it again changes nothing.
    """
    keys = keys or session_keys(session)
    head = session.get(AuditChainHead, HEAD_ID)
    if head is None:
        return _refused("the chain head is missing", 1)
    if head.sealed_seq is not None:
        stray = session.scalar(select(func.min(AuditEvent.seq)).where(
            AuditEvent.key_id.is_(None), AuditEvent.seq > head.sealed_seq))
        if stray is not None:
            return _refused(f"unkeyed event {stray} after the seal at {head.sealed_seq} "
                            "(an instance of the old version, or forged)", stray)
        return SealReport(True, head.sealed_seq,
                          f"Legacy events already sealed up to event {head.sealed_seq}.")
    walked = _walk_for_seal(session, keys, head.seq, batch)
    if walked.broken is not None:
        return _refused(f"audit chain broken at event {walked.broken.first_broken_seq}: "
                        f"{walked.broken.problem}", walked.broken.first_broken_seq)
    if head.seq != walked.seq or head.last_hash != walked.last_hash:
        return _refused("the head does not end the events (events after the last one removed?)",
                        walked.seq + 1)
    if not _head_explained(keys, head, walked):
        return _refused("the head's checkpoint is not signed by the key for these events "
                        "(events after the last one removed?)", walked.seq + 1)
    if not walked.unkeyed:
        return SealReport(True, None, "Nothing to seal: every event is keyed.")
    session.rollback()  # the walk's reads: writers were not held up while it ran
    key = keys.signing
    # Lock the head as writers do, only for this short write, and seal exactly what was walked.
    seq, last_hash, sealed = session.execute(
        update(AuditChainHead).where(AuditChainHead.id == HEAD_ID)
        .values(seq=AuditChainHead.seq)
        .returning(AuditChainHead.seq, AuditChainHead.last_hash, AuditChainHead.sealed_seq)).one()
    if (seq, last_hash, sealed) != (walked.seq, walked.last_hash, None):
        session.rollback()
        return _refused("events were written while verifying: run it again", None)
    session.execute(update(AuditChainHead).where(AuditChainHead.id == HEAD_ID).values(
        sealed_seq=seq, sealed_hash=last_hash, seal_key_id=key.id,
        seal_signature=key.sign(seal_message(seq, last_hash)),
        key_id=key.id, signature=key.sign(checkpoint_message(seq, last_hash))))
    session.commit()
    return SealReport(True, seq, f"Sealed {walked.unkeyed} legacy events (the chain up to event "
                                 f"{seq}) under key {key.id}.", wrote=True)
