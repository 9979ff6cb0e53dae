"""Sign-in sessions: refresh-token families with rotation, access tokens, revocation."""
from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from . import audit
from .clock import as_utc, epoch
from .enums import AuditAction
from .errors import Unauthenticated
from .models import RefreshFamily, RefreshToken, User
from .services import Services
from .tokens import issue_access_token

MAX_REFRESH_TOKEN_LENGTH = 128


@dataclass(frozen=True)
class IssuedTokens:
    """What a client receives after signing in or refreshing."""

    access_token: str
    claims: dict
    refresh_token: str
    expires_in: int
    refresh_expires_in: int


@dataclass(frozen=True)
class Account:
    """What a request needs to know of the token's user, read in the token check's query."""

    id: str
    username: str
    email: str | None
    role: str
    subrole: str
    kind: str
    active: bool
    totp_confirmed: bool
    created_at: datetime

    @property
    def roles(self) -> list[str]:
        """Return the role and role/subrole pair, as put in tokens."""
        return [self.role, f"{self.role}/{self.subrole}"]


@dataclass(frozen=True)
class Principal:
    """The account behind a verified access token, and the token's claims."""

    account: Account
    claims: dict


def _digest(refresh_token: str) -> str:
    return hashlib.sha256(refresh_token.encode("utf-8", "surrogatepass")).hexdigest()


def _family_ends_at(services: Services, created_at: datetime) -> datetime:
    """Return when a refresh family dies, however often it was rotated."""
    return as_utc(created_at) + timedelta(seconds=services.settings.refresh_family_max_seconds)


def _issue(session: Session, services: Services, *, user: User, family: RefreshFamily,
           now: datetime) -> IssuedTokens:
    refresh_token = secrets.token_urlsafe(32)
    # Never past the family's end: rotating must not extend a sign-in for ever.
    expires_at = min(now + timedelta(seconds=services.settings.refresh_token_ttl_seconds),
                     _family_ends_at(services, family.created_at))
    session.add(RefreshToken(family_id=family.id, token_hash=_digest(refresh_token),
                             issued_at=now, expires_at=expires_at))
    access_token, claims = issue_access_token(keys=services.keys, audience=services.audience,
                                              user=user, session_id=family.id, now=now)
    return IssuedTokens(access_token, claims, refresh_token,
                        claims["exp"] - epoch(now), int((expires_at - now).total_seconds()))


def start_session(session: Session, services: Services, *, user: User,
                  now: datetime) -> IssuedTokens:
    """Open a refresh family for a fresh sign-in and issue its first tokens."""
    family = RefreshFamily(user_id=user.id, created_at=now)
    session.add(family)
    session.flush()
    return _issue(session, services, user=user, family=family, now=now)


def revoke_family(session: Session, *, family_id: str, reason: str, now: datetime) -> bool:
    """Revoke one sign-in session; True if it was still live."""
    result = session.execute(
        update(RefreshFamily)
        .where(RefreshFamily.id == family_id, RefreshFamily.revoked_at.is_(None))
        .values(revoked_at=now, revoked_reason=reason))
    return result.rowcount == 1


def invalidate_all_tokens(session: Session, *, user: User, reason: str, now: datetime) -> None:
    """Kill every token the user holds: access tokens by time, refresh families by flag."""
    # +1: a token issued earlier in this very second must die too (iat has whole seconds).
    user.tokens_valid_after = epoch(now) + 1
    user.updated_at = now
    session.execute(
        update(RefreshFamily)
        .where(RefreshFamily.user_id == user.id, RefreshFamily.revoked_at.is_(None))
        .values(revoked_at=now, revoked_reason=reason))


def _refused(session: Session, error: Unauthenticated, *, reason: str, user: User | None,
             family_id: str | None, origin: audit.Origin, now: datetime) -> Unauthenticated:
    """Audit a refused refresh in its own commit and return the error to raise."""
    details = {"reason": reason} if family_id is None else {"reason": reason, "family": family_id}
    audit.record(session, action=AuditAction.TOKEN_REFRESH_REFUSED,
                 actor=user.username if user else None, target=user.id if user else None,
                 origin=origin, now=now, details=details)
    session.commit()
    return error


def rotate(session: Session, services: Services, *, refresh_token: str,
           origin: audit.Origin, now: datetime) -> IssuedTokens:
    """Trade a refresh token for new tokens; a reused one revokes its whole family."""
    invalid = Unauthenticated("Invalid refresh token.", code="invalid_refresh_token")
    if not refresh_token or len(refresh_token) > MAX_REFRESH_TOKEN_LENGTH:
        raise _refused(session, invalid, reason="unknown", user=None, family_id=None,
                       origin=origin, now=now)
    row = session.execute(
        select(RefreshToken, RefreshFamily, User)
        .join(RefreshFamily, RefreshFamily.id == RefreshToken.family_id)
        .join(User, User.id == RefreshFamily.user_id)
        .where(RefreshToken.token_hash == _digest(refresh_token))).first()
    if row is None:
        raise _refused(session, invalid, reason="unknown", user=None, family_id=None,
                       origin=origin, now=now)
    token, family, user = row
    refusal = None
    if family.revoked_at is not None:
        refusal = ("revoked", invalid)
    elif not user.active:
        refusal = ("inactive", invalid)
    elif as_utc(token.expires_at) <= now:
        refusal = ("expired", Unauthenticated("Refresh token expired.", code="token_expired"))
    elif _family_ends_at(services, family.created_at) <= now:
        refusal = ("family_expired", Unauthenticated(
            "This sign-in is too old to refresh; sign in again.", code="session_expired"))
    if refusal is not None:
        reason, error = refusal
        raise _refused(session, error, reason=reason, user=user, family_id=family.id,
                       origin=origin, now=now)
    used = session.execute(
        update(RefreshToken)
        .where(RefreshToken.id == token.id, RefreshToken.used_at.is_(None))
        .values(used_at=now))
    if used.rowcount != 1:
        # Someone already used this token: one of the two holders is a thief.
        session.rollback()
        revoke_family(session, family_id=family.id, reason="refresh_reuse", now=now)
        audit.record(session, action=AuditAction.REFRESH_REUSE_DETECTED, actor=user.username,
                     target=user.id, origin=origin, now=now, details={"family": family.id})
        raise _refused(session, Unauthenticated(
            "Refresh token reuse detected; the session is revoked.",
            code="refresh_token_reused"), reason="reused", user=user, family_id=family.id,
            origin=origin, now=now)
    issued = _issue(session, services, user=user, family=family, now=now)
    audit.record(session, action=AuditAction.TOKEN_REFRESHED, actor=user.username,
                 target=user.id, origin=origin, now=now, details={"family": family.id})
    session.commit()
    return issued


def authenticate(services: Services, *, token: str, now: datetime) -> Principal:
    """Return the principal of a valid, unrevoked access token of an active user (one query)."""
    claims = services.token_verifier.verify(token, now=now.timestamp())
    row = services.principal_reader.first({"sub": claims["sub"], "sid": claims["sid"]})
    if row is None or row["family_id"] is None:
        raise Unauthenticated("Invalid token.", code="invalid_token")
    # Every revocation is in the database, read by the query above: logout revokes the token's
    # refresh family (end_session), a password change, deactivation or role change moves
    # tokens_valid_after. No separate jti deny-list: every access token names its family (sid).
    revoked = (row["family_revoked_at"] is not None
               or not row["active"] or claims["iat"] < row["tokens_valid_after"])
    if revoked:
        raise Unauthenticated("Token revoked.", code="token_revoked")
    return Principal(account_from_row(row), claims)


def account_from_row(row: dict) -> Account:
    """Build the request's account from a row of the principal query."""
    return Account(id=row["id"], username=row["username"], email=row["email"], role=row["role"],
                   subrole=row["subrole"], kind=row["kind"], active=row["active"],
                   totp_confirmed=row["totp_confirmed"], created_at=as_utc(row["created_at"]))


def end_session(session: Session, services: Services, *, principal: Principal,
                origin: audit.Origin, now: datetime) -> None:
    """Log out: revoke the token's refresh family, which refuses its access tokens at once."""
    claims = principal.claims
    revoke_family(session, family_id=claims["sid"], reason="logout", now=now)
    audit.record(session, action=AuditAction.LOGOUT, actor=principal.account.username,
                 target=principal.account.id, origin=origin, now=now, details={"family": claims["sid"]})
    session.commit()
