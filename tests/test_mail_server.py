"""The tests' SMTP server hangs up on its clients when it stops (tests/mail_server.py).

The race it closes: clients connect while the server's loop is busy, so the loop accepts them
in the same rounds as the stop. aiosmtpd's own controller leaves those connections half-made
with open sockets, which the garbage collector reports during some later, unrelated test.
"""
from __future__ import annotations

import gc
import socket
import time
import warnings

from aiosmtpd.controller import Controller

from tests.mail_server import MailServer
from tests.servers import free_port


class Handler:
    async def handle_DATA(self, server, session, envelope):  # noqa: N802 -- aiosmtpd's hook name
        return "250 OK"


def _stop_while_clients_arrive(server_class) -> tuple[list[str], list[bytes]]:
    """Connect clients while the server's loop is busy, stop it; return warnings and what they read."""
    server = server_class(Handler(), hostname="127.0.0.1", port=free_port())
    server.start()
    server.loop.call_soon_threadsafe(time.sleep, 0.3)  # the loop is busy: accepts wait for the stop
    time.sleep(0.05)
    clients = [socket.create_connection(("127.0.0.1", server.port), timeout=5) for _ in range(3)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        server.stop()
        del server
        while gc.collect():  # every cycle now, not during a later test
            pass
    read = []
    for client in clients:
        with client:
            try:
                read.append(client.recv(1024))
            except ConnectionResetError:
                read.append(b"<reset>")
    return [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)], read


def test_clients_arriving_while_the_server_stops_are_hung_up_on():
    leaked, read = _stop_while_clients_arrive(MailServer)
    assert leaked == []
    # Each client was accepted and then hung up on: no greeting left half-sent, no socket kept.
    assert all(data in (b"", b"<reset>") or data.startswith(b"220 ") for data in read), read


def test_aiosmtpds_own_controller_leaks_them():
    """The race is real: without the hang-up the same clients leave unclosed sockets behind."""
    leaked, _ = _stop_while_clients_arrive(Controller)
    assert any("unclosed" in message for message in leaked)


def test_a_client_in_the_middle_of_a_session_is_hung_up_on():
    server = MailServer(Handler(), hostname="127.0.0.1", port=free_port())
    server.start()
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as client:
        assert client.recv(1024).startswith(b"220 ")
        client.sendall(b"EHLO test\r\nMAIL FROM:<a@example.com>\r\n")
        time.sleep(0.1)
        server.stop()
        assert server.open_connections() == []
        rest = b""
        while chunk := _recv(client):
            rest += chunk
        assert b"250" in rest  # it was mid-session, and then the server hung up


def _recv(client: socket.socket) -> bytes:
    try:
        return client.recv(4096)
    except ConnectionResetError:
        return b""
