"""The write load: every POST /v1/requests followed by the revoke of the request it created.

Issue 13 measures writes as a create and its revoke: the create alone would leave every pair
(person, permission) open after one use, and the revoke is a write of the same weight (a
transition, an audit event). A pair is used again once its revoke answered, so a run never
runs out of pairs and never sends a create that must answer 409.

wrk's Lua state belongs to a thread, not a connection, so each wrk thread keeps a queue of
revokes to send: a 201 puts its request id on the queue (the requester's token goes with it),
the next request the thread sends is that revoke, and a revoke's 200 hands the pair back. The
script's `done()` prints one `bench-writes` line with the counts, which `parse_summary` reads:
writes per second count only 2xx creates and revokes, so a run full of 409s shows as slow,
and every other status is reported by code. See README.md.
"""
from __future__ import annotations

import contextlib
import http.client
import json
import multiprocessing
import re
import secrets
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass, field

import common

SUMMARY_PREFIX = "bench-writes"  # the first word of the line done() writes in LUA
COUNTERS = ("creates_sent", "creates_ok", "revokes_sent", "revokes_ok", "out_of_pairs",
            "unparsed")
CREATE_PATH = "/v1/requests"


@dataclass(frozen=True)
class Pair:
    """One (person, permission): the person's Authorization value and the permission key."""

    username: str
    authorization: str
    permission: str

    @property
    def key(self) -> str:
        """How a response names the pair: its requester and permission."""
        return f"{self.username}|{self.permission}"

    @property
    def body(self) -> str:
        """The JSON body of the create."""
        return json.dumps({"permission": self.permission, "justification": "bench"})


@dataclass(frozen=True)
class WriteResult:
    """What one write run measured; latencies in seconds (wrk only), of creates and revokes."""

    seconds: float
    creates_sent: int = 0
    creates_ok: int = 0
    revokes_sent: int = 0
    revokes_ok: int = 0
    out_of_pairs: int = 0
    unparsed: int = 0
    errors: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    latency: dict[int, float] = field(default_factory=dict)

    @property
    def writes(self) -> int:
        """Creates and revokes that succeeded (2xx): the only answers that count as writes."""
        return self.creates_ok + self.revokes_ok

    @property
    def per_second(self) -> float:
        """Successful writes per second."""
        return self.writes / self.seconds if self.seconds else 0.0

    @property
    def not_ok(self) -> int:
        """Answers that were not 2xx (a 409 storm must not pass for a fast run)."""
        return sum(count for status, count in self.statuses.items() if not 200 <= status < 300)


def combine(results: list[WriteResult]) -> WriteResult:
    """Runs made at the same time (one per instance): counts add up, latency is the worst."""
    statuses: dict[int, int] = {}
    for result in results:
        for status, count in result.statuses.items():
            statuses[status] = statuses.get(status, 0) + count
    latency = {p: max(r.latency[p] for r in results) for p in (50, 75, 90, 99)
               if all(p in r.latency for r in results)}
    sums = {name: sum(getattr(r, name) for r in results) for name in (*COUNTERS, "errors")}
    return WriteResult(seconds=max(r.seconds for r in results), statuses=statuses,
                       latency=latency, **sums)


# ---- wrk -------------------------------------------------------------------------------------
LUA = """
local threads = {}
local counter = 0
function setup(thread)
  counter = counter + 1
  thread:set("id", counter)
  table.insert(threads, thread)
end

function init(args)
  creates_sent, creates_ok, revokes_sent, revokes_ok, out_of_pairs, unparsed = 0, 0, 0, 0, 0, 0
  statuses = {}
  by_key = {}
  free, free_head, free_tail = {}, 1, 0
  for index = id, #entries, wrk_threads do
    free_tail = free_tail + 1
    free[free_tail] = index
    by_key[entries[index][3]] = index
  end
  revokes, revoke_head, revoke_tail = {}, 1, 0
end

local function pair_of(body)
  local requester = string.match(body, '"requester"%s*:%s*"([^"]+)"')
  local permission = string.match(body, '"permission"%s*:%s*"([^"]+)"')
  if requester == nil or permission == nil then return nil end
  return by_key[requester .. "|" .. permission]
end

function request()
  if revoke_head <= revoke_tail then
    local job = revokes[revoke_head]
    revokes[revoke_head] = nil
    revoke_head = revoke_head + 1
    revokes_sent = revokes_sent + 1
    wrk.headers["Authorization"] = entries[job[2]][1]
    return wrk.format("POST", "/v1/requests/" .. job[1] .. "/revoke", nil, "{}")
  end
  if free_head > free_tail then
    out_of_pairs = out_of_pairs + 1
    wrk.headers["Authorization"] = nil
    return wrk.format("GET", "/v1/ping", nil, "")
  end
  local index = free[free_head]
  free[free_head] = nil
  free_head = free_head + 1
  creates_sent = creates_sent + 1
  wrk.headers["Authorization"] = entries[index][1]
  return wrk.format("POST", "/v1/requests", nil, entries[index][2])
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
  if status == 201 then
    creates_ok = creates_ok + 1
    local request_id = string.match(body, '"id"%s*:%s*"([^"]+)"')
    local index = pair_of(body)
    if request_id == nil or index == nil then
      unparsed = unparsed + 1
      return
    end
    revoke_tail = revoke_tail + 1
    revokes[revoke_tail] = {request_id, index}
  elseif status == 200 and string.find(body, '"status"%s*:%s*"revoked"') then
    revokes_ok = revokes_ok + 1
    local index = pair_of(body)
    if index == nil then
      unparsed = unparsed + 1
      return
    end
    free_tail = free_tail + 1
    free[free_tail] = index
  end
end

function done(summary, latency, requests)
  local names = {"creates_sent", "creates_ok", "revokes_sent", "revokes_ok", "out_of_pairs",
                 "unparsed"}
  local totals, codes = {}, {}
  for _, name in ipairs(names) do totals[name] = 0 end
  for _, thread in ipairs(threads) do
    for _, name in ipairs(names) do totals[name] = totals[name] + thread:get(name) end
    for status, count in pairs(thread:get("statuses")) do
      codes[status] = (codes[status] or 0) + count
    end
  end
  local parts = {}
  for _, name in ipairs(names) do table.insert(parts, name .. "=" .. totals[name]) end
  local listed = {}
  for status, count in pairs(codes) do table.insert(listed, status .. ":" .. count) end
  table.sort(listed)
  table.insert(parts, "statuses=" .. table.concat(listed, ","))
  io.write("bench-writes " .. table.concat(parts, " ") .. "\\n")
end
"""


def lua_script(pairs: list[Pair], threads: int) -> str:
    """The whole Lua script for one wrk process: its pairs, then the logic above."""
    entries = ",\n".join(f"{{{json.dumps(p.authorization)}, {json.dumps(p.body)}, "
                         f"{json.dumps(p.key)}}}" for p in pairs)
    header = [f"wrk_threads = {threads}", 'wrk.method = "POST"',
              'wrk.headers["Content-Type"] = "application/json"',
              f"entries = {{\n{entries}\n}}"]
    return "\n".join(header) + LUA


def parse_summary(output: str) -> dict:
    """Read the `bench-writes` line of done(): the counters and the statuses by code."""
    line = re.search(rf"^{SUMMARY_PREFIX} (.*)$", output, re.MULTILINE)
    if line is None:
        raise ValueError(f"no '{SUMMARY_PREFIX}' line in wrk's output")
    fields = dict(part.split("=", 1) for part in line.group(1).split())
    counts = {name: int(fields[name]) for name in COUNTERS}
    listed = fields.get("statuses", "")
    counts["statuses"] = {int(code): int(count) for code, count in
                          (item.split(":") for item in listed.split(",") if item)}
    return counts


def parse_wrk_writes(output: str) -> WriteResult:
    """wrk's own report (duration, socket errors, latency) plus the script's counters."""
    report = common.parse_wrk(output)
    return WriteResult(seconds=report.seconds, errors=report.errors, latency=report.latency,
                       **parse_summary(output))


def share(pairs: list[Pair], part: int, parts: int) -> list[Pair]:
    """Pairs part, part+parts, ...: two load clients at once never send the same pair."""
    return pairs[part::parts]


def run_wrk(runner: common.Runner, base_urls: list[str], pairs: list[Pair], seconds: int,
            timeout: int) -> WriteResult:
    """One wrk per base URL, started together, connections and pairs split between them."""
    parts = len(base_urls)
    threads = max(1, runner.threads // parts)
    connections = max(threads, runner.connections // parts)
    processes, scripts = [], []
    for part, base_url in enumerate(base_urls):
        script = runner.workdir / f"writes-{secrets.token_hex(4)}.lua"
        script.write_text(lua_script(share(pairs, part, parts), threads))
        scripts.append(script)
        processes.append(subprocess.Popen(
            ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency",
             f"--timeout={timeout}s", "-s", str(script), base_url + CREATE_PATH],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outputs = [process.communicate() for process in processes]
    for script in scripts:
        script.unlink()
    results = []
    for process, (stdout, stderr) in zip(processes, outputs, strict=True):
        if process.returncode != 0:
            sys.exit(f"wrk failed:\n{stdout}{stderr}")
        results.append(parse_wrk_writes(stdout))
    return combine(results)


# ---- Python fallback -------------------------------------------------------------------------
def _send(connection: http.client.HTTPConnection, path: str, authorization: str,
          body: str) -> tuple[int, dict]:
    connection.request("POST", path, body=body.encode(),
                       headers={"Authorization": authorization,
                                "Content-Type": "application/json"})
    response = connection.getresponse()
    raw = response.read()
    with contextlib.suppress(ValueError):
        return response.status, json.loads(raw or b"{}")
    return response.status, {}


def _python_connection(base_url: str, pairs: list[Pair], start_at: float, stop_at: float,
                       timeout: int) -> dict:
    """One client process: create, revoke, hand the pair back; counts like the Lua script."""
    connection = http.client.HTTPConnection(*common.split_url(base_url), timeout=timeout)
    counts = dict.fromkeys((*COUNTERS, "errors"), 0)
    statuses: dict[int, int] = {}
    free = deque(pairs)
    time.sleep(max(0.0, start_at - time.monotonic()))
    while time.monotonic() < stop_at:
        if not free:
            counts["out_of_pairs"] += 1
            break
        pair = free.popleft()
        try:
            counts["creates_sent"] += 1
            status, body = _send(connection, CREATE_PATH, pair.authorization, pair.body)
            statuses[status] = statuses.get(status, 0) + 1
            if status != 201 or time.monotonic() >= stop_at:
                continue
            counts["creates_ok"] += 1
            request_id = body.get("request", {}).get("id")
            if not request_id:
                counts["unparsed"] += 1
                continue
            counts["revokes_sent"] += 1
            status, body = _send(connection, f"{CREATE_PATH}/{request_id}/revoke",
                                 pair.authorization, "{}")
            statuses[status] = statuses.get(status, 0) + 1
            if status == 200 and time.monotonic() < stop_at:
                counts["revokes_ok"] += 1
                free.append(pair)
        except (OSError, http.client.HTTPException):
            counts["errors"] += 1
            connection.close()
    connection.close()
    counts["statuses"] = statuses
    return counts


def run_python(runner: common.Runner, base_urls: list[str], pairs: list[Pair], seconds: int,
               timeout: int) -> WriteResult:
    """One Python process per connection, connections spread over the base URLs."""
    slots = runner.connections
    start_at = time.monotonic() + 1.0  # every process is up before the clock starts
    jobs = [(base_urls[slot % len(base_urls)], share(pairs, slot, slots), start_at,
             start_at + seconds, timeout) for slot in range(slots)]
    with multiprocessing.get_context("fork").Pool(slots) as pool:
        counts = pool.starmap(_python_connection, jobs)
    return combine([WriteResult(seconds=float(seconds), **c) for c in counts])


def run(runner: common.Runner, pairs: list[Pair], seconds: int, *,
        base_urls: list[str] | None = None, timeout: int = 10) -> WriteResult:
    """Load the write path for `seconds` (against several instances at once when given)."""
    base_urls = base_urls or [runner.base_url]
    per_client = runner.connections // len(base_urls)
    if len(pairs) < 2 * runner.connections:
        sys.exit(f"{len(pairs)} pairs for {runner.connections} connections: add --people "
                 "or --permissions (each connection needs a pair in flight and one spare)")
    if per_client < 1:
        sys.exit("fewer connections than instances")
    for base_url in base_urls:
        common.settle(base_url)
    if runner.client == "wrk":
        return run_wrk(runner, base_urls, pairs, seconds, timeout)
    return run_python(runner, base_urls, pairs, seconds, timeout)


def describe(name: str, result: WriteResult) -> str:
    """One line per run: writes/s, creates and revokes, latencies, and every non-2xx answer."""
    line = (f"  {name:<10} {result.per_second:9.1f} writes/s  ({result.creates_ok} creates + "
            f"{result.revokes_ok} revokes in {result.seconds:.1f} s; sent {result.creates_sent}"
            f" + {result.revokes_sent})")
    if result.latency:
        line += "  " + ", ".join(f"p{p} {result.latency[p] * 1000:.1f} ms"
                                 for p in (50, 99) if p in result.latency)
    if result.not_ok or result.errors or result.out_of_pairs or result.unparsed:
        others = ", ".join(f"{count} x {status}" for status, count in
                           sorted(result.statuses.items()) if not 200 <= status < 300)
        line += (f"  WARNING: {result.not_ok} non-2xx ({others or 'none'}), {result.errors} "
                 f"socket errors, {result.out_of_pairs} out of pairs, {result.unparsed} "
                 "unreadable 2xx")
    return line

