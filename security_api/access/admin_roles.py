"""Administration of roles and their subroles: listing, creating, describing and deleting them.

A role or subrole stays while anything refers to it (users, policy rules, approvers), so that
deleting one never leaves a dangling name behind.
"""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete, exists, select
from sqlalchemy.orm import Session

from security_api import audit
from security_api.access.admin_changes import commit_or_conflict
from security_api.access.catalog_schemas import RoleSpec, SubroleSpec, checked
from security_api.accounts.users import create_role
from security_api.clock import isoformat
from security_api.enums import AuditAction
from security_api.errors import Conflict, InvalidParams, NotFound
from security_api.models import PolicyRule, Role, Subrole, User


def render_role(session: Session, role: Role) -> dict:
    """Return a role with its subroles as JSON-able data."""
    subroles = session.scalars(select(Subrole).where(Subrole.role == role.name)
                               .order_by(Subrole.name))
    return {"name": role.name, "description": role.description,
            "created_at": isoformat(role.created_at),
            "subroles": [{"name": s.name, "description": s.description,
                          "created_at": isoformat(s.created_at)} for s in subroles]}


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
    commit_or_conflict(session, f"The role {name!r} exists.")
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
    commit_or_conflict(session, f"The subrole {role}/{name} exists.")
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
    commit_or_conflict(session, f"The role {name!r} is in use.")


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
    commit_or_conflict(session, f"The subrole {role}/{name} is in use.")
