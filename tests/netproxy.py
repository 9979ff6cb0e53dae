"""A TCP proxy a test puts between the service and a dependency, to make that dependency fail.

    with proxy_to("127.0.0.1", 5432) as proxy:   # proxy.port now forwards to PostgreSQL
        proxy.mode = REFUSE      # new connections are reset, open ones are cut
        proxy.mode = BLACKHOLE   # connections are accepted, open ones kept, nothing answers
        proxy.mode = FORWARD     # back to normal for new connections

REFUSE is a server that is down (or restarting); BLACKHOLE is the nasty case of a peer that
vanished without closing (network partition, frozen VM): bytes go out, nothing comes back.
"""
from __future__ import annotations

import selectors
import socket
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager

FORWARD, REFUSE, BLACKHOLE = "forward", "refuse", "blackhole"
_LINGER_RESET = struct.pack("ii", 1, 0)  # close() sends RST instead of FIN


class Proxy:
    """Listens on 127.0.0.1:<port>; one thread accepts, one thread pumps every connection."""

    def __init__(self, target_host: str, target_port: int):
        self.target = (target_host, target_port)
        self._mode = FORWARD
        self._lock = threading.Lock()
        self._pairs: dict[socket.socket, socket.socket] = {}
        self._held: list[socket.socket] = []  # black-holed sockets, kept open, never read
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._listener, selectors.EVENT_READ)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="netproxy", daemon=True)

    @property
    def mode(self) -> str:
        return self._mode

    @mode.setter
    def mode(self, value: str) -> None:
        if value not in (FORWARD, REFUSE, BLACKHOLE):
            raise ValueError(value)
        with self._lock:
            self._mode = value
            if value == REFUSE:
                for sock in list(self._pairs):
                    self._drop(sock, reset=True)
                self._release_held()
            elif value == BLACKHOLE:
                # Open connections stay open but go silent both ways.
                for sock in list(self._pairs):
                    self._selector.unregister(sock)
                    self._held.append(sock)
                self._pairs.clear()
            else:
                self._release_held()  # a peer back from a partition has forgotten them

    def start(self) -> Proxy:
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        with self._lock:
            for sock in list(self._pairs):
                self._drop(sock, reset=False)
            self._release_held()
        self._selector.close()
        self._listener.close()

    # ---- inside the proxy thread ------------------------------------------------------------
    def _loop(self) -> None:
        while not self._stop.is_set():
            for key, _events in self._selector.select(timeout=0.05):
                with self._lock:
                    if key.fileobj is self._listener:
                        self._accept()
                    elif key.fileobj in self._pairs:
                        self._pump(key.fileobj)

    def _accept(self) -> None:
        client, _ = self._listener.accept()
        if self._mode == REFUSE:
            _reset(client)
            return
        if self._mode == BLACKHOLE:
            self._held.append(client)
            return
        try:
            upstream = socket.create_connection(self.target, timeout=3)
        except OSError:
            _reset(client)
            return
        for sock in (client, upstream):
            sock.setblocking(False)
        self._pairs[client], self._pairs[upstream] = upstream, client
        self._selector.register(client, selectors.EVENT_READ)
        self._selector.register(upstream, selectors.EVENT_READ)

    def _pump(self, sock: socket.socket) -> None:
        peer = self._pairs[sock]
        try:
            data = sock.recv(65536)
            if data:
                peer.setblocking(True)
                peer.sendall(data)
                peer.setblocking(False)
                return
        except OSError:
            pass
        self._drop(sock, reset=False)

    def _drop(self, sock: socket.socket, *, reset: bool) -> None:
        peer = self._pairs.pop(sock, None)
        for one in (sock, peer):
            if one is None:
                continue
            self._pairs.pop(one, None)
            try:
                self._selector.unregister(one)
            except (KeyError, ValueError):
                pass
            if reset:
                _reset(one)
            else:
                one.close()

    def _release_held(self) -> None:
        for sock in self._held:
            _reset(sock)
        self._held.clear()


def _reset(sock: socket.socket) -> None:
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    except OSError:
        pass
    sock.close()


@contextmanager
def proxy_to(host: str, port: int) -> Iterator[Proxy]:
    """Run a forwarding proxy to host:port for the duration of the block."""
    proxy = Proxy(host, port).start()
    try:
        yield proxy
    finally:
        proxy.close()
