"""What every catalog administration operation shares: its commit and its check of partial changes.

Roles, permissions and policy rules live in admin_roles, admin_permissions and admin_rules; the
public operations there own their transaction, and these two helpers keep their conflicts and
validation errors the same shape everywhere.
"""
from __future__ import annotations

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from security_api.errors import Conflict, InvalidParams


def commit_or_conflict(session: Session, conflict: str) -> None:
    """Commit, turning a uniqueness or reference clash into 409 with the given message."""
    # A concurrent admin may have created or referenced the same row; the database decides.
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
        raise Conflict(conflict) from None


def check_changes(changes: dict, *, allowed: tuple[str, ...], nullable: tuple[str, ...]) -> None:
    """Refuse unknown fields and nulls where null has no meaning, all at once (412)."""
    errors = [{"field": name, "problem": "unknown field"} for name in sorted(set(changes) - set(allowed))]
    errors += [{"field": name, "problem": "must not be null"} for name in sorted(changes)
               if changes[name] is None and name in allowed and name not in nullable]
    if errors:
        raise InvalidParams(errors=errors)
