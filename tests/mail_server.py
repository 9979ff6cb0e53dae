"""A local SMTP server for tests that leaves no connection open when it stops.

aiosmtpd's threaded ``Controller.stop()`` stops its event loop, cancels the tasks and closes
the listener. A connection the loop accepted in its last rounds (the service's outbox thread
delivering while a test ends) then cannot attach to the closed server: asyncio gives up on it
half-made and nobody closes its socket. The garbage collector reports it later, during
whichever test runs then, and ``filterwarnings = error`` turns that into an error of an
unrelated test (CI saw it twice, as a setup error of test_an_ended_grant_says_ended). A
warning filter cannot help: in the collector's cycle the socket may be finalised before its
transport and warn on its own. So this server hangs up itself before the controller stops:
it stops accepting (the listener stays open, so accepts already under way complete), aborts
every connection and waits until each one's ``connection_lost`` has run.
"""
from __future__ import annotations

import asyncio
import weakref

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP

HANG_UP_SECONDS = 5.0
ROUND_SECONDS = 0.01
QUIET_ROUNDS = 2  # an accept under way makes its protocol one round later, its connection the next


class _TrackedSMTP(SMTP):
    """aiosmtpd's protocol, telling whether its connection has ended."""

    ended = False

    def connection_lost(self, error):
        try:
            super().connection_lost(error)
        finally:
            self.ended = True


class MailServer(Controller):
    """aiosmtpd's threaded controller that closes every connection before it stops."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.connections: weakref.WeakSet[_TrackedSMTP] = weakref.WeakSet()

    def factory(self) -> SMTP:
        """Make the protocol of one connection, and remember it to hang up on it later."""
        smtp = _TrackedSMTP(self.handler, **self.SMTP_kwargs)
        self.connections.add(smtp)
        return smtp

    def open_connections(self) -> list[_TrackedSMTP]:
        """Return the connections that have not ended (including those not made yet)."""
        return [smtp for smtp in list(self.connections) if not smtp.ended]

    def stop(self, no_assert: bool = False) -> None:
        """Hang up on every client in the server's own loop, then stop it."""
        if self._thread is not None and self.loop.is_running():
            asyncio.run_coroutine_threadsafe(self._hang_up(), self.loop).result(HANG_UP_SECONDS + 1)
        super().stop(no_assert)

    async def _hang_up(self) -> None:
        loop = asyncio.get_running_loop()
        for listener in self.server.sockets:
            loop.remove_reader(listener.fileno())  # accept nothing new; the listener stays open
        deadline, quiet = loop.time() + HANG_UP_SECONDS, 0
        while quiet < QUIET_ROUNDS and loop.time() < deadline:
            still_open = self.open_connections()
            for smtp in still_open:
                if smtp.transport is not None:  # made: end it; not made yet: next round
                    smtp.transport.abort()
            quiet = 0 if still_open else quiet + 1
            await asyncio.sleep(ROUND_SECONDS)
