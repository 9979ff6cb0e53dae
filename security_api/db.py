"""Engine and session factory; the one place that knows database quirks."""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import DateTime, create_engine, event
from sqlalchemy.engine import Engine
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


def make_engine(url: str, **kwargs) -> Engine:
    """Create an engine with settings that make SQLite safe for several workers."""
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
    return create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=5,
                         pool_timeout=5, connect_args=_pg_connect_args(url), **kwargs)


def _pg_connect_args(url: str) -> dict:
    # Fail fast when the database is down instead of hanging a worker.
    if url.startswith("postgresql"):
        return {"connect_timeout": 3}
    return {}


def make_session_factory(engine: Engine) -> sessionmaker:
    """Return a factory of sessions that keep objects usable after commit."""
    return sessionmaker(bind=engine, expire_on_commit=False)
