"""Drift findings kept in the database: recorded once, notified once, resolved when gone.

Why persisted: a scan runs every hour from the reaper, and from the API and the CLI on demand;
people must hear of a difference once, when it first appears, not once per scan. A finding is
identified by its `key` (the entry, or the grant, it is about); the partial unique index on open
keys makes two racing scans record it once (the loser's transaction rolls back and reads again).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from security_api import audit, metrics
from security_api.access.drift_models import DriftFinding
from security_api.access.grants import gives_admin
from security_api.clock import isoformat
from security_api.enums import AuditAction, UserKind
from security_api.integrations import outbox
from security_api.integrations.notify_texts import DRIFT
from security_api.models import User
from security_api.unit_of_work import unit_of_work

log = logging.getLogger(__name__)
RECORD_ATTEMPTS = 3
GONE, FIXED = "gone", "fixed"


@dataclass(frozen=True)
class Finding:
    """A difference a scan saw: kind (missing | orphaned), and what it is about."""

    kind: str
    key: str
    provisioner: str
    target: str
    description: str
    permission: str | None = None
    request_id: str | None = None
    ref: dict = field(default_factory=dict)
    # Set once recorded: the row's id and when it was first seen.
    id: str | None = None
    found_at: datetime | None = None

    def as_json(self) -> dict:
        """Return what the API, the CLI, the audit log and the notification show."""
        return {"id": self.id, "kind": self.kind, "provisioner": self.provisioner,
                "permission": self.permission, "request_id": self.request_id,
                "target": self.target, "description": self.description,
                "found_at": isoformat(self.found_at)}


def record_findings(session: Session, findings: list[Finding], *, unsettled: set[str],
                    actor: str, origin: audit.Origin, now: datetime) -> None:
    """Record new findings (audit + notification each) and resolve open ones no longer seen.

    Findings at an `unsettled` target (one that could not be read) stay as they are.
    """
    for _ in range(RECORD_ATTEMPTS):
        try:
            with unit_of_work(session):
                _record_once(session, findings, unsettled=unsettled, actor=actor,
                             origin=origin, now=now)
            return
        except IntegrityError:
            continue  # another scan recorded one of them meanwhile: read the open ones again
    log.warning("drift findings could not be recorded after %d attempts", RECORD_ATTEMPTS)


def _record_once(session: Session, findings: list[Finding], *, unsettled: set[str], actor: str,
                 origin: audit.Origin, now: datetime) -> None:
    current = {finding.key: finding for finding in findings}
    open_rows = {row.key: row for row in session.scalars(
        select(DriftFinding).where(DriftFinding.resolved_at.is_(None)))}
    new = [finding for key, finding in current.items() if key not in open_rows]
    gone = [row for key, row in open_rows.items()
            if key not in current and row.target not in unsettled]
    if new:
        recipients = admin_emails(session)
    for finding in new:
        row = DriftFinding(key=finding.key, kind=finding.kind, provisioner=finding.provisioner,
                           permission_key=finding.permission, request_id=finding.request_id,
                           target=finding.target, description=finding.description[:500],
                           ref=finding.ref, found_at=now)
        session.add(row)
        session.flush()
        shown = _from_row(row).as_json()
        audit.record(session, action=AuditAction.DRIFT_FOUND, actor=actor,
                     target=finding.request_id or finding.target, origin=origin, now=now,
                     details=shown)
        outbox.enqueue(session, DRIFT, {"request": shown, "recipients": recipients}, now=now)
    for row in gone:
        resolve(session, _from_row(row), resolution=GONE, action=AuditAction.DRIFT_RESOLVED,
                actor=actor, origin=origin, now=now)


def resolve(session: Session, finding: Finding, *, resolution: str, action: AuditAction,
            actor: str, origin: audit.Origin, now: datetime, details: dict | None = None) -> bool:
    """Close an open finding (conditional: once) and audit it; False when already closed."""
    closed = session.execute(update(DriftFinding).where(
        DriftFinding.id == finding.id, DriftFinding.resolved_at.is_(None))
        .values(resolved_at=now, resolution=resolution)).rowcount
    if closed:
        audit.record(session, action=action, actor=actor,
                     target=finding.request_id or finding.target, origin=origin, now=now,
                     details={**finding.as_json(), **(details or {})})
    return bool(closed)


def open_findings(session: Session) -> list[Finding]:
    """Return every open finding, oldest first."""
    rows = session.scalars(select(DriftFinding).where(DriftFinding.resolved_at.is_(None))
                           .order_by(DriftFinding.found_at, DriftFinding.key))
    return [_from_row(row) for row in rows]


def observe_open(session: Session) -> dict[str, int]:
    """Export the open findings per kind as the metric; return the counts."""
    counts = dict(session.execute(select(DriftFinding.kind, func.count())
                                  .where(DriftFinding.resolved_at.is_(None))
                                  .group_by(DriftFinding.kind)).all())
    metrics.observe_drift(counts)
    return counts


def admin_emails(session: Session) -> list[str]:
    """Return the addresses of the active people who hold security-api.admin now."""
    pairs = session.execute(select(User.role, User.subrole).distinct().where(
        User.active.is_(True), User.kind == str(UserKind.PERSON), User.email.is_not(None))).all()
    admins = [(role, subrole) for role, subrole in pairs
              if gives_admin(session, role=role, subrole=subrole)]
    if not admins:
        return []
    return sorted(set(session.scalars(select(User.email).where(
        or_(*[(User.role == role) & (User.subrole == subrole) for role, subrole in admins]),
        User.active.is_(True), User.kind == str(UserKind.PERSON), User.email.is_not(None)))))


def _from_row(row: DriftFinding) -> Finding:
    return Finding(kind=row.kind, key=row.key, provisioner=row.provisioner, target=row.target,
                   description=row.description, permission=row.permission_key,
                   request_id=row.request_id, ref=dict(row.ref or {}), id=row.id,
                   found_at=row.found_at)
