"""Sending the outbox after the commit: claimed by one deliverer, retried with back-off, never dropped.

Who sends: the reaper every interval (`reap_once`), and, so that nobody waits a reaper
interval, a background thread of the process whose commit wrote rows (`attach`). Never the
HTTP request's own thread: a slow mail server must not slow an API call.

Exactly one deliverer sends a row: it claims it with a conditional UPDATE (owed, due, and no
live lease) that a second deliverer's UPDATE then finds nothing to match, on SQLite and on
PostgreSQL alike. The lease outlives the longest send; a deliverer that died mid-send leaves a
lease that lapses, and the row is sent again. That (and a crash between sending and marking)
can repeat a send: every delivery carries the row's id (`X-Security-API-Delivery`, and a
Message-ID derived from it) so the receiver can drop the duplicate.

A failed attempt is recorded (attempts, last_error) and tried again after a capped exponential
back-off. A notification is never given up on: past LOUD_AFTER_ATTEMPTS each failure is logged
as an error, and the pending count and oldest age are exported as metrics for alerting.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import event, func, or_, select, update
from sqlalchemy.orm import Session

from security_api import metrics
from security_api.clock import as_utc, utcnow
from security_api.integrations import slack_delivery
from security_api.integrations.notify import DeliveryFailed
from security_api.integrations.outbox import WROTE_INFO
from security_api.integrations.slack_messages import SLACK_KINDS
from security_api.models import OutboxMessage, new_id
from security_api.services import Services
from security_api.unit_of_work import end_reads

log = logging.getLogger(__name__)
BACKOFF_FIRST_SECONDS = 5
BACKOFF_CAP_SECONDS = 3600
LOUD_AFTER_ATTEMPTS = 8
IDLE_SECONDS = 30  # the background thread ends after this long without a wake-up


@dataclass(frozen=True)
class _Claimed:
    id: str
    token: str
    kind: str
    payload: dict
    attempts: int
    sent_channels: frozenset[str]


def backoff(attempts: int) -> timedelta:
    """Return the wait after the `attempts`-th failure: 5 s, 10 s, 20 s ... at most an hour."""
    return timedelta(seconds=min(BACKOFF_CAP_SECONDS, BACKOFF_FIRST_SECONDS * 2 ** (attempts - 1)))


def lease(services: Services) -> timedelta:
    """Return how long a claim lives: beyond the webhook's and the mail server's timeouts."""
    return timedelta(seconds=services.settings.provisioner_timeout_seconds * 4 + 60)


def deliver_due(services: Services, *, now: datetime | None = None, limit: int = 100) -> int:
    """Send every due, unclaimed notification once; return how many were delivered."""
    now = now or utcnow()
    delivered = 0
    with services.session_factory() as session:
        due = list(session.scalars(select(OutboxMessage.id).where(*_claimable(now))
                                   .order_by(OutboxMessage.created_at).limit(limit)))
        end_reads(session)
        for message_id in due:
            claimed = _claim(session, services, message_id, now)
            if claimed is not None:
                delivered += _send(session, services, claimed, now)
        _observe_backlog(session, now)
    return delivered


def _claimable(now: datetime) -> tuple:
    return (OutboxMessage.delivered_at.is_(None), OutboxMessage.next_attempt_at <= now,
            or_(OutboxMessage.claimed_until.is_(None), OutboxMessage.claimed_until < now))


def _claim(session: Session, services: Services, message_id: str, now: datetime) -> _Claimed | None:
    """Take the row for one lease, or None when another deliverer has it (or it is done)."""
    token = new_id()
    taken = session.execute(update(OutboxMessage)
                            .where(OutboxMessage.id == message_id, *_claimable(now))
                            .values(claimed_until=now + lease(services), claim_token=token))
    session.commit()
    if taken.rowcount != 1:
        return None
    row = session.get(OutboxMessage, message_id, populate_existing=True)
    claimed = _Claimed(id=row.id, token=token, kind=row.kind, payload=row.payload,
                       attempts=row.attempts, sent_channels=frozenset(row.sent_channels))
    end_reads(session)  # no transaction stays open while the receivers are called
    return claimed


def _send(session: Session, services: Services, claimed: _Claimed, now: datetime) -> int:
    """Call the receivers, then record the outcome under our claim; return 1 when delivered."""
    attempts = claimed.attempts + 1
    try:
        if claimed.kind in SLACK_KINDS:
            reached = slack_delivery.deliver(services, claimed.kind, claimed.payload)
        else:
            reached = services.notifier.send(
                claimed.kind, claimed.payload["request"], recipients=claimed.payload["recipients"],
                delivery_id=claimed.id, done=claimed.sent_channels)
    except DeliveryFailed as exc:
        _record(session, claimed, attempts=attempts, reached=exc.reached, error=str(exc),
                next_attempt_at=now + backoff(attempts))
        metrics.count_outbox_failure()
        level = logging.ERROR if attempts >= LOUD_AFTER_ATTEMPTS else logging.WARNING
        log.log(level, "notification %s failed (attempt %d, next in %s): %s", claimed.id,
                attempts, backoff(attempts), exc)
        return 0
    except Exception as exc:  # noqa: BLE001 -- a bad payload is retried and stays visible
        _record(session, claimed, attempts=attempts, reached=set(claimed.sent_channels),
                error=type(exc).__name__, next_attempt_at=now + backoff(attempts))
        metrics.count_outbox_failure()
        log.exception("notification %s could not be sent", claimed.id)
        return 0
    _record(session, claimed, attempts=attempts, reached=reached, error=None,
            delivered_at=utcnow())
    metrics.count_outbox_delivered()
    return 1


def _record(session: Session, claimed: _Claimed, *, attempts: int, reached: set[str],
            error: str | None, **values) -> None:
    # Only under our own claim: a deliverer whose lease lapsed must not undo a newer one.
    session.execute(update(OutboxMessage)
                    .where(OutboxMessage.id == claimed.id, OutboxMessage.claim_token == claimed.token)
                    .values(attempts=attempts, sent_channels=sorted(reached),
                            last_error=error[:200] if error else None, claimed_until=None,
                            claim_token=None, **values))
    session.commit()


def _observe_backlog(session: Session, now: datetime) -> None:
    count, oldest = session.execute(select(func.count(), func.min(OutboxMessage.created_at))
                                    .where(OutboxMessage.delivered_at.is_(None))).one()
    end_reads(session)
    age = (now - as_utc(oldest)).total_seconds() if oldest is not None else 0.0
    metrics.observe_outbox_backlog(pending=count, oldest_age_seconds=max(age, 0.0))


# ---- the background deliverer -------------------------------------------------------------------
class BackgroundDeliverer:
    """A thread that delivers when woken; started by the first wake-up, ended when idle."""

    def __init__(self, services: Services):
        self.services = services
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stopped = False

    def wake(self) -> None:
        """Ask for a delivery run soon; returns at once."""
        self._wake.set()
        with self._lock:
            if self._thread is None and not self._stopped:
                self._thread = threading.Thread(target=self._run, name="security-api-outbox",
                                                daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            if not self._wake.wait(IDLE_SECONDS):
                with self._lock:
                    if not self._wake.is_set():  # a wake-up after the check starts a new thread
                        self._thread = None
                        return
            self._wake.clear()
            if self._stopped:
                return
            try:
                deliver_due(self.services)
            except Exception:  # noqa: BLE001 -- the reaper delivers what this run could not
                log.exception("outbox delivery run failed; the reaper will try again")


    def stop(self, timeout: float = 30.0) -> None:
        """Let a run in progress finish and start no other (the engine is about to go)."""
        with self._lock:
            self._stopped = True
            thread = self._thread
        self._wake.set()
        if thread is not None:
            thread.join(timeout)


def attach(services: Services) -> BackgroundDeliverer:
    """Wake a background deliverer whenever a session of `services` commits outbox rows."""
    deliverer = BackgroundDeliverer(services)

    def after_commit(session: Session) -> None:
        if session.info.pop(WROTE_INFO, False):
            deliverer.wake()

    event.listen(services.session_factory, "after_commit", after_commit)
    return deliverer
