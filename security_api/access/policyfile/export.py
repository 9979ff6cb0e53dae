"""Exporting the catalog as a policy file that, applied again, changes nothing."""
from __future__ import annotations

import yaml
from sqlalchemy import select
from sqlalchemy.orm import Session

from security_api.access.catalog_schemas import DEFAULT_REVIEW_MINUTES
from security_api.access.policyfile.conflicts import export_conflicts
from security_api.access.policyfile.plan import permission_values, rule_values
from security_api.access.policyfile.read import FILE_VERSION, protected_rule
from security_api.models import Permission, PolicyRule, Role, Subrole

EXPORT_HEADER = """\
# Security API policy file (flask --app flask_api policy apply FILE).
# The full desired state: roles, permissions and rules missing here are deleted. Built-in
# permissions, the security/admin role and its standing security-api.admin and
# security-api.audit rules are always kept and need not be listed. Conflict sets missing from a
# `conflicts` section are deleted too; a file without the section leaves the sets alone.
"""
# Left out of a rule when they have these values, to keep the file short.
RULE_DEFAULTS = {"max_duration_minutes": None, "approvers": [], "approvals_required": 1,
                 "pending_ttl_minutes": 1440,
                 "review_within_minutes": DEFAULT_REVIEW_MINUTES}


def export(session: Session) -> str:
    """Write the current roles, permissions, rules and conflict sets as a policy file."""
    document = {"version": FILE_VERSION, "roles": _roles(session),
                "permissions": [_permission(p) for p in session.scalars(
                    select(Permission).where(Permission.builtin.is_(False))
                    .order_by(Permission.key))],
                "rules": [_rule(r) for r in session.scalars(select(PolicyRule).order_by(
                    PolicyRule.permission_key, PolicyRule.role, PolicyRule.subrole))
                    if not protected_rule((r.permission_key, r.role, r.subrole))],
                "conflicts": export_conflicts(session)}
    return EXPORT_HEADER + yaml.safe_dump(document, sort_keys=False, allow_unicode=True,
                                          default_flow_style=False, width=100)


def _roles(session: Session) -> list[dict]:
    subroles: dict[str, list[Subrole]] = {}
    for sub in session.scalars(select(Subrole).order_by(Subrole.role, Subrole.name)):
        subroles.setdefault(sub.role, []).append(sub)
    roles = []
    for role in session.scalars(select(Role).order_by(Role.name)):
        entry: dict = {"name": role.name}
        if role.description:
            entry["description"] = role.description
        entry["subroles"] = [{"name": s.name, "description": s.description} if s.description
                             else s.name for s in subroles.get(role.name, [])]
        roles.append(entry)
    return roles


def _permission(permission: Permission) -> dict:
    values = permission_values(permission)
    provisioner = {"name": values.pop("provisioner"), "config": values.pop("provisioner_config")}
    if not values["step_up"]:
        del values["step_up"]  # the default: files of the format before step-up stay as they were
    return {"key": permission.key, **values, "provisioner": provisioner}


def _rule(rule: PolicyRule) -> dict:
    entry = {"permission": rule.permission_key, "role": rule.role, "subrole": rule.subrole}
    entry.update((name, value) for name, value in rule_values(rule).items()
                 if name not in RULE_DEFAULTS or value != RULE_DEFAULTS[name])
    return entry
