"""Administration of policy rules, and the explanation of a decision by those rules.

Every change is validated as a whole rule, and none may let a service account administer or
remove the built-in security/admin standing rule (no administrator would be left to restore it).
"""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from security_api import audit
from security_api.access import catalog
from security_api.access.admin_changes import check_changes, commit_or_conflict
from security_api.access.admin_permissions import get_permission
from security_api.access.catalog_schemas import DEFAULT_REVIEW_MINUTES, RuleSpec, checked
from security_api.access.conflicts import explain_conflicts
from security_api.access.grants import (
    ADMIN_PERMISSION,
    Subject,
    as_rule,
    candidate_rules,
    refuse_admin_for_service_accounts,
)
from security_api.access.policy import Rule, decide, specificity
from security_api.accounts.users import find_user
from security_api.clock import isoformat
from security_api.enums import AuditAction, PolicyMode
from security_api.errors import Conflict, NotFound
from security_api.installation import ADMIN_ROLE, ADMIN_SUBROLE
from security_api.models import PolicyRule

RULE_FIELDS = ("mode", "max_duration_minutes", "approvers", "approvals_required",
               "pending_ttl_minutes", "review_within_minutes")


def render_engine_rule(rule: Rule) -> dict:
    """Return a policy rule, as the engine sees it, as JSON-able data."""
    return {"id": rule.id, "permission": rule.permission, "role": rule.role,
            "subrole": rule.subrole, "mode": str(rule.mode),
            "max_duration_minutes": rule.max_duration_minutes,
            "approvers": list(rule.approvers), "approvals_required": rule.approvals_required,
            "pending_ttl_minutes": rule.pending_ttl_minutes,
            "review_within_minutes": rule.review_within_minutes}


def render_rule(row: PolicyRule) -> dict:
    """Return a stored policy rule as JSON-able data."""
    return {**render_engine_rule(as_rule(row)), "created_at": isoformat(row.created_at)}


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
                review_within_minutes: int = DEFAULT_REVIEW_MINUTES, actor: str,
                origin: audit.Origin, now: datetime, pending_ttl_minutes: int = 1440) -> PolicyRule:
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
        approvals_required=approvals_required, pending_ttl_minutes=pending_ttl_minutes,
        review_within_minutes=review_within_minutes,
        actor=actor, origin=origin, now=now)
    _refuse_service_admins(session, rule)
    commit_or_conflict(session, f"A rule for {permission} and {role}/{subrole} exists.")
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
    check_changes(changes, allowed=RULE_FIELDS, nullable=("max_duration_minutes",))
    rule = get_rule(session, rule_id=rule_id)
    _refuse_lockout_of_admins(rule)
    current = as_rule(rule)
    mode = PolicyMode(changes.get("mode", current.mode))
    approvers = list(changes.get("approvers", current.approvers))
    approvals_required = changes.get("approvals_required", current.approvals_required)
    minutes = changes.get("max_duration_minutes", current.max_duration_minutes)
    pending_ttl = changes.get("pending_ttl_minutes", current.pending_ttl_minutes)
    review_minutes = changes.get("review_within_minutes", current.review_within_minutes)
    checked(RuleSpec, {"permission": rule.permission_key, "role": rule.role,
                       "subrole": rule.subrole, "mode": str(mode), "approvers": approvers,
                       "approvals_required": approvals_required,
                       "max_duration_minutes": minutes, "pending_ttl_minutes": pending_ttl,
                       "review_within_minutes": review_minutes})
    catalog._check_rule(session, permission=rule.permission_key, role=rule.role,
                        subrole=rule.subrole, mode=mode, approvers=approvers,
                        approvals_required=approvals_required, max_duration_minutes=minutes)
    rule.mode, rule.approvers = str(mode), approvers
    rule.approvals_required, rule.max_duration_minutes = approvals_required, minutes
    rule.pending_ttl_minutes = pending_ttl  # requests already waiting keep their deadline
    rule.review_within_minutes = review_minutes
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
def explain(session: Session, *, username: str, permission: str, now: datetime) -> dict:
    """Return the decision for a user and a permission, the rule behind it, every candidate,
    and the conflict sets that name the permission (with what of them blocks the user now)."""
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
        "conflicts": explain_conflicts(session, subject, row.key, now=now),
    }
