"""Time /v1/ping and /v1/health while every gunicorn worker waits on a locked table.

A connection holds `LOCK TABLE users IN ACCESS EXCLUSIVE MODE`; `--blocked` sign-in requests
(each reads `users`) are sent and left waiting; then ping and health are timed one after the
other. It never runs as a test (timings depend on the machine); tests/test_liveness.py asserts
the behaviour (ping and health answered while the lock was held), not a figure.

    DATABASE_URL=postgresql+psycopg://postgres@127.0.0.1:5432/test \\
        .venv/bin/python bench/liveness_under_lock.py [--workers 2] [--blocked N] [--samples 5]

PostgreSQL only (SQLite has no table locks of this kind). REDIS_URL is used when set.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sqlalchemy import create_engine, make_url, text  # noqa: E402

from security_api.installation import migrate  # noqa: E402
from tests.servers import basic_header, call, start_gunicorn  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--blocked", type=int, default=None,
                        help="blocked sign-ins in flight (default: 2 per worker)")
    parser.add_argument("--samples", type=int, default=5)
    args = parser.parse_args()
    blocked = args.blocked or 2 * args.workers
    admin_url = os.environ.get("DATABASE_URL", "")
    if not admin_url.startswith("postgresql"):
        sys.exit("liveness_under_lock.py: set DATABASE_URL to a PostgreSQL database")
    schema = f"liveness_{uuid.uuid4().hex[:10]}"
    admin = create_engine(admin_url)
    with admin.begin() as connection:
        connection.execute(text(f"CREATE SCHEMA {schema}"))
    url = make_url(admin_url).update_query_dict({"options": f"-csearch_path={schema}"}) \
        .render_as_string(hide_password=False)
    engine = create_engine(url)
    migrate(engine)
    try:
        with tempfile.TemporaryDirectory() as logs, \
                start_gunicorn(url, log_dir=Path(logs), workers=args.workers,
                               redis_url=os.environ.get("REDIS_URL")) as server:
            print(f"gunicorn: {args.workers} workers; {blocked} blocked sign-ins in flight")
            idle = _time_both(server.base, args.samples)
            with engine.connect() as holder:
                holder.execute(text("LOCK TABLE users IN ACCESS EXCLUSIVE MODE"))
                threads = [threading.Thread(target=_blocked_login, args=(server.base,), daemon=True)
                           for _ in range(blocked)]
                for thread in threads:
                    thread.start()
                time.sleep(1.0)  # let every blocked request reach a worker
                locked = _time_both(server.base, args.samples)
                holder.rollback()
            for thread in threads:
                thread.join(30)
    finally:
        engine.dispose()
        with admin.begin() as connection:
            connection.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()
    for label, figures in (("idle", idle), ("table locked", locked)):
        for path, (seconds, statuses) in figures.items():
            print(f"{label:>13} {path:<11} max {max(seconds):6.3f} s  "
                  f"median {sorted(seconds)[len(seconds) // 2]:6.3f} s  statuses {statuses}")
    return 0


def _blocked_login(base: str) -> None:
    call(base, "POST", "/v1/login", headers=basic_header("nobody-" + uuid.uuid4().hex[:6],
                                                         "not-the-password"),
         body={"totp": "000000"}, timeout=60)


def _time_both(base: str, samples: int) -> dict:
    figures = {}
    for path in ("/v1/ping", "/v1/health"):
        seconds, statuses = [], []
        for _ in range(samples):
            started = time.monotonic()
            status, _body, _id = call(base, "GET", path, timeout=60)
            seconds.append(time.monotonic() - started)
            statuses.append(status)
        figures[path] = (seconds, sorted(set(statuses)))
    return figures


if __name__ == "__main__":
    sys.exit(main())
