"""User administration: list, create, update, reset second factor or password, unlock."""
from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from security_api import audit, cursors
from security_api.access import lifecycle
from security_api.access.grants import refuse_service_account_in_admin_role
from security_api.accounts import users as accounts
from security_api.accounts.passwords import generate_password, hash_password
from security_api.accounts.sessions import invalidate_all_tokens
from security_api.accounts.signin_attempts import lock_key
from security_api.accounts.slack_link import check_slack_user_id, commit_slack_link
from security_api.accounts.users import EMAIL_PATTERN, USERNAME_PATTERN, NewUser
from security_api.enums import AuditAction, UserKind
from security_api.errors import Conflict, InvalidParams, NotFound
from security_api.models import RecoveryCode, Role, Subrole, User
from security_api.services import Services


class _Keep:
    """Marks a field the caller did not name: left as it is (None can be a value)."""

    def __repr__(self) -> str:
        return "KEEP"


KEEP = _Keep()


@dataclass(frozen=True)
class UserFilters:
    """What a user list may be narrowed to; None means any."""

    role: str | None = None
    subrole: str | None = None
    kind: UserKind | None = None
    active: bool | None = None
    q: str | None = None


def get_user(session: Session, *, user_id: str, for_update: bool = False) -> User:
    """Return the user with this id; NotFound for an unknown or malformed id."""
    try:
        canonical = str(uuid.UUID(user_id))
    except (ValueError, TypeError, AttributeError):
        raise NotFound("No such user.") from None
    # Only the canonical form was ever issued; anything else is simply not a user id.
    if canonical != user_id:
        raise NotFound("No such user.")
    stmt = select(User).where(User.id == canonical)
    if for_update:
        stmt = stmt.with_for_update()
    user = session.scalar(stmt)
    if user is None:
        raise NotFound("No such user.")
    return user


def list_users(session: Session, *, filters: UserFilters, limit: int,
               cursor: str | None) -> tuple[list[User], str | None]:
    """Return one page of users ordered by username, and the cursor of the next page."""
    stmt = select(User)
    if filters.role is not None:
        stmt = stmt.where(User.role == filters.role)
    if filters.subrole is not None:
        stmt = stmt.where(User.subrole == filters.subrole)
    if filters.kind is not None:
        stmt = stmt.where(User.kind == str(filters.kind))
    if filters.active is not None:
        stmt = stmt.where(User.active.is_(filters.active))
    if filters.q:
        stmt = stmt.where(User.username.startswith(filters.q.strip().lower(), autoescape=True))
    if cursor:
        stmt = stmt.where(User.username > cursors.decode_key(cursor, USERNAME_PATTERN))
    rows = list(session.scalars(stmt.order_by(User.username).limit(limit + 1)))
    next_cursor = cursors.encode_key(rows[limit - 1].username) if len(rows) > limit else None
    return rows[:limit], next_cursor


def create_user(session: Session, services: Services, *, username: str, role: str, subrole: str,
                email: str | None, kind: UserKind, actor: str, origin: audit.Origin,
                now: datetime) -> NewUser:
    """Create a person or service account with a generated secret, shown once."""
    if session.get(Role, role) is None:
        raise InvalidParams.one("role", f"{role} does not exist")
    # Never an admin-chosen password: only the account holder should ever know it.
    created = accounts.create_user(
        session, username=username, role=role, subrole=subrole, email=email, kind=kind,
        password=None, bcrypt_rounds=services.settings.bcrypt_rounds, actor=actor,
        origin=origin, now=now)
    session.commit()
    return created


def _check_role(session: Session, role: str, subrole: str) -> None:
    if session.get(Role, role) is None:
        raise InvalidParams.one("role", f"{role} does not exist")
    if session.get(Subrole, (role, subrole)) is None:
        raise InvalidParams.one("subrole", f"{role}/{subrole} does not exist")


def update_user(session: Session, services: Services, *, user_id: str, actor: str,
                origin: audit.Origin, now: datetime, role: str | _Keep = KEEP,
                subrole: str | _Keep = KEEP, email: str | None | _Keep = KEEP,
                active: bool | _Keep = KEEP, slack_user_id: str | None | _Keep = KEEP) -> User:
    """Change role, subrole, email or active; a new role or a deactivation kills every token,
    and takes back what the user may no longer have (pending requests, active grants)."""
    user = get_user(session, user_id=user_id, for_update=True)
    wanted = {"role": role, "subrole": subrole, "email": email, "active": active,
              "slack_user_id": slack_user_id}
    changes = {field: {"from": getattr(user, field), "to": value}
               for field, value in wanted.items()
               if value is not KEEP and value != getattr(user, field)}
    _check_changes(session, user, changes, actor=actor)
    if not changes:
        return user
    ended = _apply_changes(session, user, changes, actor=actor, origin=origin, now=now)
    audit.record(session, action=AuditAction.USER_UPDATED, actor=actor, target=user.id,
                 origin=origin, now=now, details={"username": user.username, "changes": changes})
    commit_slack_link(session)
    if any(ended):
        # The provisioner's revoke runs after the commit, never inside a transaction.
        lifecycle.settle_ended(session, services, cancelled=ended[0], revoked=ended[1],
                               origin=origin, now=now)
        session.refresh(user)
    return user


def _is_demotion(changes: dict) -> bool:
    """A new role or a deactivation: the user may lose tokens, requests and grants."""
    return bool(changes.keys() & {"role", "subrole"}) or changes.get("active", {}).get("to") is False


def _is_arming(changes: dict) -> bool:
    """A new role or a reactivation: what the user may do afterwards must be checked again."""
    return bool(changes.keys() & {"role", "subrole"}) or changes.get("active", {}).get("to") is True


def _check_changes(session: Session, user: User, changes: dict, *, actor: str) -> None:
    """Refuse a change that is invalid, that locks out its own author, or arms a service account."""
    new_email = changes.get("email", {}).get("to")
    if new_email is not None and not EMAIL_PATTERN.fullmatch(new_email):
        raise InvalidParams.one("email", "is not an email address")
    new_role = changes.get("role", {}).get("to", user.role)
    new_subrole = changes.get("subrole", {}).get("to", user.subrole)
    if "role" in changes or "subrole" in changes:
        _check_role(session, new_role, new_subrole)
    # An admin who demotes or deactivates themselves may leave nobody able to undo it.
    if _is_demotion(changes):
        _refuse_self(user, actor, "change your own role or deactivate yourself")
    if user.kind == UserKind.SERVICE and _is_arming(changes):
        refuse_service_account_in_admin_role(session, role=new_role, subrole=new_subrole)
    if "slack_user_id" in changes:
        check_slack_user_id(session, user, changes["slack_user_id"]["to"])


def _apply_changes(session: Session, user: User, changes: dict, *, actor: str,
                   origin: audit.Origin, now: datetime) -> tuple[list[str], list[str]]:
    """Set the new values; on a demotion end the user's tokens, requests and grants too."""
    for field, change in changes.items():
        setattr(user, field, change["to"])
    user.updated_at = now
    if not _is_demotion(changes):
        return [], []
    reason = "deactivated" if user.active is False else "role_changed"
    invalidate_all_tokens(session, user=user, reason=reason, now=now)
    session.flush()
    # Same transaction as the change: nobody can approve in between and win.
    return lifecycle.end_ineligible(session, user=user, reason=reason, actor=actor,
                                    origin=origin, now=now)


def _refuse_self(user: User, actor: str, what: str) -> None:
    if user.username == actor:
        raise Conflict(f"You cannot {what}; ask another administrator.",
                       code="self_change_refused")


def reset_totp(session: Session, *, user_id: str, actor: str, origin: audit.Origin,
               now: datetime) -> User:
    """Forget the user's second factor and recovery codes; they enroll again at next sign-in."""
    user = get_user(session, user_id=user_id, for_update=True)
    # A stolen access token must not become a new second factor of the thief's choosing.
    _refuse_self(user, actor, "reset your own second factor")
    if user.kind == UserKind.SERVICE:
        raise Conflict("Service accounts sign in with their secret, without TOTP.",
                       code="totp_not_applicable")
    user.totp_secret = None
    user.totp_confirmed = False
    session.execute(update(RecoveryCode)
                    .where(RecoveryCode.user_id == user.id, RecoveryCode.used_at.is_(None))
                    .values(used_at=now))
    invalidate_all_tokens(session, user=user, reason="totp_reset", now=now)
    audit.record(session, action=AuditAction.USER_TOTP_RESET, actor=actor, target=user.id,
                 origin=origin, now=now, details={"username": user.username})
    session.commit()
    return user


def reset_password(session: Session, services: Services, *, user_id: str, actor: str,
                   origin: audit.Origin, now: datetime) -> NewUser:
    """Give the user a new generated password or service secret, shown once; kill every token."""
    user = get_user(session, user_id=user_id, for_update=True)
    # Your own password changes through POST /v1/password, which asks for the current one:
    # otherwise a stolen access token would be worth a permanent password.
    _refuse_self(user, actor, "reset your own password (use POST /v1/password)")
    secret = generate_password()
    user.password_hash = hash_password(secret, rounds=services.settings.bcrypt_rounds)
    user.password_changed_at = now
    invalidate_all_tokens(session, user=user, reason="password_reset", now=now)
    audit.record(session, action=AuditAction.USER_PASSWORD_RESET, actor=actor, target=user.id,
                 origin=origin, now=now, details={"username": user.username, "kind": user.kind})
    session.commit()
    return NewUser(user, secret)


def unlock(session: Session, services: Services, *, user_id: str, actor: str,
           origin: audit.Origin, now: datetime) -> User:
    """Lift the sign-in lockout of the user's username."""
    user = get_user(session, user_id=user_id)
    audit.record(session, action=AuditAction.USER_UNLOCKED, actor=actor, target=user.id,
                 origin=origin, now=now, details={"username": user.username})
    # Audit first and commit: an unlock must never happen unrecorded, and the database store
    # must not wait on the audit chain lock this request would otherwise still hold.
    session.commit()
    services.store.clear_failures(lock_key(user.username))
    return user
