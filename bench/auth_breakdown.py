"""Break the cost of an authenticated request down, in-process, to see where profile ÷ ping loses.

auth_overhead.py measures profile/ping through gunicorn; this script times the pieces in one
process (no network, no gunicorn, no wrk): a whole ping and a whole profile request through the
WSGI app, then the parts of the token check - the cached token verification, a pool checkout,
the principal query through SQLAlchemy Core, the same SQL through the raw DBAPI cursor of the
engine's pool, and as the service runs it (db.ReadOnlyQuery). Medians of repeated batches.
See README.md.

    .venv/bin/python bench/auth_breakdown.py [--calls 500] [--json out.json]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import common

BATCHES = 7


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Read the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=500, help="calls per batch (default 500)")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    if args.calls < 1:
        parser.error("--calls must be >= 1")
    return args


def microseconds(action, calls: int) -> float:
    """Median time of one call over BATCHES batches, after a warm-up, in microseconds."""
    for _ in range(min(calls, 50)):
        action()
    samples = []
    for _ in range(BATCHES):
        started = time.perf_counter()
        for _ in range(calls):
            action()
        samples.append((time.perf_counter() - started) / calls)
    return statistics.median(samples) * 1e6


def wsgi_call(app, path: str, headers: dict):
    """Return a function that runs one request through the WSGI app and checks it is a 200."""
    from werkzeug.test import EnvironBuilder

    environ = EnvironBuilder(path=path, base_url="http://127.0.0.1", headers=headers).get_environ()
    statuses = []

    def start_response(status, _headers, _exc_info=None):
        statuses.append(status)

    def run():
        body = app(dict(environ), start_response)
        b"".join(body)
        body.close()
        if statuses.pop() != "200 OK":
            sys.exit(f"GET {path} did not answer 200")
    return run


def pieces(app, token: str) -> dict[str, object]:
    """The timed actions: whole requests, then the parts of the token check."""
    from security_api.accounts import sessions
    from security_api.accounts.principal_query import PRINCIPAL_QUERY
    from security_api.clock import utcnow

    services = app.extensions["security_api"]
    engine = services.engine
    claims = services.token_verifier.verify(token, now=time.time())
    params = {"sub": claims["sub"], "sid": claims["sid"], "jti": claims["jti"]}
    compiled = PRINCIPAL_QUERY.compile(dialect=engine.dialect)
    raw_params = tuple(params[name] for name in compiled.positiontup) \
        if compiled.positional else params

    def authenticate():
        sessions.authenticate(services, token=token, now=utcnow())

    def checkout():
        with engine.connect():
            pass

    def core_query():
        with engine.connect() as connection:
            connection.execute(PRINCIPAL_QUERY, params).first()

    def raw_query():
        connection = engine.raw_connection()
        try:
            cursor = connection.cursor()
            cursor.execute(compiled.string, raw_params)
            cursor.fetchone()
            cursor.close()
            connection.rollback()
        finally:
            connection.close()

    return {
        "ping_request": wsgi_call(app, "/v1/ping", {}),
        "profile_request": wsgi_call(app, "/v1/profile", {"Authorization": f"Bearer {token}"}),
        "token_check": authenticate,
        "token_verify_cached": lambda: services.token_verifier.verify(token, now=time.time()),
        "pool_checkout": checkout,
        "principal_query_core": core_query,
        "principal_query_raw_dbapi": raw_query,
        "principal_query_service": lambda: services.principal_reader.first(params),
    }


def main(argv: list[str] | None = None) -> dict:
    """Seed one person with a token, time every piece, print the table."""
    args = parse_args(argv)
    note = common.load_average_note()
    print(f"database: {common.database_kind(dict(os.environ))}; {note}", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-breakdown-") as tmp:
        base = common.service_environment(Path(tmp), bcrypt_rounds=4, workers=1, port=0)
        with common.private_database(base) as env:
            common.flask_cli(env, "init-db")
            app = common.build_app(env)
            try:
                [token] = common.seed_people(app, count=1, role="developer", subrole="backend")
                figures = {name: microseconds(action, args.calls)
                           for name, action in pieces(app, token).items()}
            finally:
                common.dispose(app)
    for name, value in figures.items():
        print(f"  {name:<28} {value:8.1f} us")
    extra = figures["profile_request"] - figures["ping_request"]
    print(f"profile costs {extra:.1f} us more than ping in-process; the token check is "
          f"{figures['token_check']:.1f} us of it")
    figures.update({"settings": [note], "profile_extra_us": extra})
    common.write_json(args.json, figures)
    return figures


if __name__ == "__main__":
    sys.exit(main() and None)
