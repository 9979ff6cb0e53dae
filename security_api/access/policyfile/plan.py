"""Planning a policy file: the changes that make the database match it, in applying order."""
from __future__ import annotations

import json
from dataclasses import dataclass, field

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from security_api.access.policyfile.conflicts import stored_conflicts, wanted_conflicts
from security_api.access.policyfile.read import PolicyFile, PolicyFileError, protected_rule
from security_api.enums import RequestStatus
from security_api.installation import ADMIN_ROLE, ADMIN_SUBROLE
from security_api.models import AccessRequest, Permission, PolicyRule, Role, Subrole, User

OPEN_STATUSES = (RequestStatus.PENDING, RequestStatus.GRANTING, RequestStatus.ACTIVE,
                 RequestStatus.FAILED)
# Grants whose revoke will read the permission's provisioner config.
GRANTED_STATUSES = (RequestStatus.GRANTING, RequestStatus.ACTIVE)
CREATE, UPDATE, DELETE = "create", "update", "delete"
# The order changes are applied in: what others refer to exists first and goes last.
STEPS = [("role", CREATE), ("role", UPDATE), ("subrole", CREATE), ("subrole", UPDATE),
         ("permission", CREATE), ("permission", UPDATE), ("conflict", DELETE),
         ("conflict", UPDATE), ("conflict", CREATE), ("rule", DELETE), ("rule", UPDATE),
         ("rule", CREATE), ("permission", DELETE), ("subrole", DELETE), ("role", DELETE)]
SYMBOLS = {CREATE: "+", UPDATE: "~", DELETE: "-"}


@dataclass(frozen=True)
class Change:
    """One object to create, update or delete; `values` holds new values or [old, new] pairs."""

    kind: str
    action: str
    target: str
    ident: tuple
    values: dict = field(default_factory=dict)

    def describe(self) -> str:
        """Return one readable line, e.g. `~ permission vpn: max_duration_minutes 720 -> 600`."""
        line = f"{SYMBOLS[self.action]} {self.kind} {self.target}"
        if self.action == UPDATE:
            # Provisioner configs may hold credentials: dry-run output often lands in CI logs.
            parts = [f"{name} changed" if name == "provisioner_config"
                     else f"{name} {_show(old)} -> {_show(new)}"
                     for name, (old, new) in self.values.items()]
            line += ": " + ", ".join(parts)
        elif self.action == CREATE and self.kind == "rule":
            line += f": {self.values['mode']}"
        elif self.action == CREATE and self.kind == "conflict":
            line += f": {', '.join(self.values['permissions'])}"
        return line


def _show(value) -> str:
    return json.dumps(value, sort_keys=True) if isinstance(value, dict | list) else repr(value)


@dataclass(frozen=True)
class Diff:
    """Every change needed to make the database match a policy file, in applying order."""

    changes: tuple[Change, ...]
    sha256: str = ""

    @property
    def empty(self) -> bool:
        """Tell whether the database already matches the file."""
        return not self.changes

    def counts(self) -> dict[str, int]:
        """Return how many objects are created, updated and deleted."""
        return {f"{action}d": sum(1 for c in self.changes if c.action == action)
                for action in (CREATE, UPDATE, DELETE)}

    def lines(self) -> list[str]:
        """Return one readable line per change."""
        return [change.describe() for change in self.changes]


def plan(session: Session, desired: PolicyFile) -> Diff:
    """Compute the changes that make the database match `desired`; refuse impossible deletions."""
    existing, wanted = _current(session), _wanted(desired)
    if desired.conflicts is not None:  # no `conflicts` section: the sets stay as they are
        existing["conflict"], wanted["conflict"] = stored_conflicts(session), \
            wanted_conflicts(desired.conflicts)
    changes = [change for kind in existing
               for change in _changes(kind, existing[kind], wanted[kind])]
    problems = _problems(session, changes) + _stranded_conflicts(session, desired, changes)
    if problems:
        raise PolicyFileError(problems)
    order = {step: i for i, step in enumerate(STEPS)}
    changes.sort(key=lambda c: (order[(c.kind, c.action)], c.target))
    return Diff(tuple(changes), desired.sha256)


def _current(session: Session) -> dict[str, dict[tuple, dict]]:
    return {"role": {(r.name,): {"description": r.description} for r in session.scalars(select(Role))},
            "subrole": {(s.role, s.name): {"description": s.description}
                        for s in session.scalars(select(Subrole))},
            "permission": {(p.key,): permission_values(p) for p in session.scalars(
                select(Permission).where(Permission.builtin.is_(False)))},
            "rule": {(r.permission_key, r.role, r.subrole): rule_values(r)
                     for r in session.scalars(select(PolicyRule))}}


def _wanted(desired: PolicyFile) -> dict[str, dict[tuple, dict]]:
    return {"role": {(r.name,): {"description": r.description} for r in desired.roles.values()},
            "subrole": {(r.name, s.name): {"description": s.description}
                        for r in desired.roles.values() for s in r.subroles},
            "permission": {(p.key,): permission_values(p) for p in desired.permissions.values()},
            "rule": {ident: rule_values(rule) for ident, rule in desired.rules.items()}}


def _kept(kind: str, ident: tuple) -> bool:
    """The security/admin role and its standing rules stay, whatever the file says."""
    if kind == "rule":
        return protected_rule(ident)
    return (kind, ident) in (("role", (ADMIN_ROLE,)), ("subrole", (ADMIN_ROLE, ADMIN_SUBROLE)))


def _changes(kind: str, existing: dict, wanted: dict) -> list[Change]:
    changes = []
    for ident, values in wanted.items():
        target = rule_target(ident) if kind == "rule" else "/".join(ident)
        if kind == "rule" and protected_rule(ident) and ident in existing:
            continue
        before = existing.get(ident)
        diff = {name: [before[name], value] for name, value in values.items()
                if before is not None and before[name] != value}
        if before is None or diff:
            changes.append(Change(kind, UPDATE if diff else CREATE, target, ident, diff or values))
    for ident in sorted(set(existing) - set(wanted)):
        if not _kept(kind, ident):
            target = rule_target(ident) if kind == "rule" else "/".join(ident)
            changes.append(Change(kind, DELETE, target, ident))
    return changes


def _problems(session: Session, changes: list[Change]) -> list[str]:
    """Refuse what would strand people, requests or grants: nothing is changed then."""
    holders = _count_by(session, User.role, User.subrole)
    granted = _count_by(session, AccessRequest.permission_key,
                        where=AccessRequest.status.in_(GRANTED_STATUSES)
                        | AccessRequest.provisioning_state.is_not(None))
    open_requests = _count_by(session, AccessRequest.permission_key,
                              where=AccessRequest.status.in_(OPEN_STATUSES))
    all_requests = _count_by(session, AccessRequest.permission_key)
    problems = []
    for change in changes:
        kind, action, ident, target = change.kind, change.action, change.ident, change.target
        if kind == "subrole" and action == DELETE and holders.get(ident):
            problems.append(f"subrole {target} is not in the file, but {holders[ident]} "
                            "user(s) (deactivated ones too) hold it; move them first")
        if kind != "permission":
            continue
        if action == CREATE and session.get(Permission, target) is not None:
            problems.append(f"permission {target} exists as a built-in permission")
        if action == UPDATE and granted.get(ident) and {"provisioner", "provisioner_config"} \
                & change.values.keys():
            # Revoking reads the current config: changing it under live grants would strand them.
            problems.append(f"permission {target}: its provisioner cannot change while "
                            f"{granted[ident]} grant(s) are live or owe a revoke")
        if action == DELETE and open_requests.get(ident):
            problems.append(f"permission {target} is not in the file, but {open_requests[ident]} "
                            "open access request(s) use it")
        elif action == DELETE and all_requests.get(ident):
            problems.append(f"permission {target} is not in the file, but past access requests "
                            "refer to it; it stays for the record")
    return problems


def _stranded_conflicts(session: Session, desired: PolicyFile, changes: list[Change]) -> list[str]:
    """Refuse deleting a permission that a conflict set keeps naming (as the admin API does)."""
    if desired.conflicts is not None:
        return []  # the file's own sets name only the file's permissions (checked when read)
    deleted = [change.target for change in changes
               if change.kind == "permission" and change.action == DELETE]
    stored = stored_conflicts(session)
    return [f"permission {key} is not in the file, but conflict set {name} names it; add a "
            "`conflicts` section without it, or change the set first"
            for key in deleted for (name,), values in sorted(stored.items())
            if key in values["permissions"]]


def permission_values(source) -> dict:
    """Return what a permission is, from a stored row or from the file."""
    if isinstance(source, Permission):
        provisioner, config = source.provisioner, source.provisioner_config
    else:
        provisioner, config = source.provisioner.name, source.provisioner.config
    return {"name": source.name, "description": source.description,
            "max_duration_minutes": source.max_duration_minutes,
            "requires_justification": bool(source.requires_justification),
            "step_up": bool(source.step_up),
            "provisioner": provisioner, "provisioner_config": config}


def rule_target(ident: tuple[str, str, str]) -> str:
    """Name a rule in plans and audit events: `vpn for developer/*`."""
    return f"{ident[0]} for {ident[1]}/{ident[2]}"


def rule_values(source) -> dict:
    """Return a rule's terms, from a stored row or from the file."""
    return {"mode": str(source.mode), "max_duration_minutes": source.max_duration_minutes,
            "approvers": list(source.approvers or []), "approvals_required": source.approvals_required,
            "pending_ttl_minutes": source.pending_ttl_minutes,
            "review_within_minutes": source.review_within_minutes}


def _count_by(session: Session, *columns, where=None) -> dict[tuple, int]:
    query = select(*columns, func.count()).group_by(*columns)
    if where is not None:
        query = query.where(where)
    return {tuple(row[:-1]): row[-1] for row in session.execute(query)}
