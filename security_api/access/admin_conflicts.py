"""Administration of conflict sets (separation of duties): list, create, change, delete.

What a valid set is (slug name, two or more distinct keys) is ConflictSetSpec's job; this adds
what only the database can tell (do the permissions exist, is the name free). A set applies
from its creation on: it refuses new requests and approvals, and never takes away what people
already hold (explain and the catalog's `blocked_by` show such holdings).
"""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from security_api import audit
from security_api.access.admin_changes import check_changes, commit_or_conflict
from security_api.access.catalog_schemas import ConflictSetSpec, checked
from security_api.clock import isoformat
from security_api.enums import AuditAction
from security_api.errors import Conflict, InvalidParams, NotFound
from security_api.models import ConflictSet, ConflictSetMember, Permission

CONFLICT_FIELDS = ("permissions", "description")


def members(session: Session, names: list[str] | None = None) -> dict[str, list[str]]:
    """Return the sorted permission keys of each set (of the named sets, or of all)."""
    query = select(ConflictSetMember.set_name, ConflictSetMember.permission_key)
    if names is not None:
        query = query.where(ConflictSetMember.set_name.in_(names))
    found: dict[str, list[str]] = {}
    for name, key in session.execute(query.order_by(ConflictSetMember.permission_key)):
        found.setdefault(name, []).append(key)
    return found


def render_conflict(conflict: ConflictSet, keys: list[str]) -> dict:
    """Return a conflict set as JSON-able data."""
    return {"name": conflict.name, "permissions": keys, "description": conflict.description,
            "created_at": isoformat(conflict.created_at)}


def list_conflicts(session: Session) -> list[dict]:
    """List every conflict set by name, rendered (two queries whatever the number of sets)."""
    keys = members(session)
    return [render_conflict(row, keys.get(row.name, []))
            for row in session.scalars(select(ConflictSet).order_by(ConflictSet.name))]


def get_conflict(session: Session, *, name: str) -> dict:
    """Return one set, rendered; 404 when unknown."""
    return render_conflict(_row(session, name), members(session, [name]).get(name, []))


def _row(session: Session, name: str) -> ConflictSet:
    row = session.get(ConflictSet, name)
    if row is None:
        raise NotFound(f"No conflict set {name!r}.")
    return row


def set_members(session: Session, name: str, keys: list[str]) -> None:
    """Replace a set's permissions (the caller checked them and owns the transaction)."""
    session.execute(delete(ConflictSetMember).where(ConflictSetMember.set_name == name))
    session.add_all(ConflictSetMember(set_name=name, permission_key=key) for key in keys)
    session.flush()


def _check_known(session: Session, keys: list[str]) -> None:
    known = set(session.scalars(select(Permission.key).where(Permission.key.in_(keys))))
    unknown = [key for key in keys if key not in known]
    if unknown:
        raise InvalidParams.one("permissions", f"unknown permission(s): {', '.join(unknown)}")


def create_conflict(session: Session, *, name: str, permissions: list[str], description: str,
                    actor: str, origin: audit.Origin, now: datetime) -> dict:
    """Create a set; 412 for unknown permissions, 409 when the name is taken."""
    spec = checked(ConflictSetSpec, {"name": name, "permissions": permissions,
                                     "description": description})
    _check_known(session, spec.permissions)
    if session.get(ConflictSet, spec.name) is not None:
        raise Conflict(f"The conflict set {spec.name!r} exists.", code="conflict_set_exists")
    session.add(ConflictSet(name=spec.name, description=spec.description, created_at=now))
    session.flush()
    set_members(session, spec.name, sorted(spec.permissions))
    audit.record(session, action=AuditAction.CONFLICT_CREATED, actor=actor, target=spec.name,
                 origin=origin, now=now, details={"permissions": sorted(spec.permissions)})
    commit_or_conflict(session, f"The conflict set {spec.name!r} exists.")
    return get_conflict(session, name=spec.name)


def update_conflict(session: Session, *, name: str, changes: dict, actor: str,
                    origin: audit.Origin, now: datetime) -> dict:
    """Change a set's permissions and/or description, validated as a whole."""
    check_changes(changes, allowed=CONFLICT_FIELDS, nullable=())
    row = _row(session, name)
    keys = changes.get("permissions", members(session, [name]).get(name, []))
    spec = checked(ConflictSetSpec, {"name": name, "permissions": keys,
                                     "description": changes.get("description", row.description)})
    _check_known(session, spec.permissions)
    row.description = spec.description
    if "permissions" in changes:
        set_members(session, name, sorted(spec.permissions))
    audit.record(session, action=AuditAction.CONFLICT_UPDATED, actor=actor, target=name,
                 origin=origin, now=now,
                 details={"fields": sorted(changes), "permissions": sorted(spec.permissions)})
    commit_or_conflict(session, f"The conflict set {name!r} changed meanwhile.")
    return get_conflict(session, name=name)


def delete_conflict(session: Session, *, name: str, actor: str, origin: audit.Origin,
                    now: datetime) -> None:
    """Delete a set: its permissions no longer exclude one another."""
    row = _row(session, name)
    session.execute(delete(ConflictSetMember).where(ConflictSetMember.set_name == name))
    session.delete(row)
    audit.record(session, action=AuditAction.CONFLICT_DELETED, actor=actor, target=name,
                 origin=origin, now=now)
    commit_or_conflict(session, f"The conflict set {name!r} changed meanwhile.")


def sets_naming(session: Session, key: str) -> list[str]:
    """Return the names of the sets a permission is in (deleting it is refused while any is)."""
    return sorted(session.scalars(select(ConflictSetMember.set_name)
                                  .where(ConflictSetMember.permission_key == key)))
