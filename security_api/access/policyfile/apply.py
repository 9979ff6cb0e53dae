"""Applying a planned policy file: every change and its audit event, in one transaction."""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from security_api import audit
from security_api.access.admin_conflicts import set_members
from security_api.access.catalog import refuse_service_only_approvers
from security_api.access.grants import ADMIN_PERMISSION, refuse_admin_for_service_accounts
from security_api.access.policyfile.plan import CREATE, DELETE, UPDATE, Change, Diff
from security_api.enums import AuditAction
from security_api.errors import Conflict
from security_api.models import ConflictSet, Permission, PolicyRule, Role, Subrole

ROWS = {"role": Role, "subrole": Subrole, "permission": Permission, "rule": PolicyRule,
        "conflict": ConflictSet}
# Stored as JSON text.


def apply(session: Session, diff: Diff, *, actor: str, origin: audit.Origin, now: datetime,
          source: str | None = None) -> dict[str, int]:
    """Make every change of `diff` with its audit events and commit; return the counts."""
    try:
        counts = stage(session, diff, actor=actor, origin=origin, now=now, source=source)
        session.commit()
    except BaseException:
        session.rollback()
        raise
    return counts


def stage(session: Session, diff: Diff, *, actor: str, origin: audit.Origin, now: datetime,
          source: str | None = None) -> dict[str, int]:
    """Make the changes in the caller's transaction (the demo seed commits them with its users)."""
    if diff.empty:
        return diff.counts()
    for change in diff.changes:
        target = _apply_one(session, change, now)
        audit.record(session, action=_event(change), actor=actor,
                     target=target, origin=origin, now=now,
                     details={"via": "policy_file", **_audit_details(change)})
        # Flush per change: without ORM relationships the unit of work cannot order
        # deletes after the rows that refer to them.
        session.flush()
    for change in diff.changes:
        if change.kind == "rule":
            _refuse_like_the_admin_api(session, change)
    counts = diff.counts()
    audit.record(session, action=AuditAction.POLICY_FILE_APPLIED, actor=actor, target=source,
                 origin=origin, now=now, details={**counts, "sha256": diff.sha256})
    return counts


def _event(change: Change) -> AuditAction:
    if change.kind == "subrole" and change.action != DELETE:
        return AuditAction.ROLE_UPDATED  # to readers of the log, a subrole is part of its role
    noun = "POLICY" if change.kind == "rule" else change.kind.upper()
    return AuditAction[f"{noun}_{change.action.upper()}D"]


def _refuse_like_the_admin_api(session: Session, change: Change) -> None:
    if change.ident[0] == ADMIN_PERMISSION:
        # No service account may end up an admin.
        refuse_admin_for_service_accounts(session, role=change.ident[1], subrole=change.ident[2])
    if change.action != DELETE and "approvers" in change.values:
        # Approvers naming only service accounts name nobody.
        approvers = change.values["approvers"]
        refuse_service_only_approvers(
            session, list(approvers[1] if change.action == UPDATE else approvers))


def _audit_details(change: Change) -> dict:
    details: dict = {"change": change.action}
    if change.kind == "subrole":
        details["subrole"] = change.ident[1]
    if change.kind == "rule":
        details.update(permission=change.ident[0], role=change.ident[1], subrole=change.ident[2])
    details.update(change.values)
    # Provisioner configs may hold credentials (webhook headers): the log says only that it changed.
    if "provisioner_config" in details:
        details["provisioner_config"] = "changed" if change.action == UPDATE else "set"
    return details


def _apply_one(session: Session, change: Change, now: datetime) -> str:
    """Create, update or delete one row; return the audit target (a rule's id, else a name)."""
    if change.kind == "conflict":
        return _apply_conflict(session, change, now)
    if change.action == CREATE:
        row = ROWS[change.kind](**_identity(change.kind, change.ident), created_at=now,
                                **change.values,
                                **({"builtin": False} if change.kind == "permission" else {}))
        session.add(row)
        session.flush()
    else:
        row = _existing(session, change)
        for name, (_, new) in change.values.items():
            setattr(row, name, new)
        if change.action == DELETE:
            session.delete(row)
    if change.kind == "rule":
        return row.id
    # Added or changed subroles are logged against their role, as in the admin API.
    return change.ident[0] if change.kind == "subrole" and change.action != DELETE else change.target


def _apply_conflict(session: Session, change: Change, now: datetime) -> str:
    """A conflict set is a row and its members: both change together."""
    name = change.ident[0]
    values = {field: value[1] for field, value in change.values.items()} \
        if change.action == UPDATE else dict(change.values)
    if change.action == CREATE:
        session.add(ConflictSet(name=name, description=values["description"], created_at=now))
        session.flush()
    row = _existing(session, change)
    if change.action == DELETE:
        set_members(session, name, [])
        session.delete(row)
        return name
    if "description" in values:
        row.description = values["description"]
    if "permissions" in values:
        set_members(session, name, values["permissions"])
    return name


def _identity(kind: str, ident: tuple) -> dict:
    names = {"role": ("name",), "subrole": ("role", "name"), "permission": ("key",),
             "rule": ("permission_key", "role", "subrole")}[kind]
    return dict(zip(names, ident, strict=True))


def _existing(session: Session, change: Change):
    if change.kind == "rule":
        row = session.scalar(select(PolicyRule).filter_by(**_identity("rule", change.ident)))
    else:
        row = session.get(ROWS[change.kind], change.ident if change.kind == "subrole"
                          else change.ident[0])
    if row is None:
        raise Conflict("The database changed while the policy file was applied; "
                       "nothing changed.", code="policy_changed_meanwhile")
    return row
