"""Turn run_all.py's figures into docs/benchmarks.md and a chart (matplotlib, Agg backend).

Also usable alone, to redraw from a saved results file:

    .venv/bin/python bench/report.py docs/benchmarks.json
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import common

WRITE_RATIO_TARGET, WRITE_P99_TARGET_MS = 0.25, 150.0
PROFILE_SQLITE_TARGET, PROFILE_PG_TARGET, CHECK_TARGET = 0.9, 0.85, 0.85
LOGIN_TARGET, POLICY_TARGET = 0.9, 1.2

COMMAND = ("`.venv/bin/python bench/run_all.py --out docs/ --pg-url "
           "postgresql+psycopg://postgres@127.0.0.1:5432/test --redis-url redis://127.0.0.1:6379/0`")


@dataclass(frozen=True)
class Figure:
    """One row of issue 13's table: the value, its goal, and the rounds behind it."""

    label: str        # what was measured, where
    short: str        # the chart's label
    value: float
    measured: str     # the value with the raw figures it comes from
    goal: str         # e.g. "≥ 0.25"
    met: bool
    rounds: list[float] = field(default_factory=list)
    digits: int = 2
    target: float | None = None  # the chart's dashed line (ratios only)


def _met(ok: bool) -> str:
    return "yes" if ok else "**no**"


def _rounds_text(figure: Figure) -> str:
    if not figure.rounds:
        return "one run"
    return ", ".join(f"{r:.{figure.digits}f}" for r in figure.rounds)


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


def _ratio_figure(label: str, short: str, part: dict, name: str, target: float,
                  unit: str = "req/s") -> Figure:
    """`name`/ping of an alternated part, with its rounds; goal: at least `target`."""
    value = part[f"{name}_ping_ratio"]
    return Figure(label, short, value,
                  f"{value:.2f} ({part[f'{name}_rps']:.0f} {unit} / {part['ping_rps']:.0f} "
                  "ping/s)", f"≥ {target}", value >= target, part[f"{name}_ping_ratios"],
                  target=target)


def figures(results: dict) -> list[Figure]:
    """Every row of issue 13's table that the results hold, in the issue's order."""
    pg = _pg_label(results)
    load, auth = results["load"], results["auth_sqlite"]
    rows = []
    ratio = load["write_ping_ratio"]
    rows.append(Figure(
        f"`POST /v1/requests` (auto, provisioner none) + its revoke, writes/s ÷ ping req/s, {pg}",
        "writes/ping", ratio,
        f"{ratio:.3f} ({load['write_rps']:.0f} writes/s vs {load['ping_rps']:.0f} ping/s)",
        f"≥ {WRITE_RATIO_TARGET}", ratio >= WRITE_RATIO_TARGET, load["write_ping_ratios"],
        digits=3, target=WRITE_RATIO_TARGET))
    p99 = load["write_p99_ms"]  # None with the Python client: it measures no latency
    rows.append(Figure(
        f"same, p99 at {load.get('connections', 64)} clients (p50 / p99, ms)", "write p99 (ms)",
        p99 or 0.0, f"{load['write_p50_ms']:.0f} / {p99:.0f} ms" if p99 is not None
        else "not measured (no wrk)", f"< {WRITE_P99_TARGET_MS:.0f} ms",
        p99 is not None and p99 < WRITE_P99_TARGET_MS, load["write_p99_ms_rounds"], digits=0))
    rows.append(_ratio_figure("authenticated `GET /v1/profile` ÷ `GET /v1/ping`, SQLite",
                              "profile/ping\nSQLite", auth, "profile", PROFILE_SQLITE_TARGET))
    if "auth_pg" in results:
        rows.append(_ratio_figure(f"same, {pg}", "profile/ping\nPG", results["auth_pg"],
                                  "profile", PROFILE_PG_TARGET))
    check_part, where = ((results["auth_pg"], pg) if "auth_pg" in results
                         else (auth, "SQLite (no --pg-url given)"))
    if "check_ping_ratio" in check_part:
        rows.append(_ratio_figure(
            f"`GET /v1/check` (internal tools, service account) ÷ ping, {where}",
            "check/ping", check_part, "check", CHECK_TARGET))
    login = auth["login_bound_ratio"]
    cpu_share = (f"; bcrypt {auth['bcrypt_check_cpu_ms'] / auth['login_cpu_ms']:.2f} of a login's CPU"
                 if auth.get("login_cpu_ms") else "")
    rows.append(Figure("logins/s ÷ bcrypt bound (checks/s, every core at once), SQLite", "logins/\nbcrypt",
                       login, f"{login:.2f} ({auth['login_rps']:.1f} / {auth['bcrypt_bound']:.1f}"
                       f"{cpu_share})",
                       f"keep ≥ {LOGIN_TARGET}", login >= LOGIN_TARGET, target=LOGIN_TARGET))
    policy = results["policy"]
    rows.append(Figure(f"policy decision, 10⁴ rules ÷ 10 ({pg})", "policy\n10k/10",
                       policy["ratio"], f"{policy['ratio']:.2f} ({policy['rules_10000_us']:.0f} / "
                       f"{policy['rules_10_us']:.0f} µs)", f"keep ≤ {POLICY_TARGET}",
                       policy["ratio"] <= POLICY_TARGET, policy.get("ratios", []),
                       target=POLICY_TARGET))
    if "scale" in results:
        scale = results["scale"]
        rows.append(Figure(
            f"two-instance write figure: writes/s with two gunicorns ÷ one on the same database, "
            f"same load split ({pg}, {scale.get('workers', 2)} workers each"
            f"{', each on a core of its own' if scale.get('pinned') else ''})", "two/one\ninstances",
            scale["ratio"], f"{scale['ratio']:.2f} ({scale['two_wps']:.0f} / "
            f"{scale['one_wps']:.0f} writes/s)", "> 1 in every round (grows)",
            scale["ratio"] > 1.0 and all(r > 1.0 for r in scale["ratios"]), scale["ratios"],
            target=1.0))
    return rows


def summary_rows(results: dict) -> list[str]:
    """Issue 13's table, measured, then the statement counts that still stand as a figure."""
    rows = ["| Figure | Measured | Goal | Met | Rounds |", "|---|---|---|---|---|"]
    for figure in figures(results):
        rows.append(f"| {figure.label} | {figure.measured} | {figure.goal} | {_met(figure.met)} | "
                    f"{_rounds_text(figure)} |")
    queries = results["queries"]
    rows.append("| SQL statements of the list endpoints at limit 1, 10, 100 | "
                + ("the same at every page size" if queries["constant"] else "grows with the page size")
                + f" | independent of page size | {_met(queries['constant'])} | – |")
    return rows


def detail_rows(results: dict) -> list[str]:
    """Throughput and latency per endpoint, the write answers, scale-out rounds, statements."""
    load, queries = results["load"], results["queries"]
    clients = load.get("connections", 64)
    lines = [f"## Throughput and latency at {clients} clients", "",
             f"{_pg_label(results)}, wrk with {clients} connections, ping, profile and write runs "
             "alternated; a write is a create or its revoke, and only 2xx answers count.", "",
             "| Load | per second | p50 | p99 |", "|---|---|---|---|"]
    for name, label in (("ping", "`GET /v1/ping`"), ("profile", "`GET /v1/profile`"),
                        ("write", "`POST /v1/requests` + `POST /v1/requests/{id}/revoke`")):
        p50, p99 = load[f"{name}_p50_ms"], load[f"{name}_p99_ms"]
        lines.append(f"| {label} | {load[f'{name}_rps']:.1f} | "
                     + (f"{p50:.1f} ms | {p99:.1f} ms |" if p50 is not None else "– | – |"))
    statuses = ", ".join(f"{count} × {code}" for code, count in
                         sorted(load["write_statuses"].items()))
    lines += ["", f"Write answers: {load['creates']} creates and {load['revokes']} revokes "
              f"answered 2xx; every status: {statuses or 'none'}."]
    if "scale" in results:
        scale = results["scale"]
        lines += ["", "## Writes with one and with two instances", "",
                  "| Round | one instance (writes/s) | two instances (writes/s) | two ÷ one |",
                  "|---|---|---|---|"]
        for number, (one, two, ratio) in enumerate(zip(
                scale["one_wps_rounds"], scale["two_wps_rounds"], scale["ratios"], strict=True)):
            lines.append(f"| {number + 1} | {one:.1f} | {two:.1f} | {ratio:.2f} |")
    lines += ["", "## SQL statements per list request", "",
              "| List | limit=1 | limit=10 | limit=100 |", "|---|---|---|---|"]
    for path, counts in queries["counts"].items():
        lines.append(f"| `GET {path}` | {counts['1']} | {counts['10']} | {counts['100']} |")
    lines += breakdown_rows(results)
    lines += ["", "## Settings of each part", ""]
    for key, title in (("auth_sqlite", "auth overhead, SQLite"), ("auth_pg", "auth overhead, "
                       + _pg_label(results)), ("load", "writes and latency"),
                       ("scale", "one and two instances"), ("policy", "policy decision")):
        if key in results:
            lines.append(f"- {title}: " + "; ".join(results[key]["settings"]))
    parts = ("auth_sqlite", "auth_pg", "load", "scale")
    if any(results[k].get("not_ok") or results[k].get("write_not_ok")
           for k in parts if k in results):
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
             "No gunicorn, no network, no load client: the pieces of profile ÷ ping, medians of "
             "batches.", "",
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
             "## Reproduce", "", f"{COMMAND} (about 7 minutes). What each part does and its "
             "options: [bench/README.md](../bench/README.md).", ""]
    return "\n".join(lines)


def chart(results: dict, path: Path) -> None:
    """Three panels: throughput, latency, and every ratio row against its goal with its rounds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    auth, load = results["auth_sqlite"], results["load"]
    pg = "PG" if results["pg"] else "SQLite"
    figure, (left, middle, right) = plt.subplots(1, 3, figsize=(17, 5),
                                                 gridspec_kw={"width_ratios": [1, 0.8, 1.4]})
    bars = [("ping\nSQLite", auth["ping_rps"], "#9db"), ("profile\nSQLite", auth["profile_rps"], "#48a")]
    if "check_rps" in auth:
        bars.append(("check\nSQLite", auth["check_rps"], "#a6c"))
    if "auth_pg" in results:
        bars += [(f"ping\n{pg}", results["auth_pg"]["ping_rps"], "#9db"),
                 (f"profile\n{pg}", results["auth_pg"]["profile_rps"], "#48a")]
        if "check_rps" in results["auth_pg"]:
            bars.append((f"check\n{pg}", results["auth_pg"]["check_rps"], "#a6c"))
    bars.append((f"writes\n{pg}", load["write_rps"], "#c63"))
    left.bar([b[0] for b in bars], [b[1] for b in bars], color=[b[2] for b in bars])
    left.set_title(f"Throughput (per second; writes at {load.get('connections', 64)} clients)")
    for x, (_, rate, _) in enumerate(bars):
        left.annotate(f"{rate:.0f}", (x, rate), ha="center", va="bottom", fontsize=8)
    endpoints = [n for n in ("ping", "profile", "write") if load[f"{n}_p50_ms"] is not None]
    xs = range(len(endpoints))
    middle.bar([x - 0.2 for x in xs], [load[f"{n}_p50_ms"] for n in endpoints], 0.4, label="p50")
    middle.bar([x + 0.2 for x in xs], [load[f"{n}_p99_ms"] for n in endpoints], 0.4, label="p99")
    middle.axhline(WRITE_P99_TARGET_MS, color="black", linestyle="dashed", linewidth=0.8)
    middle.annotate(f"write p99 goal < {WRITE_P99_TARGET_MS:.0f} ms", (0, WRITE_P99_TARGET_MS),
                    fontsize=7, xytext=(0, 3), textcoords="offset points")
    middle.set_xticks(list(xs), endpoints)
    middle.set_yscale("log")
    middle.set_title(f"Latency at {load.get('connections', 64)} clients, {pg} (ms, log scale)")
    middle.legend()
    ratios = [f for f in figures(results) if f.target is not None]
    for x, row in enumerate(ratios):
        right.bar(x, row.value, color="#4a4" if row.met else "#c44")
        right.annotate(f"{row.value:.{min(row.digits, 3)}f}", (x, row.value), ha="center",
                       va="bottom", fontsize=8)
        if row.rounds:
            right.scatter([x] * len(row.rounds), row.rounds, color="black", s=8, zorder=3)
        right.hlines(row.target, x - 0.4, x + 0.4, colors="black", linestyles="dashed")
        right.annotate(row.goal, (x, row.target), ha="center", va="bottom", fontsize=7,
                       xytext=(0, 12), textcoords="offset points")
    top = max([r.value for r in ratios] + [v for r in ratios for v in r.rounds]
              + [r.target for r in ratios])
    right.set_ylim(0, top * 1.3)
    right.set_xticks(range(len(ratios)), [r.short for r in ratios], fontsize=8)
    right.set_title("Ratios of issue 13 (dashed: goal; dots: rounds; red: not met)")
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
