"""Administration of permissions: listing, creating, changing and deleting them.

A permission with history (rules, open or past requests) stays, because the audit trail points
at it; a changed provisioner is validated before it is stored.
"""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import exists, select
from sqlalchemy.orm import Session

from security_api import audit
from security_api.access import catalog
from security_api.access.admin_changes import check_changes, commit_or_conflict
from security_api.clock import isoformat
from security_api.enums import AuditAction, RequestStatus
from security_api.errors import Conflict, InvalidParams, NotFound
from security_api.models import AccessRequest, Permission, PolicyRule
from security_api.provisioners import get_provisioner

# Requests that still need their permission: waiting, being granted, held, or to be retried.
OPEN_STATUSES = (RequestStatus.PENDING, RequestStatus.GRANTING, RequestStatus.ACTIVE,
                 RequestStatus.FAILED)
PERMISSION_FIELDS = ("name", "description", "max_duration_minutes", "requires_justification",
                     "step_up", "provisioner", "provisioner_config")


def render_permission(permission: Permission) -> dict:
    """Return a permission as JSON-able data."""
    return {"key": permission.key, "name": permission.name, "description": permission.description,
            "max_duration_minutes": permission.max_duration_minutes,
            "requires_justification": permission.requires_justification,
            "step_up": permission.step_up, "provisioner": permission.provisioner,
            "provisioner_config": permission.provisioner_config,
            "builtin": permission.builtin, "created_at": isoformat(permission.created_at)}


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
                      now: datetime, step_up: bool = False) -> Permission:
    """Create a permission with a validated provisioner config; 409 when it exists."""
    if session.get(Permission, key) is not None:
        raise Conflict(f"The permission {key!r} exists.", code="permission_exists")
    permission = catalog.ensure_permission(
        session, key=key, name=name, description=description,
        max_duration_minutes=max_duration_minutes, requires_justification=requires_justification,
        provisioner=provisioner, provisioner_config=provisioner_config, settings=settings,
        actor=actor, origin=origin, now=now, step_up=step_up)
    commit_or_conflict(session, f"The permission {key!r} exists.")
    return permission


def update_permission(session: Session, *, key: str, changes: dict, settings, actor: str,
                      origin: audit.Origin, now: datetime) -> Permission:
    """Change the named fields of a permission; a new provisioner or config is validated."""
    check_changes(changes, allowed=PERMISSION_FIELDS, nullable=())
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
    for field in ("name", "description", "max_duration_minutes", "requires_justification",
                  "step_up"):
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
    commit_or_conflict(session, f"The permission {key!r} is in use.")
