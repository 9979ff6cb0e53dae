"""The benchmark's login run (bench/auth_overhead.py): every login it sends is answered and
counted, refusals are not throughput, and the service's CPU is read from its own processes.

Not a benchmark: nothing here is timed. The run goes against a stub service on a loopback port
that holds every login until a round of them has arrived, as 16 bcrypt checks sharing 2 cores
are answered together: a run cut off at its end lost the unfinished round (issue 13's 0.78).
"""
from __future__ import annotations

import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parent.parent / "bench"))  # after the project

import auth_overhead  # noqa: E402  (bench/auth_overhead.py)
import common  # noqa: E402  (bench/common.py)

CONNECTIONS = 4
AUTHORIZATION = common.basic_header("bench-bot", "secret")


class RoundsOfLogins:
    """A stub /v1/login answering in rounds: nobody until every connection has sent one."""

    def __init__(self, *, refuse_every: int = 0):
        self.received = 0
        self.answered_ok = 0
        self.refuse_every = refuse_every
        self.lock = threading.Lock()
        self.round_done = threading.Condition(self.lock)
        self.waiting = self.rounds = 0
        self.authorizations: set[str] = set()

    def wait_for_the_round(self) -> None:
        """Hold a login until CONNECTIONS of them wait (the run's last ones go alone, later)."""
        with self.round_done:
            self.waiting += 1
            if self.waiting == CONNECTIONS:
                self.waiting, self.rounds = 0, self.rounds + 1
                self.round_done.notify_all()
                return
            this_round = self.rounds
            if not self.round_done.wait_for(lambda: self.rounds != this_round, timeout=0.5):
                self.waiting -= 1

    def handler(self):
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's name)
                self.rfile.read(int(self.headers["Content-Length"]))
                with stub.lock:
                    stub.received += 1
                    number = stub.received
                    stub.authorizations.add(self.headers["Authorization"])
                stub.wait_for_the_round()
                refused = stub.refuse_every and number % stub.refuse_every == 0
                with stub.lock:
                    stub.answered_ok += not refused
                body = b'{"error": "locked"}' if refused else b'{"token": "t"}'
                self.send_response(429 if refused else 200)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_args):
                pass
        return Handler


def _run(stub: RoundsOfLogins, seconds: int = 1) -> auth_overhead.LoginRun:
    server = ThreadingHTTPServer(("127.0.0.1", 0), stub.handler())
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        return auth_overhead.drained_logins(f"http://127.0.0.1:{server.server_port}",
                                            AUTHORIZATION, seconds=seconds,
                                            connections=CONNECTIONS)
    finally:
        server.shutdown()
        server.server_close()


def test_every_login_sent_is_answered_and_counted():
    stub = RoundsOfLogins()
    run = _run(stub)
    assert run.ok == stub.received == stub.answered_ok
    assert stub.rounds >= 1
    assert (run.not_ok, run.errors) == (0, 0)
    assert stub.authorizations == {AUTHORIZATION}
    assert run.ok_per_second == run.ok / run.seconds


def test_refusals_are_answers_but_not_logins():
    stub = RoundsOfLogins(refuse_every=2)
    run = _run(stub)
    assert run.ok == stub.answered_ok and run.ok + run.not_ok == stub.received
    assert run.not_ok == stub.received // 2
    assert run.ok_per_second == run.ok / run.seconds


def test_the_service_cpu_is_that_of_the_processes_this_one_started():
    before = auth_overhead.service_cpu_seconds()
    busy = subprocess.Popen([sys.executable, "-c", "import sys; sum(range(30_000_000)); "
                             "print('done', flush=True); sys.stdin.read()"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert busy.stdout.readline() == "done\n"
        assert auth_overhead.service_cpu_seconds() > before
    finally:
        busy.communicate("")
