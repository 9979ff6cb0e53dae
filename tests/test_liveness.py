"""Liveness while the database is slow: ping and health answer while requests wait on a lock.

A connection holds `LOCK TABLE users IN ACCESS EXCLUSIVE MODE`; sign-ins (which read `users`)
wait on it, as many as gunicorn has workers, so sync workers would all be stuck. ping and
health must still answer (generous timeout: the assertion is that they answered, not how
fast; bench/liveness_under_lock.py measures that).
"""
from __future__ import annotations

import threading
import time
import uuid

import pytest
from sqlalchemy import create_engine, text

from tests.conftest import TEST_DATABASE_URL
from tests.servers import basic_header, call, start_gunicorn

pytestmark = pytest.mark.skipif(
    not (TEST_DATABASE_URL or "").startswith("postgresql"),
    reason="needs PostgreSQL's table locks")
WORKERS = 2
ANSWER_SECONDS = 5


def _waiting_on_users(connection) -> int:
    return connection.execute(text(
        "SELECT count(*) FROM pg_locks WHERE NOT granted AND relation = 'users'::regclass"
    )).scalar_one()


def test_ping_and_health_answer_while_every_worker_has_a_request_waiting_on_a_lock(
        app, database_url, tmp_path):
    engine = create_engine(database_url)
    env = {"GUNICORN_THREADS": "2", "DATABASE_QUERY_TIMEOUT_SECONDS": "30"}
    blocked_statuses: list[int] = []
    try:
        with start_gunicorn(database_url, log_dir=tmp_path, workers=WORKERS, env=env) as server, \
                engine.connect() as holder, engine.connect() as observer:
            holder.execute(text("LOCK TABLE users IN ACCESS EXCLUSIVE MODE"))

            def sign_in():
                headers = basic_header("nobody-" + uuid.uuid4().hex[:8], "not-the-password")
                blocked_statuses.append(call(server.base, "POST", "/v1/login", headers=headers,
                                             body={"totp": "000000"}, timeout=60)[0])

            blocked = [threading.Thread(target=sign_in, daemon=True) for _ in range(WORKERS)]
            for thread in blocked:
                thread.start()
            deadline = time.monotonic() + 30
            while _waiting_on_users(observer) < WORKERS:
                assert time.monotonic() < deadline, "the sign-ins never reached the lock"
                time.sleep(0.1)

            for path in ("/v1/ping", "/v1/health", "/v1/ping", "/v1/health"):
                status, body, _ = call(server.base, "GET", path, timeout=ANSWER_SECONDS)
                assert status == 200, (path, body)

            # They answered while the sign-ins were still waiting on the lock.
            assert _waiting_on_users(observer) == WORKERS
            assert all(thread.is_alive() for thread in blocked)
            assert blocked_statuses == []
            holder.rollback()
            for thread in blocked:
                thread.join(60)
        assert blocked_statuses == [401] * WORKERS  # unknown user: the usual sign-in failure
    finally:
        engine.dispose()


def test_health_answers_within_its_own_bound_when_the_database_is_slow(app, database_url,
                                                                       tmp_path):
    engine = create_engine(database_url)
    try:
        with start_gunicorn(database_url, log_dir=tmp_path, workers=1) as server, \
                engine.connect() as holder:
            # A migration holding the schema's version row: health's read waits on it.
            holder.execute(text("LOCK TABLE alembic_version IN ACCESS EXCLUSIVE MODE"))
            status, body, _ = call(server.base, "GET", "/v1/health", timeout=ANSWER_SECONDS + 5)
            holder.rollback()
            assert status == 200
            assert body["message"] == "degraded"
            assert body["checks"]["database"] == "slow"
            status, body, _ = call(server.base, "GET", "/v1/health")
            assert (status, body["message"], body["checks"]["database"]) == (200, "healthy", "ok")
    finally:
        engine.dispose()
