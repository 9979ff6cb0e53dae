"""Prometheus metrics of the service, defined once; labels stay low-cardinality (never a user or a path).

Under gunicorn every worker writes its own files in PROMETHEUS_MULTIPROC_DIR (prometheus_client's
multiprocess mode, chosen by that variable when prometheus_client is first imported) and /metrics
adds them up; elsewhere the numbers live in this process.
"""
from __future__ import annotations

import os

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.multiprocess import MultiProcessCollector
from sqlalchemy import event
from sqlalchemy.orm import Session

from security_api.db import ServiceSession

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
_PENDING_STATUSES = "metrics_request_statuses"
_PENDING_EXTENSIONS = "metrics_grant_extensions"
_PENDING_COUNTS = "metrics_staged_counts"

HTTP_REQUESTS = Counter(
    "security_api_http_requests", "HTTP requests answered, by route template, method and status.",
    ["route", "method", "status"])
HTTP_LATENCY = Histogram(
    "security_api_http_request_duration_seconds",
    "Time from the request reaching the application to its response, by route template, "
    "method and status.", ["route", "method", "status"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0))
LOGINS = Counter(
    "security_api_logins", "POST /v1/login attempts by outcome: success, failure, locked, "
    "throttled, enrollment_required, invalid_request, error.", ["outcome"])
# stepup
STEP_UP_REFUSALS = Counter(
    "security_api_step_up_refusals", "Step-up checks refused, by reason: missing, malformed, "
    "wrong_code, replayed, service_account, not_enrolled, locked.", ["reason"])
REQUEST_TRANSITIONS = Counter(
    "security_api_access_request_transitions",
    "Access requests entering a status (counted when the change is committed).", ["status"])
GRANT_EXTENSIONS = Counter(
    "security_api_access_grant_extensions",
    "Extensions of a grant by outcome (counted when committed): auto (moved at once), "
    "pending (waits for approval), in_time (approved while the grant ran: continued, nothing "
    "provisioned), late (approved after it ended: an ordinary new grant).", ["outcome"])
PROVISIONING_FAILURES = Counter(
    "security_api_provisioning_failures", "Provisioner calls that failed, by provisioner and "
    "action (grant, cleanup, revoke).", ["provisioner", "action"])
PROVISIONING_VERIFICATIONS = Counter(
    "security_api_provisioning_verifications", "Read-backs of a grant or a revoke at the target, "
    "by provisioner, step (grant, revoke) and outcome (confirmed, contradicted, unavailable, "
    "unsupported).", ["provisioner", "step", "outcome"])
OUTBOX_DELIVERED = Counter(
    "security_api_outbox_delivered", "Notifications delivered from the outbox.")
OUTBOX_FAILED_ATTEMPTS = Counter(
    "security_api_outbox_failed_attempts",
    "Outbox delivery attempts that failed (each is retried with back-off).")
# Seen by the last delivery run of any worker: the backlog is the database's, not a worker's.
OUTBOX_PENDING = Gauge(
    "security_api_outbox_pending", "Notifications in the outbox not delivered yet.",
    multiprocess_mode="mostrecent")
OUTBOX_OLDEST_AGE = Gauge(
    "security_api_outbox_oldest_pending_age_seconds",
    "Age of the oldest notification not delivered yet (0 when none); alert when it grows.",
    multiprocess_mode="mostrecent")

# Open drift findings as the last scan or fix of any worker left them (the database's count).
DRIFT_ITEMS = Gauge(
    "security_api_drift_items", "Open drift findings by kind: missing (an active grant not at "
    "its target), orphaned (an entry this service made that no active grant explains).",
    ["kind"], multiprocess_mode="mostrecent")


def observe_drift(counts: dict[str, int]) -> None:
    """Record the open drift findings per kind (every kind, 0 when none)."""
    for kind in ("missing", "orphaned"):
        DRIFT_ITEMS.labels(kind=kind).set(counts.get(kind, 0))


CONFLICT_REFUSALS = Counter(
    "security_api_conflict_refusals", "Requests refused because they would break a conflict set "
    "(separation of duties), by stage: create, approve, retry, extend.", ["stage"])


def count_conflict_refusal(stage: str) -> None:
    """Count one request refused by a conflict set."""
    CONFLICT_REFUSALS.labels(stage=stage).inc()


# pendingexp: expiries by reason and expiry warnings, counted when their transaction commits.
REQUESTS_EXPIRED = Counter(
    "security_api_access_requests_expired",
    "Access requests that expired, by reason: not_decided (pending too long) or ended.",
    ["reason"])
EXPIRY_WARNINGS = Counter(
    "security_api_expiry_warnings_sent",
    "Grants whose holder was warned (through the outbox) that the grant ends soon.")


def stage_expiry(session: Session, reason: str) -> None:
    """Count one request expiring for `reason` once the session commits."""
    session.info.setdefault(_PENDING_COUNTS, []).append((REQUESTS_EXPIRED, {"reason": str(reason)}))


def stage_expiry_warning(session: Session) -> None:
    """Count one expiry warning once the session commits."""
    session.info.setdefault(_PENDING_COUNTS, []).append((EXPIRY_WARNINGS, None))


BREAK_GLASS_USES = Counter(
    "security_api_break_glass_uses", "Break-glass grants made (self-granted, reviewed after).")
BREAK_GLASS_REVIEWS = Counter(
    "security_api_break_glass_reviews", "Break-glass uses reviewed, by verdict.", ["verdict"])
BREAK_GLASS_OVERDUE = Counter(
    "security_api_break_glass_reviews_overdue",
    "Break-glass reviews that became overdue (each notified once).")


def count_break_glass_use() -> None:
    """Count one break-glass grant made (after its commit)."""
    BREAK_GLASS_USES.inc()


def count_break_glass_review(verdict: str) -> None:
    """Count one break-glass review recorded (after its commit)."""
    BREAK_GLASS_REVIEWS.labels(verdict=verdict).inc()


def count_break_glass_overdue() -> None:
    """Count one overdue break-glass review notified (after its commit)."""
    BREAK_GLASS_OVERDUE.inc()


# auditseal: the sequencer that integrates appended audit events into the chain.
AUDIT_EVENTS_SEALED = Counter(
    "security_api_audit_events_sealed", "Audit events sealed into the hash chain.")
AUDIT_SEAL_BATCH = Histogram(
    "security_api_audit_seal_batch_size", "Events sealed per batch (one transaction).",
    buckets=(1, 2, 5, 10, 25, 50, 100, 250, 500))
AUDIT_SEAL_DELAY = Histogram(
    "security_api_audit_seal_delay_seconds",
    "Time from an audit event's append (its transaction's commit hook) to its seal.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0))
AUDIT_ENTRY_MAC_MISMATCHES = Counter(
    "security_api_audit_entry_mac_mismatches",
    "Audit events whose entry MAC did not match when sealed (changed between append and seal).")


def observe_audit_seal(sealed: int, delays: list[float], mismatches: int) -> None:
    """Record one committed seal batch."""
    if not sealed:
        return
    AUDIT_EVENTS_SEALED.inc(sealed)
    AUDIT_SEAL_BATCH.observe(sealed)
    for delay in delays:
        AUDIT_SEAL_DELAY.observe(delay)
    if mismatches:
        AUDIT_ENTRY_MAC_MISMATCHES.inc(mismatches)


def count_outbox_delivered() -> None:
    """Count one notification delivered."""
    OUTBOX_DELIVERED.inc()


def count_outbox_failure() -> None:
    """Count one failed delivery attempt."""
    OUTBOX_FAILED_ATTEMPTS.inc()


def observe_outbox_backlog(*, pending: int, oldest_age_seconds: float) -> None:
    """Record the outbox backlog seen by a delivery run."""
    OUTBOX_PENDING.set(pending)
    OUTBOX_OLDEST_AGE.set(oldest_age_seconds)


def observe_http(*, route: str, method: str, status: int, seconds: float) -> None:
    """Count one answered HTTP request and its latency."""
    labels = {"route": route, "method": method, "status": str(status)}
    HTTP_REQUESTS.labels(**labels).inc()
    HTTP_LATENCY.labels(**labels).observe(seconds)


def count_login(outcome: str) -> None:
    """Count one sign-in attempt by its outcome."""
    LOGINS.labels(outcome=outcome).inc()


def count_step_up_refusal(reason: str) -> None:
    """Count one refused step-up by its reason (stepup)."""
    STEP_UP_REFUSALS.labels(reason=reason).inc()


def count_provisioning_failure(*, provisioner: str, action: str) -> None:
    """Count one failed provisioner call."""
    PROVISIONING_FAILURES.labels(provisioner=provisioner, action=action).inc()


def count_verification(*, provisioner: str, step: str, outcome: str) -> None:
    """Count one read-back of a grant or a revoke."""
    PROVISIONING_VERIFICATIONS.labels(provisioner=provisioner, step=step, outcome=outcome).inc()


def stage_request_status(session: Session, status: str) -> None:
    """Count an access request entering `status` once the session commits (never if it rolls back)."""
    session.info.setdefault(_PENDING_STATUSES, []).append(str(status))


def stage_extension(session: Session, outcome: str) -> None:
    """Count an extension's outcome once the session commits (never if it rolls back)."""
    session.info.setdefault(_PENDING_EXTENSIONS, []).append(outcome)


@event.listens_for(ServiceSession, "after_commit")
def _count_committed_statuses(session: Session) -> None:
    for status in session.info.pop(_PENDING_STATUSES, ()):
        REQUEST_TRANSITIONS.labels(status=status).inc()
    for outcome in session.info.pop(_PENDING_EXTENSIONS, ()):
        GRANT_EXTENSIONS.labels(outcome=outcome).inc()
    for counter, labels in session.info.pop(_PENDING_COUNTS, ()):
        (counter.labels(**labels) if labels else counter).inc()


@event.listens_for(ServiceSession, "after_transaction_end")
def _forget_uncommitted_statuses(session: Session, transaction) -> None:
    # after_commit ran first for a commit; anything left was rolled back or closed away.
    if transaction.parent is None:
        session.info.pop(_PENDING_STATUSES, None)
        session.info.pop(_PENDING_EXTENSIONS, None)
        session.info.pop(_PENDING_COUNTS, None)


def multiprocess_dir() -> str | None:
    """Return the multiprocess directory when this process runs in multiprocess mode."""
    return os.environ.get(MULTIPROC_ENV) or None


def collecting_registry():
    """Return the registry to expose: every worker's files in multiprocess mode, else this process."""
    if multiprocess_dir() is None:
        return REGISTRY
    registry = CollectorRegistry()
    MultiProcessCollector(registry)
    return registry
