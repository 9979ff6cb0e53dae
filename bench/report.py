"""Turn run_all.py's figures into docs/benchmarks.md and a chart (matplotlib, Agg backend).

Also usable alone, to redraw from a saved results file:

    .venv/bin/python bench/report.py docs/benchmarks.json
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import common

PROFILE_TARGET, POLICY_TARGET = 0.9, 1.2
COMMAND = ("`.venv/bin/python bench/run_all.py --out docs/ --pg-url "
           "postgresql+psycopg://postgres@127.0.0.1:5432/test --redis-url redis://127.0.0.1:6379/0`")


def _met(ok: bool) -> str:
    return "yes" if ok else "**no**"


def _rounds(auth: dict) -> str:
    ratios = auth.get("profile_ping_ratios") or []
    return "; rounds " + ", ".join(f"{r:.2f}" for r in ratios) if len(ratios) > 1 else ""


def _pg_label(results: dict) -> str:
    if not results["pg"]:
        return "SQLite (no --pg-url given)"
    return "PostgreSQL + Redis" if results["redis"] else "PostgreSQL"


def _context(results: dict) -> list[str]:
    box = results["machine"]
    lines = [f"Measured {results['date']} on {box['cpu']}, {box['os']}, Python {box['python']}, "
             f"in {results['minutes']:.1f} minutes with `bench/run_all.py`."]
    before, after = box.get("load"), box.get("load_after")
    if before is not None:
        lines.append(f"Load average (1 min) before the run {before:.2f}, after {after:.2f}.")
    if results.get("note"):
        lines += ["", results["note"]]
    elif (before or 0) > common.BUSY_LOAD_AVERAGE:
        lines.append("")
        lines.append("**Measured while other work ran on the machine**: absolute figures are "
                     "noisy; the ratios come from alternated runs and are more robust. Replace "
                     "with a run on a quiet machine.")
    return lines


def summary_rows(results: dict) -> list[str]:
    """The table of every benchmark against its target."""
    auth, load, policy, queries = (results[k] for k in ("auth_sqlite", "load", "policy", "queries"))
    pg = _pg_label(results)
    rows = [
        "| | Benchmark | Measured | Target | Met |",
        "|---|---|---|---|---|",
        f"| a | Authenticated `GET /v1/profile` ÷ `GET /v1/ping` throughput, SQLite | "
        f"{auth['profile_ping_ratio']:.2f} ({auth['profile_rps']:.0f} / {auth['ping_rps']:.0f} "
        f"req/s{_rounds(auth)}) | ≥ {PROFILE_TARGET} | "
        f"{_met(auth['profile_ping_ratio'] >= PROFILE_TARGET)} |",
    ]
    if "auth_pg" in results:
        pga = results["auth_pg"]
        rows.append(f"| a | same, {pg} | {pga['profile_ping_ratio']:.2f} ({pga['profile_rps']:.0f}"
                    f" / {pga['ping_rps']:.0f} req/s{_rounds(pga)}) | ≥ {PROFILE_TARGET} | "
                    f"{_met(pga['profile_ping_ratio'] >= PROFILE_TARGET)} |")
    rows += [
        f"| b | Requests created (`POST /v1/requests`, auto, provisioner none), {pg} | "
        f"{load['create_rps']:.1f} req/s = {load['create_ping_ratio']:.3f} × ping "
        f"({load['ping_rps']:.0f} req/s) | reported | – |",
        f"| c | p50 / p99 latency at 64 clients: ping, profile, create ({pg}) | "
        + ", ".join(f"{load[f'{n}_p50_ms']:.0f} / {load[f'{n}_p99_ms']:.0f} ms"
                    for n in ("ping", "profile", "create")) + " | reported | – |",
        f"| d | Policy decision time, 10,000 ÷ 10 rules ({pg}) | {policy['ratio']:.2f} "
        f"({policy['rules_10000_us']:.0f} / {policy['rules_10_us']:.0f} µs) | ≤ {POLICY_TARGET} | "
        f"{_met(policy['ratio'] <= POLICY_TARGET)} |",
        "| e | SQL statements of the list endpoints at limit 1, 10, 100 | "
        + ("the same at every page size" if queries["constant"] else "grows with the page size")
        + f" | independent of page size | {_met(queries['constant'])} |",
        f"| f | Logins per second ÷ bcrypt bound (cores ÷ one check), SQLite | "
        f"{auth['login_bound_ratio']:.2f} ({auth['login_rps']:.1f} / {auth['bcrypt_bound']:.1f}) | "
        "close to 1 (bcrypt dominates) | – |",
    ]
    return rows


def detail_rows(results: dict) -> list[str]:
    """Throughput and latency per endpoint, and the statement counts."""
    load, queries = results["load"], results["queries"]
    lines = ["## Throughput and latency at 64 clients", "",
             f"{_pg_label(results)}, wrk with 64 connections, ping, profile and create runs "
             "alternated.", "",
             "| Endpoint | req/s | p50 | p99 |", "|---|---|---|---|"]
    for name, label in (("ping", "`GET /v1/ping`"), ("profile", "`GET /v1/profile`"),
                        ("create", "`POST /v1/requests`")):
        lines.append(f"| {label} | {load[f'{name}_rps']:.1f} | {load[f'{name}_p50_ms']:.1f} ms | "
                     f"{load[f'{name}_p99_ms']:.1f} ms |")
    lines += ["", "## SQL statements per list request", "",
              "| List | limit=1 | limit=10 | limit=100 |", "|---|---|---|---|"]
    for path, counts in queries["counts"].items():
        lines.append(f"| `GET {path}` | {counts['1']} | {counts['10']} | {counts['100']} |")
    lines += breakdown_rows(results)
    lines += ["", "## Settings of each part", ""]
    for key, title in (("auth_sqlite", "auth overhead, SQLite"), ("auth_pg", "auth overhead, "
                       + _pg_label(results)), ("load", "request creation and latency"),
                       ("policy", "policy decision")):
        if key in results:
            lines.append(f"- {title}: " + "; ".join(results[key]["settings"]))
    if any(results[k].get("not_ok") for k in ("auth_sqlite", "auth_pg", "load") if k in results):
        lines += ["", "**Some load runs had non-2xx answers or socket errors**; see the output "
                  "of the run."]
    return lines


BREAKDOWN = (("ping_request", "whole `GET /v1/ping` request"),
             ("profile_request", "whole `GET /v1/profile` request"),
             ("token_check", "token check (`require_token`: checkout, verify, principal query)"),
             ("token_verify_cached", "token verification, cached signature check"),
             ("pool_checkout", "pool checkout and return only"),
             ("principal_query_core", "principal query via SQLAlchemy Core (with checkout)"),
             ("principal_query_raw_dbapi", "same SQL via the raw DBAPI cursor (idea, not used)"))


def breakdown_rows(results: dict) -> list[str]:
    """Where an authenticated request's extra time goes, in-process (auth_breakdown.py)."""
    columns = [(key, label) for key, label in (("breakdown_sqlite", "SQLite"),
                                               ("breakdown_pg", _pg_label(results)))
               if key in results]
    if not columns:
        return []
    lines = ["", "## Where the authenticated request's time goes (in-process, µs)", "",
             "No gunicorn, no network, no load client: the pieces of (a), medians of batches.", "",
             "| Piece | " + " | ".join(label for _, label in columns) + " |",
             "|---|" + "---|" * len(columns)]
    for name, label in BREAKDOWN:
        lines.append(f"| {label} | " + " | ".join(f"{results[key][name]:.0f}" for key, _ in columns)
                     + " |")
    lines.append("| profile − ping | " + " | ".join(
        f"{results[key]['profile_extra_us']:.0f}" for key, _ in columns) + " |")
    return lines


def markdown(results: dict, *, chart: str) -> str:
    """The whole results file."""
    lines = ["# Benchmarks", "", *_context(results), "", *summary_rows(results), "",
             f"![Benchmarks]({chart})", "", *detail_rows(results), "",
             "## Reproduce", "", f"{COMMAND} (about 5 minutes). What each part does and its "
             "options: [bench/README.md](../bench/README.md).", ""]
    return "\n".join(lines)


def chart(results: dict, path: Path) -> None:
    """Three panels: throughput, latency, ratios against their targets."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    auth, load, policy = results["auth_sqlite"], results["load"], results["policy"]
    pg = "PG" if results["pg"] else "SQLite"
    figure, (left, middle, right) = plt.subplots(1, 3, figsize=(15, 4.8))
    names = ["ping\nSQLite", "profile\nSQLite", f"ping\n{pg}", f"profile\n{pg}", f"create\n{pg}"]
    rates = [auth["ping_rps"], auth["profile_rps"], load["ping_rps"], load["profile_rps"],
             load["create_rps"]]
    left.bar(names, rates, color=["#9db", "#48a", "#9db", "#48a", "#c63"])
    left.set_title("Throughput (req/s; SQLite at 16, others at 64 clients)")
    for x, rate in enumerate(rates):
        left.annotate(f"{rate:.0f}", (x, rate), ha="center", va="bottom", fontsize=8)
    endpoints = ["ping", "profile", "create"]
    xs = range(len(endpoints))
    middle.bar([x - 0.2 for x in xs], [load[f"{n}_p50_ms"] for n in endpoints], 0.4, label="p50")
    middle.bar([x + 0.2 for x in xs], [load[f"{n}_p99_ms"] for n in endpoints], 0.4, label="p99")
    middle.set_xticks(list(xs), endpoints)
    middle.set_yscale("log")
    middle.set_title(f"Latency at 64 clients, {pg} (ms, log scale)")
    middle.legend()
    ratios = [("profile/ping\nSQLite", auth["profile_ping_ratio"], PROFILE_TARGET, ">=")]
    if "auth_pg" in results:
        ratios.append((f"profile/ping\n{pg}", results["auth_pg"]["profile_ping_ratio"],
                       PROFILE_TARGET, ">="))
    ratios += [("policy\n10k/10 rules", policy["ratio"], POLICY_TARGET, "<="),
               ("logins/\nbcrypt bound", auth["login_bound_ratio"], None, "")]
    for x, (_name, value, target, sense) in enumerate(ratios):
        met = target is None or (value >= target if sense == ">=" else value <= target)
        right.bar(x, value, color="#4a4" if met else "#c44")
        right.annotate(f"{value:.2f}", (x, value), ha="center", va="bottom", fontsize=8)
        if target is not None:
            right.hlines(target, x - 0.4, x + 0.4, colors="black", linestyles="dashed")
            right.annotate(f"target {sense} {target}", (x, target), ha="center", va="bottom",
                           fontsize=7, xytext=(0, 12), textcoords="offset points")
    right.set_ylim(0, max(max(r[1] for r in ratios), POLICY_TARGET) * 1.25)
    right.set_xticks(range(len(ratios)), [r[0] for r in ratios])
    right.set_title("Ratios (dashed: target; red: not met)")
    figure.suptitle(f"Security API benchmarks, {results['date']}, {results['machine']['cpu']}",
                    fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: report.py path/to/benchmarks.json")
    source = Path(sys.argv[1])
    data = json.loads(source.read_text())
    source.with_suffix(".md").write_text(markdown(data, chart=source.with_suffix(".png").name))
    chart(data, source.with_suffix(".png"))
