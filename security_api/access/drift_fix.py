"""Repairing drift: re-grant what is missing, remove what is orphaned, audit each outcome.

A fix starts with a fresh scan (it repairs what is true now, not what an old scan saw) and
re-checks each finding just before acting: a grant revoked meanwhile is not re-granted, an
entry a new grant now explains is not removed. A re-grant goes through the provisioner's own
`grant` with the request's own context (the same rule, description and address as the first
time); if the grant ended while it ran, the provisioner's `revoke` undoes it at once.
No transaction is open during an outside call.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from security_api import audit
from security_api.access.drift import ScanReport, scan
from security_api.access.drift_findings import FIXED, Finding, observe_open, resolve
from security_api.clock import utcnow
from security_api.enums import AuditAction, DriftKind, RequestStatus
from security_api.models import AccessRequest, Permission, User
from security_api.provisioners import GrantContext, ProvisioningError, get_provisioner
from security_api.services import Services
from security_api.unit_of_work import end_reads, unit_of_work

FIXED_OUTCOME, FAILED, SKIPPED = "fixed", "failed", "skipped"


@dataclass(frozen=True)
class Outcome:
    """What the fix did about one finding; `reason` says why it failed or was skipped."""

    finding: Finding
    result: str
    reason: str | None = None


@dataclass(frozen=True)
class FixReport:
    """The scan the fix started from, and one outcome per finding it could act on."""

    scan: ScanReport
    outcomes: list[Outcome]

    def having(self, result: str) -> list[Outcome]:
        """Return the outcomes with one result (fixed, failed, skipped)."""
        return [outcome for outcome in self.outcomes if outcome.result == result]


def fix(services: Services, *, actor: str, origin: audit.Origin,
        now: datetime | None = None) -> FixReport:
    """Scan, then repair each open finding at a target that could be read; audit each repair."""
    now = now or utcnow()
    report = scan(services, actor=actor, origin=origin, now=now)
    outcomes = [_repair(services, finding) for finding in report.findings
                if finding.target not in report.unsettled]
    with services.session_factory() as session:
        with unit_of_work(session):
            for outcome in outcomes:
                _record(session, outcome, actor=actor, origin=origin, now=now)
        observe_open(session)
        end_reads(session)
    return FixReport(report, outcomes)


def _record(session: Session, outcome: Outcome, *, actor: str, origin: audit.Origin,
            now: datetime) -> None:
    finding = outcome.finding
    if outcome.result == FIXED_OUTCOME:
        resolve(session, finding, resolution=FIXED, action=AuditAction.DRIFT_FIXED, actor=actor,
                origin=origin, now=now)
    elif outcome.result == FAILED:
        audit.record(session, action=AuditAction.DRIFT_FIX_FAILED, actor=actor,
                     target=finding.request_id or finding.target, origin=origin, now=now,
                     details={**finding.as_json(), "error": outcome.reason})
    # A skipped finding is no longer drift; the next scan resolves it.


def _repair(services: Services, finding: Finding) -> Outcome:
    try:
        if finding.kind == DriftKind.MISSING:
            return _regrant(services, finding)
        return _remove(services, finding)
    except ProvisioningError as exc:
        return Outcome(finding, FAILED, str(exc)[:200])


def _regrant(services: Services, finding: Finding) -> Outcome:
    with services.session_factory() as session:
        loaded = _active_grant(session, finding.request_id)
        end_reads(session)
        if loaded is None:
            return Outcome(finding, SKIPPED, "the grant is no longer active")
        provisioner_name, ctx = loaded
        provisioner = get_provisioner(provisioner_name, services.settings)
        provisioner.grant(ctx)
        still = _active_grant(session, finding.request_id)
        end_reads(session)
    if still is None:
        # It ended while the grant ran: its revoke may have come first; undo what we made.
        provisioner.revoke(ctx)
        return Outcome(finding, SKIPPED, "the grant ended while it was re-granted")
    return Outcome(finding, FIXED_OUTCOME)


def _remove(services: Services, finding: Finding) -> Outcome:
    with services.session_factory() as session:
        explained = session.scalar(select(AccessRequest.id).where(
            AccessRequest.id == finding.request_id,
            (AccessRequest.status.in_((RequestStatus.ACTIVE, RequestStatus.GRANTING)))
            | AccessRequest.provisioning_state.is_not(None)))
        end_reads(session)
    if explained is not None:
        return Outcome(finding, SKIPPED, "a grant explains it now")
    get_provisioner(finding.provisioner, services.settings).remove(finding.ref)
    return Outcome(finding, FIXED_OUTCOME)


def _active_grant(session: Session, request_id: str | None) -> tuple[str, GrantContext] | None:
    row = session.execute(
        select(AccessRequest, Permission, User.username)
        .join(Permission, Permission.key == AccessRequest.permission_key)
        .join(User, User.id == AccessRequest.requester_id)
        .where(AccessRequest.id == request_id, AccessRequest.status == RequestStatus.ACTIVE,
               AccessRequest.provisioning_state.is_(None))
        .execution_options(populate_existing=True)).one_or_none()
    if row is None:
        return None
    request, permission, requester = row
    return permission.provisioner, GrantContext(
        request_id=request.id, requester=requester, requester_ip=request.requester_ip,
        permission=permission.key, params=request.params, config=permission.provisioner_config,
        expires_at=request.expires_at)
