"""Engine and session factory; the one place that knows database quirks."""
from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from weakref import WeakKeyDictionary

from sqlalchemy import DateTime, create_engine, event
from sqlalchemy import exc as exc_module
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.pool import Pool, QueuePool
from sqlalchemy.types import TypeDecorator

from security_api.clock import as_utc
from security_api.library_shims import is_wait_timeout, pool_without_pre_ping


class Base(DeclarativeBase):
    """Declarative base of every table."""


class ServiceSession(Session):
    """The class of every session the service's factory makes (see make_session_factory).

    Why a class of its own: the audit chain and the metrics listen on it, not on SQLAlchemy's
    global Session, so a session someone else opens in the process (a script's, a test's, a
    library's) never appends to the chain or counts transitions.
    """


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
                if not is_wait_timeout(exc) or timeout is not None:
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


def probe_database(connection: Connection, *, seconds: float) -> str:
    """Read the schema's version row within `seconds`: "ok", "slow" (cancelled) or raise.

    For /v1/health, which must answer promptly while the database is slow: on PostgreSQL the
    statement gets a `statement_timeout` of `seconds` and the wait for the answer a deadline
    one second later (a server that stopped answering still raises, as "down"). The row is
    read from `alembic_version`, so the check also says the schema is there; a lock held on
    it (a migration) reads as "slow".
    """
    raw = connection.connection.dbapi_connection
    bounded = hasattr(raw, "answer_timeout")
    if bounded:
        connection.exec_driver_sql(f"SET LOCAL statement_timeout = {int(seconds * 1000)}")
        saved, raw.answer_timeout = raw.answer_timeout, seconds + 1
    try:
        connection.exec_driver_sql("SELECT version_num FROM alembic_version LIMIT 1")
    except exc_module.OperationalError as exc:
        if type(exc.orig).__name__ == "QueryCanceled":
            return "slow"
        raise
    finally:
        if bounded and not raw.closed:
            raw.answer_timeout = saved
    return "ok"


def make_session_factory(engine: Engine, *, info: dict | None = None) -> sessionmaker:
    """Return a factory of sessions that keep objects usable after commit.

    `info` is copied into every session's `Session.info` (the audit chain keys travel so).
    """
    return sessionmaker(bind=engine, class_=ServiceSession, expire_on_commit=False,
                        info=dict(info or {}))


class ReadOnlyQuery:
    """One hot, read-only SELECT run straight on the DBAPI cursor: compiled once, no ORM or Core.

    Why: the token check runs one query per authenticated request, and SQLAlchemy's execution
    machinery costs more than the query itself. The statement is compiled once for the engine's
    dialect and its result columns keep their types' conversions (UTCDateTime, booleans on SQLite).
    Parameters go to the driver as given, so a statement whose parameters need a conversion
    (a datetime through UTCDateTime, say) is refused when built.

    On PostgreSQL it runs on a pool of its own (same connect settings and timeouts as the
    engine's) whose connections are in autocommit and read-only: the query is one round trip,
    with no BEGIN before it, no ROLLBACK when the connection goes back and no pre-ping (a
    connection found dropped is invalidated and the read tried once more on a new one); every
    ReadOnlyQuery of the engine shares it. On a SQLite file each thread keeps one connection of
    its own in autocommit, shared by the engine's ReadOnlyQuery objects
    (SqliteThreadConnections): no pool checkout and no reset per read, which were half the
    read's cost; in WAL mode every statement sees the latest commit, so nothing is read stale.
    Elsewhere it borrows the engine's pool. Driver errors come out as SQLAlchemy's own
    (OperationalError, ...), as they would through a Connection, and a connection that broke is
    invalidated, never reused. The extra pool is closed when the engine is disposed.
    """

    def __init__(self, engine: Engine, statement):
        dialect = engine.dialect
        compiled = statement.compile(dialect=dialect)
        for name, bind in compiled.binds.items():
            if bind.type.dialect_impl(dialect).bind_processor(dialect) is not None:
                raise ValueError(f"parameter {name} needs a conversion only a Connection makes")
        self._engine = engine
        self._sql = compiled.string
        self._defaults = compiled.params  # values bound in the statement itself (literals)
        self._positions = compiled.positiontup if compiled.positional else None
        self._keys = [column.key for column in statement.selected_columns]
        self._convert = [column.type.dialect_impl(dialect).result_processor(dialect, None)
                         for column in statement.selected_columns]
        self._pool = _read_only_pool(engine) if dialect.name == "postgresql" else None
        self._threads = (_sqlite_thread_connections(engine)
                         if dialect.name == "sqlite" and isinstance(engine.pool, QueuePool)
                         else None)

    def first(self, params: dict) -> dict | None:
        """Return the first row as a dict of column key to converted value, or None."""
        params = {**self._defaults, **params}
        arguments = tuple(params[name] for name in self._positions) \
            if self._positions is not None else params
        try:
            row = self._fetch(arguments)
        except exc_module.DBAPIError as exc:
            # A pooled connection the server dropped while idle (restart, idle timeout): the
            # read is harmless to repeat, on a new connection. This is what a pre-ping would
            # find, without its round trip on every request; a database that is down fails
            # the second try as well, in the same time a pre-ping and reconnect would take.
            if self._pool is None or not exc.connection_invalidated:
                raise
            row = self._fetch(arguments)
        if row is None:
            return None
        return {key: convert(value) if convert else value
                for key, convert, value in zip(self._keys, self._convert, row, strict=True)}

    def _fetch(self, arguments):
        if self._threads is not None:
            return self._fetch_on_thread_connection(arguments)
        dialect = self._engine.dialect
        try:
            connection = self._checkout()
        except dialect.loaded_dbapi.Error as exc:
            raise self._wrapped(exc, arguments, invalidated=False) from exc
        try:
            cursor = connection.cursor()
            try:
                cursor.execute(self._sql, arguments)
                return cursor.fetchone()
            finally:
                cursor.close()
        except dialect.loaded_dbapi.Error as exc:
            dropped = dialect.is_disconnect(exc, connection.dbapi_connection, None)
            if dropped:
                connection.invalidate(exc)
            raise self._wrapped(exc, arguments, invalidated=dropped) from exc
        finally:
            connection.close()

    def _fetch_on_thread_connection(self, arguments):
        dialect = self._engine.dialect
        connection = None
        try:
            connection = self._threads.get()
            cursor = connection.cursor()
            try:
                cursor.execute(self._sql, arguments)
                return cursor.fetchone()
            finally:
                cursor.close()  # resets the statement: its read snapshot ends here
        except dialect.loaded_dbapi.Error as exc:
            if connection is not None:
                self._threads.discard()  # never reuse a connection that failed
            raise self._wrapped(exc, arguments, invalidated=connection is not None) from exc

    def _checkout(self):
        if self._pool is None:
            return self._engine.raw_connection()
        return self._pool.connect()

    def _wrapped(self, exc: Exception, arguments, *, invalidated: bool) -> Exception:
        dialect = self._engine.dialect
        return exc_module.DBAPIError.instance(self._sql, arguments, exc, dialect.loaded_dbapi.Error,
                                              hide_parameters=True, dialect=dialect,
                                              connection_invalidated=invalidated)


# One read-only pool per engine, shared by every ReadOnlyQuery on it (the token check, the
# holding reads): a worker keeps one idle connection for them, not one per query.
_READ_ONLY_POOLS: WeakKeyDictionary[Engine, Pool] = WeakKeyDictionary()


def _read_only_pool(engine: Engine) -> Pool:
    pool = _READ_ONLY_POOLS.get(engine)
    if pool is None:
        pool = pool_without_pre_ping(engine)  # first() retries a dropped connection
        event.listen(pool, "connect", _read_only_autocommit)
        event.listen(engine, "engine_disposed", lambda _engine: pool.dispose())
        _READ_ONLY_POOLS[engine] = pool
    return pool


_SQLITE_THREADS: WeakKeyDictionary[Engine, SqliteThreadConnections] = WeakKeyDictionary()


def _sqlite_thread_connections(engine: Engine) -> SqliteThreadConnections:
    """Return the engine's per-thread SQLite connections, shared by all its ReadOnlyQuery."""
    threads = _SQLITE_THREADS.get(engine)
    if threads is None:
        threads = _SQLITE_THREADS[engine] = SqliteThreadConnections(engine)
    return threads


def _read_only_autocommit(dbapi_connection, _record) -> None:
    # Autocommit: no BEGIN round trip before a statement, nothing to roll back after it.
    # default_transaction_read_only: this pool can never write, whatever runs on it.
    dbapi_connection.autocommit = True
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("SET default_transaction_read_only = on")
    finally:
        cursor.close()


class SqliteThreadConnections:
    """One autocommit connection per thread for ReadOnlyQuery on a SQLite file.

    Each is taken from the engine's pool once and detached from it (so the pool's size is not
    used up), keeping the pool's connect settings (WAL, busy_timeout). In autocommit a SELECT
    is its own read transaction, ended when its cursor is closed. Connections of threads that
    ended are closed when the next thread arrives; all are closed when the engine is disposed
    (a generation count makes threads open new ones afterwards).
    """

    def __init__(self, engine: Engine):
        self._engine = engine
        self._local = threading.local()
        self._lock = threading.Lock()
        self._open: dict[int, tuple[threading.Thread, object]] = {}
        self._generation = 0
        event.listen(engine, "engine_disposed", lambda _engine: self.close_all())

    def get(self):
        """Return this thread's connection, opening it on first use."""
        held = getattr(self._local, "held", None)
        if held is not None and held[0] == self._generation:
            return held[1]
        fairy = self._engine.raw_connection()
        fairy.detach()  # ours now: the pool forgets it (closing the fairy would close it)
        connection = fairy.dbapi_connection
        connection.isolation_level = None
        with self._lock:
            for ident, (thread, old) in list(self._open.items()):
                if not thread.is_alive():
                    del self._open[ident]
                    old.close()
            self._open[threading.get_ident()] = (threading.current_thread(), connection)
            self._local.held = (self._generation, connection)
        return connection

    def discard(self) -> None:
        """Close this thread's connection (after an error); the next read opens another."""
        held = getattr(self._local, "held", None)
        self._local.held = None
        with self._lock:
            self._open.pop(threading.get_ident(), None)
        if held is not None:
            held[1].close()

    def close_all(self) -> None:
        """Close every thread's connection (the engine was disposed)."""
        with self._lock:
            self._generation += 1
            for _thread, connection in self._open.values():
                connection.close()
            self._open.clear()
