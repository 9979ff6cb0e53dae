"""Expire due grants and undecided requests, warn of grants ending soon, flag overdue
break-glass reviews, scan for drift when due, and deliver owed notifications: once from cron
(`flask reap`) or in the background of each worker."""
from __future__ import annotations

import logging
import threading

from security_api import audit
from security_api.access.break_glass import notify_overdue
from security_api.access.drift_schedule import scan_if_due
from security_api.access.expiry_warnings import warn_due
from security_api.access.lifecycle import expire_due
from security_api.access.pending_expiry import expire_pending_due
from security_api.access.provisioning import recover
from security_api.access.readback_retry import retry_grant_readbacks
from security_api.clock import utcnow
from security_api.integrations.outbox_delivery import deliver_due
from security_api.services import Services

log = logging.getLogger(__name__)
BATCH = 100


def reap_once(services: Services) -> int:
    """Expire every grant and pending request that is due now, and warn of grants ending soon;
    return how many requests this call expired."""
    total = 0
    origin = audit.Origin(ip="reaper")
    with services.session_factory() as session:
        while True:
            expired = expire_due(session, services, now=utcnow(), limit=BATCH, origin=origin)
            total += expired
            if expired < BATCH:
                break
        total += _expire_pending(session, origin)
        _warn_of_endings(session, services, origin)
        # Claims left by a crashed worker: abandoned grants fail, owed revokes run again.
        recover(session, services, origin=origin, now=utcnow())
        # Grants whose read-back could not be made right after the call (see readback.py).
        retry_grant_readbacks(session, services, origin=origin, now=utcnow())
        # Break-glass reviews past due: their reviewers are told again, once per review.
        notify_overdue(session, origin=origin, now=utcnow())
    _scan_drift_if_due(services)
    deliver_due(services)  # notifications owed, including any a crashed worker left
    return total


def _scan_drift_if_due(services: Services) -> None:
    # A target that cannot be read must not stop expiry or the delivery of notifications.
    try:
        scan_if_due(services, now=utcnow())
    except Exception:  # noqa: BLE001 - logged; the next interval tries again
        log.exception("drift scan failed")
def _expire_pending(session, origin: audit.Origin) -> int:
    total = 0
    while True:
        expired = expire_pending_due(session, now=utcnow(), limit=BATCH, origin=origin)
        total += expired
        if expired < BATCH:
            return total


def _warn_of_endings(session, services: Services, origin: audit.Origin) -> None:
    minutes = services.settings.expiry_warning_minutes
    while warn_due(session, warning_minutes=minutes, now=utcnow(), limit=BATCH,
                   origin=origin) >= BATCH:
        pass


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
