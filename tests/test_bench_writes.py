"""The benchmark's write load (bench/writes.py): what it counts, and that its wrk script chains
every create to the revoke of that request with the same token.

Not a benchmark: nothing here is timed. The wrk tests run the real Lua script against a stub
service on a loopback port for one second (skipped where wrk is not installed), so a script
that sent a revoke with someone else's token, or a pair while it is still open, fails here
instead of producing a plausible figure.
"""
from __future__ import annotations

import json
import shutil
import sys
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

sys.path.append(str(Path(__file__).resolve().parent.parent / "bench"))  # after the project

import common  # noqa: E402  (bench/common.py)
import writes  # noqa: E402  (bench/writes.py)

WRK_OUTPUT = """Running 2s test @ http://127.0.0.1:1/v1/requests
  2 threads and 8 connections
  Latency Distribution
     50%  120.83ms
     75%  351.98ms
     90%  704.66ms
     99%    1.18s
  66 requests in 2.05s, 85.77KB read
  Socket errors: connect 0, read 1, write 0, timeout 2
  Non-2xx or 3xx responses: 3
Requests/sec:     32.24
""" + ("bench-writes creates_sent=40 creates_ok=35 revokes_sent=35 revokes_ok=28 out_of_pairs=0 "
       "unparsed=1 statuses=200:28,201:35,409:3\n")


def test_the_summary_line_of_done_is_read_field_by_field():
    result = writes.parse_wrk_writes(WRK_OUTPUT)
    assert (result.creates_sent, result.creates_ok, result.revokes_sent, result.revokes_ok) == \
        (40, 35, 35, 28)
    assert result.statuses == {200: 28, 201: 35, 409: 3}
    assert (result.unparsed, result.out_of_pairs, result.errors) == (1, 0, 3)
    assert result.latency[99] == pytest.approx(1.18)
    assert result.seconds == pytest.approx(2.05)


def test_only_2xx_creates_and_revokes_are_writes():
    result = writes.parse_wrk_writes(WRK_OUTPUT)
    assert result.writes == 63
    assert result.not_ok == 3
    assert result.per_second == pytest.approx(63 / 2.05)
    assert "WARNING: 3 non-2xx (3 x 409)" in writes.describe("write", result)


def test_a_report_without_the_summary_line_is_refused():
    with pytest.raises(ValueError, match="bench-writes"):
        writes.parse_summary(WRK_OUTPUT.replace("bench-writes", "something-else"))


def test_runs_at_the_same_time_add_up_and_keep_the_worst_latency():
    one = writes.WriteResult(seconds=2.0, creates_ok=10, revokes_ok=9, statuses={201: 10, 200: 9},
                             latency={50: 0.1, 99: 0.5})
    two = writes.WriteResult(seconds=2.1, creates_ok=5, revokes_ok=5,
                             statuses={201: 5, 200: 5, 409: 2}, latency={50: 0.2, 99: 0.3})
    both = writes.combine([one, two])
    assert (both.writes, both.not_ok, both.seconds) == (29, 2, 2.1)
    assert both.statuses == {201: 15, 200: 14, 409: 2}
    assert both.latency == {50: 0.2, 99: 0.5}


def test_two_load_clients_never_share_a_pair():
    pairs = [writes.Pair(f"u{n}", f"Bearer t{n}", "p") for n in range(7)]
    first, second = writes.share(pairs, 0, 2), writes.share(pairs, 1, 2)
    assert not {p.key for p in first} & {p.key for p in second}
    assert len(first) + len(second) == len(pairs)


def test_wrk_output_without_a_latency_table_still_parses():
    result = common.parse_wrk("  10 requests in 1.00s, 1KB read\n")
    assert (result.requests, result.not_ok, result.errors, result.latency) == (10, 0, 0, {})


# ---- the Lua script against a stub service ---------------------------------------------------
class StubService:
    """Answers like the service: one open request per (token, permission), revoke by its owner."""

    def __init__(self, *, refuse_every_create: bool = False):
        self.refuse = refuse_every_create
        self.lock = threading.Lock()
        self.open: dict[tuple[str, str], str] = {}  # (token, permission) -> request id
        self.requests: dict[str, tuple[str, str, str]] = {}  # id -> token, username, permission
        self.problems: list[str] = []
        self.created = self.revoked = 0

    def create(self, token: str, body: dict) -> tuple[int, dict]:
        if self.refuse:
            return 409, {"error": "already_requested"}
        pair = (token, body["permission"])
        with self.lock:
            if pair in self.open:
                self.problems.append(f"pair sent while open: {pair}")
                return 409, {"error": "already_requested"}
            request_id = str(uuid.uuid4())
            self.open[pair] = request_id
            username = token.removeprefix("Bearer tok-")
            self.requests[request_id] = (token, username, body["permission"])
            self.created += 1
        return 201, {"message": None, "request": {
            "approvals": [], "id": request_id, "permission": body["permission"],
            "requester": username, "status": "active"}}

    def revoke(self, token: str, request_id: str) -> tuple[int, dict]:
        with self.lock:
            owner, username, permission = self.requests.get(request_id, (None, None, None))
            if owner != token:
                self.problems.append(f"revoke of {request_id} with another token")
                return 403, {"error": "forbidden"}
            if self.open.get((token, permission)) != request_id:
                self.problems.append(f"revoke of {request_id} twice")
                return 409, {"error": "not_active"}
            del self.open[(token, permission)]
            self.revoked += 1
        return 200, {"message": None, "request": {
            "id": request_id, "permission": permission, "requester": username,
            "status": "revoked"}}


def _serve(stub: StubService) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802  (http.server's name)
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length) or b"{}")
            token = self.headers.get("Authorization", "")
            parts = self.path.strip("/").split("/")
            if parts == ["v1", "requests"]:
                status, answer = stub.create(token, body)
            elif len(parts) == 4 and parts[3] == "revoke" and body == {}:
                status, answer = stub.revoke(token, parts[2])
            else:
                status, answer = 404, {"error": "not_found"}
            data = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    class Server(ThreadingHTTPServer):
        def handle_error(self, request, client_address):
            """wrk drops its connections when its time is up: a broken pipe is no finding."""
            if not isinstance(sys.exc_info()[1], OSError):
                super().handle_error(request, client_address)

    server = Server(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


needs_wrk = pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed")


def _run(stub: StubService, tmp_path: Path, pairs: int = 12) -> writes.WriteResult:
    server = _serve(stub)
    try:
        base_url = f"http://127.0.0.1:{server.server_address[1]}"
        runner = common.Runner("wrk", base_url, tmp_path, threads=2, connections=4)
        return writes.run_wrk(runner, [base_url],
                              [writes.Pair(f"user-{n}", f"Bearer tok-user-{n}", "perm")
                               for n in range(pairs)], seconds=1, timeout=5)
    finally:
        server.shutdown()
        server.server_close()


@needs_wrk
def test_every_create_is_revoked_by_its_own_requester_and_pairs_come_back(tmp_path):
    stub = StubService()
    result = _run(stub, tmp_path)
    assert stub.problems == []
    assert result.not_ok == 0 and result.unparsed == 0 and result.out_of_pairs == 0
    # 12 pairs and 4 connections: more revokes than pairs means pairs were used again.
    assert result.revokes_ok > 12
    assert result.creates_ok <= stub.created and result.revokes_ok <= stub.revoked
    assert result.creates_ok - result.revokes_ok <= 4  # at most one open per connection


@needs_wrk
def test_a_run_full_of_409s_counts_no_write(tmp_path):
    result = _run(StubService(refuse_every_create=True), tmp_path)
    assert result.writes == 0 and result.per_second == 0
    assert result.statuses[409] > 0 and result.not_ok >= result.statuses[409]
    assert result.revokes_sent == 0
    # A refused pair is not sent again (it may be open): once every pair is gone, the run says so.
    assert result.out_of_pairs > 0
    assert "WARNING" in writes.describe("write", result)
