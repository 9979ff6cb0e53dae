"""Measure whether write throughput grows with a second instance on the same database.

Two gunicorn instances (W workers each) share one database, Redis prefix and set of secrets,
as two instances of a deployment do. Rounds alternate two write loads of the same total
connections (creates and their revokes, bench/writes.py): all of them against instance A
("one"), then half against A and half against B at the same time ("two", one load client per
instance). B idles during "one". The figure is writes/s of two ÷ one, per round: above 1 the
second instance adds throughput; at or below 1 the writes queue behind something both
instances share (a lock, a row). Meant for PostgreSQL + Redis: SQLite allows one writer at a
time, so there the figure shows that queue.

By default each instance is pinned to a core of its own (`--no-pin` turns it off): on a
2-core machine one unpinned instance already uses both cores for its CPU-bound work, so a
second one could add nothing whatever the locks; pinned, "one" is one instance on one core and
"two" adds a second instance on the other core, as a second host adds its CPUs. The database
and the load client run on every core in both. See README.md.

    DATABASE_URL=postgresql+psycopg://postgres@127.0.0.1:5432/test REDIS_URL=redis://127.0.0.1:6379/0 \
        .venv/bin/python bench/scale_out.py [--workers 2] [--duration 8] [--json out.json]
"""
from __future__ import annotations

import argparse
import os
import sys

import common
import request_load
import writes

DEFAULT_WORKERS = 2  # what issue 13 measured with: 2 workers per instance


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Read the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=8, help="seconds per load run (default 8)")
    parser.add_argument("--connections", type=int, default=64,
                        help="concurrent clients in total, split half/half for two (default 64)")
    parser.add_argument("--threads", type=int, default=2,
                        help="wrk threads in total, split half/half for two (default 2)")
    parser.add_argument("--workers", type=int, default=DEFAULT_WORKERS,
                        help=f"gunicorn workers per instance (default {DEFAULT_WORKERS})")
    parser.add_argument("--rounds", type=int, default=2,
                        help="one/two pairs, alternated (default 2)")
    parser.add_argument("--no-pin", dest="pin", action="store_false",
                        help="do not pin each instance to a core of its own (default: pinned "
                             "when the machine has 2 cores or more)")
    parser.add_argument("--warmup", type=int, default=1,
                        help="seconds of unmeasured ping load per instance first (default 1)")
    request_load.add_seed_options(parser)
    parser.add_argument("--client", choices=("auto", "wrk", "python"), default="auto",
                        help="load client: wrk when installed (auto), or force one")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    if min(args.duration, args.threads, args.workers, args.rounds, args.people,
           args.permissions) < 1 or args.connections < 2:
        parser.error("every count and duration must be >= 1, --connections >= 2")
    return args


def pinned(args: argparse.Namespace) -> bool:
    """Pin each instance to a core when asked and the machine has a core for each."""
    return args.pin and common.cpu_cores() >= 2


def summarise(ones: list[writes.WriteResult], twos: list[writes.WriteResult]) -> dict:
    """Writes/s over all runs of each, the ratio two ÷ one over all and per round."""
    def rate(runs):
        return sum(r.writes for r in runs) / sum(r.seconds for r in runs)

    one, two = rate(ones), rate(twos)
    return {
        "one_wps": one, "two_wps": two, "ratio": two / one if one else 0.0,
        "ratios": [t.per_second / o.per_second for o, t in zip(ones, twos, strict=True)
                   if o.per_second],
        "one_wps_rounds": [r.per_second for r in ones],
        "two_wps_rounds": [r.per_second for r in twos],
        "not_ok": sum(r.not_ok + r.errors + r.out_of_pairs for r in ones + twos),
    }


def main(argv: list[str] | None = None) -> dict:
    """Seed, start two instances, alternate the one- and two-instance loads, print the ratio."""
    args = parse_args(argv)
    client = common.choose_client(args.client)
    settings = [
        f"settings: 2 gunicorn instances of {args.workers} workers each (gthread, "
        f"{os.environ.get('GUNICORN_THREADS', '4')} threads each) on one database, "
        f"{common.cpu_cores()} cores, "
        f"{'each instance pinned to a core of its own' if pinned(args) else 'not pinned'}, "
        f"database: {common.database_kind(dict(os.environ))}",
        f"load: {client}, {args.connections} connections and {args.threads} threads in total "
        f"(two: half per instance, one load client each), {args.duration} s per run, "
        f"{args.rounds} one/two rounds alternated, {args.people} people x {args.permissions} "
        "auto permissions; a write is a create or its revoke",
        common.load_average_note(),
    ]
    for line in settings:
        print(line, flush=True)
    seed = request_load.Seed(args.people, args.permissions)
    ones: list[writes.WriteResult] = []
    twos: list[writes.WriteResult] = []
    with common.running_service(workers=args.workers, bcrypt_rounds=common.PRODUCTION_BCRYPT_ROUNDS,
                                prepare=seed, instances=2, pin_cpus=pinned(args)) as service:
        runner = common.Runner(client, service.base_url, service.workdir, args.threads,
                               args.connections)
        if args.warmup:
            for base_url in service.base_urls:
                common.Runner(client, base_url, service.workdir, args.threads,
                              args.connections).run(common.Load("/v1/ping"), args.warmup)
        slices = seed.slices(2 * args.rounds)
        for number in range(args.rounds):
            ones.append(writes.run(runner, slices[2 * number], args.duration,
                                   base_urls=[service.base_urls[0]]))
            print(writes.describe("one", ones[-1]), flush=True)
            twos.append(writes.run(runner, slices[2 * number + 1], args.duration,
                                   base_urls=list(service.base_urls)))
            print(writes.describe("two", twos[-1]), flush=True)
    figures = summarise(ones, twos)
    figures.update(settings=settings, workers=args.workers, connections=args.connections,
                   pinned=pinned(args))
    print("\n==== summary " + "=" * 60)
    print(f"writes/s with two instances ÷ one: {figures['two_wps']:.1f} / {figures['one_wps']:.1f}"
          f" = {figures['ratio']:.2f}; {request_load.rounds_text(figures['ratios'])} "
          "(above 1: a second instance adds write throughput)")
    if figures["not_ok"]:
        print(f"  WARNING: {figures['not_ok']} write answers were not 2xx, failed or found no pair")
    for line in settings:
        print(line)
    common.write_json(args.json, figures)
    return figures


if __name__ == "__main__":
    sys.exit(main() and None)
