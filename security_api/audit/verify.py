"""Checking the audit chain (verify_chain) and sealing the events from before it was keyed.

Read-only walks over every event, in batches, recomputing each hash with the configured keys;
the one write is the legacy seal, taken under the head's lock once the walk found nothing wrong.
"""
from __future__ import annotations

import hmac
from dataclasses import dataclass

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from security_api.audit.chain import (
    GENESIS_HASH,
    HEAD_ID,
    ChainKeys,
    checkpoint_message,
    computed_hash,
    entry_mac_problem,
    seal_message,
    session_keys,
    signed_by,
)
from security_api.audit.sequencer import has_pending, seal_for_reader
from security_api.models import AuditChainHead, AuditEvent

REKEY_HINT = "run `flask --app flask_api audit rekey`"


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


def _event_problem(event: AuditEvent, keys: ChainKeys, head: AuditChainHead) -> str | None:
    """Return what is wrong with one event read in its place in the chain, if anything."""
    sealed_seq = head.sealed_seq or 0
    if event.key_id is None and event.seq > sealed_seq:
        # Plain SHA-256 is anyone's to compute: it is trusted only up to the signed seal.
        return ("unkeyed event after the sealed legacy events" if head.sealed_seq is not None
                else f"legacy unkeyed events are not sealed yet ({REKEY_HINT})")
    computed = computed_hash(event, keys)
    if computed is None:
        return "event hashed with a key that is not configured (AUDIT_CHAIN_KEY)"
    if not hmac.compare_digest(computed, event.hash):
        return "event content changed"
    if event.entry_mac is not None or event.append_key is not None:
        # Appended, then sealed by the sequencer: its content must be what was appended.
        entry_problem = entry_mac_problem(event, keys)
        if entry_problem is not None:
            return entry_problem
    if event.seq == head.sealed_seq and event.hash != head.sealed_hash:
        # Legacy rows re-hashed consistently: only the seal, signed with the key, knows.
        return "legacy events changed before the seal"
    return None


def verify_chain(session: Session, *, keys: ChainKeys | None = None,
                 batch: int = 1000) -> ChainReport:
    """Walk every event in order and report the first one changed, removed or inserted.

    Every hash is recomputed with the keys (plain SHA-256 only for legacy rows up to the signed
    seal), and the end of the chain must equal the head's checkpoint signed with a key. Every
    committed event is sealed first; an event changed between append and seal is reported at
    its seq (its entry MAC).
    """
    keys = keys or session_keys(session)
    seal_for_reader(session)
    head = session.get(AuditChainHead, HEAD_ID)
    if head is None:
        return ChainReport(False, 0, 1, "the chain head is missing")
    if head.sealed_seq is not None and not signed_by(
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
    if not signed_by(keys, head.key_id, head.signature,
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
            computed = computed_hash(event, keys)
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
        return signed_by(keys, head.key_id, head.signature, checkpoint_message(seq, last_hash))

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
    seal_for_reader(session)
    if has_pending(session.connection()):
        return _refused("audit events are waiting to be sealed and could not be (see the log)",
                        None)
    head = session.get(AuditChainHead, HEAD_ID)
    if head is None:
        return _refused("the chain head is missing", 1)
    if head.sealed_seq is not None:
        return _already_sealed(session, head)
    walked = _walk_for_seal(session, keys, head.seq, batch)
    refusal = _unsealable(keys, head, walked)
    if refusal is not None:
        return refusal
    if not walked.unkeyed:
        return SealReport(True, None, "Nothing to seal: every event is keyed.")
    session.rollback()  # the walk's reads: writers were not held up while it ran
    report = _write_seal(session, keys, walked)
    if report.wrote:
        session.commit()
    else:
        session.rollback()
    return report


def _already_sealed(session: Session, head: AuditChainHead) -> SealReport:
    """Report a seal made before, refusing when an unkeyed event follows it."""
    stray = session.scalar(select(func.min(AuditEvent.seq)).where(
        AuditEvent.key_id.is_(None), AuditEvent.seq > head.sealed_seq))
    if stray is not None:
        return _refused(f"unkeyed event {stray} after the seal at {head.sealed_seq} "
                        "(an instance of the old version, or forged)", stray)
    return SealReport(True, head.sealed_seq,
                      f"Legacy events already sealed up to event {head.sealed_seq}.")


def _unsealable(keys: ChainKeys, head: AuditChainHead, walked: _Walked) -> SealReport | None:
    """Refuse a chain the walk found broken, or whose head does not end it under the key."""
    if walked.broken is not None:
        return _refused(f"audit chain broken at event {walked.broken.first_broken_seq}: "
                        f"{walked.broken.problem}", walked.broken.first_broken_seq)
    if head.seq != walked.seq or head.last_hash != walked.last_hash:
        return _refused("the head does not end the events (events after the last one removed?)",
                        walked.seq + 1)
    if not _head_explained(keys, head, walked):
        return _refused("the head's checkpoint is not signed by the key for these events "
                        "(events after the last one removed?)", walked.seq + 1)
    return None


def _write_seal(session: Session, keys: ChainKeys, walked: _Walked) -> SealReport:
    """Seal exactly what was walked, unless events were written meanwhile (the caller commits)."""
    key = keys.signing
    # Lock the head as writers do, only for this short write.
    seq, last_hash, sealed = session.execute(
        update(AuditChainHead).where(AuditChainHead.id == HEAD_ID)
        .values(seq=AuditChainHead.seq)
        .returning(AuditChainHead.seq, AuditChainHead.last_hash, AuditChainHead.sealed_seq)).one()
    if (seq, last_hash, sealed) != (walked.seq, walked.last_hash, None):
        return _refused("events were written while verifying: run it again", None)
    session.execute(update(AuditChainHead).where(AuditChainHead.id == HEAD_ID).values(
        sealed_seq=seq, sealed_hash=last_hash, seal_key_id=key.id,
        seal_signature=key.sign(seal_message(seq, last_hash)),
        key_id=key.id, signature=key.sign(checkpoint_message(seq, last_hash))))
    return SealReport(True, seq, f"Sealed {walked.unkeyed} legacy events (the chain up to event "
                                 f"{seq}) under key {key.id}.", wrote=True)
