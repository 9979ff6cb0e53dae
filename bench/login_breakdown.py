"""Break a sign-in down, in-process, to see where logins/s ÷ bcrypt bound loses.

auth_overhead.py measures logins/s through gunicorn against a bound of cores ÷ one bcrypt check;
this script times the pieces in one process (no network, no gunicorn, no wrk): one bcrypt
check at the bench's cost, a whole POST /v1/login through the WSGI app for a service account
(Basic, no code) and for a person (password + TOTP), the same two logins with a cost-4 hash (so
"the rest" of a login is that minus a cost-4 check), and the parts of that rest: the address
rate limit, the lockout reservation and its clearing, the user look-up, the TOTP secret, code
and replay mark, the session (refresh family, refresh token, access token) and the audit
event with its commit. Each piece reports the median wall time and the median CPU time of its
thread over the calls. See README.md.

    .venv/bin/python bench/login_breakdown.py [--bcrypt-rounds 12] [--calls 200] [--json out.json]
"""
from __future__ import annotations

import argparse
import os
import secrets
import statistics
import sys
import time

import common

SLOW_CALLS = 9  # whole logins and checks at the bench's cost: each takes a bcrypt check
ROLE, SUBROLE = "developer", "backend"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Read the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bcrypt-rounds", type=int, default=12,
                        help="bcrypt cost of the timed accounts (default 12, as the bench)")
    parser.add_argument("--calls", type=int, default=200,
                        help="calls per piece without the bench's bcrypt (default 200)")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    if args.calls < 1 or not 4 <= args.bcrypt_rounds <= 16:
        parser.error("--calls must be >= 1 and --bcrypt-rounds 4..16")
    return args


def timed(action, calls: int, before=None) -> dict[str, float]:
    """Median wall and thread-CPU time of one call, in ms; `before` runs untimed first.

    CPU time is what the call costs the cores (a shared machine stretches wall time, not it);
    wall time also holds the waits on the database.
    """
    for _ in range(min(calls, 3)):
        if before:
            before()
        action()
    walls, cpus = [], []
    for _ in range(calls):
        if before:
            before()
        cpu, wall = time.thread_time(), time.perf_counter()
        action()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.thread_time() - cpu)
    return {"wall_ms": statistics.median(walls) * 1e3, "cpu_ms": statistics.median(cpus) * 1e3}


class Accounts:
    """The accounts a login is timed with: a service account and a person with TOTP, each at
    the bench's bcrypt cost and at cost 4."""

    def __init__(self, app, rounds: int):
        from security_api import audit
        from security_api.accounts import totp
        from security_api.accounts import users as accounts
        from security_api.clock import utcnow
        from security_api.enums import UserKind

        self.services = app.extensions["security_api"]
        self.password = secrets.token_urlsafe(24)
        self.totp_secret = totp.new_secret()
        self.names: dict[tuple[str, int], str] = {}
        origin, now = audit.Origin(), utcnow()
        with self.services.session_factory() as session:
            accounts.create_role(session, name=ROLE, subroles=[SUBROLE], actor="bench",
                                 origin=origin, now=now)
            for kind in (UserKind.SERVICE, UserKind.PERSON):
                for cost in (rounds, 4):
                    name = f"bench-login-{kind}-{cost}"
                    user = accounts.create_user(
                        session, username=name, role=ROLE, subrole=SUBROLE, email=None,
                        kind=kind, password=self.password, bcrypt_rounds=cost, actor="bench",
                        origin=origin, now=now).user
                    if kind == UserKind.PERSON:
                        user.totp_secret = self.services.secret_box.encrypt(self.totp_secret)
                        user.totp_confirmed = True
                    self.names[(str(kind), cost)] = name
            session.commit()

    def forget_totp_steps(self) -> None:
        """Let the current TOTP code be accepted again (each login marks its step used)."""
        from sqlalchemy import update

        from security_api.models import User

        with self.services.session_factory() as session:
            session.execute(update(User).values(last_totp_step=None))
            session.commit()

    def current_code(self) -> str:
        """The TOTP code of this moment."""
        from security_api.accounts import totp

        return totp.code_at(self.totp_secret, time.time())


def login_request(app, accounts: Accounts, *, kind: str, cost: int):
    """Return a function that runs one POST /v1/login through the WSGI app and checks its 200."""
    from werkzeug.test import EnvironBuilder

    header = common.basic_header(accounts.names[(kind, cost)], accounts.password)
    statuses = []

    def start_response(status, _headers, _exc_info=None):
        statuses.append(status)

    def run():
        body = b"{}" if kind == "service" else \
            f'{{"totp": "{accounts.current_code()}"}}'.encode("ascii")
        environ = EnvironBuilder(path="/v1/login", method="POST", base_url="http://127.0.0.1",
                                 headers={"Authorization": header,
                                          "Content-Type": "application/json"},
                                 data=body).get_environ()
        answer = app(environ, start_response)
        b"".join(answer)
        answer.close()
        if statuses.pop() != "200 OK":
            sys.exit(f"POST /v1/login as a {kind} (cost {cost}) did not answer 200")
    return run


def whole_logins(app, accounts: Accounts, rounds: int, calls: int) -> dict[str, dict]:
    """A bcrypt check at each cost and the whole logins at each cost."""
    from security_api.accounts.passwords import hash_password, verify_password

    figures = {}
    for cost, count in ((rounds, SLOW_CALLS), (4, calls)):
        password_hash = hash_password(accounts.password, rounds=cost)
        figures[f"bcrypt_check_cost_{cost}"] = timed(
            lambda h=password_hash: verify_password(accounts.password, h), count)
        figures[f"login_service_cost_{cost}"] = timed(
            login_request(app, accounts, kind="service", cost=cost), count)
        figures[f"login_person_cost_{cost}"] = timed(
            login_request(app, accounts, kind="person", cost=cost), count,
            before=accounts.forget_totp_steps)
    return figures


def login_parts(app, accounts: Accounts, calls: int) -> dict[str, dict]:
    """The parts of a login besides its bcrypt check, each as the login runs it."""
    from security_api import audit
    from security_api.accounts import signin, signin_attempts, totp
    from security_api.accounts.sessions import start_session
    from security_api.accounts.tokens import issue_access_token
    from security_api.accounts.users import find_user
    from security_api.clock import utcnow
    from security_api.enums import AuditAction

    services = app.extensions["security_api"]
    store, settings = services.store, services.settings
    person = accounts.names[("person", 4)]
    origin = audit.Origin(ip="127.0.0.1", request_id="bench")
    key = signin_attempts.lock_key(person)
    with services.session_factory() as session:
        user = find_user(session, person)
        session.expunge(user)
    secret = services.secret_box.decrypt(user.totp_secret)

    def in_transaction(step):
        def run():
            with services.session_factory() as session:
                step(session)
                session.commit()
        return run

    def lockout():
        now = int(time.time())
        store.reserve_attempt(key, threshold=settings.lockout_threshold,
                              lock_seconds=settings.lockout_seconds, now=now)
        store.clear_failures(key)

    def claim_totp_step(session):
        step = int(time.time()) // totp.STEP_SECONDS
        if not signin._claim_step(session, user_id=user.id, step=step):
            sys.exit("the TOTP step was not claimed")

    def session_start(session):
        start_session(session, services, user=session.merge(user, load=False), now=utcnow())

    def audit_event(session):
        audit.record(session, action=AuditAction.LOGIN_SUCCEEDED, actor=user.username,
                     target=user.id, origin=origin, now=utcnow(), details={"kind": user.kind})

    return {
        "rate_limit": timed(lambda: signin_attempts.throttle_address(
            services, ip="127.0.0.1", scope="auth", now=utcnow()), calls),
        "lockout_reserve_and_clear": timed(lockout, calls),
        "find_user": timed(in_transaction(lambda s: find_user(s, person)), calls),
        "totp_secret_decrypt": timed(lambda: services.secret_box.decrypt(user.totp_secret), calls),
        "totp_code_check": timed(lambda: totp.matching_step(
            secret, accounts.current_code(), unix_time=time.time()), calls),
        "totp_replay_claim": timed(in_transaction(claim_totp_step), calls,
                                   before=accounts.forget_totp_steps),
        "access_token_issue": timed(lambda: issue_access_token(
            keys=services.keys, audience=services.audience, user=user,
            session_id=user.id, now=utcnow()), calls),
        "session_start": timed(in_transaction(session_start), calls),
        "audit_event": timed(in_transaction(audit_event), calls),
    }


def print_table(figures: dict[str, dict], rounds: int) -> None:
    """Print every piece, then what a login costs beyond its bcrypt check."""
    for name, value in figures.items():
        print(f"  {name:<28} wall {value['wall_ms']:8.2f} ms   cpu {value['cpu_ms']:8.2f} ms")
    check = figures[f"bcrypt_check_cost_{rounds}"]
    cheap = figures["bcrypt_check_cost_4"]
    for kind in ("service", "person"):
        rest = {measure: figures[f"login_{kind}_cost_4"][measure] - cheap[measure]
                for measure in ("wall_ms", "cpu_ms")}
        share = check["cpu_ms"] / (check["cpu_ms"] + rest["cpu_ms"])
        print(f"{kind} login beyond its bcrypt check: wall {rest['wall_ms']:.2f} ms, "
              f"cpu {rest['cpu_ms']:.2f} ms; bcrypt's share of the CPU at cost {rounds}: "
              f"{share:.3f} (the most logins/s ÷ bound could reach)")


def main(argv: list[str] | None = None) -> dict:
    """Seed the accounts, time every piece, print the table."""
    args = parse_args(argv)
    note = common.load_average_note()
    print(f"database: {common.database_kind(dict(os.environ))}; bcrypt rounds "
          f"{args.bcrypt_rounds}; {note}", flush=True)
    with common.in_process_service("bench-login-", bcrypt_rounds=args.bcrypt_rounds) as app:
        accounts = Accounts(app, args.bcrypt_rounds)
        figures = whole_logins(app, accounts, args.bcrypt_rounds, args.calls)
        figures.update(login_parts(app, accounts, args.calls))
    print_table(figures, args.bcrypt_rounds)
    common.write_json(args.json, {"pieces": figures, "bcrypt_rounds": args.bcrypt_rounds,
                                  "settings": [note]})
    return figures


if __name__ == "__main__":
    sys.exit(main() and None)
