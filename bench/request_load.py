"""Measure request creation under load, and p50/p99 latencies at 64 concurrent clients.

Loads GET /v1/ping, GET /v1/profile and POST /v1/requests in alternation with wrk --latency.
Every POST creates a new request: each (person, permission) pair is sent once, since a person
may hold one open request per permission. The permissions are `auto` with provisioner `none`,
so every request becomes an active grant at once. Meant for PostgreSQL (DATABASE_URL; a
private schema is made and dropped), works on the temporary SQLite file too. See README.md.

    DATABASE_URL=postgresql+psycopg://postgres@127.0.0.1:5432/test \
        .venv/bin/python bench/request_load.py [--duration 8] [--connections 64] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

import common
from common import Load, LoadResult, Runner, describe, mean_rate

ROLE, SUBROLE = "developer", "backend"
ENDPOINTS = ("ping", "profile", "create")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Read the command line."""
    cores = common.cpu_cores()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=8, help="seconds per load run (default 8)")
    parser.add_argument("--connections", type=int, default=64,
                        help="concurrent clients (default 64)")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads (default 2)")
    parser.add_argument("--workers", type=int, default=cores * 2 + 1,
                        help=f"gunicorn workers (default cores*2+1 = {cores * 2 + 1})")
    parser.add_argument("--rounds", type=int, default=2,
                        help="ping/profile/create triples, alternated (default 2)")
    parser.add_argument("--warmup", type=int, default=2,
                        help="seconds of unmeasured ping and profile load first (default 2)")
    parser.add_argument("--people", type=int, default=400,
                        help="requesters to create (default 400)")
    parser.add_argument("--permissions", type=int, default=15,
                        help="auto permissions to create (default 15); people x permissions "
                             "must exceed the requests one run creates")
    parser.add_argument("--client", choices=("auto", "wrk", "python"), default="auto",
                        help="load client: wrk when installed (auto), or force one")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    if min(args.duration, args.connections, args.threads, args.workers, args.rounds,
           args.people, args.permissions) < 1:
        parser.error("every count and duration must be >= 1")
    return args


class Seed:
    """The set-up step: people with tokens and auto permissions, kept for the load runs."""

    def __init__(self, people: int, permissions: int):
        self.people, self.permissions = people, permissions
        self.tokens: list[str] = []
        self.keys: list[str] = []

    def __call__(self, env: dict) -> None:
        app = common.build_app(env)
        try:
            self.tokens = common.seed_people(app, count=self.people, role=ROLE, subrole=SUBROLE)
            self.keys = common.seed_auto_permissions(app, count=self.permissions, role=ROLE,
                                                     subrole=SUBROLE)
        finally:
            common.dispose(app)

    def pairs(self) -> list[tuple[str, str]]:
        """Every (Authorization, body) pair, permission-major so one person's turns spread out."""
        return [(f"Bearer {token}", json.dumps({"permission": key, "justification": "bench"}))
                for key in self.keys for token in self.tokens]


def main(argv: list[str] | None = None) -> dict:
    """Seed, start gunicorn, alternate the three loads, print req/s, ratios and latencies."""
    args = parse_args(argv)
    client = common.choose_client(args.client)
    settings = [
        f"settings: {args.workers} gunicorn workers (gthread, "
        f"{os.environ.get('GUNICORN_THREADS', '4')} threads each), {common.cpu_cores()} cores, "
        f"database: {common.database_kind(dict(os.environ))}",
        f"load: {client}, {args.threads} threads, {args.connections} connections, "
        f"{args.duration} s per run, {args.rounds} rounds alternated, {args.warmup} s warm-up, "
        f"{args.people} people x {args.permissions} auto permissions",
        common.load_average_note(),
    ]
    for line in settings:
        print(line, flush=True)
    seed = Seed(args.people, args.permissions)
    results: dict[str, list[LoadResult]] = {name: [] for name in ENDPOINTS}
    with common.running_service(workers=args.workers, bcrypt_rounds=4, prepare=seed) as service:
        token = seed.tokens[0]
        common.expect(common.call(service.base_url, "/v1/profile",
                                  headers={"Authorization": f"Bearer {token}"}),
                      200, "GET /v1/profile")
        runner = Runner(client, service.base_url, service.workdir, args.threads, args.connections)
        auth = (("Authorization", f"Bearer {token}"),)
        ping, profile = Load("/v1/ping"), Load("/v1/profile", headers=auth)
        if args.warmup:
            runner.run(ping, args.warmup)
            runner.run(profile, args.warmup)
        pairs = seed.pairs()
        share = len(pairs) // args.rounds
        for number in range(args.rounds):
            create = Load("/v1/requests", method="POST",
                          headers=(("Content-Type", "application/json"),),
                          rotate=tuple(pairs[number * share:(number + 1) * share]))
            for name, load in (("ping", ping), ("profile", profile), ("create", create)):
                results[name].append(runner.run(load, args.duration))
                print(describe(name, results[name][-1]), flush=True)
    figures = summarise(results)
    figures["settings"] = settings
    print_summary(figures)
    common.write_json(args.json, figures)
    return figures


def summarise(results: dict[str, list[LoadResult]]) -> dict:
    """Throughput over all runs, median p50/p99 across runs, ratios to ping."""
    figures: dict = {"not_ok": sum(r.not_ok + r.errors for runs in results.values() for r in runs)}
    for name, runs in results.items():
        figures[f"{name}_rps"] = mean_rate(runs)
        for percentile in (50, 99):
            values = [r.latency[percentile] for r in runs if percentile in r.latency]
            figures[f"{name}_p{percentile}_ms"] = statistics.median(values) * 1000 if values else None
    ping = figures["ping_rps"]
    figures["create_ping_ratio"] = figures["create_rps"] / ping if ping else 0.0
    figures["profile_ping_ratio"] = figures["profile_rps"] / ping if ping else 0.0
    return figures


def print_summary(figures: dict) -> None:
    """Print throughput, the ratios to ping and the latencies."""
    print("\n==== summary " + "=" * 60)
    print(f"requests created: {figures['create_rps']:.1f} req/s, "
          f"{figures['create_ping_ratio']:.2f} of ping ({figures['ping_rps']:.1f} req/s)")
    print(f"profile/ping throughput ratio at these connections: {figures['profile_ping_ratio']:.2f}")
    for name in ENDPOINTS:
        p50, p99 = figures[f"{name}_p50_ms"], figures[f"{name}_p99_ms"]
        if p50 is not None:
            print(f"  {name:<8} p50 {p50:7.1f} ms   p99 {p99:7.1f} ms")
    if figures["not_ok"]:
        print(f"  WARNING: {figures['not_ok']} answers were not 2xx/3xx or failed: with 'create', "
              "add --people or --permissions (each pair creates one request)")
    for line in figures["settings"]:
        print(line)


if __name__ == "__main__":
    sys.exit(main() and None)
