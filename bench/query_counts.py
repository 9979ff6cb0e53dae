"""Count the SQL statements of the list endpoints at page sizes 1, 10 and 100.

A list whose statement count grows with the page size runs a query per row (N+1). This is
deterministic, so tests/test_query_counts.py asserts it too; the script prints the table for
docs/benchmarks.md. In-process (Flask test client), on a throw-away database or a private
schema of DATABASE_URL. See README.md.

    .venv/bin/python bench/query_counts.py [--people 120] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import common
from sqlalchemy import event

PAGE_SIZES = (1, 10, 100)
LISTS = (("/v1/requests?scope=all", "requests"), ("/v1/admin/users", "users"),
         ("/v1/audit", "events"))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Read the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--people", type=int, default=120,
                        help="people who each make one request (default 120, > the largest page)")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    if args.people < max(PAGE_SIZES):
        parser.error(f"--people must be at least {max(PAGE_SIZES)} so every page is full")
    return args


def seed(app, people: int) -> dict:
    """People with one auto-granted request each, and an administrator; return admin headers."""
    tokens = common.seed_people(app, count=people, role="developer", subrole="backend")
    [key] = common.seed_auto_permissions(app, count=1, role="developer", subrole="backend")
    client = app.test_client()
    for token in tokens:
        response = client.post("/v1/requests", headers={"Authorization": f"Bearer {token}"},
                               json={"permission": key, "justification": "count"})
        if response.status_code != 201:
            sys.exit(f"POST /v1/requests answered {response.status_code}: {response.json}")
    [admin] = common.seed_people(app, count=1, role="security", subrole="admin",
                                 prefix="bench-admin")
    return {"Authorization": f"Bearer {admin}"}


def count_statements(app, headers: dict) -> dict[str, dict[int, int]]:
    """GET each list at each page size; return the statements each request sent."""
    engine = app.extensions["security_api"].engine
    client = app.test_client()
    counts: dict[str, dict[int, int]] = {}
    for path, field in LISTS:
        counts[path] = {}
        for size in PAGE_SIZES:
            statements = []

            def count(*_args, seen=statements):
                seen.append(1)

            event.listen(engine, "before_cursor_execute", count)
            try:
                separator = "&" if "?" in path else "?"
                response = client.get(f"{path}{separator}limit={size}", headers=headers)
            finally:
                event.remove(engine, "before_cursor_execute", count)
            if response.status_code != 200 or len(response.json[field]) != size:
                sys.exit(f"GET {path} limit={size}: {response.status_code}, "
                         f"{json.dumps(response.json)[:300]}")
            counts[path][size] = len(statements)
    return counts


def main(argv: list[str] | None = None) -> dict:
    """Seed, count, print the table."""
    args = parse_args(argv)
    with common.in_process_service("bench-queries-") as app:
        counts = count_statements(app, seed(app, args.people))
    print(f"database: {common.database_kind(dict(os.environ))}")
    print(f"{'list':<32}" + "".join(f"limit={size:<6}" for size in PAGE_SIZES) + "verdict")
    constant = True
    for path, by_size in counts.items():
        same = len(set(by_size.values())) == 1
        constant = constant and same
        print(f"GET {path:<28}" + "".join(f"{by_size[size]:<12}" for size in PAGE_SIZES)
              + ("same at every page size" if same else "GROWS WITH THE PAGE SIZE (N+1)"))
    figures = {"counts": {path: {str(k): v for k, v in c.items()} for path, c in counts.items()},
               "constant": constant}
    common.write_json(args.json, figures)
    return figures


if __name__ == "__main__":
    sys.exit(main() and None)
