"""The token check's principal row, cached per process and kept honest by a version in Redis.

Why: every authenticated request needs the principal query's row (who the user is, whether
the token's session lives) and every revocation must be honoured at once, on every worker
and instance. A database round trip per request pays for that; with Redis configured, one
GET of a per-user *auth version* pays for it instead, and the row comes from this process's
memory while the version it was read under is still the current one.

The protocol (Redis configured; `security-api:authv:{user id}` holds the user's version).
The key ignores REDIS_PREFIX on purpose: two instances of one deployment whose prefixes
differ (a misconfiguration that only splits lockout counters) must still see each other's
revocations. User ids are random UUIDs, so deployments sharing a Redis do not meet; if they
did (a copied database), each would only send the other's readers to the database.

Reader (`PrincipalSource.row`), one GET, then by the value found:
- equal to the cached entry's version: the cached row (the caller applies the same revoked
  checks to it as to a fresh one). No database round trip.
- another version: read the database, cache under that version.
- missing (never set, expired, Redis restarted empty): read the database, then
  `SET NX` a fresh random version; cache only if that SET won (if it lost, someone changed
  the key meanwhile and the row may predate their change).
- `pending:...` (a change is in flight or its last step failed): read the database, cache
  nothing.
- Redis error: read the database, cache nothing (and skip Redis for a moment, so an outage
  costs one failed call per worker, not one per request). Database down too: the caller's
  503, as without the cache.

Writer: every change that ends or alters a principal calls `changed(session, user_id)`
(revoke_family, invalidate_all_tokens) or is found by the session hooks below (a dirty
User column the principal query reads, a changed or deleted RefreshFamily, a deleted User).
- On registration, before the commit: `SET key pending:<random> EX 3600`. Redis unreachable
  raises StoreUnavailable, so the transaction rolls back and the caller answers 503 with
  nothing changed: with Redis configured, ending a session reaches Redis or does not happen.
- When the transaction ends (after the commit, inside `Session.commit()`, so before the
  revoking call answers; after a rollback too): `SET key <fresh random> EX 1 day`. If that
  fails the pending marker stays, and readers go to the database for that user until it
  expires: slower, never wrong. It is logged.

Why no interleaving serves a revoked principal: an entry is cached under the value V its
reader GOT *before* reading the database, and used only while the key still holds V. A
writer changes the key to a value never seen before (random) before its commit, so if any
registered change committed after the reader's database read, the key left V before that
commit: either before the reader's GET (then the GET saw `pending`, or a newer version and the
read came after the commit) or after it (then the key is no longer V and the entry is never
used again). A missing key is claimed with SET NX, so a writer that set the key between the
reader's GET and its SET makes the SET fail and nothing is cached. Random values never come
back, so neither an expiry nor an emptied Redis can revive an old entry. The per-user version
covers every session of the user (role change, deactivation, password change) and each
session's own end (logout), at the price of refreshing the user's other sessions' entries.

The safety net: an UPDATE or DELETE of users or refresh_families sent through a service
session that registered no user raises UnregisteredPrincipalChange (a programming error), so
a future bulk statement cannot skip the protocol. An UPDATE that sets only columns the
principal query does not read (a user's last_totp_step, a family's created_at), or sets a
column to itself (the requester's row lock in access.conflicts), changes no principal and
passes. Raw SQL (text()) is not seen; don't revoke with it.

The one case left open is a double fault: Redis loses the pending marker while the change is
in flight (restarted empty, or a failover to a replica that missed it), a reader claims and
caches a version before the commit, and then the after-commit write fails too. That reader's
entry stays usable until its version expires (1 day) or the user's next change. Either
failure alone is covered above.

Without Redis there is no cache: every request reads the database, the source of truth.
"""
from __future__ import annotations

import logging
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

import redis
from sqlalchemy import event
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.orm import ORMExecuteState, Session

from security_api.accounts.stores import StoreUnavailable
from security_api.db import ReadOnlyQuery, ServiceSession
from security_api.models import RefreshFamily, User

KEY_NAMESPACE = "security-api:authv:"
AUTH_VERSIONS_INFO = "auth_versions"  # Session.info key: the AuthVersions, or None
_CHANGED = "principal_changes"  # Session.info key: user ids registered in this transaction
PENDING = "pending:"
VERSION_TTL_SECONDS = 24 * 3600
PENDING_TTL_SECONDS = 3600
SKIP_AFTER_ERROR_SECONDS = 2.0
CACHE_SIZE = 10_000
# The User columns PRINCIPAL_QUERY reads: a change of one must reach every reader at once.
PRINCIPAL_COLUMNS = frozenset({"id", "username", "email", "role", "subrole", "kind", "active",
                               "totp_confirmed", "created_at", "tokens_valid_after"})
# ... and the RefreshFamily columns it reads (joined on id and user_id).
FAMILY_COLUMNS = frozenset({"id", "user_id", "revoked_at"})
log = logging.getLogger(__name__)


class UnregisteredPrincipalChange(RuntimeError):
    """A statement changed users or sessions without telling the principal cache (a bug)."""


class AuthVersions:
    """The per-user auth versions in Redis."""

    def __init__(self, client: redis.Redis):
        self._redis = client

    @classmethod
    def from_url(cls, url: str) -> AuthVersions:
        """Connect with short timeouts: a reader falls back to the database quickly."""
        client = redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1,
                                      health_check_interval=30, decode_responses=True)
        return cls(client)

    @staticmethod
    def key(user_id: str) -> str:
        """Return the Redis key of a user's version (the same for every instance)."""
        return KEY_NAMESPACE + user_id

    def current(self, user_id: str) -> str | None:
        """Return the user's version (or pending marker), None if missing; RedisError if down."""
        return self._redis.get(self.key(user_id))

    def claim(self, user_id: str) -> str | None:
        """Set a fresh version where none is; return it, or None if someone was first."""
        version = secrets.token_hex(16)
        won = self._redis.set(self.key(user_id), version, nx=True, ex=VERSION_TTL_SECONDS)
        return version if won else None

    def mark_pending(self, user_ids) -> None:
        """Before the commit: readers must go to the database; StoreUnavailable if unreachable."""
        try:
            pipe = self._redis.pipeline(transaction=False)
            for user_id in user_ids:
                pipe.set(self.key(user_id), PENDING + secrets.token_hex(16), ex=PENDING_TTL_SECONDS)
            pipe.execute()
        except redis.RedisError as exc:
            raise StoreUnavailable() from exc

    def publish(self, user_ids) -> None:
        """After the transaction: a fresh version each; a failure leaves the pending marker."""
        try:
            pipe = self._redis.pipeline(transaction=False)
            for user_id in user_ids:
                pipe.set(self.key(user_id), secrets.token_hex(16), ex=VERSION_TTL_SECONDS)
            pipe.execute()
        except redis.RedisError:
            log.warning("auth versions of %d user(s) not published; their requests read the "
                        "database until the pending marker expires", len(user_ids), exc_info=True)


@dataclass(frozen=True)
class _Entry:
    version: str
    row: dict


class PrincipalCache:
    """A bounded, thread-safe LRU of principal rows by (user id, session id)."""

    def __init__(self, size: int = CACHE_SIZE):
        self._size = size
        self._entries: OrderedDict[tuple[str, str], _Entry] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple[str, str]) -> _Entry | None:
        """Return the entry, marking it recently used."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
            return entry

    def put(self, key: tuple[str, str], entry: _Entry) -> None:
        """Store an entry, dropping the least recently used beyond the bound."""
        with self._lock:
            self._entries[key] = entry
            self._entries.move_to_end(key)
            while len(self._entries) > self._size:
                self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)


class PrincipalSource:
    """Answer the principal query: from the cache while Redis says it is current, else the database."""

    def __init__(self, reader: ReadOnlyQuery, versions: AuthVersions | None,
                 cache: PrincipalCache | None = None):
        self._reader = reader
        self._versions = versions
        self._cache = cache if cache is not None else PrincipalCache()
        self._skip_redis_until = 0.0

    def row(self, user_id: str, session_id: str) -> dict | None:
        """Return the principal query's row for the user and session (None: no such user)."""
        versions = self._versions
        if versions is None:
            return self._read(user_id, session_id)
        version = self._version(versions, user_id)
        key = (user_id, session_id)
        if version is not None and not version.startswith(PENDING) and version != "":
            entry = self._cache.get(key)
            if entry is not None and entry.version == version:
                return entry.row
        row = self._read(user_id, session_id)
        if row is None or row["family_id"] is None:
            return row
        if version is None:
            version = self._claim(versions, user_id)
        if version and not version.startswith(PENDING):
            self._cache.put(key, _Entry(version, row))
        return row

    def _read(self, user_id: str, session_id: str) -> dict | None:
        return self._reader.first({"sub": user_id, "sid": session_id})

    def _version(self, versions: AuthVersions, user_id: str) -> str | None:
        """The key's value; "" when Redis cannot say (read the database, cache nothing)."""
        if time.monotonic() < self._skip_redis_until:
            return ""
        try:
            return versions.current(user_id)
        except redis.RedisError:
            self._skip_redis_until = time.monotonic() + SKIP_AFTER_ERROR_SECONDS
            log.warning("auth versions unreadable; principals come from the database",
                        exc_info=True)
            return ""

    @staticmethod
    def _claim(versions: AuthVersions, user_id: str) -> str | None:
        try:
            return versions.claim(user_id)
        except redis.RedisError:
            return None


# ---- writers ---------------------------------------------------------------------------------
def changed(session: Session, user_id: str) -> None:
    """Register a change to the user's principal in this transaction (see the module doc).

    With Redis configured the user's key becomes a pending marker now (StoreUnavailable if
    Redis cannot be reached, so the change does not happen); a fresh version follows when
    the transaction ends. Without Redis it only satisfies the safety net.
    """
    registered = session.info.setdefault(_CHANGED, set())
    if user_id in registered:
        return
    versions = session.info.get(AUTH_VERSIONS_INFO)
    if versions is not None:
        versions.mark_pending([user_id])
    registered.add(user_id)


@event.listens_for(ServiceSession, "before_flush")
def _register_flushed_changes(session: Session, _context, _instances) -> None:
    """Find ORM changes the principal query would see: User columns, families, deletions."""
    for obj in list(session.dirty):
        if isinstance(obj, User) and _principal_columns_changed(obj):
            changed(session, obj.id)
        elif isinstance(obj, RefreshFamily) and session.is_modified(obj):
            changed(session, obj.user_id)
    for obj in list(session.deleted):
        if isinstance(obj, User):
            changed(session, obj.id)
        elif isinstance(obj, RefreshFamily):
            changed(session, obj.user_id)


def _principal_columns_changed(user: User) -> bool:
    attrs = sa_inspect(user).attrs
    return any(attrs[name].history.has_changes() for name in PRINCIPAL_COLUMNS)


@event.listens_for(ServiceSession, "after_transaction_end")
def _publish_versions(session: Session, transaction) -> None:
    """After the commit (or a rollback): fresh versions for the users registered."""
    if transaction.parent is not None:
        return
    registered = session.info.pop(_CHANGED, None)
    versions = session.info.get(AUTH_VERSIONS_INFO)
    if registered and versions is not None:
        versions.publish(sorted(registered))


@event.listens_for(ServiceSession, "do_orm_execute")
def _refuse_unregistered_bulk_changes(state: ORMExecuteState) -> None:
    """The safety net: a bulk UPDATE/DELETE of users or families must have registered."""
    if not (state.is_update or state.is_delete):
        return
    mapper = state.bind_mapper
    entity = mapper.class_ if mapper is not None else None
    if entity is not User and entity is not RefreshFamily:
        return
    columns = PRINCIPAL_COLUMNS if entity is User else FAMILY_COLUMNS
    if state.is_update and not _sets_any_of(state.statement, columns):
        return
    if not state.session.info.get(_CHANGED):
        raise UnregisteredPrincipalChange(
            f"a bulk change of {entity.__tablename__} must call principal_cache.changed() first")


def _sets_any_of(statement, columns: frozenset) -> bool:
    values = statement._values
    if values is None:  # parameters given at execute time (bulk by primary key): assume so
        return True
    for column, value in values.items():
        name = getattr(column, "key", column)
        if name not in columns:
            continue
        if getattr(value, "key", None) == name and getattr(value, "table", None) is not None \
                and value.table.name == statement.table.name:
            continue  # SET id = id: a row lock, not a change
        return True
    return False
