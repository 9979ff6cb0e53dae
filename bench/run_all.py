"""Run every benchmark and write docs/benchmarks.md with a chart, docs/benchmarks.png.

Each part runs as its own process (bench/*.py --json) so one part's set-up never leaks into
the next. Durations are options; the defaults keep the whole run under about 8 minutes on
two cores. Every row of issue 13's table comes out as a ratio of loads alternated in one
run, with its rounds. See README.md.

    .venv/bin/python bench/run_all.py --out docs/ \
        --pg-url postgresql+psycopg://postgres@127.0.0.1:5432/test --redis-url redis://127.0.0.1:6379/0
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import common

HERE = Path(__file__).resolve().parent


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Read the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs", help="folder for benchmarks.md and .png")
    parser.add_argument("--pg-url", default=os.environ.get("BENCH_PG_URL"),
                        help="PostgreSQL URL (a private schema is made and dropped); without it "
                             "the PostgreSQL parts run on SQLite and say so")
    parser.add_argument("--redis-url", default=os.environ.get("BENCH_REDIS_URL"),
                        help="Redis URL for the PostgreSQL runs (a private prefix is used)")
    parser.add_argument("--auth-duration", type=int, default=8,
                        help="seconds per ping/profile/login run of the auth part (default 8)")
    parser.add_argument("--auth-rounds", type=int, default=3,
                        help="ping/profile(/check) rounds of the auth part (default 3)")
    parser.add_argument("--load-duration", type=int, default=8,
                        help="seconds per run of the write/latency and scale-out parts "
                             "(default 8)")
    parser.add_argument("--load-rounds", type=int, default=3,
                        help="ping/profile/write rounds of the write part (default 3)")
    parser.add_argument("--scale-rounds", type=int, default=2,
                        help="one/two-instance rounds of the scale-out part (default 2)")
    parser.add_argument("--scale-workers", type=int, default=2,
                        help="gunicorn workers per instance in the scale-out part (default 2, "
                             "as issue 13 measured)")
    parser.add_argument("--policy-iterations", type=int, default=3000,
                        help="decisions timed per rule count (default 3000)")
    parser.add_argument("--bcrypt-rounds", type=int, default=12, help="bcrypt cost (default 12)")
    parser.add_argument("--note", default="",
                        help="a line for the results file, e.g. 'measured while other work ran'")
    return parser.parse_args(argv)


def run_part(script: str, options: list[str], env: dict) -> dict:
    """Run one bench script, show its output as it comes, return its --json figures."""
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        command = [sys.executable, str(HERE / script), *options, "--json", out.name]
        print(f"\n==== {script} {' '.join(options)}", flush=True)
        done = subprocess.run(command, env=env, check=False)
        if done.returncode != 0:
            sys.exit(f"{script} failed with exit code {done.returncode}")
        return json.loads(Path(out.name).read_text())


def part_environment(database_url: str | None, redis_url: str | None) -> dict:
    """The environment of one part: which database and state store it runs on."""
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL",
                                                             "REDIS_PREFIX")}
    if database_url:
        env["DATABASE_URL"] = database_url
    if redis_url:
        env["REDIS_URL"] = redis_url
    return env


def machine() -> dict:
    """What the figures were measured on."""
    cpu = "unknown CPU"
    with open("/proc/cpuinfo") if Path("/proc/cpuinfo").exists() else open(os.devnull) as info:
        for line in info:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory = ""
    if Path("/proc/meminfo").exists():
        kib = int(Path("/proc/meminfo").read_text().split()[1])
        memory = f", {kib / 1024 / 1024:.0f} GiB RAM"
    return {"cpu": f"{common.cpu_cores()} cores ({cpu}){memory}",
            "os": f"{platform.system()} {platform.release()}",
            "python": platform.python_version(), "load": common.load_average()}


def main(argv: list[str] | None = None) -> None:
    """Run the parts, then write the results file and the chart."""
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started, box = time.monotonic(), machine()
    pg_env = part_environment(args.pg_url, args.redis_url)
    sqlite_env = part_environment(None, None)
    results = {"machine": box, "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
               "pg": bool(args.pg_url), "redis": bool(args.redis_url and args.pg_url),
               "note": args.note}
    auth = ["--duration", str(args.auth_duration), "--bcrypt-rounds", str(args.bcrypt_rounds),
            "--rounds", str(args.auth_rounds)]
    # /v1/check is a PostgreSQL + Redis figure: on SQLite only when there is no PostgreSQL.
    results["auth_sqlite"] = run_part("auth_overhead.py",
                                      auth + (["--no-check"] if args.pg_url else []), sqlite_env)
    if args.pg_url:
        results["auth_pg"] = run_part("auth_overhead.py", auth + ["--login-duration", "3"], pg_env)
    results["load"] = run_part("request_load.py", ["--duration", str(args.load_duration),
                                                   "--rounds", str(args.load_rounds)], pg_env)
    results["scale"] = run_part("scale_out.py", ["--duration", str(args.load_duration),
                                                 "--rounds", str(args.scale_rounds),
                                                 "--workers", str(args.scale_workers)], pg_env)
    results["policy"] = run_part("policy_decision.py",
                                 ["--iterations", str(args.policy_iterations)], pg_env)
    results["queries"] = run_part("query_counts.py", [], pg_env)
    results["breakdown_sqlite"] = run_part("auth_breakdown.py", ["--calls", "300"], sqlite_env)
    if args.pg_url:
        results["breakdown_pg"] = run_part("auth_breakdown.py", ["--calls", "300"], pg_env)
    box["load_after"] = common.load_average()
    results["minutes"] = (time.monotonic() - started) / 60
    (out / "benchmarks.json").write_text(json.dumps(results, indent=2) + "\n")
    import report

    (out / "benchmarks.md").write_text(report.markdown(results, chart="benchmarks.png"))
    report.chart(results, out / "benchmarks.png")
    print(f"\nwrote {out / 'benchmarks.md'}, {out / 'benchmarks.png'} and {out / 'benchmarks.json'} "
          f"in {results['minutes']:.1f} min")


if __name__ == "__main__":
    main()
