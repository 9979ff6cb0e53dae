"""Measure the write path under load: creates and their revokes per second, ÷ ping, and p50/p99.

Loads GET /v1/ping, GET /v1/profile and the write load (POST /v1/requests, then the revoke of
the request it created: bench/writes.py) in alternation with wrk --latency, at 64 clients.
The permissions are `auto` with provisioner `none`, so every create is an active grant at
once and every revoke ends it. Writes per second count only 2xx creates and revokes; each
round prints its own write ÷ ping ratio. Meant for PostgreSQL + Redis (DATABASE_URL and
REDIS_URL; a private schema and key prefix are made and dropped), works on the temporary
SQLite file too. See README.md.

    DATABASE_URL=postgresql+psycopg://postgres@127.0.0.1:5432/test \
        .venv/bin/python bench/request_load.py [--duration 8] [--connections 64] [--json out.json]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys

import common
import writes
from common import Load, LoadResult, Runner, describe, mean_rate

ROLE, SUBROLE = "developer", "backend"
PEOPLE_PREFIX = "bench-user"
WRITE_RATIO_TARGET, WRITE_P99_TARGET_MS = 0.25, 150.0


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
    parser.add_argument("--rounds", type=int, default=3,
                        help="ping/profile/write triples, alternated (default 3)")
    parser.add_argument("--warmup", type=int, default=2,
                        help="seconds of unmeasured ping and profile load first (default 2)")
    add_seed_options(parser)
    parser.add_argument("--client", choices=("auto", "wrk", "python"), default="auto",
                        help="load client: wrk when installed (auto), or force one")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    if min(args.duration, args.connections, args.threads, args.workers, args.rounds,
           args.people, args.permissions) < 1:
        parser.error("every count and duration must be >= 1")
    return args


def add_seed_options(parser: argparse.ArgumentParser) -> None:
    """--people and --permissions, shared with scale_out.py."""
    parser.add_argument("--people", type=int, default=400,
                        help="requesters to create (default 400)")
    parser.add_argument("--permissions", type=int, default=15,
                        help="auto permissions to create (default 15); each write run gets "
                             "people x permissions / runs pairs, at least 2 per connection")


class Seed:
    """The set-up step: people with tokens and auto permissions, kept for the load runs."""

    def __init__(self, people: int, permissions: int):
        self.people, self.permissions = people, permissions
        self.tokens: list[str] = []
        self.keys: list[str] = []

    def __call__(self, env: dict) -> None:
        app = common.build_app(env)
        try:
            self.tokens = common.seed_people(app, count=self.people, role=ROLE, subrole=SUBROLE,
                                             prefix=PEOPLE_PREFIX)
            self.keys = common.seed_auto_permissions(app, count=self.permissions, role=ROLE,
                                                     subrole=SUBROLE)
        finally:
            common.dispose(app)

    def pairs(self) -> list[writes.Pair]:
        """Every (person, permission), permission-major so one person's turns spread out."""
        return [writes.Pair(common.person_username(PEOPLE_PREFIX, number), f"Bearer {token}", key)
                for key in self.keys for number, token in enumerate(self.tokens)]

    def slices(self, runs: int) -> list[list[writes.Pair]]:
        """A share of the pairs per write run: grants a run leaves open never meet the next."""
        pairs = self.pairs()
        size = len(pairs) // runs
        return [pairs[number * size:(number + 1) * size] for number in range(runs)]


def main(argv: list[str] | None = None) -> dict:
    """Seed, start gunicorn, alternate the three loads, print req/s, ratios and latencies."""
    args = parse_args(argv)
    client = common.choose_client(args.client)
    settings = [
        f"settings: {args.workers} gunicorn workers (gthread, "
        f"{os.environ.get('GUNICORN_THREADS', '4')} threads each), {common.cpu_cores()} cores, "
        f"database: {common.database_kind(dict(os.environ))}",
        f"load: {client}, {args.threads} threads, {args.connections} connections, "
        f"{args.duration} s per run, {args.rounds} ping/profile/write rounds alternated, "
        f"{args.warmup} s warm-up, {args.people} people x {args.permissions} auto permissions "
        "(provisioner none); a write is a create or its revoke",
        common.load_average_note(),
    ]
    for line in settings:
        print(line, flush=True)
    seed = Seed(args.people, args.permissions)
    results: dict[str, list] = {"ping": [], "profile": [], "write": []}
    with common.running_service(workers=args.workers, bcrypt_rounds=common.PRODUCTION_BCRYPT_ROUNDS,
                                prepare=seed) as service:
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
        for pairs in seed.slices(args.rounds):
            for name, load in (("ping", ping), ("profile", profile)):
                results[name].append(runner.run(load, args.duration))
                print(describe(name, results[name][-1]), flush=True)
            results["write"].append(writes.run(runner, pairs, args.duration))
            print(writes.describe("write", results["write"][-1]), flush=True)
    figures = summarise(results["ping"], results["profile"], results["write"])
    figures.update(settings=settings, connections=args.connections, workers=args.workers)
    print_summary(figures)
    common.write_json(args.json, figures)
    return figures


def _median_ms(values: list[float]) -> float | None:
    return statistics.median(values) * 1000 if values else None


def summarise(pings: list[LoadResult], profiles: list[LoadResult],
              write_runs: list[writes.WriteResult]) -> dict:
    """Throughput over all runs, per-round ratios to ping, median p50/p99 across runs."""
    ping = mean_rate(pings)
    write_rps = (sum(r.writes for r in write_runs) / sum(r.seconds for r in write_runs)
                 if write_runs else 0.0)
    figures: dict = {
        "ping_rps": ping, "profile_rps": mean_rate(profiles), "write_rps": write_rps,
        "write_ping_ratio": write_rps / ping if ping else 0.0,
        "write_ping_ratios": [w.per_second / p.ok_per_second
                              for w, p in zip(write_runs, pings, strict=True) if p.ok_per_second],
        "profile_ping_ratios": [q.ok_per_second / p.ok_per_second
                                for q, p in zip(profiles, pings, strict=True)
                                if p.ok_per_second],
        "write_p99_ms_rounds": [r.latency[99] * 1000 for r in write_runs if 99 in r.latency],
        "creates": sum(r.creates_ok for r in write_runs),
        "revokes": sum(r.revokes_ok for r in write_runs),
        "write_statuses": writes.combine(write_runs).statuses if write_runs else {},
        "write_not_ok": sum(r.not_ok + r.errors + r.out_of_pairs for r in write_runs),
        "not_ok": sum(r.not_ok + r.errors for r in pings + profiles),
    }
    figures["profile_ping_ratio"] = figures["profile_rps"] / ping if ping else 0.0
    for name, runs in (("ping", pings), ("profile", profiles), ("write", write_runs)):
        for percentile in (50, 99):
            figures[f"{name}_p{percentile}_ms"] = _median_ms(
                [r.latency[percentile] for r in runs if percentile in r.latency])
    return figures


def rounds_text(values: list[float], digits: int = 2) -> str:
    """`rounds 0.21, 0.25, 0.23` (the per-round figures behind a ratio)."""
    return "rounds " + ", ".join(f"{v:.{digits}f}" for v in values) if values else "no rounds"


def print_summary(figures: dict) -> None:
    """Print throughput, the ratios to ping with their rounds, and the latencies."""
    ratio = figures["write_ping_ratio"]
    print("\n==== summary " + "=" * 60)
    print(f"writes (creates + revokes): {figures['write_rps']:.1f} writes/s, {ratio:.3f} of ping "
          f"({figures['ping_rps']:.1f} req/s); {rounds_text(figures['write_ping_ratios'], 3)} "
          f"(target >= {WRITE_RATIO_TARGET}, {'ok' if ratio >= WRITE_RATIO_TARGET else 'BELOW'})")
    print(f"  {figures['creates']} creates and {figures['revokes']} revokes answered 2xx; "
          f"statuses {dict(sorted(figures['write_statuses'].items()))}")
    p99 = figures["write_p99_ms"]
    if p99 is not None:
        print(f"write p99 at these connections: {p99:.1f} ms; "
              f"{rounds_text(figures['write_p99_ms_rounds'], 1)} (target < {WRITE_P99_TARGET_MS} "
              f"ms, {'ok' if p99 < WRITE_P99_TARGET_MS else 'ABOVE'})")
    print(f"profile/ping throughput ratio at these connections: {figures['profile_ping_ratio']:.2f}"
          f"; {rounds_text(figures['profile_ping_ratios'])}")
    for name in ("ping", "profile", "write"):
        p50, p99 = figures[f"{name}_p50_ms"], figures[f"{name}_p99_ms"]
        if p50 is not None:
            print(f"  {name:<8} p50 {p50:7.1f} ms   p99 {p99:7.1f} ms")
    if figures["not_ok"] or figures["write_not_ok"]:
        print(f"  WARNING: {figures['write_not_ok']} write answers were not 2xx, failed or found "
              f"no free pair, {figures['not_ok']} ping/profile answers were not 2xx/3xx or failed")
    for line in figures["settings"]:
        print(line)


if __name__ == "__main__":
    sys.exit(main() and None)
