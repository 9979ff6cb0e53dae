"""The two places the domain reaches into a library's private names, each behind one function.

Why they stay (measured and tested; tests/test_library_shims.py fails when a library changes
underneath, before a deployment finds out):

- `pool_without_pre_ping`: the principal query runs on every authenticated request. A pool
  pre-ping is one more round trip per checkout: a timing loop of ReadOnlyQuery.first against a
  local PostgreSQL (2026-12-06, shared 2-core machine) took 5-8 ms per query without it and
  8.5-12.6 ms with it under load, 1.1-1.4 ms against 1.2-2.0 ms when quieter; across a network
  the difference is a full network round trip per request. ReadOnlyQuery retries a
  connection the server dropped instead, which a pre-ping would only have found earlier.
  SQLAlchemy takes `pool_pre_ping` only in create_engine, and Pool.recreate() copies it.
- `is_wait_timeout`: the deadline on a database that accepted a query but never answers
  (db._bound_answer_waits; tests/test_outages.py) passes a timeout to psycopg's
  Connection.wait, which raises the private errors._WaitTimeout when it expires; psycopg has
  no public name for that case, and other OperationalErrors must propagate unchanged.
"""
from __future__ import annotations

from sqlalchemy.engine import Engine
from sqlalchemy.pool import Pool


def pool_without_pre_ping(engine: Engine) -> Pool:
    """Return a new pool like the engine's (same creator, size, events) that never pre-pings."""
    pool = engine.pool.recreate()
    if not hasattr(pool, "_pre_ping"):
        raise RuntimeError("SQLAlchemy's Pool no longer has _pre_ping: revisit library_shims")
    pool._pre_ping = False
    return pool


def is_wait_timeout(exc: BaseException) -> bool:
    """Tell whether psycopg raised `exc` because Connection.wait's timeout expired."""
    import psycopg  # here: SQLite deployments need no psycopg

    return isinstance(exc, psycopg.errors._WaitTimeout)
