"""CPU time of one write in-process: a create (auto rule) and the revoke of what it created.

request_load.py measures writes/s through gunicorn, where the writes are CPU-bound; this script
times the Python CPU (`time.process_time`) of one `POST /v1/requests` and one
`POST /v1/requests/<id>/revoke` through the WSGI test client, with the background audit
sequencer running as under gunicorn (its sealing runs in this process too, so it counts).
Medians of repeated batches; `--profile` adds a cProfile of the batches' writes (its overhead
distorts small calls: use it to find places, the figures to judge). See README.md.

    .venv/bin/python bench/write_cpu.py [--writes 50] [--batches 5] [--json out.json]
"""
from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import statistics
import sys
import threading
import time

import common

PERMISSIONS = 4  # each create takes the next one; its revoke frees it again
WARMUP_WRITES = 30
SEQUENCER_THREAD = "security-api-sequencer"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Read the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--writes", type=int, default=50,
                        help="creates (each with its revoke) per batch (default 50)")
    parser.add_argument("--batches", type=int, default=5, help="timed batches (default 5)")
    parser.add_argument("--profile", choices=("tottime", "cumulative"),
                        help="also print a cProfile of one more batch, sorted so")
    parser.add_argument("--top", type=int, default=40, help="profile lines printed (default 40)")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    if args.writes < 1 or args.batches < 1:
        parser.error("--writes and --batches must be >= 1")
    return args


class Writes:
    """One requester creating auto-granted requests and revoking each one, timed apart."""

    def __init__(self, app, token: str, permissions: list[str]) -> None:
        self.client = app.test_client()
        self.headers = {"Authorization": f"Bearer {token}"}
        self.permissions = permissions
        self.done = 0

    def create(self) -> str:
        """POST /v1/requests for the next permission; return the new (active) request's id."""
        permission = self.permissions[self.done % len(self.permissions)]
        self.done += 1
        answer = self.client.post("/v1/requests", headers=self.headers,
                                  json={"permission": permission, "justification": "bench"})
        if answer.status_code != 201 or answer.json["request"]["status"] != "active":
            sys.exit(f"create answered {answer.status_code}: {answer.json}")
        return answer.json["request"]["id"]

    def revoke(self, request_id: str) -> None:
        """POST /v1/requests/<id>/revoke of a request this requester created."""
        answer = self.client.post(f"/v1/requests/{request_id}/revoke", headers=self.headers,
                                  json={})
        if answer.status_code != 200:
            sys.exit(f"revoke answered {answer.status_code}: {answer.json}")

    def batch(self, count: int) -> tuple[float, float]:
        """Run `count` creates and their revokes; return the CPU seconds of each kind of write."""
        creating = revoking = 0.0
        for _ in range(count):
            started = time.process_time()
            request_id = self.create()
            created = time.process_time()
            self.revoke(request_id)
            creating += created - started
            revoking += time.process_time() - created
        return creating / count, revoking / count


def measure(writes: Writes, args: argparse.Namespace) -> dict[str, object]:
    """Median CPU milliseconds per create and per revoke over the batches, after a warm-up."""
    writes.batch(WARMUP_WRITES)
    samples = [writes.batch(args.writes) for _ in range(args.batches)]
    creates = [create * 1e3 for create, _ in samples]
    revokes = [revoke * 1e3 for _, revoke in samples]
    return {"create_cpu_ms": statistics.median(creates),
            "revoke_cpu_ms": statistics.median(revokes),
            "create_cpu_ms_batches": creates, "revoke_cpu_ms_batches": revokes}


def profile(writes: Writes, args: argparse.Namespace) -> None:
    """Print where one more batch spends its CPU (cProfile timed by process time)."""
    profiler = cProfile.Profile(time.process_time)
    profiler.runcall(writes.batch, args.writes)
    pstats.Stats(profiler).sort_stats(args.profile).print_stats(args.top)


def _wait_for_sequencer() -> None:
    """Let the stopped sequencer finish its round: the private schema is dropped next."""
    for thread in threading.enumerate():
        if thread.name == SEQUENCER_THREAD:
            thread.join(timeout=10)


def main(argv: list[str] | None = None) -> dict:
    """Seed a requester and auto permissions, start the sequencer, time the writes."""
    args = parse_args(argv)
    note = common.load_average_note()
    print(f"database: {common.database_kind(dict(os.environ))}; {note}", flush=True)
    with common.in_process_service("bench-write-cpu-") as app:
        stop_sequencer = None
        try:
            [token] = common.seed_people(app, count=1, role="developer", subrole="backend")
            keys = common.seed_auto_permissions(app, count=PERMISSIONS, role="developer",
                                                subrole="backend")
            from security_api.audit.sequencer import sealer_for

            stop_sequencer = sealer_for(app.extensions["security_api"].session_factory).start()
            writes = Writes(app, token, keys)
            figures = measure(writes, args)
            if args.profile:
                profile(writes, args)
        finally:
            if stop_sequencer is not None:
                stop_sequencer.set()
                _wait_for_sequencer()
    print(f"  create  {figures['create_cpu_ms']:6.2f} ms CPU (median of {args.batches} batches "
          f"of {args.writes}; batches {', '.join(f'{v:.2f}' for v in figures['create_cpu_ms_batches'])})")
    print(f"  revoke  {figures['revoke_cpu_ms']:6.2f} ms CPU (batches "
          f"{', '.join(f'{v:.2f}' for v in figures['revoke_cpu_ms_batches'])})")
    figures.update({"settings": [note, f"{args.batches} batches of {args.writes} writes"]})
    common.write_json(args.json, figures)
    return figures


if __name__ == "__main__":
    sys.exit(main() and None)
