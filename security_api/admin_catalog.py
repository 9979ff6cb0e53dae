"""Administration of the catalog: roles, permissions and policy rules, and policy explanations."""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete, exists, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from . import audit, catalog
from .accounts import create_role, find_user
from .catalog_schemas import RoleSpec, RuleSpec, SubroleSpec, checked
from .clock import isoformat
from .enums import AuditAction, PolicyMode, RequestStatus
from .errors import Conflict, InvalidParams, NotFound
from .grants import ADMIN_PERMISSION, Subject, as_rule, candidate_rules, refuse_admin_for_service_accounts
from .models import AccessRequest, Permission, PolicyRule, Role, Subrole, User
from .policy import Rule, decide, specificity
from .provisioners import get_provisioner
from .schema import ADMIN_ROLE, ADMIN_SUBROLE

# Requests that still need their permission: waiting, being granted, held, or to be retried.
OPEN_STATUSES = (RequestStatus.PENDING, RequestStatus.GRANTING, RequestStatus.ACTIVE,
                 RequestStatus.FAILED)
PERMISSION_FIELDS = ("name", "description", "max_duration_minutes", "requires_justification",
                     "provisioner", "provisioner_config")
RULE_FIELDS = ("mode", "max_duration_minutes", "approvers", "approvals_required")


# ---- rendering ---------------------------------------------------------------------------------
def render_role(session: Session, role: Role) -> dict:
    """Return a role with its subroles as JSON-able data."""
    subroles = session.scalars(select(Subrole).where(Subrole.role == role.name)
                               .order_by(Subrole.name))
    return {"name": role.name, "description": role.description,
            "created_at": isoformat(role.created_at),
            "subroles": [{"name": s.name, "description": s.description,
                          "created_at": isoformat(s.created_at)} for s in subroles]}


def render_permission(permission: Permission) -> dict:
    """Return a permission as JSON-able data."""
    return {"key": permission.key, "name": permission.name, "description": permission.description,
            "max_duration_minutes": permission.max_duration_minutes,
            "requires_justification": permission.requires_justification,
            "provisioner": permission.provisioner,
            "provisioner_config": permission.provisioner_config,
            "builtin": permission.builtin, "created_at": isoformat(permission.created_at)}


def render_engine_rule(rule: Rule) -> dict:
    """Return a policy rule, as the engine sees it, as JSON-able data."""
    return {"id": rule.id, "permission": rule.permission, "role": rule.role,
            "subrole": rule.subrole, "mode": str(rule.mode),
            "max_duration_minutes": rule.max_duration_minutes,
            "approvers": list(rule.approvers), "approvals_required": rule.approvals_required}


def render_rule(row: PolicyRule) -> dict:
    """Return a stored policy rule as JSON-able data."""
    return {**render_engine_rule(as_rule(row)), "created_at": isoformat(row.created_at)}


def _commit(session: Session, conflict: str) -> None:
    # A concurrent admin may have created or referenced the same row; the database decides.
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
        raise Conflict(conflict) from None


def _check_changes(changes: dict, *, allowed: tuple[str, ...], nullable: tuple[str, ...]) -> None:
    errors = [{"field": name, "problem": "unknown field"} for name in sorted(set(changes) - set(allowed))]
    errors += [{"field": name, "problem": "must not be null"} for name in sorted(changes)
               if changes[name] is None and name in allowed and name not in nullable]
    if errors:
        raise InvalidParams(errors=errors)


# ---- roles -------------------------------------------------------------------------------------
def list_roles(session: Session) -> list[dict]:
    """List every role with its subroles."""
    return [render_role(session, role) for role in session.scalars(select(Role).order_by(Role.name))]


def get_role(session: Session, *, name: str) -> Role:
    """Return a role; 404 when unknown."""
    role = session.get(Role, name)
    if role is None:
        raise NotFound(f"No role {name!r}.")
    return role


def create_new_role(session: Session, *, name: str, subroles: list[str], description: str,
                    actor: str, origin: audit.Origin, now: datetime) -> Role:
    """Create a role with its subroles; 409 when it exists."""
    if session.get(Role, name) is not None:
        raise Conflict(f"The role {name!r} exists.", code="role_exists")
    checked(RoleSpec, {"name": name, "description": description, "subroles": subroles})
    if len(set(subroles)) != len(subroles):
        raise InvalidParams.one("subroles", "must not repeat")
    role = create_role(session, name=name, subroles=subroles, description=description,
                       actor=actor, origin=origin, now=now)
    _commit(session, f"The role {name!r} exists.")
    return role


def update_role(session: Session, *, name: str, description: str, actor: str,
                origin: audit.Origin, now: datetime) -> Role:
    """Change a role's description."""
    role = get_role(session, name=name)
    role.description = description
    audit.record(session, action=AuditAction.ROLE_UPDATED, actor=actor, target=name,
                 origin=origin, now=now, details={"description": description})
    session.commit()
    return role


def add_subrole(session: Session, *, role: str, name: str, description: str, actor: str,
                origin: audit.Origin, now: datetime) -> Role:
    """Add a subrole to a role; 409 when it exists."""
    parent = get_role(session, name=role)
    checked(SubroleSpec, {"name": name, "description": description})
    if session.get(Subrole, (role, name)) is not None:
        raise Conflict(f"The subrole {role}/{name} exists.", code="subrole_exists")
    session.add(Subrole(role=role, name=name, description=description, created_at=now))
    audit.record(session, action=AuditAction.ROLE_UPDATED, actor=actor, target=role,
                 origin=origin, now=now, details={"subrole_added": name})
    _commit(session, f"The subrole {role}/{name} exists.")
    return parent


def _approver_entries(session: Session) -> set[str]:
    entries: set[str] = set()
    for raw in session.scalars(select(PolicyRule.approvers)):
        entries.update(raw or [])
    return entries


def _refuse_role_in_use(session: Session, *, role: str, subrole: str | None) -> None:
    users = select(User.id).where(User.role == role)
    rules = select(PolicyRule.id).where(PolicyRule.role == role)
    if subrole is not None:
        users = users.where(User.subrole == subrole)
        rules = rules.where(PolicyRule.subrole == subrole)
    label = role if subrole is None else f"{role}/{subrole}"
    if session.scalar(select(exists(users))):
        raise Conflict(f"Users still have {label} (deactivated ones too); move them first.",
                       code="in_use")
    if session.scalar(select(exists(rules))):
        raise Conflict(f"Policy rules still name {label}.", code="in_use")
    entries = _approver_entries(session)
    named = {label} if subrole is not None else \
        {e for e in entries if e == role or e.startswith(f"{role}/")}
    if entries & named:
        raise Conflict(f"Policy rules still use {label} as approvers.", code="in_use")


def delete_role(session: Session, *, name: str, actor: str, origin: audit.Origin,
                now: datetime) -> None:
    """Delete a role and its subroles; 409 while a user or a rule refers to it."""
    role = get_role(session, name=name)
    _refuse_role_in_use(session, role=name, subrole=None)
    subroles = list(session.scalars(select(Subrole.name).where(Subrole.role == name)))
    session.execute(delete(Subrole).where(Subrole.role == name))
    session.delete(role)
    audit.record(session, action=AuditAction.ROLE_DELETED, actor=actor, target=name,
                 origin=origin, now=now, details={"subroles": subroles})
    _commit(session, f"The role {name!r} is in use.")


def delete_subrole(session: Session, *, role: str, name: str, actor: str, origin: audit.Origin,
                   now: datetime) -> None:
    """Delete one subrole; 409 while a user or a rule refers to it."""
    get_role(session, name=role)
    subrole = session.get(Subrole, (role, name))
    if subrole is None:
        raise NotFound(f"No subrole {role}/{name}.")
    _refuse_role_in_use(session, role=role, subrole=name)
    session.delete(subrole)
    audit.record(session, action=AuditAction.SUBROLE_DELETED, actor=actor,
                 target=f"{role}/{name}", origin=origin, now=now)
    _commit(session, f"The subrole {role}/{name} is in use.")


# ---- permissions -------------------------------------------------------------------------------
def list_permissions(session: Session) -> list[Permission]:
    """List every permission by key."""
    return list(session.scalars(select(Permission).order_by(Permission.key)))


def get_permission(session: Session, *, key: str) -> Permission:
    """Return a permission; 404 when unknown."""
    permission = session.get(Permission, key)
    if permission is None:
        raise NotFound(f"No permission {key!r}.")
    return permission


def create_permission(session: Session, *, key: str, name: str, description: str,
                      max_duration_minutes: int, requires_justification: bool, provisioner: str,
                      provisioner_config: dict, settings, actor: str, origin: audit.Origin,
                      now: datetime) -> Permission:
    """Create a permission with a validated provisioner config; 409 when it exists."""
    if session.get(Permission, key) is not None:
        raise Conflict(f"The permission {key!r} exists.", code="permission_exists")
    permission = catalog.ensure_permission(
        session, key=key, name=name, description=description,
        max_duration_minutes=max_duration_minutes, requires_justification=requires_justification,
        provisioner=provisioner, provisioner_config=provisioner_config, settings=settings,
        actor=actor, origin=origin, now=now)
    _commit(session, f"The permission {key!r} exists.")
    return permission


def update_permission(session: Session, *, key: str, changes: dict, settings, actor: str,
                      origin: audit.Origin, now: datetime) -> Permission:
    """Change the named fields of a permission; a new provisioner or config is validated."""
    _check_changes(changes, allowed=PERMISSION_FIELDS, nullable=())
    permission = get_permission(session, key=key)
    minutes = changes.get("max_duration_minutes", permission.max_duration_minutes)
    if not 1 <= minutes <= catalog.MAX_MINUTES:
        raise InvalidParams.one("max_duration_minutes", f"from 1 to {catalog.MAX_MINUTES}")
    if "provisioner" in changes or "provisioner_config" in changes:
        name = changes.get("provisioner", permission.provisioner)
        # A new provisioner never inherits the old one's config: it must be given or empty.
        config = changes.get("provisioner_config") if "provisioner_config" in changes else \
            ({} if name != permission.provisioner else permission.provisioner_config)
        validated = get_provisioner(name, settings).validate_config(config or {})
        permission.provisioner = name
        permission.provisioner_config = validated
    for field in ("name", "description", "max_duration_minutes", "requires_justification"):
        if field in changes:
            setattr(permission, field, changes[field])
    audit.record(session, action=AuditAction.PERMISSION_UPDATED, actor=actor, target=key,
                 origin=origin, now=now, details={"fields": sorted(changes)})
    session.commit()
    return permission


def delete_permission(session: Session, *, key: str, actor: str, origin: audit.Origin,
                      now: datetime) -> None:
    """Delete a permission; 409 for built-ins and while rules or requests refer to it."""
    permission = get_permission(session, key=key)
    if permission.builtin:
        raise Conflict(f"{key} is built in and cannot be deleted.", code="builtin_permission")
    if session.scalar(select(exists().where(PolicyRule.permission_key == key))):
        raise Conflict(f"Policy rules still grant {key}.", code="in_use")
    if session.scalar(select(exists().where(AccessRequest.permission_key == key,
                                            AccessRequest.status.in_(OPEN_STATUSES)))):
        raise Conflict(f"Open access requests still refer to {key}.", code="in_use")
    # Finished requests are history the audit trail points at: never erase them with the permission.
    if session.scalar(select(exists().where(AccessRequest.permission_key == key))):
        raise Conflict(f"Past access requests refer to {key}; it stays for the record.",
                       code="has_history")
    session.delete(permission)
    audit.record(session, action=AuditAction.PERMISSION_DELETED, actor=actor, target=key,
                 origin=origin, now=now)
    _commit(session, f"The permission {key!r} is in use.")


# ---- policy rules ------------------------------------------------------------------------------
def list_rules(session: Session, *, permission: str | None = None,
               role: str | None = None) -> list[PolicyRule]:
    """List policy rules, optionally only those of a permission or a role."""
    stmt = select(PolicyRule).order_by(PolicyRule.permission_key, PolicyRule.role,
                                       PolicyRule.subrole)
    if permission is not None:
        stmt = stmt.where(PolicyRule.permission_key == permission)
    if role is not None:
        stmt = stmt.where(PolicyRule.role == role)
    return list(session.scalars(stmt))


def get_rule(session: Session, *, rule_id: str) -> PolicyRule:
    """Return a policy rule; 404 when unknown."""
    rule = session.get(PolicyRule, rule_id)
    if rule is None:
        raise NotFound("No such policy rule.")
    return rule


def create_rule(session: Session, *, permission: str, role: str, subrole: str, mode: PolicyMode,
                max_duration_minutes: int | None, approvers: list[str], approvals_required: int,
                actor: str, origin: audit.Origin, now: datetime) -> PolicyRule:
    """Create a validated policy rule; 409 when one exists for the permission, role and subrole."""
    existing = session.scalar(select(func.count()).select_from(PolicyRule).where(
        PolicyRule.permission_key == permission, PolicyRule.role == role,
        PolicyRule.subrole == subrole))
    if existing:
        raise Conflict(f"A rule for {permission} and {role}/{subrole} exists; update it instead.",
                       code="rule_exists")
    rule = catalog.ensure_rule(
        session, permission=permission, role=role, subrole=subrole, mode=mode,
        max_duration_minutes=max_duration_minutes, approvers=approvers,
        approvals_required=approvals_required, actor=actor, origin=origin, now=now)
    _refuse_service_admins(session, rule)
    _commit(session, f"A rule for {permission} and {role}/{subrole} exists.")
    return rule


def _refuse_service_admins(session: Session, rule: PolicyRule) -> None:
    if rule.permission_key == ADMIN_PERMISSION:
        refuse_admin_for_service_accounts(session, role=rule.role, subrole=rule.subrole)


def _refuse_lockout_of_admins(rule: PolicyRule) -> None:
    # Without this rule no administrator is left to put it back (init-db would be needed).
    if (rule.permission_key, rule.role, rule.subrole) == ("security-api.admin", ADMIN_ROLE,
                                                          ADMIN_SUBROLE):
        raise Conflict("The security/admin standing rule for security-api.admin is built in.",
                       code="builtin_rule")


def update_rule(session: Session, *, rule_id: str, changes: dict, actor: str,
                origin: audit.Origin, now: datetime) -> PolicyRule:
    """Change the named terms of a rule, validated as a whole."""
    _check_changes(changes, allowed=RULE_FIELDS, nullable=("max_duration_minutes",))
    rule = get_rule(session, rule_id=rule_id)
    _refuse_lockout_of_admins(rule)
    current = as_rule(rule)
    mode = PolicyMode(changes.get("mode", current.mode))
    approvers = list(changes.get("approvers", current.approvers))
    approvals_required = changes.get("approvals_required", current.approvals_required)
    minutes = changes.get("max_duration_minutes", current.max_duration_minutes)
    checked(RuleSpec, {"permission": rule.permission_key, "role": rule.role,
                       "subrole": rule.subrole, "mode": str(mode), "approvers": approvers,
                       "approvals_required": approvals_required,
                       "max_duration_minutes": minutes})
    catalog._check_rule(session, permission=rule.permission_key, role=rule.role,
                        subrole=rule.subrole, mode=mode, approvers=approvers,
                        approvals_required=approvals_required, max_duration_minutes=minutes)
    rule.mode, rule.approvers = str(mode), approvers
    rule.approvals_required, rule.max_duration_minutes = approvals_required, minutes
    audit.record(session, action=AuditAction.POLICY_UPDATED, actor=actor, target=rule.id,
                 origin=origin, now=now,
                 details={"permission": rule.permission_key, "role": rule.role,
                          "subrole": rule.subrole, "fields": sorted(changes)})
    _refuse_service_admins(session, rule)
    session.commit()
    return rule


def delete_rule(session: Session, *, rule_id: str, actor: str, origin: audit.Origin,
                now: datetime) -> None:
    """Delete a policy rule; requests already made keep their frozen terms."""
    rule = get_rule(session, rule_id=rule_id)
    _refuse_lockout_of_admins(rule)
    details = {"permission": rule.permission_key, "role": rule.role, "subrole": rule.subrole,
               "mode": rule.mode}
    session.delete(rule)
    audit.record(session, action=AuditAction.POLICY_DELETED, actor=actor, target=rule_id,
                 origin=origin, now=now, details=details)
    # Removing a rule can let a broader standing rule decide instead.
    _refuse_service_admins(session, rule)
    session.commit()


# ---- explain -----------------------------------------------------------------------------------
def explain(session: Session, *, username: str, permission: str) -> dict:
    """Return the decision for a user and a permission, the rule behind it, and every candidate."""
    user = find_user(session, username)
    if user is None:
        raise NotFound("No such user.")
    row = get_permission(session, key=permission)
    subject = Subject(user.id, user.username, user.role, user.subrole, user.kind)
    candidates = candidate_rules(session, subject, permission=row.key)
    decision = decide(role=user.role, subrole=user.subrole, permission=row.key,
                      permission_max_minutes=row.max_duration_minutes, candidates=candidates)
    ranked = sorted(((specificity(rule, role=user.role, subrole=user.subrole), rule)
                     for rule in candidates), key=lambda pair: -(pair[0] if pair[0] is not None else -1))
    chosen = decision.rule.id if decision.rule else None
    return {
        "user": user.username, "role": user.role, "subrole": user.subrole,
        "user_active": user.active, "permission": row.key,
        "decision": str(decision.mode) if decision.mode else None,
        "max_duration_minutes": decision.max_duration_minutes,
        "rule": render_engine_rule(decision.rule) if decision.rule else None,
        "considered": [{**render_engine_rule(rule), "specificity": rank,
                        "matched": rule.id == chosen} for rank, rule in ranked],
    }
