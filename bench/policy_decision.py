"""Measure the policy decision time with 10 and with 10,000 rules (target: at most 1.2x).

Times what a request's creation asks of the policy: the indexed look-up of the rules that can
match the user (security_api.access.grants.candidate_rules) and the engine's choice among them
(security_api.access.policy.decide), in-process against a real database. Two databases are filled,
one per size, and timed batch by batch in alternation so drift affects both. See README.md.

    .venv/bin/python bench/policy_decision.py [--iterations 3000] [--json out.json]
"""
from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time

import common
from sqlalchemy import text

TARGET = 1.2
ROLE, SUBROLE = "developer", "backend"
# rules -> (permissions, roles): every permission gets one rule per role
LAYOUTS = {10: (10, 1), 10_000: (100, 100)}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Read the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=3000,
                        help="decisions timed per size (default 3000)")
    parser.add_argument("--batch", type=int, default=100,
                        help="decisions per timed batch; sizes alternate batch by batch "
                             "(default 100)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="the batches in this many consecutive groups, each with its own "
                             "ratio, shown next to the overall one (default 3)")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    if min(args.iterations, args.batch, args.rounds) < 1 or args.iterations < args.batch:
        parser.error("--iterations, --batch and --rounds must be >= 1, iterations >= batch")
    if args.iterations // args.batch < args.rounds:
        parser.error("need at least one batch per round: iterations >= batch x rounds")
    return args


def fill_rules(app, *, permissions: int, roles: int) -> None:
    """Store permissions x roles rules; the first role is the subject's, the rest are others'."""
    from security_api import audit
    from security_api.accounts import users
    from security_api.clock import utcnow
    from security_api.models import Permission, PolicyRule

    now = utcnow()
    with app.extensions["security_api"].session_factory() as session:
        users.create_role(session, name=ROLE, subroles=[SUBROLE], actor="bench",
                             origin=audit.Origin(), now=now)
        for p in range(permissions):
            session.add(Permission(key=f"bench-perm-{p:03d}", name=f"perm {p}", description="",
                                   max_duration_minutes=60, requires_justification=False,
                                   provisioner="none", provisioner_config={}, builtin=False,
                                   created_at=now))
        session.flush()
        for p in range(permissions):
            for r in range(roles):
                role, subrole = (ROLE, SUBROLE) if r == 0 else (f"role-{r:03d}", "*")
                session.add(PolicyRule(permission_key=f"bench-perm-{p:03d}", role=role,
                                       subrole=subrole, mode="auto", approvers=[],
                                       approvals_required=1, created_at=now))
        session.commit()
        if session.get_bind().dialect.name == "postgresql":
            session.execute(text("ANALYZE policy_rules"))  # what autovacuum does in production
            session.commit()


@contextlib.contextmanager
def filled_database(rules: int):
    """A throw-away database (or private PostgreSQL schema) holding `rules` rules."""
    permissions, roles = LAYOUTS[rules]
    with common.in_process_service("bench-policy-") as app:
        fill_rules(app, permissions=permissions, roles=roles)
        yield app


def timed_batch(session, subject, permission, count: int) -> float:
    """Seconds per decision over `count` decisions; checks that the decision is the right one."""
    from security_api.access.grants import decision_for

    started = time.perf_counter()
    for _ in range(count):
        decision = decision_for(session, subject, permission)
    elapsed = time.perf_counter() - started
    if decision.rule is None or decision.rule.role != ROLE:
        sys.exit(f"unexpected decision: {decision}")
    return elapsed / count


def round_ratios(samples: dict[int, list[float]], rounds: int) -> list[float]:
    """10,000 ÷ 10 of each consecutive group of alternated batches (medians within a group)."""
    small, large = (samples[size] for size in LAYOUTS)
    size = len(small) // rounds
    return [statistics.median(large[n * size:(n + 1) * size])
            / statistics.median(small[n * size:(n + 1) * size]) for n in range(rounds)]


def main(argv: list[str] | None = None) -> dict:
    """Fill both databases, alternate timed batches, print the medians and their ratio."""
    args = parse_args(argv)
    from security_api.access.grants import Subject
    from security_api.models import Permission

    note = common.load_average_note()
    print(f"database: {common.database_kind(dict(os.environ))}; {note}", flush=True)
    subject = Subject(id="bench", username="bench", role=ROLE, subrole=SUBROLE, kind="person")
    samples: dict[int, list[float]] = {size: [] for size in LAYOUTS}
    with contextlib.ExitStack() as stack:
        sessions = {}
        for size in LAYOUTS:
            app = stack.enter_context(filled_database(size))
            session = stack.enter_context(app.extensions["security_api"].session_factory())
            sessions[size] = (session, session.get(Permission, "bench-perm-000"))
        for session, permission in sessions.values():
            timed_batch(session, subject, permission, args.batch)  # warm up caches and plans
        for _ in range(args.iterations // args.batch):
            for size, (session, permission) in sessions.items():
                samples[size].append(timed_batch(session, subject, permission, args.batch))
    small, large = (statistics.median(samples[size]) for size in LAYOUTS)
    figures = {"rules_10_us": small * 1e6, "rules_10000_us": large * 1e6,
               "ratio": large / small, "ratios": round_ratios(samples, args.rounds),
               "iterations": args.iterations, "settings": [note]}
    verdict = "ok" if figures["ratio"] <= TARGET else "ABOVE TARGET"
    print(f"  10 rules      {figures['rules_10_us']:8.1f} us per decision (median of batches)")
    print(f"  10,000 rules  {figures['rules_10000_us']:8.1f} us per decision")
    print(f"policy decision time 10,000 / 10 rules: {figures['ratio']:.2f}; rounds "
          + ", ".join(f"{r:.2f}" for r in figures["ratios"]) + f" (target <= {TARGET}, {verdict})")
    common.write_json(args.json, figures)
    return figures


if __name__ == "__main__":
    sys.exit(main() and None)
