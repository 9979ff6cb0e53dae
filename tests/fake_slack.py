"""A local fake of Slack's Web API (chat.postMessage, chat.update): records calls, checks the token.

No Slack is reachable from the tests: SLACK_API_URL points here. It answers like Slack does:
HTTP 200 with `{"ok": true, "channel": ..., "ts": ...}`, or `{"ok": false, "error": ...}` for a
wrong bot token (`invalid_auth`) or an unknown message (`message_not_found`); `down` makes it
answer HTTP 503 as an outage would.
"""
from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FakeSlack(ThreadingHTTPServer):
    daemon_threads = False

    def __init__(self, token: str):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.token = token
        self.lock = threading.Lock()
        self.calls: list[dict] = []   # every call: method, authorization, body, answered ok
        self.messages: dict[str, dict] = {}  # ts -> the message's current body
        self.down = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/api"

    def done(self, method: str) -> list[dict]:
        """The bodies of the calls of `method` that Slack accepted, in order."""
        with self.lock:
            return [c["body"] for c in self.calls if c["method"] == method and c["ok"]]

    def answer(self, method: str, authorization: str | None, body: dict) -> tuple[int, dict]:
        if self.down:
            return 503, {}
        if authorization != f"Bearer {self.token}":
            return 200, {"ok": False, "error": "invalid_auth"}
        if method == "chat.postMessage":
            with self.lock:
                ts = f"{1700000000 + len(self.messages)}.000100"
                self.messages[ts] = body
            return 200, {"ok": True, "channel": body.get("channel"), "ts": ts}
        if method == "chat.update":
            with self.lock:
                if body.get("ts") not in self.messages:
                    return 200, {"ok": False, "error": "message_not_found"}
                self.messages[body["ts"]] = body
            return 200, {"ok": True, "channel": body.get("channel"), "ts": body["ts"]}
        if method == "chat.postEphemeral":
            return 200, {"ok": True, "message_ts": "1700000000.000200"}
        return 200, {"ok": False, "error": "unknown_method"}


class _Handler(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 -- the name http.server dispatches to
        server: FakeSlack = self.server
        raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        body = json.loads(raw or b"{}")
        method = self.path.rpartition("/")[2]
        authorization = self.headers.get("Authorization")
        status, answer = server.answer(method, authorization, body)
        with server.lock:
            server.calls.append({"method": method, "authorization": authorization, "body": body,
                                 "ok": answer.get("ok") is True})
        data = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format, *args):  # noqa: A002
        pass


@contextmanager
def fake_slack(token: str) -> Iterator[FakeSlack]:
    """Run a fake Slack in a thread for the duration of the block."""
    server = FakeSlack(token)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
