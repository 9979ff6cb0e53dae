"""Drift: compare the active grants with what the provisioners' targets really hold.

Two kinds of difference:
- `missing`: an active grant whose entry is not at its target (someone deleted the security
  group rule behind this service's back): the person holds on paper what they cannot use,
  and a revoke would not notice.
- `orphaned`: an entry that carries this service's marker (so this service made it) and that
  no active grant explains: access nobody is accountable for, the dangerous kind.
Entries without the marker were made by hand and are never reported nor touched; the rules
of the `allow_instance_address` start-up task carry the marker of no request
(`instance-startup`) and are the service's own, not drift.

Only provisioners that can list what they made take part (`Provisioner.inspectable`):
`aws_security_group` does; `none` keeps nothing outside; `webhook` is not inspectable (the
receiver is someone else's system, with no listing in its contract).

No transaction stays open while a target is read. The scan reads the grants to check before
the targets and the statuses that explain entries after them, so a grant that starts or
ends while the scan runs is not reported. Findings are persisted by drift_findings; `fix`
lives in drift_fix.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from security_api import audit
from security_api.access.drift_findings import Finding, observe_open, open_findings, record_findings
from security_api.clock import utcnow
from security_api.enums import DriftKind, RequestStatus
from security_api.errors import InvalidParams
from security_api.models import AccessRequest, Permission, User
from security_api.provisioners import Provisioner, ProvisioningError, get_provisioner
from security_api.provisioners.base import Entry
from security_api.services import Services
from security_api.startup import RULE_MARKER as STARTUP_MARKER
from security_api.unit_of_work import end_reads


@dataclass(frozen=True)
class Watched:
    """One permission whose provisioner can be inspected, with its validated config."""

    permission: str
    provisioner_name: str
    provisioner: Provisioner
    config: dict
    target: str


@dataclass(frozen=True)
class ScanReport:
    """The open findings after a scan, and the targets that could not be read."""

    findings: list[Finding]
    errors: list[dict]
    scanned_at: datetime

    def of_kind(self, kind: str) -> list[Finding]:
        """Return the findings of one kind."""
        return [finding for finding in self.findings if finding.kind == kind]

    @property
    def unsettled(self) -> set[str]:
        """The targets that could not be read (their findings are as before)."""
        return {error["target"] for error in self.errors}


def scan(services: Services, *, actor: str, origin: audit.Origin,
         now: datetime | None = None) -> ScanReport:
    """Compare every inspectable target with the grants; record what changed; report."""
    now = now or utcnow()
    with services.session_factory() as session:
        watched, errors = _watched(session, services)
        grants = _grants_to_check(session, watched, now=now)
        end_reads(session)  # no transaction stays open while the targets are read
        started = utcnow()
        entries, unreadable = _read_targets(watched, errors)
        findings = _orphans(session, watched, entries, since=started)
        findings += _missing(session, watched, entries, grants, unreadable=unreadable)
        end_reads(session)
        record_findings(session, findings, unsettled=unreadable, actor=actor, origin=origin,
                        now=now)
        report = ScanReport(open_findings(session), errors, now)
        observe_open(session)
        end_reads(session)
    return report


def _watched(session: Session, services: Services) -> tuple[list[Watched], list[dict]]:
    used = session.scalars(select(Permission.provisioner).distinct()).all()
    # Only provisioners in use are loaded: a service without AWS permissions never imports boto3.
    inspectable = [name for name in used if _inspectable(name, services)]
    watched, errors = [], []
    if not inspectable:
        return watched, errors
    for permission in session.scalars(select(Permission).where(
            Permission.provisioner.in_(inspectable)).order_by(Permission.key)):
        provisioner = get_provisioner(permission.provisioner, services.settings)
        try:
            config = provisioner.validate_config(permission.provisioner_config)
        except InvalidParams:
            errors.append({"target": f"permission {permission.key}",
                           "provisioner": permission.provisioner,
                           "error": "its provisioner config is invalid"})
            continue
        watched.append(Watched(permission.key, permission.provisioner, provisioner, config,
                               provisioner.target_of(config)))
    return watched, errors


def _inspectable(name: str, services: Services) -> bool:
    try:
        return get_provisioner(name, services.settings).inspectable
    except InvalidParams:
        return False  # a permission naming a provisioner this version lacks


def _grants_to_check(session: Session, watched: list[Watched], *, now: datetime) -> list[tuple]:
    """Active grants of watched permissions: (request id, permission, requester)."""
    if not watched:
        return []
    return session.execute(
        select(AccessRequest.id, AccessRequest.permission_key, User.username)
        .join(User, User.id == AccessRequest.requester_id)
        .where(AccessRequest.status == RequestStatus.ACTIVE,
               AccessRequest.provisioning_state.is_(None), AccessRequest.expires_at > now,
               AccessRequest.permission_key.in_([w.permission for w in watched]))
        .order_by(AccessRequest.id)).all()


def _read_targets(watched: list[Watched], errors: list[dict]) -> tuple[dict, set[str]]:
    """Read each target once: {target: [Entry]}, and the targets that failed."""
    entries: dict[str, list[Entry]] = {}
    unreadable: set[str] = set()
    for item in {w.target: w for w in watched}.values():
        try:
            entries[item.target] = item.provisioner.inventory(item.config)
        except ProvisioningError as exc:
            unreadable.add(item.target)
            errors.append({"target": item.target, "provisioner": item.provisioner_name,
                           "error": str(exc)[:200]})
    return entries, unreadable


def _orphans(session: Session, watched: list[Watched], entries: dict[str, list[Entry]], *,
             since: datetime) -> list[Finding]:
    ours = [entry for listed in entries.values() for entry in listed
            if entry.request_id != STARTUP_MARKER]
    if not ours:
        return []
    requests = {row.id: row for row in session.execute(
        select(AccessRequest.id, AccessRequest.permission_key, AccessRequest.status,
               AccessRequest.provisioning_state, AccessRequest.ended_at)
        .where(AccessRequest.id.in_({entry.request_id for entry in ours})))}
    provisioner_of = {w.target: w.provisioner_name for w in watched}
    orphans = []
    for entry in ours:
        request = requests.get(entry.request_id)
        if request is not None and _explains(request, since=since):
            continue
        orphans.append(Finding(
            kind=str(DriftKind.ORPHANED), key=f"orphaned|{entry.key}",
            provisioner=provisioner_of[entry.target], target=entry.target,
            description=entry.description, request_id=entry.request_id,
            permission=request.permission_key if request is not None else None, ref=entry.ref))
    return orphans


def _explains(request, *, since: datetime) -> bool:
    """An entry is explained by a grant that holds or is being made, by a revoke still owed,
    and by a grant that ended while the scan read the target (its revoke raced the read)."""
    return (request.status in (RequestStatus.ACTIVE, RequestStatus.GRANTING)
            or request.provisioning_state is not None
            or (request.ended_at is not None and request.ended_at >= since))


def _missing(session: Session, watched: list[Watched], entries: dict[str, list[Entry]],
             grants: list[tuple], *, unreadable: set[str]) -> list[Finding]:
    by_permission = {w.permission: w for w in watched}
    by_request = defaultdict(list)
    for listed in entries.values():
        for entry in listed:
            by_request[(entry.target, entry.request_id)].append(entry)
    candidates = [(request_id, by_permission[permission], requester)
                  for request_id, permission, requester in grants
                  if by_permission[permission].target not in unreadable]
    candidates = [(request_id, item, requester) for request_id, item, requester in candidates
                  if not item.provisioner.present(item.config, by_request[(item.target, request_id)])]
    still_active = _still_active(session, [request_id for request_id, _, _ in candidates])
    return [Finding(kind=str(DriftKind.MISSING), key=f"missing|{request_id}",
                    provisioner=item.provisioner_name, target=item.target,
                    description=f"{requester}'s grant of {item.permission} is not at {item.target}",
                    permission=item.permission, request_id=request_id)
            for request_id, item, requester in candidates if request_id in still_active]


def _still_active(session: Session, request_ids: list[str]) -> set[str]:
    # Read after the target: a grant revoked while it was read is not missing, it is gone.
    if not request_ids:
        return set()
    return set(session.scalars(select(AccessRequest.id).where(
        AccessRequest.id.in_(request_ids), AccessRequest.status == RequestStatus.ACTIVE,
        AccessRequest.provisioning_state.is_(None))))
