"""Engine and session factory; the one place that knows database quirks."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime

from sqlalchemy import DateTime, create_engine, event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import DeclarativeBase, sessionmaker
from sqlalchemy.types import TypeDecorator

from .clock import as_utc


class Base(DeclarativeBase):
    """Declarative base of every table."""


class UTCDateTime(TypeDecorator):
    """Store naive UTC, always hand back aware UTC (SQLite loses the zone)."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect):
        if value is None:
            return None
        return as_utc(value).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect):
        return as_utc(value)


def make_engine(url: str, *, query_timeout_seconds: int = 10, **kwargs) -> Engine:
    """Create an engine with settings that make SQLite safe for several workers.

    On PostgreSQL, `query_timeout_seconds` bounds every statement (server side) and every
    wait for the server's answer (client side, 5 s later), so a dead server is a fast error.
    """
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30}, **kwargs)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection, _record):
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        return engine
    engine = create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=5,
                           pool_timeout=5, connect_args=_pg_connect_args(url), **kwargs)
    if engine.dialect.driver == "psycopg":
        _bound_answer_waits(engine, query_timeout_seconds)
    return engine


def _pg_connect_args(url: str) -> dict:
    # Fail fast when the database is down instead of hanging a worker.
    if not url.startswith("postgresql"):
        return {}
    # Keepalives and tcp_user_timeout make the kernel notice a peer that vanished (host
    # down, network cut) on idle pooled connections and on unacknowledged writes.
    return {"connect_timeout": 3, "keepalives": 1, "keepalives_idle": 30,
            "keepalives_interval": 10, "keepalives_count": 3, "tcp_user_timeout": 30_000}


def _bound_answer_waits(engine: Engine, seconds: int) -> None:
    """Give every statement a server-side statement_timeout and a client-side deadline."""
    # A server that accepted the bytes but never answers (frozen, or a middlebox that keeps
    # the connection open) defeats every TCP-level timeout; only a deadline on the wait
    # for the answer frees the worker. Imported here: SQLite deployments need no psycopg.
    import psycopg

    class DeadlineConnection(psycopg.Connection):
        answer_timeout: float | None = seconds + 5

        def wait(self, gen, interval=None, timeout=None):
            waits = {"timeout": self.answer_timeout if timeout is None else timeout}
            if interval is not None:
                waits["interval"] = interval
            try:
                return super().wait(gen, **waits)
            except psycopg.OperationalError as exc:
                if type(exc).__name__ != "_WaitTimeout" or timeout is not None:
                    raise
                self.pgconn.finish()  # unknown protocol state: never reuse this connection
                raise psycopg.OperationalError(
                    f"no answer from the database within {waits['timeout']}s") from None

    @event.listens_for(engine, "do_connect")
    def _connect(_dialect, _record, cargs, cparams):
        timeout = f"-c statement_timeout={seconds * 1000}"
        options = cparams.get("options")
        cparams["options"] = f"{options} {timeout}" if options else timeout
        return DeadlineConnection.connect(*cargs, **cparams)


@contextmanager
def without_query_timeout(connection: Connection) -> Iterator[None]:
    """Lift both bounds for the current transaction: migrations may outlast any request."""
    raw = connection.connection.dbapi_connection
    if not hasattr(raw, "answer_timeout"):
        yield
        return
    connection.exec_driver_sql("SET LOCAL statement_timeout = 0")
    saved, raw.answer_timeout = raw.answer_timeout, None
    try:
        yield
    finally:
        raw.answer_timeout = saved


def make_session_factory(engine: Engine) -> sessionmaker:
    """Return a factory of sessions that keep objects usable after commit."""
    return sessionmaker(bind=engine, expire_on_commit=False)
