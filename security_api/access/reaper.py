"""Expire due grants, flag overdue break-glass reviews and deliver owed notifications: once
from cron (`flask reap`) or in the background of each worker."""
from __future__ import annotations

import logging
import threading

from security_api import audit
from security_api.access.break_glass import notify_overdue
from security_api.access.lifecycle import expire_due
from security_api.access.provisioning import recover
from security_api.clock import utcnow
from security_api.integrations.outbox_delivery import deliver_due
from security_api.services import Services

log = logging.getLogger(__name__)
BATCH = 100


def reap_once(services: Services) -> int:
    """Expire every grant that is due now; return how many this call expired."""
    total = 0
    origin = audit.Origin(ip="reaper")
    with services.session_factory() as session:
        while True:
            expired = expire_due(session, services, now=utcnow(), limit=BATCH, origin=origin)
            total += expired
            if expired < BATCH:
                break
        # Claims left by a crashed worker: abandoned grants fail, owed revokes run again.
        recover(session, services, origin=origin, now=utcnow())
        # Break-glass reviews past due: their reviewers are told again, once per review.
        notify_overdue(session, origin=origin, now=utcnow())
    deliver_due(services)  # notifications owed, including any a crashed worker left
    return total


def start_background_reaper(services: Services, *, interval_seconds: int) -> threading.Event:
    """Run reap_once every interval in a daemon thread; set the returned event to stop it."""
    stop = threading.Event()

    def loop():
        while not stop.wait(interval_seconds):
            try:
                count = reap_once(services)
                if count:
                    log.info("reaper expired %d grants", count)
            except Exception:  # noqa: BLE001 - a reaper that dies silently is worse
                log.exception("reaper run failed; trying again next interval")

    threading.Thread(target=loop, name="security-api-reaper", daemon=True).start()
    return stop
