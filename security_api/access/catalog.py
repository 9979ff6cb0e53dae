"""Permissions and policy rules: creating them with validation (CLI, seed, bootstrap).

What a valid permission or rule is lives in catalog_schemas; this adds what only the
database can tell (does the role exist, do the approvers name anyone).
"""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from security_api import audit
from security_api.access.catalog_schemas import (
    DEFAULT_REVIEW_MINUTES,
    MAX_MINUTES,
    PermissionSpec,
    RuleSpec,
    checked,
    rule_problems,
)
from security_api.access.policy import WILDCARD
from security_api.enums import AuditAction, PolicyMode, UserKind
from security_api.errors import InvalidParams
from security_api.models import Permission, PolicyRule, Role, Subrole, User
from security_api.provisioners import get_provisioner

# Also inserted by migration 0002; repeated here so init-db restores them if they go missing.
BUILTIN_PERMISSIONS = {
    "security-api.admin": ("Security API administration",
                           "Use the /v1/admin endpoints: users, roles, permissions, policies."),
    "security-api.audit": ("Security API audit", "Read the audit log and every access request."),
    "security-api.check": ("Security API checks",
                           "Ask GET /v1/check whether another user holds a permission (internal tools)."),
}
__all__ = ["BUILTIN_PERMISSIONS", "MAX_MINUTES", "ensure_permission", "ensure_rule"]


def ensure_permission(session: Session, *, key: str, name: str, description: str = "",
                      max_duration_minutes: int, requires_justification: bool = False,
                      provisioner: str = "none", provisioner_config: dict | None = None,
                      settings, actor: str, origin: audit.Origin, now: datetime,
                      step_up: bool = False) -> Permission:
    """Create a permission unless it exists; validate its provisioner config."""
    checked(PermissionSpec, {
        "key": key, "name": name, "description": description,
        "max_duration_minutes": max_duration_minutes,
        "requires_justification": requires_justification, "step_up": step_up,
        "provisioner": {"name": provisioner, "config": provisioner_config or {}}})
    config = get_provisioner(provisioner, settings).validate_config(provisioner_config or {})
    existing = session.get(Permission, key)
    if existing is not None:
        return existing
    permission = Permission(key=key, name=name, description=description,
                            max_duration_minutes=max_duration_minutes,
                            requires_justification=requires_justification, step_up=step_up,
                            provisioner=provisioner, provisioner_config=config,
                            builtin=False, created_at=now)
    session.add(permission)
    session.flush()
    audit.record(session, action=AuditAction.PERMISSION_CREATED, actor=actor, target=key,
                 origin=origin, now=now, details={"provisioner": provisioner})
    return permission


def ensure_builtin_permissions(session: Session, *, now: datetime) -> None:
    """Create any missing built-in permission."""
    for key, (name, description) in BUILTIN_PERMISSIONS.items():
        if session.get(Permission, key) is None:
            session.add(Permission(key=key, name=name, description=description,
                                   max_duration_minutes=480, requires_justification=True,
                                   provisioner="none", provisioner_config={}, builtin=True,
                                   created_at=now))
    session.flush()


def ensure_rule(session: Session, *, permission: str, role: str, subrole: str, mode: PolicyMode,
                max_duration_minutes: int | None = None, approvers: list[str] | None = None,
                approvals_required: int = 1, pending_ttl_minutes: int = 1440,
                review_within_minutes: int = DEFAULT_REVIEW_MINUTES, actor: str,
                origin: audit.Origin, now: datetime) -> PolicyRule:
    """Create a policy rule unless one exists for this permission, role and subrole."""
    checked(RuleSpec, {"permission": permission, "role": role, "subrole": subrole,
                       "mode": str(mode), "max_duration_minutes": max_duration_minutes,
                       "approvers": list(approvers or []),
                       "approvals_required": approvals_required,
                       "pending_ttl_minutes": pending_ttl_minutes,
                       "review_within_minutes": review_within_minutes})
    _check_rule(session, permission=permission, role=role, subrole=subrole, mode=mode,
                approvers=approvers or [], approvals_required=approvals_required,
                max_duration_minutes=max_duration_minutes)
    existing = session.scalar(select(PolicyRule).where(
        PolicyRule.permission_key == permission, PolicyRule.role == role,
        PolicyRule.subrole == subrole))
    if existing is not None:
        return existing
    rule = PolicyRule(permission_key=permission, role=role, subrole=subrole, mode=str(mode),
                      max_duration_minutes=max_duration_minutes,
                      approvers=list(approvers or []),
                      approvals_required=approvals_required,
                      pending_ttl_minutes=pending_ttl_minutes,
                      review_within_minutes=review_within_minutes, created_at=now)
    session.add(rule)
    session.flush()
    audit.record(session, action=AuditAction.POLICY_CREATED, actor=actor, target=rule.id,
                 origin=origin, now=now,
                 details={"permission": permission, "role": role, "subrole": subrole,
                          "mode": str(mode)})
    return rule


def _check_rule(session: Session, *, permission: str, role: str, subrole: str, mode: PolicyMode,
                approvers: list[str], approvals_required: int,
                max_duration_minutes: int | None) -> None:
    """Check a rule against the catalog; fields alone were checked by RuleSpec already."""
    if session.get(Permission, permission) is None:
        raise InvalidParams.one("permission", f"unknown permission {permission!r}")
    tied = dict(rule_problems(role=role, subrole=subrole, mode=str(mode), approvers=approvers))
    if "subrole" in tied:
        raise InvalidParams.one("subrole", tied["subrole"])
    if role != WILDCARD and session.get(Role, role) is None:
        raise InvalidParams.one("role", f"unknown role {role!r}")
    if subrole != WILDCARD and session.get(Subrole, (role, subrole)) is None:
        raise InvalidParams.one("subrole", f"unknown subrole {role}/{subrole}")
    if "approvers" in tied:
        raise InvalidParams.one("approvers", tied["approvers"])
    for entry in approvers:
        entry_role, _, entry_subrole = entry.partition("/")
        known = session.get(Subrole, (entry_role, entry_subrole)) if entry_subrole \
            else session.get(Role, entry_role)
        if known is None:
            raise InvalidParams.one("approvers", f"{entry!r} matches no role or subrole")
    refuse_service_only_approvers(session, approvers)


def refuse_service_only_approvers(session: Session, approvers: list[str]) -> None:
    """Refuse approvers that match only service accounts: those never decide requests."""
    conditions = []
    for entry in approvers:
        entry_role, _, entry_subrole = entry.partition("/")
        conditions.append((User.role == entry_role) & (User.subrole == entry_subrole)
                          if entry_subrole else User.role == entry_role)
    if not conditions:
        return
    kinds = set(session.scalars(select(User.kind).distinct().where(or_(*conditions))))
    if kinds == {str(UserKind.SERVICE)}:
        raise InvalidParams.one("approvers", "match only service accounts, which never approve")
