"""The keyed hash chain of audit events: keys, event hashes, signed checkpoints and seals.

Each event's hash is an HMAC-SHA256 over the previous hash and the event, with a key
(AUDIT_CHAIN_KEY) that never reaches the database, and the head row carries a checkpoint signed
with that key. Whoever can write the database but lacks the key can neither re-hash a changed
history nor move the head back over events removed from the end. Appending lives in the package (__init__.py),
checking in verify.py; both build on the definitions here.
"""
from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy.orm import Session

from security_api.models import AuditChainHead, AuditEvent

GENESIS_HASH = "0" * 64
HEAD_ID = 1
# The session factory carries the chain keys in `Session.info` under this name (see services).
KEYS_INFO = "audit_chain_keys"


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


def entry_text(event: AuditEvent) -> str:
    """Return the text an event's entry MAC covers: its own content, not its place in the chain.

    The prefix keeps it apart from event hashes, checkpoints and seals: none can pass for another.
    """
    body = json.dumps({
        "id": event.id, "at": _canonical_time(event.at), "actor": event.actor,
        "action": event.action, "target": event.target, "ip": event.ip,
        "request_id": event.request_id, "details": event.details,
        "append_key": event.append_key,
    }, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return f"audit-entry\n{body}"


def entry_mac(event: AuditEvent, key: ChainKey) -> str:
    """Return the keyed MAC that protects an appended event until the sequencer seals it."""
    return key.sign(entry_text(event))


def entry_mac_problem(event: AuditEvent, keys: ChainKeys) -> str | None:
    """Return why an event's entry MAC does not check out, or None when it does."""
    key = keys.get(event.key_id)
    if event.entry_mac is None or key is None:
        return "event appended without a valid entry MAC"
    if not hmac.compare_digest(entry_mac(event, key), event.entry_mac):
        return "event changed before it was sealed (its entry MAC does not match)"
    return None


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


def signed_by(keys: ChainKeys, key_id: str | None, signature: str | None, message: str) -> bool:
    key = keys.get(key_id)
    return key is not None and signature is not None and hmac.compare_digest(
        key.sign(message), signature)


def computed_hash(event: AuditEvent, keys: ChainKeys) -> str | None:
    """Return what the event's hash must be, or None when no key can tell (unknown key id)."""
    if event.key_id is None:
        return legacy_event_hash(event)
    key = keys.get(event.key_id)
    return None if key is None else event_hash(event, key)


def ensure_chain_head(session: Session) -> None:
    """Create the chain's head row if the database has none yet."""
    if session.get(AuditChainHead, HEAD_ID) is None:
        session.add(AuditChainHead(id=HEAD_ID, seq=0, last_hash=GENESIS_HASH))
        session.flush()
