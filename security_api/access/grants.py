"""What a user holds and may request: the policy engine fed from the database."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import bindparam, or_, select
from sqlalchemy.orm import Session

from security_api.access.policy import WILDCARD, Decision, Rule, decide, specificity
from security_api.enums import PolicyMode, RequestStatus, UserKind
from security_api.errors import Conflict, InvalidParams
from security_api.models import AccessRequest, Permission, PolicyRule, User

# The power that manages users, policy and every request: only people, signed in with 2FA.
ADMIN_PERMISSION = "security-api.admin"


@dataclass(frozen=True)
class Subject:
    """Who a decision is about: enough of a user for the policy engine."""

    id: str
    username: str
    role: str
    subrole: str
    kind: str


def as_rule(row: PolicyRule) -> Rule:
    """Turn a stored rule into the engine's rule."""
    return Rule(id=row.id, permission=row.permission_key, role=row.role, subrole=row.subrole,
                mode=PolicyMode(row.mode), max_duration_minutes=row.max_duration_minutes,
                approvers=tuple(row.approvers or ()),
                approvals_required=row.approvals_required,
                pending_ttl_minutes=row.pending_ttl_minutes,
                review_within_minutes=row.review_within_minutes)


# Built once at import, with and without the permission: statement building and its cache key
# cost more CPU than the look-up itself on a write (see bench/write_cpu.py).
_SUBJECT_RULES = select(PolicyRule).where(
    PolicyRule.role.in_(bindparam("roles", expanding=True)),
    PolicyRule.subrole.in_(bindparam("subroles", expanding=True)))
_SUBJECT_RULES_OF_PERMISSION = _SUBJECT_RULES.where(
    PolicyRule.permission_key == bindparam("permission"))


def candidate_rules(session: Session, subject: Subject, *,
                    permission: str | None = None) -> list[Rule]:
    """Load only the rules that can match this subject (an index look-up, never a scan)."""
    params = {"roles": [subject.role, WILDCARD], "subroles": [subject.subrole, WILDCARD]}
    stmt = _SUBJECT_RULES
    if permission is not None:
        stmt, params["permission"] = _SUBJECT_RULES_OF_PERMISSION, permission
    return [as_rule(row) for row in session.scalars(stmt, params)]


def decision_for(session: Session, subject: Subject, permission: Permission) -> Decision:
    """Decide what the subject may do with one permission."""
    return decide(role=subject.role, subrole=subject.subrole, permission=permission.key,
                  permission_max_minutes=permission.max_duration_minutes,
                  candidates=candidate_rules(session, subject, permission=permission.key))


def held_permissions(session: Session, subject: Subject, *, now: datetime) -> list[dict]:
    """List what the subject holds now: standing permissions, then active grants."""
    rules = candidate_rules(session, subject)
    keys = sorted({rule.permission for rule in rules})
    permissions = {p.key: p for p in session.scalars(select(Permission).where(Permission.key.in_(keys)))}
    held = []
    for key in keys:
        decision = decide(role=subject.role, subrole=subject.subrole, permission=key,
                          permission_max_minutes=permissions[key].max_duration_minutes,
                          candidates=rules)
        if decision.mode == PolicyMode.STANDING and not (
                subject.kind == UserKind.SERVICE and key == ADMIN_PERMISSION):
            held.append({"permission": key, "name": permissions[key].name, "source": "standing",
                         "expires_at": None, "request_id": None})
    if subject.kind != UserKind.SERVICE:
        grants = session.execute(
            select(AccessRequest, Permission.name)
            .join(Permission, Permission.key == AccessRequest.permission_key)
            .where(AccessRequest.requester_id == subject.id,
                   AccessRequest.status == RequestStatus.ACTIVE, AccessRequest.expires_at > now,
                   # An extension continuing a grant is that grant: shown once, as the grant.
                   AccessRequest.continues_id.is_(None))
            .order_by(AccessRequest.expires_at))
        for grant, name in grants:
            held.append({"permission": grant.permission_key, "name": name, "source": "grant",
                         "expires_at": grant.expires_at, "request_id": grant.id})
    return held


def requestable_catalog(session: Session, subject: Subject) -> list[tuple[Permission, Decision]]:
    """List the permissions the subject may request, with the decision for each."""
    if subject.kind == UserKind.SERVICE:
        return []
    rules = candidate_rules(session, subject)
    keys = {rule.permission for rule in rules}
    catalog = []
    for permission in session.scalars(select(Permission).where(Permission.key.in_(keys))
                                      .order_by(Permission.key)):
        decision = decide(role=subject.role, subrole=subject.subrole, permission=permission.key,
                          permission_max_minutes=permission.max_duration_minutes,
                          candidates=rules)
        if decision.requestable:
            catalog.append((permission, decision))
    return catalog


# ---- service accounts never administer --------------------------------------------------------
def _admin_rules(session: Session) -> list[Rule]:
    return [as_rule(row) for row in session.scalars(
        select(PolicyRule).where(PolicyRule.permission_key == ADMIN_PERMISSION))]


def gives_admin(session: Session, *, role: str, subrole: str) -> bool:
    """Tell whether the rules as they stand now make role/subrole hold the admin permission."""
    admin = session.get(Permission, ADMIN_PERMISSION)
    if admin is None:
        return False
    return decide(role=role, subrole=subrole, permission=ADMIN_PERMISSION,
                  permission_max_minutes=admin.max_duration_minutes,
                  candidates=_admin_rules(session)).mode == PolicyMode.STANDING


def refuse_service_account_in_admin_role(session: Session, *, role: str, subrole: str) -> None:
    """Refuse (412 on `role`) to put a service account where the rules give security-api.admin."""
    if gives_admin(session, role=role, subrole=subrole):
        raise InvalidParams.one(
            "role", f"{role}/{subrole} holds {ADMIN_PERMISSION}; a service account never may "
                    "(its secret alone, without a second factor, would administer everything)")


def refuse_admin_for_service_accounts(session: Session, *, role: str, subrole: str) -> None:
    """After a change to the rules (flushed, not committed): 409 if a service account it names
    would now hold security-api.admin. Deactivated accounts count: reactivation must not arm them.
    """
    session.flush()
    pattern = Rule(id="", permission=ADMIN_PERMISSION, role=role, subrole=subrole,
                   mode=PolicyMode.STANDING)
    pairs = session.execute(select(User.role, User.subrole).distinct()
                            .where(User.kind == str(UserKind.SERVICE))).all()
    armed = [(r, s) for r, s in pairs
             if specificity(pattern, role=r, subrole=s) is not None
             and gives_admin(session, role=r, subrole=s)]
    names = sorted(session.scalars(select(User.username).where(
        User.kind == str(UserKind.SERVICE),
        or_(*[(User.role == r) & (User.subrole == s) for r, s in armed])))) if armed else []
    if names:
        raise Conflict(f"This would give {ADMIN_PERMISSION} to the service account(s) "
                       f"{', '.join(names[:10])}; service accounts never administer. "
                       "Move them to another role first.", code="service_account_admin")
