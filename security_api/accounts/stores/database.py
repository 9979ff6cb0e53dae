"""State store in the service's own database: no extra server needed."""
from __future__ import annotations

import secrets
from contextlib import contextmanager

from sqlalchemy import case, delete, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError

from security_api.accounts.stores.base import LockState, StateStore, StoreUnavailable, key_digest
from security_api.models import LoginFailure, RateCounter

CLEANUP_ONE_IN = 200


class DatabaseStore(StateStore):
    """Each operation is its own short transaction, committed before the caller goes on."""

    def __init__(self, session_factory):
        self._sessions = session_factory

    @contextmanager
    def _transaction(self):
        try:
            with self._sessions() as session, session.begin():
                yield session
        except SQLAlchemyError as exc:
            raise StoreUnavailable() from exc

    def _upsert(self, session, model):
        insert = postgresql.insert if session.bind.dialect.name == "postgresql" else sqlite.insert
        return insert(model)

    def hit(self, key, *, limit, window, now):
        window_start = now - now % window
        row_key = f"{key_digest(key)}:{window_start}"
        with self._transaction() as session:
            stmt = self._upsert(session, RateCounter).values(
                key=row_key, count=1, expires_at=window_start + window)
            stmt = stmt.on_conflict_do_update(
                index_elements=["key"], set_={"count": RateCounter.count + 1},
            ).returning(RateCounter.count)
            count = session.execute(stmt).scalar_one()
            if secrets.randbelow(CLEANUP_ONE_IN) == 0:
                session.execute(delete(RateCounter).where(RateCounter.expires_at < now))
        if count > limit:
            return window_start + window - now
        return 0

    def lock_state(self, key, *, now):
        with self._transaction() as session:
            locked_until = session.execute(
                select(LoginFailure.locked_until).where(LoginFailure.key == key_digest(key))
            ).scalar_one_or_none()
        if locked_until and locked_until > now:
            return LockState(True, locked_until - now)
        return LockState(False)

    def reserve_attempt(self, key, *, threshold, lock_seconds, now):
        digest = key_digest(key)
        stale = LoginFailure.last_failure_at < now - lock_seconds
        expired_lock = LoginFailure.locked_until > 0
        with self._transaction() as session:
            stmt = self._upsert(session, LoginFailure).values(
                key=digest, failures=1, last_failure_at=now, locked_until=0)
            # One conditional upsert: the row lock (PostgreSQL) or the database lock (SQLite)
            # makes "below the threshold, so count me" a single step for parallel attempts.
            # Failures older than the lock period, or before an expired lock, start afresh.
            stmt = stmt.on_conflict_do_update(
                index_elements=["key"],
                set_={"failures": case((stale | expired_lock, 1),
                                       else_=LoginFailure.failures + 1),
                      "last_failure_at": now, "locked_until": 0},
                where=(LoginFailure.locked_until <= now)
                & (stale | expired_lock | (LoginFailure.failures < threshold)),
            ).returning(LoginFailure.failures)
            if session.execute(stmt).first() is not None:
                return LockState(False)
            locked_until, last_failure_at = session.execute(
                select(LoginFailure.locked_until, LoginFailure.last_failure_at)
                .where(LoginFailure.key == digest)).one()
        if locked_until > now:
            return LockState(True, locked_until - now)
        # Full of attempts still running: refused until they settle (or, if their worker
        # died, until they no longer count as "in a row").
        return LockState(True, max(1, last_failure_at + lock_seconds - now))

    def record_failure(self, key, *, threshold, lock_seconds, now):
        with self._transaction() as session:
            # The failure was counted when reserved; lock once the count reaches the
            # threshold, and only the first settling attempt to see it does.
            locked = session.execute(
                update(LoginFailure)
                .where(LoginFailure.key == key_digest(key), LoginFailure.failures >= threshold,
                       LoginFailure.locked_until == 0)
                .values(locked_until=now + lock_seconds, last_failure_at=now))
            return locked.rowcount == 1

    def release_attempt(self, key):
        with self._transaction() as session:
            session.execute(
                update(LoginFailure)
                .where(LoginFailure.key == key_digest(key), LoginFailure.failures > 0,
                       LoginFailure.locked_until == 0)
                .values(failures=LoginFailure.failures - 1))

    def clear_failures(self, key):
        with self._transaction() as session:
            session.execute(delete(LoginFailure).where(LoginFailure.key == key_digest(key)))

    def ping(self):
        with self._transaction() as session:
            session.execute(text("SELECT 1"))
