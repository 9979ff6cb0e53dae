"""Break the cost of an authenticated request down, in-process, to see where profile and check ÷ ping lose.

auth_overhead.py measures profile/ping and check/ping through gunicorn; this script times the
pieces in one process (no network, no gunicorn, no wrk): a whole ping, profile and check request
through the WSGI app (check: a service account holding security-api.check asks about a person's
active grant, as bench/check_load.py sets it up), then the parts of the token check - the cached
token verification, a pool checkout, the principal query through SQLAlchemy Core, the same SQL
through the raw DBAPI cursor of the engine's pool, and as the service runs it
(db.ReadOnlyQuery) - then the parts of a check (the guard read alone, as `require_permission`
and the check's error paths read it, and the guard with the answer, the one statement of a
check's success path, and its query string's validation), and what answering costs: respond()
with and without the pydantic validation of the response model, for the profile and the check
bodies, and (an idea, not used) the same validation with pydantic's own JSON encoder instead of
model_dump() and json.dumps(). Medians of repeated batches.
See README.md.

    .venv/bin/python bench/auth_breakdown.py [--calls 500] [--json out.json]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import common
from check_load import CHECK_PERMISSION, CheckSeed

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


def check_pieces(app, seed: CheckSeed) -> dict[str, object]:
    """The timed parts of a check beyond the token check: the request, its guard, its answer."""
    from security_api.accounts import sessions
    from security_api.clock import utcnow

    services = app.extensions["security_api"]
    tool = subject_of(sessions.authenticate(services, token=seed.tool_token, now=utcnow()))
    return {
        "check_request": wsgi_call(app, seed.path, {"Authorization": f"Bearer {seed.tool_token}"}),
        "tool_token_check": lambda: sessions.authenticate(services, token=seed.tool_token,
                                                          now=utcnow()),
        "check_guard_read": lambda: services.holdings.of_subject(
            tool, permission=CHECK_PERMISSION, now=utcnow()),
        "check_guard_and_answer_read": lambda: services.holdings.of_subject_and_username(
            tool, guard=CHECK_PERMISSION, username=seed.person, permission=seed.permission,
            now=utcnow()),
    }


def subject_of(principal):
    """The principal's user as the policy engine sees it (flask_api_functions.current_subject)."""
    from security_api.access.grants import Subject

    account = principal.account
    return Subject(id=account.id, username=account.username, role=account.role,
                   subrole=account.subrole, kind=account.kind)


def answering_figures(app, seed: CheckSeed, calls: int) -> dict[str, float]:
    """What answering costs once the work is done: respond() (the response model's strict
    pydantic validation, then JSON) against envelope() (JSON only), with profile's and check's
    bodies, each inside a request context of its own route (respond() finds the model there);
    and what reading the check's query string costs (its pydantic query model)."""
    from flask_api_functions import envelope, respond
    from security_api.accounts import sessions
    from security_api.clock import utcnow
    from web.api.auth import user_json
    from web.api.inputs import read_query
    from web.api.queries import UserPermissionQuery

    services = app.extensions["security_api"]
    principal = sessions.authenticate(services, token=seed.person_token, now=utcnow())
    bodies = {
        "profile": ("/v1/profile", {"jwt_data": principal.claims,
                                    "user": user_json(principal.account)}),
        "check": (seed.path, {"allowed": True, "expires_at": "2026-12-06T15:00:00Z"}),
    }
    figures = {}
    for name, (path, body) in bodies.items():
        with app.test_request_context(path, base_url="http://127.0.0.1"):
            figures[f"respond_{name}"] = microseconds(lambda b=body: respond(None, **b), calls)
            figures[f"envelope_{name}"] = microseconds(lambda b=body: envelope(None, **b), calls)
            figures[f"validate_to_json_{name}"] = microseconds(
                validated_json(app, {"message": None, **body}), calls)
    with app.test_request_context(seed.path, base_url="http://127.0.0.1"):
        figures["check_query_read"] = microseconds(lambda: read_query(UserPermissionQuery), calls)
    return figures


def main(argv: list[str] | None = None) -> dict:
    """Seed a person with a grant and a check tool, time every piece, print the table."""
    args = parse_args(argv)
    note = common.load_average_note()
    print(f"database: {common.database_kind(dict(os.environ))}; {note}", flush=True)
    seed = CheckSeed()
    with common.in_process_service("bench-breakdown-", prepare=seed) as app:
        grant_the_person(app, seed)
        actions = {**pieces(app, seed.person_token), **check_pieces(app, seed)}
        figures = {name: microseconds(action, args.calls) for name, action in actions.items()}
        figures.update(answering_figures(app, seed, args.calls))
    for name, value in figures.items():
        print(f"  {name:<28} {value:8.1f} us")
    extra = figures["profile_request"] - figures["ping_request"]
    check_extra = figures["check_request"] - figures["ping_request"]
    print(f"profile costs {extra:.1f} us more than ping in-process; the token check is "
          f"{figures['token_check']:.1f} us of it, respond()'s validation "
          f"{figures['respond_profile'] - figures['envelope_profile']:.1f} us")
    print(f"check costs {check_extra:.1f} us more than ping in-process; the token check is "
          f"{figures['tool_token_check']:.1f} us of it, respond()'s validation "
          f"{figures['respond_check'] - figures['envelope_check']:.1f} us")
    figures.update({"settings": [note], "profile_extra_us": extra, "check_extra_us": check_extra})
    common.write_json(args.json, figures)
    return figures


def validated_json(app, body: dict):
    """An idea, not used: respond()'s same strict validation, then pydantic's own JSON encoder
    (one call) instead of model_dump() and json.dumps(). The model is the view's, as in respond().
    """
    from flask import request

    model = app.view_functions[request.endpoint].api_doc.responses[200]

    def run():
        validated = model.model_validate(body, strict=True)
        return model.__pydantic_serializer__.to_json(validated, exclude_unset=True)
    return run


def grant_the_person(app, seed: CheckSeed) -> None:
    """The person requests the permission (auto: active at once), so check answers yes."""
    answer = app.test_client().post("/v1/requests",
                                    json={"permission": seed.permission, "justification": "bench"},
                                    headers={"Authorization": f"Bearer {seed.person_token}"})
    if answer.status_code != 201:
        sys.exit(f"POST /v1/requests answered {answer.status_code}: {answer.get_json()}")


if __name__ == "__main__":
    sys.exit(main() and None)
