"""Server-side browser sessions for the portal: in the database, or in Redis when configured.

The browser's cookie holds only a random id; the store keys the session by the id's SHA-256,
so a copy of the store does not hand out live cookies. A session dies after IDLE_SECONDS
without a request and ABSOLUTE_SECONDS after it began, whichever comes first. Who is signed in
is kept in the data as the user id and the sign-in's refresh family: the portal asks the same
principal query as the API on every page, so every revocation the API honours (sign-out,
password change, role change, deactivation, an administrator's reset) ends the session at once.
"""
from __future__ import annotations

import hashlib
import json
import secrets
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import redis
from sqlalchemy import delete
from sqlalchemy.orm import sessionmaker

from security_api.accounts.stores import StoreUnavailable
from security_api.clock import as_utc, utcnow
from security_api.models import PortalSession

IDLE_SECONDS = 30 * 60
ABSOLUTE_SECONDS = 8 * 60 * 60
MAX_COOKIE_LENGTH = 128


def new_session_id() -> str:
    """Return a fresh, unguessable cookie value (256 bits)."""
    return secrets.token_urlsafe(32)


def id_hash(session_id: str) -> str:
    """Return the key a session is stored under."""
    return hashlib.sha256(session_id.encode("ascii", "replace")).hexdigest()


def is_plausible_id(session_id: str | None) -> bool:
    """Tell whether a cookie value could be one of ours (so junk never reaches the store)."""
    return bool(session_id) and len(session_id) <= MAX_COOKIE_LENGTH and session_id.isascii() \
        and all(ch.isalnum() or ch in "-_" for ch in session_id)


@dataclass
class StoredSession:
    """A session's data and its two clocks."""

    data: dict = field(default_factory=dict)
    created_at: datetime = field(default_factory=utcnow)
    last_seen_at: datetime = field(default_factory=utcnow)

    def expires_at(self) -> datetime:
        """Return when the session dies if nothing happens before."""
        return min(self.last_seen_at + timedelta(seconds=IDLE_SECONDS),
                   self.created_at + timedelta(seconds=ABSOLUTE_SECONDS))

    def alive(self, now: datetime) -> bool:
        """Tell whether neither the idle nor the absolute limit has passed."""
        return now < self.expires_at()


class PortalSessionStore(ABC):
    """Load, save and end sessions by cookie value."""

    def load(self, session_id: str, *, now: datetime) -> StoredSession | None:
        """Return the live session behind a cookie, or None (unknown, junk or expired)."""
        if not is_plausible_id(session_id):
            return None
        stored = self._load(id_hash(session_id))
        if stored is None or not stored.alive(now):
            return None
        return stored

    @abstractmethod
    def _load(self, key: str) -> StoredSession | None:
        """Return the stored session under a key."""

    @abstractmethod
    def save(self, session_id: str, stored: StoredSession) -> None:
        """Write a session (insert or replace)."""

    @abstractmethod
    def end(self, session_id: str) -> None:
        """Forget a session at once."""

    @abstractmethod
    def purge(self, *, now: datetime) -> int:
        """Remove dead sessions; return how many."""


class DatabasePortalSessions(PortalSessionStore):
    """Sessions as rows of portal_sessions; each call is its own short transaction."""

    def __init__(self, session_factory: sessionmaker):
        self._session_factory = session_factory

    def _load(self, key):
        with self._session_factory() as session:
            row = session.get(PortalSession, key)
            if row is None:
                return None
            return StoredSession(dict(row.data), as_utc(row.created_at),
                                 as_utc(row.last_seen_at))

    def save(self, session_id, stored):
        with self._session_factory() as session:
            row = PortalSession(id_hash=id_hash(session_id), data=dict(stored.data),
                                created_at=stored.created_at, last_seen_at=stored.last_seen_at,
                                expires_at=stored.expires_at())
            session.merge(row)
            session.commit()

    def end(self, session_id):
        with self._session_factory() as session:
            session.execute(delete(PortalSession).where(PortalSession.id_hash == id_hash(session_id)))
            session.commit()

    def purge(self, *, now):
        with self._session_factory() as session:
            removed = session.execute(delete(PortalSession)
                                      .where(PortalSession.expires_at <= now)).rowcount
            session.commit()
            return removed


class RedisPortalSessions(PortalSessionStore):
    """Sessions as Redis keys that expire with the session; an outage fails closed (503)."""

    def __init__(self, client: redis.Redis, *, prefix: str):
        self._redis = client
        self._prefix = prefix

    @classmethod
    def from_url(cls, url: str, *, prefix: str) -> RedisPortalSessions:
        """Connect with the same short timeouts as the state store."""
        return cls(redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2,
                                        health_check_interval=30), prefix=prefix)

    def _name(self, key: str) -> str:
        return f"{self._prefix}portal-session:{key}"

    def _call(self, func, *args, **kwargs):
        try:
            return func(*args, **kwargs)
        except redis.RedisError as exc:
            raise StoreUnavailable() from exc

    def _load(self, key):
        raw = self._call(self._redis.get, self._name(key))
        if raw is None:
            return None
        record = json.loads(raw)
        return StoredSession(record["data"], datetime.fromisoformat(record["created_at"]),
                             datetime.fromisoformat(record["last_seen_at"]))

    def save(self, session_id, stored):
        record = {"data": stored.data, "created_at": stored.created_at.isoformat(),
                  "last_seen_at": stored.last_seen_at.isoformat()}
        ttl = max(1, int((stored.expires_at() - utcnow()).total_seconds()) + 1)
        self._call(self._redis.set, self._name(id_hash(session_id)), json.dumps(record), ex=ttl)

    def end(self, session_id):
        self._call(self._redis.delete, self._name(id_hash(session_id)))

    def purge(self, *, now):
        return 0  # Redis expires keys by itself.


def make_portal_sessions(*, session_factory: sessionmaker, redis_url: str | None,
                         redis_prefix: str) -> PortalSessionStore:
    """Keep sessions where the other shared state lives: Redis when configured, else the database."""
    if redis_url:
        return RedisPortalSessions.from_url(redis_url, prefix=redis_prefix)
    return DatabasePortalSessions(session_factory)
