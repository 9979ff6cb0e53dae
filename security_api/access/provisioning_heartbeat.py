"""The heartbeat of a grant claim: a worker running a provisioner's grant shows it is alive.

Apart from provisioning.py so that module keeps to its one job (claim, call, record). See its
docstring for the lease the heartbeat keeps fresh.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime

from security_api.access.transitions import Event, transition
from security_api.clock import utcnow
from security_api.services import Services
from security_api.unit_of_work import unit_of_work

log = logging.getLogger(__name__)
# A worker running a grant refreshes its claim this often.
HEARTBEAT_SECONDS = 2


@contextmanager
def heartbeat(services: Services, request_id: str, *, until: datetime) -> Iterator[None]:
    """Keep refreshing the grant claim while the block runs (until `until` at most)."""
    stop = threading.Event()

    def beat():
        with services.session_factory() as session:
            while not stop.wait(HEARTBEAT_SECONDS) and utcnow() < until:
                try:
                    with unit_of_work(session):
                        transition(session, request_id, event=Event.HEARTBEAT,
                                   provisioning_started_at=utcnow())
                except Exception:  # noqa: BLE001 - a missed beat only shortens the lease
                    log.warning("could not refresh the grant claim of %s", request_id,
                                exc_info=True)

    thread = threading.Thread(target=beat, name="security-api-claim-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
