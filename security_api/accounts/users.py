"""Users, roles, second-factor enrollment, recovery codes and password changes."""
from __future__ import annotations

import base64
import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from security_api import audit
from security_api.access.grants import refuse_service_account_in_admin_role
from security_api.accounts import totp
from security_api.accounts.passwords import generate_password, hash_password, policy_problems
from security_api.accounts.principal_cache import changed
from security_api.accounts.secretbox import SecretBox
from security_api.accounts.sessions import invalidate_all_tokens
from security_api.enums import AuditAction, UserKind
from security_api.errors import Conflict, InvalidParams
from security_api.models import RecoveryCode, Role, Subrole, User

USERNAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9._-]{1,63}")
NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
EMAIL_PATTERN = re.compile(r"[^@\s]{1,64}@[^@\s]{1,189}\.[^@\s]{2,63}")
RECOVERY_CODE_COUNT = 10
# 16 base32 characters: 80 bits, beyond brute force even against a stolen hash.
RECOVERY_CODE_CHARS = 16


def normalise_username(username: str) -> str:
    """Usernames are case-insensitive: compare and store them lowercased."""
    return username.strip().lower()


def find_user(session: Session, username: str) -> User | None:
    """Return the user with this username, if any."""
    name = normalise_username(username)
    if not USERNAME_PATTERN.fullmatch(name):
        return None
    return session.scalar(select(User).where(User.username == name))


def create_role(session: Session, *, name: str, subroles: list[str], description: str = "",
                actor: str | None, origin: audit.Origin, now: datetime) -> Role:
    """Create a role with its subroles, or add missing subroles to an existing one."""
    for value in [name, *subroles]:
        if not NAME_PATTERN.fullmatch(value):
            raise InvalidParams.one("role", f"{value!r} is not a lowercase slug")
    role = session.get(Role, name)
    if role is None:
        role = Role(name=name, description=description, created_at=now)
        session.add(role)
        session.flush()
    added = []
    for subrole in subroles:
        if session.get(Subrole, (name, subrole)) is None:
            session.add(Subrole(role=name, name=subrole, created_at=now))
            added.append(subrole)
    if added:
        audit.record(session, action=AuditAction.ROLE_CREATED, actor=actor, target=name,
                     origin=origin, now=now, details={"subroles": added})
    return role


@dataclass(frozen=True)
class NewUser:
    """A created user and the password or service secret, shown once."""

    user: User
    secret: str


def create_user(session: Session, *, username: str, role: str, subrole: str,
                email: str | None, kind: UserKind, password: str | None, bcrypt_rounds: int,
                actor: str | None, origin: audit.Origin, now: datetime) -> NewUser:
    """Create a person or service account; generate its secret when none is given."""
    name = normalise_username(username)
    if not USERNAME_PATTERN.fullmatch(name):
        raise InvalidParams.one("username", "2-64 of a-z 0-9 . _ -, starting with a letter or digit")
    if email is not None and not EMAIL_PATTERN.fullmatch(email):
        raise InvalidParams.one("email", "is not an email address")
    if session.get(Subrole, (role, subrole)) is None:
        raise InvalidParams.one("subrole", f"{role}/{subrole} does not exist")
    if session.scalar(select(func.count()).where(User.username == name)):
        raise Conflict(f"User {name} already exists.", code="user_exists")
    if kind == UserKind.SERVICE:
        refuse_service_account_in_admin_role(session, role=role, subrole=subrole)
    secret = password if password is not None else generate_password()
    problems = policy_problems(secret, user_inputs=(name, email or ""))
    if problems:
        raise InvalidParams.one("password", problems[0])
    user = User(username=name, email=email, role=role, subrole=subrole, kind=str(kind),
                active=True, password_hash=hash_password(secret, rounds=bcrypt_rounds),
                totp_confirmed=False, tokens_valid_after=0, created_at=now, updated_at=now,
                password_changed_at=now)
    session.add(user)
    session.flush()
    audit.record(session, action=AuditAction.USER_CREATED, actor=actor, target=user.id,
                 origin=origin, now=now,
                 details={"username": name, "role": role, "subrole": subrole, "kind": str(kind)})
    return NewUser(user, secret)


def start_totp_enrollment(session: Session, *, user: User, issuer: str, secret_box: SecretBox,
                          origin: audit.Origin, now: datetime) -> tuple[str, str]:
    """Give the user a new TOTP secret to scan; only while 2FA is not confirmed."""
    _refuse_unless_enrollable(user)
    secret = totp.new_secret()
    user.totp_secret = secret_box.encrypt(secret)
    user.updated_at = now
    audit.record(session, action=AuditAction.TOTP_ENROLL_STARTED, actor=user.username,
                 target=user.id, origin=origin, now=now)
    session.commit()
    return secret, totp.provisioning_uri(secret, account=user.username, issuer=issuer)


def confirm_totp(session: Session, *, user: User, origin: audit.Origin,
                 now: datetime) -> list[str]:
    """Mark 2FA confirmed (the caller checked the code) and issue fresh recovery codes.

    A step of the caller's transaction: the caller commits, or rolls back on the Conflict.
    """
    changed(session, user.id)  # the principal's totp_confirmed: cached rows must not keep it
    confirmed = session.execute(
        update(User).where(User.id == user.id, User.totp_confirmed.is_(False))
        .values(totp_confirmed=True, updated_at=now))
    if confirmed.rowcount != 1:
        raise Conflict("Two-factor authentication is already confirmed.",
                       code="totp_already_enrolled")
    codes = _replace_recovery_codes(session, user_id=user.id, now=now)
    audit.record(session, action=AuditAction.TOTP_ENROLLED, actor=user.username,
                 target=user.id, origin=origin, now=now)
    return codes


def _replace_recovery_codes(session: Session, *, user_id: str, now: datetime) -> list[str]:
    session.execute(update(RecoveryCode)
                    .where(RecoveryCode.user_id == user_id, RecoveryCode.used_at.is_(None))
                    .values(used_at=now))
    codes = []
    for _ in range(RECOVERY_CODE_COUNT):
        raw = base64.b32encode(secrets.token_bytes(10)).decode("ascii").lower()
        code = "-".join(raw[i:i + 4] for i in range(0, RECOVERY_CODE_CHARS, 4))
        session.add(RecoveryCode(user_id=user_id, code_hash=_recovery_digest(code),
                                 created_at=now))
        codes.append(code)
    return codes


def _recovery_digest(code: str) -> str:
    normalised = re.sub(r"[\s-]", "", code).lower()
    return hashlib.sha256(normalised.encode("utf-8", "surrogatepass")).hexdigest()


def consume_recovery_code(session: Session, *, user_id: str, code: str, now: datetime) -> bool:
    """Use up one recovery code; True only the first time a valid one is presented."""
    result = session.execute(
        update(RecoveryCode)
        .where(RecoveryCode.user_id == user_id, RecoveryCode.code_hash == _recovery_digest(code),
               RecoveryCode.used_at.is_(None))
        .values(used_at=now))
    return result.rowcount == 1


def set_password(session: Session, *, user: User, new_password: str, bcrypt_rounds: int,
                 now: datetime) -> None:
    """Store a new password after the policy check and kill every older token."""
    problems = policy_problems(new_password, user_inputs=(user.username, user.email or ""))
    if problems:
        raise InvalidParams.one("new_password", problems[0])
    user.password_hash = hash_password(new_password, rounds=bcrypt_rounds)
    user.password_changed_at = now
    invalidate_all_tokens(session, user=user, reason="password_changed", now=now)


def ensure_enrollment_started(user: User) -> None:
    """Refuse a confirmation that has nothing to confirm."""
    _refuse_unless_enrollable(user)
    if not user.totp_secret:
        raise Conflict("Start with POST /v1/totp/enroll.", code="totp_enrollment_not_started")


def _refuse_unless_enrollable(user: User) -> None:
    if user.kind == UserKind.SERVICE:
        raise Conflict("Service accounts sign in with their secret, without TOTP.",
                       code="totp_not_applicable")
    if user.totp_confirmed:
        raise Conflict("Two-factor authentication is already confirmed.",
                       code="totp_already_enrolled")
