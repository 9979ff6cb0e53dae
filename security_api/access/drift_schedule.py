"""The periodic drift scan: one scan across every worker and instance per DRIFT_INTERVAL_SECONDS.

Every worker's reaper asks; the one whose conditional UPDATE moves the single schedule row's
`next_scan_at` past now wins the interval, the others' UPDATEs match no row. The row is made
by the first claim (an empty database has none); two first claims racing to insert it are
settled by its primary key.
"""
from __future__ import annotations

import logging
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from security_api import audit
from security_api.access.drift import ScanReport, scan
from security_api.access.drift_models import DriftSchedule
from security_api.services import Services
from security_api.unit_of_work import unit_of_work

log = logging.getLogger(__name__)
ROW_ID = 1
ORIGIN = audit.Origin(ip="reaper")


def claim_scan(session: Session, *, now: datetime, interval_seconds: int) -> bool:
    """Take this interval's scan; False when another worker has it (or it is not due)."""
    next_scan_at = now + timedelta(seconds=interval_seconds)
    try:
        with unit_of_work(session):
            won = session.execute(update(DriftSchedule).where(
                DriftSchedule.id == ROW_ID, DriftSchedule.next_scan_at <= now)
                .values(next_scan_at=next_scan_at)).rowcount == 1
            if won or session.scalar(select(DriftSchedule.id).where(DriftSchedule.id == ROW_ID)):
                return won
            session.add(DriftSchedule(id=ROW_ID, next_scan_at=next_scan_at))
    except IntegrityError:
        return False  # another worker made the row, and so took this interval
    return True


def scan_if_due(services: Services, *, now: datetime) -> ScanReport | None:
    """Run the periodic scan when it is due and this worker claims it; None otherwise."""
    interval = services.settings.drift_interval_seconds
    if interval <= 0:
        return None
    with services.session_factory() as session:
        if not claim_scan(session, now=now, interval_seconds=interval):
            return None
    report = scan(services, actor="system", origin=ORIGIN, now=now)
    if report.findings or report.errors:
        log.warning("drift scan: %d open finding(s), %d target(s) unreadable",
                    len(report.findings), len(report.errors))
    return report
