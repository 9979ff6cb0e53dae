"""A local HTTP receiver for webhook and chat notifications: records what it is sent."""
from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Receiver(ThreadingHTTPServer):
    """Records every POST (path, headers, raw body, parsed JSON) and answers `status`."""

    daemon_threads = False  # server_close() joins every handler: nothing outlives a test

    def __init__(self, path: str = "/hook"):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.path = path
        self.received: list[dict] = []
        self.lock = threading.Lock()
        self.status = 200
        self.location: str | None = None
        self.delay = 0.0                   # seconds to sit on each request before answering
        self.arrived = threading.Event()   # set when a request comes in
        self.release = threading.Event()   # ends every delay at once when set

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}{self.path}"

    def count(self, event: str, request_id: str | None = None) -> int:
        """Count webhook provisioner events of one kind (for one request)."""
        with self.lock:
            return sum(1 for call in self.received
                       if (call["json"] or {}).get("event") == event
                       and (request_id is None or call["json"].get("request_id") == request_id))

    def handle_error(self, request, client_address):
        pass  # a client that timed out closes its socket; the late answer's error is expected


class _Handler(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 -- the name http.server dispatches to
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        server = self.server
        try:
            parsed = json.loads(body)
        except ValueError:
            parsed = None
        with server.lock:
            server.received.append({"path": self.path, "headers": dict(self.headers),
                                    "body": body, "json": parsed})
        server.arrived.set()
        if server.delay:
            server.release.wait(server.delay)
        self.send_response(server.status)
        if server.location:
            self.send_header("Location", server.location)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, format, *args):  # noqa: A002
        pass


@contextmanager
def serving(path: str = "/hook") -> Iterator[Receiver]:
    """Run a receiver in a thread for the duration of the block."""
    server = Receiver(path)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield server
    finally:
        server.release.set()
        server.shutdown()
        server.server_close()
        thread.join()
