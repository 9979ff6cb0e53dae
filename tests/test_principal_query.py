"""The token check's query runs on the raw driver (db.ReadOnlyQuery): same answers, same errors.

What the token check decides (logout, password change, deactivation, role change) is tested
through the API in test_sessions.py and test_admin_users.py; this file covers what the runner
adds: typed results, SQLAlchemy's error classes, and on PostgreSQL a read-only pool whose dead
connections are replaced.
"""
from __future__ import annotations

import threading
from datetime import UTC, datetime

import pytest
from sqlalchemy import column, func, insert, literal, select, table, text, update
from sqlalchemy.exc import DBAPIError, InternalError

from security_api.db import ReadOnlyQuery, make_engine
from security_api.models import User
from tests.conftest import TEST_DATABASE_URL, bearer

on_postgresql = pytest.mark.skipif(not (TEST_DATABASE_URL or "").startswith("postgresql"),
                                   reason="the read-only autocommit pool exists on PostgreSQL")


@pytest.fixture
def engine(database_url):
    engine = make_engine(database_url)
    yield engine
    engine.dispose()


def test_profile_shows_the_user_as_stored(client, make_user, login_as, db_session):
    alice = make_user("alice")
    response = client.get("/v1/profile", headers=bearer(login_as(alice)["token"]))
    assert response.status_code == 200
    stored = db_session.get(User, alice.id)
    user = response.json["user"]
    assert user["active"] is True and user["totp_enabled"] is True
    assert user["id"] == alice.id and user["username"] == "alice"
    assert datetime.fromisoformat(user["created_at"].replace("Z", "+00:00")) == \
        stored.created_at.replace(microsecond=0)


def test_rows_come_back_typed_like_through_sqlalchemy(engine, make_user):
    alice = make_user("alice")
    query = select(User.id, User.active, User.created_at).where(User.id == literal(alice.id))
    row = ReadOnlyQuery(engine, query).first({})
    with engine.connect() as connection:
        expected = connection.execute(query).one()
    assert row == {"id": alice.id, "active": True, "created_at": expected.created_at}
    assert row["created_at"].tzinfo == UTC
    assert ReadOnlyQuery(engine, query.where(User.active.is_(False))).first({}) is None


def test_driver_errors_come_out_as_sqlalchemy_errors(engine):
    missing = ReadOnlyQuery(engine, select(column("x")).select_from(table("no_such_table")))
    with pytest.raises(DBAPIError) as caught:
        missing.first({})
    assert "no_such_table" in str(caught.value.orig)
    assert ReadOnlyQuery(engine, select(literal(1).label("one"))).first({}) == {"one": 1}


def test_each_read_sees_the_latest_commit_on_every_thread(engine, make_user):
    # On SQLite each thread keeps its reading connection: a read must still never see an
    # older snapshot than the last commit, whichever thread reads and whoever wrote.
    alice = make_user("alice")
    query = ReadOnlyQuery(engine, select(User.active).where(User.id == literal(alice.id)))
    seen = []

    def read_in_a_thread():
        thread = threading.Thread(target=lambda: seen.append(query.first({})["active"]))
        thread.start()
        thread.join(10)

    for active in (True, False, True, False):
        with engine.begin() as connection:
            connection.execute(update(User).where(User.id == alice.id).values(active=active))
        assert query.first({})["active"] is active
        read_in_a_thread()
    assert seen == [True, False, True, False]
    engine.dispose()  # every thread's connection is closed; the next read opens another
    assert query.first({})["active"] is False


@on_postgresql
def test_the_pool_cannot_write(engine):
    probe = table("users", column("id"))
    written = insert(probe).values(id="x").returning(probe.c.id).cte("written")
    writer = ReadOnlyQuery(engine, select(written.c.id))  # WITH written AS (INSERT ...) SELECT
    with pytest.raises(InternalError, match="read-only transaction"):
        writer.first({})


@on_postgresql
def test_a_connection_the_server_dropped_is_replaced(engine):
    backend = ReadOnlyQuery(engine, select(func.pg_backend_pid().label("pid")))
    first = backend.first({})["pid"]
    with engine.connect() as connection:
        assert connection.scalar(text("SELECT pg_terminate_backend(:pid)"), {"pid": first})
    second = backend.first({})["pid"]  # the dropped connection is replaced, no error shows
    assert second != first
    with engine.connect() as connection:
        in_transaction = connection.scalar(text(
            "SELECT count(*) FROM pg_stat_activity WHERE pid = :pid AND state <> 'idle'"),
            {"pid": second})
    assert in_transaction == 0  # autocommit: nothing left open between requests


@on_postgresql
def test_the_read_only_queries_of_an_engine_share_one_pool(engine, database_url):
    """The token check and the holding reads: one idle connection per worker, not one each."""
    first = ReadOnlyQuery(engine, select(func.pg_backend_pid().label("pid")))
    second = ReadOnlyQuery(engine, select(func.pg_backend_pid().label("backend")))
    assert first.first({})["pid"] == second.first({})["backend"]
    other = make_engine(database_url)  # another engine, another pool
    try:
        assert ReadOnlyQuery(other, select(func.pg_backend_pid().label("pid"))).first({}) != \
            first.first({})
    finally:
        other.dispose()
