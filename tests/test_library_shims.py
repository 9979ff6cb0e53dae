"""The private names security_api.library_shims relies on still exist and still work."""
from __future__ import annotations

import inspect

import psycopg
from sqlalchemy import create_engine

from security_api.library_shims import is_wait_timeout, pool_without_pre_ping


def _pings_on_second_checkout(pool, engine) -> int:
    pings = []
    original = engine.dialect.do_ping
    engine.dialect.do_ping = lambda dbapi_connection: pings.append(1) or original(dbapi_connection)
    try:
        pool.connect().close()
        pool.connect().close()  # a pooled connection: this checkout is the one a pre-ping guards
    finally:
        del engine.dialect.do_ping
    return len(pings)


def test_the_copied_pool_never_pre_pings_while_the_engines_does(tmp_path):
    engine = create_engine(f"sqlite:///{tmp_path / 'ping.sqlite3'}", pool_pre_ping=True)
    try:
        assert _pings_on_second_checkout(engine.pool, engine) >= 1
        copy = pool_without_pre_ping(engine)
        assert _pings_on_second_checkout(copy, engine) == 0
        assert copy.size() == engine.pool.size()
        copy.dispose()
    finally:
        engine.dispose()


def test_psycopgs_wait_timeout_is_recognised_and_nothing_else():
    assert issubclass(psycopg.errors._WaitTimeout, psycopg.OperationalError)
    assert is_wait_timeout(psycopg.errors._WaitTimeout("deadline"))
    assert not is_wait_timeout(psycopg.OperationalError("connection refused"))
    assert not is_wait_timeout(TimeoutError())


def test_psycopgs_wait_still_takes_the_timeout_the_deadline_passes():
    parameters = inspect.signature(psycopg.Connection.wait).parameters
    assert list(parameters)[:4] == ["self", "gen", "interval", "timeout"]
    assert "_WaitTimeout" in inspect.getsource(psycopg.Connection.wait)
