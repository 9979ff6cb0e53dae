"""Measure what authentication costs: /v1/profile and /v1/check against /v1/ping, logins vs bcrypt.

One run sets up a throw-away database (or a private schema of DATABASE_URL, and REDIS_URL),
starts gunicorn on a free local port, loads it with wrk (or a multi-process Python client when
wrk is missing; logins with client threads that wait for every login they sent) and prints
ratios. It never runs as a test: timings depend on the machine.
See bench/README.md.

    .venv/bin/python bench/auth_overhead.py [--duration 10] [--connections 16] [--workers N]
                                            [--bcrypt-rounds 12] [--json out.json]
"""
from __future__ import annotations

import argparse
import http.client
import multiprocessing
import os
import secrets
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import common
from check_load import CheckSeed
from common import Load, LoadResult, Runner, describe, mean_rate

PROFILE_TARGET, CHECK_TARGET = 0.9, 0.85
BCRYPT_SAMPLES = 5


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Read the command line."""
    cores = common.cpu_cores()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10,
                        help="seconds per load run (default 10)")
    parser.add_argument("--login-duration", type=int, default=None,
                        help="seconds of the login run (default: --duration)")
    parser.add_argument("--connections", type=int, default=16,
                        help="concurrent connections of the load client (default 16)")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads (default 2)")
    parser.add_argument("--workers", type=int, default=cores * 2 + 1,
                        help=f"gunicorn workers (default cores*2+1 = {cores * 2 + 1})")
    parser.add_argument("--bcrypt-rounds", type=int, default=12,
                        help="bcrypt cost of the service (default 12, the production cost)")
    parser.add_argument("--rounds", type=int, default=4,
                        help="ping/profile(/check) rounds, alternated so drift hits each "
                             "(default 4)")
    parser.add_argument("--check", action=argparse.BooleanOptionalAction, default=True,
                        help="also load GET /v1/check as a service account each round "
                             "(default on; --no-check skips it)")
    parser.add_argument("--warmup", type=int, default=2,
                        help="seconds of unmeasured load per endpoint first (default 2, 0 = none)")
    parser.add_argument("--client", choices=("auto", "wrk", "python"), default="auto",
                        help="load client: wrk when installed (auto), or force one")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    args.login_duration = args.login_duration or args.duration
    if min(args.duration, args.login_duration, args.connections, args.threads, args.workers,
           args.rounds) < 1:
        parser.error("durations, --connections, --threads, --workers and --rounds must be >= 1")
    return args


def prepare_database(username: str, secret: str, check: CheckSeed | None):
    """Return the set-up step: a role and the service account the benchmark signs in with.

    With `check`, also the /v1/check tool, its subject and the subject's permission.
    """
    def prepare(env: dict) -> None:
        common.flask_cli(env, "create-role", "developer", "--subrole", "backend")
        common.flask_cli(env, "create-user", username, "--role", "developer", "--subrole",
                         "backend", "--service", "--password-stdin", stdin=secret + "\n")
        if check is not None:
            check(env)
    return prepare


def log_in(base_url: str, authorization: str) -> str:
    """Sign in once as the service account (Basic, body {}, no TOTP); return the access token."""
    body = common.expect(common.call(base_url, "/v1/login", method="POST", body=b"{}",
                                     headers={"Authorization": authorization,
                                              "Content-Type": "application/json"}),
                         200, "POST /v1/login")
    return body["token"]


def measure_alternated(runner: Runner, loads: dict[str, Load], *, seconds: int, rounds: int,
                       warmup: int) -> dict[str, list[LoadResult]]:
    """Run each load once per round, in order (ping first); return every run of each."""
    if warmup:
        for load in loads.values():
            runner.run(load, warmup)
    runs: dict[str, list[LoadResult]] = {name: [] for name in loads}
    for _ in range(rounds):
        for name, load in loads.items():
            runs[name].append(runner.run(load, seconds))
            print(describe(name, runs[name][-1]), flush=True)
    return runs


def ratios(runs: list[LoadResult], pings: list[LoadResult]) -> list[float]:
    """Each round's throughput ÷ the same round's ping."""
    return [r.ok_per_second / p.ok_per_second for r, p in zip(runs, pings, strict=True)
            if p.ok_per_second]


def _timed_checks(password: str, password_hash: str,
                  start_at: float) -> tuple[float, list, list]:
    """One process of the bound: wait for the common start, check BCRYPT_SAMPLES times.

    Returns when it finished (CLOCK_MONOTONIC is the same in every process), each check's
    wall time and each check's CPU time.
    """
    from security_api.accounts.passwords import verify_password

    time.sleep(max(0.0, start_at - time.monotonic()))
    walls, cpus = [], []
    for _ in range(BCRYPT_SAMPLES):
        cpu, wall = time.thread_time(), time.perf_counter()
        verify_password(password, password_hash)
        walls.append(time.perf_counter() - wall)
        cpus.append(time.thread_time() - cpu)
    return time.monotonic(), walls, cpus


def bcrypt_bound(rounds: int, processes: int) -> tuple[float, float, float]:
    """Checks per second of `processes` processes checking at once, and one check's median
    wall and CPU time.

    The bound is measured, not cores ÷ one check: every core busy with bcrypt at once, as the
    login run keeps them, at the same cost and with the service's own code.
    """
    from security_api.accounts.passwords import hash_password

    password = secrets.token_urlsafe(24)
    password_hash = hash_password(password, rounds=rounds)
    start_at = time.monotonic() + 1.0  # every process is up before the clock starts
    with multiprocessing.get_context("fork").Pool(processes) as pool:
        done = pool.starmap(_timed_checks, [(password, password_hash, start_at)] * processes)
    finished = max(end for end, _, _ in done)
    walls = [sample for _, samples, _ in done for sample in samples]
    cpus = [sample for _, _, samples in done for sample in samples]
    return len(walls) / (finished - start_at), statistics.median(walls), statistics.median(cpus)


@dataclass(frozen=True)
class LoginRun:
    """One login run: answers counted when every login sent had answered, and the CPU the
    service's processes (gunicorn's master and workers, their threads) used meanwhile."""

    ok: int
    not_ok: int
    errors: int
    seconds: float
    service_cpu_seconds: float

    @property
    def ok_per_second(self) -> float:
        """2xx answers per second from the first login sent to the last answer."""
        return self.ok / self.seconds if self.seconds else 0.0


def _sign_in_back_to_back(base_url: str, headers: dict, stop_at: float) -> tuple[int, int, int,
                                                                                 float]:
    """One client: log in until `stop_at`, each answer awaited; (ok, not ok, errors, last)."""
    ok = not_ok = errors = 0
    last = time.monotonic()
    while time.monotonic() < stop_at:
        connection = http.client.HTTPConnection(*common.split_url(base_url),
                                                timeout=common.LONG_TIMEOUT_SECONDS)
        try:
            connection.request("POST", "/v1/login", body=b"{}", headers=headers)
            status = connection.getresponse()
            status.read()
        except (OSError, http.client.HTTPException):
            errors += 1
            continue
        finally:
            connection.close()
        last = time.monotonic()
        if 200 <= status.status < 300:
            ok += 1
        else:
            not_ok += 1
    return ok, not_ok, errors, last


def service_cpu_seconds() -> float:
    """CPU seconds (user + system) used so far by every live process started from this one.

    The login run's client is threads of this process, so its descendants are gunicorn's
    master and workers.
    """
    parents, cpu = {}, {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # ended meanwhile
        pid = int(stat.parent.name)
        parents[pid] = int(fields[1])
        cpu[pid] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    ours, total = {os.getpid()}, 0.0
    for pid in sorted(parents):  # children have higher pids unless the pid space wrapped
        if parents[pid] in ours:
            ours.add(pid)
            total += cpu[pid]
    return total


def drained_logins(base_url: str, authorization: str, *, seconds: int,
                   connections: int) -> LoginRun:
    """Log in on `connections` connections for `seconds`, then wait for every login sent.

    A login takes seconds under this load (16 connections share 2 cores, about 2.2 s each,
    answered together), so a run cut at its end threw away up to a whole round of finished
    bcrypt work: counting every login sent, over the time to the last answer, does not.
    """
    headers = {"Authorization": authorization, "Content-Type": "application/json"}
    cpu_before, started = service_cpu_seconds(), time.monotonic()
    with ThreadPoolExecutor(connections) as clients:
        done = list(clients.map(lambda _: _sign_in_back_to_back(base_url, headers,
                                                                started + seconds),
                                range(connections)))
    ok, not_ok, errors = (sum(column[i] for column in done) for i in range(3))
    return LoginRun(ok, not_ok, errors, max(last for *_, last in done) - started,
                    service_cpu_seconds() - cpu_before)


def measure_logins(base_url: str, authorization: str, *, seconds: int, connections: int,
                   warmup: int) -> LoginRun:
    """Load POST /v1/login as the service account (Basic auth, body {}, no TOTP)."""
    common.settle(base_url)
    if warmup:
        drained_logins(base_url, authorization, seconds=warmup, connections=connections)
    result = drained_logins(base_url, authorization, seconds=seconds, connections=connections)
    print(f"  {'login':<10} {result.ok_per_second:9.1f} req/s  ({result.ok} in "
          f"{result.seconds:.1f} s, every login sent answered)", flush=True)
    return result


def _rounds(values: list[float]) -> str:
    return "rounds " + ", ".join(f"{v:.2f}" for v in values)


def print_summary(figures: dict, settings: list[str]) -> None:
    """Print the ratios with their rounds, the raw figures and the settings."""
    print("\n==== summary " + "=" * 60)
    for name, target in (("profile", PROFILE_TARGET), ("check", CHECK_TARGET)):
        if f"{name}_ping_ratio" not in figures:
            continue
        ratio = figures[f"{name}_ping_ratio"]
        verdict = "ok" if ratio >= target else "BELOW TARGET"
        print(f"{name}/ping throughput ratio: {ratio:.2f}; "
              f"{_rounds(figures[f'{name}_ping_ratios'])} (target >= {target}, {verdict})")
        print(f"  ping {figures['ping_rps']:.1f} req/s, {name} {figures[f'{name}_rps']:.1f} req/s")
    print(f"logins/s vs bcrypt bound: {figures['login_rps']:.1f} / {figures['bcrypt_bound']:.1f}"
          f" = {figures['login_bound_ratio']:.2f} (one login run, every login sent answered)")
    print(f"  bound = bcrypt checks/s of {figures['cores']} processes at once; one check "
          f"{figures['bcrypt_check_ms']:.1f} ms (median), cores / check would be "
          f"{figures['cores'] / figures['bcrypt_check_ms'] * 1000:.1f}")
    print(f"  service CPU per login {figures['login_cpu_ms']:.1f} ms (gunicorn's processes "
          f"during the run), one check's CPU {figures['bcrypt_check_cpu_ms']:.1f} ms: bcrypt is "
          f"{figures['bcrypt_check_cpu_ms'] / max(figures['login_cpu_ms'], 1e-9):.2f} of a "
          f"login's CPU (what a busy machine does not skew)")
    if figures["login_not_ok"] or figures["login_errors"]:
        print(f"  WARNING: {figures['login_not_ok']} logins were not 2xx, "
              f"{figures['login_errors']} socket errors")
    for line in settings:
        print(line)


def main(argv: list[str] | None = None) -> dict:
    """Set up, start gunicorn, measure, always stop gunicorn, print the summary."""
    args = parse_args(argv)
    cores = common.cpu_cores()
    client = common.choose_client(args.client)
    username, secret = f"bench-bot-{secrets.token_hex(3)}", secrets.token_urlsafe(24)
    alternated = "ping/profile/check" if args.check else "ping/profile"
    settings = [
        f"settings: {args.workers} gunicorn workers (gthread, "
        f"{os.environ.get('GUNICORN_THREADS', '4')} threads each), {cores} cores, bcrypt rounds "
        f"{args.bcrypt_rounds}, database: {common.database_kind(dict(os.environ))}",
        f"load: {client}" + (" (wrk not used: Python fallback, slower; compare ratios only)"
                             if client == "python" else f", {args.threads} threads")
        + f", {args.connections} connections, {args.duration} s per run, "
          f"{args.rounds} {alternated} rounds alternated, {args.warmup} s warm-up",
        common.load_average_note(),
    ]
    for line in settings:
        print(line, flush=True)
    check_seed = CheckSeed() if args.check else None
    with common.running_service(workers=args.workers, bcrypt_rounds=args.bcrypt_rounds,
                                prepare=prepare_database(username, secret, check_seed)) as service:
        authorization = common.basic_header(username, secret)
        token = log_in(service.base_url, authorization)
        common.expect(common.call(service.base_url, "/v1/profile",
                                  headers={"Authorization": f"Bearer {token}"}),
                      200, "GET /v1/profile")
        loads = {"ping": Load("/v1/ping"),
                 "profile": Load("/v1/profile", headers=(("Authorization", f"Bearer {token}"),))}
        if check_seed is not None:
            check_seed.ready(service.base_url)
            loads["check"] = check_seed.load()
        runner = Runner(client, service.base_url, service.workdir, args.threads, args.connections)
        runs = measure_alternated(runner, loads, seconds=args.duration, rounds=args.rounds,
                                  warmup=args.warmup)
        bound, check, check_cpu = bcrypt_bound(args.bcrypt_rounds, cores)
        logins = measure_logins(service.base_url, authorization, seconds=args.login_duration,
                                connections=args.connections, warmup=args.warmup)
    ping = mean_rate(runs["ping"])
    answered = logins.ok + logins.not_ok
    figures = {
        "ping_rps": ping,
        "login_rps": logins.ok_per_second, "bcrypt_check_ms": check * 1000, "bcrypt_bound": bound,
        "login_bound_ratio": logins.ok_per_second / bound, "cores": cores,
        "login_not_ok": logins.not_ok, "login_errors": logins.errors,
        "login_seconds": logins.seconds,
        "login_cpu_ms": logins.service_cpu_seconds / answered * 1000 if answered else 0.0,
        "bcrypt_check_cpu_ms": check_cpu * 1000,
        "not_ok": sum(r.not_ok + r.errors for results in runs.values() for r in results),
        "settings": settings,
    }
    for name in loads.keys() - {"ping"}:
        rate = mean_rate(runs[name])
        figures[f"{name}_rps"] = rate
        figures[f"{name}_ping_ratio"] = rate / ping if ping else 0.0
        figures[f"{name}_ping_ratios"] = ratios(runs[name], runs["ping"])
    print_summary(figures, settings)
    common.write_json(args.json, figures)
    return figures


if __name__ == "__main__":
    sys.exit(main() and None)
