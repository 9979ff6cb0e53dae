"""Sign-in sessions: refresh-token families with rotation, access tokens, revocation."""
from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from security_api import audit
from security_api.accounts.principal_cache import changed
from security_api.accounts.tokens import issue_access_token
from security_api.clock import as_utc, epoch
from security_api.enums import AuditAction
from security_api.errors import Unauthenticated
from security_api.models import RefreshFamily, RefreshToken, User
from security_api.services import Services

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


def revoke_family(session: Session, *, user_id: str, family_id: str, reason: str,
                  now: datetime) -> bool:
    """Revoke one of the user's sign-in sessions; True if it was still live.

    Registered with the principal cache first: with Redis configured, an unreachable Redis
    stops the revocation (503) rather than leave another worker's cached principal alive.
    """
    changed(session, user_id)
    result = session.execute(
        update(RefreshFamily)
        .where(RefreshFamily.id == family_id, RefreshFamily.user_id == user_id,
               RefreshFamily.revoked_at.is_(None))
        .values(revoked_at=now, revoked_reason=reason))
    return result.rowcount == 1


def invalidate_all_tokens(session: Session, *, user: User, reason: str, now: datetime) -> None:
    """Kill every token the user holds: access tokens by time, refresh families by flag."""
    changed(session, user.id)
    # +1: a token issued earlier in this very second must die too (iat has whole seconds).
    user.tokens_valid_after = epoch(now) + 1
    user.updated_at = now
    session.execute(
        update(RefreshFamily)
        .where(RefreshFamily.user_id == user.id, RefreshFamily.revoked_at.is_(None))
        .values(revoked_at=now, revoked_reason=reason))


class RefreshRefused(Exception):
    """A refused refresh: why (for the audit record), whose, and the error the client gets."""

    def __init__(self, error: Unauthenticated, *, reason: str, user: User | None = None,
                 family_id: str | None = None):
        super().__init__(reason)
        self.error, self.reason, self.user, self.family_id = error, reason, user, family_id


def _audit_refusal(session: Session, refused: RefreshRefused, *, origin: audit.Origin,
                   now: datetime) -> None:
    user, family_id = refused.user, refused.family_id
    details = ({"reason": refused.reason} if family_id is None
               else {"reason": refused.reason, "family": family_id})
    audit.record(session, action=AuditAction.TOKEN_REFRESH_REFUSED,
                 actor=user.username if user else None, target=user.id if user else None,
                 origin=origin, now=now, details=details)


def _refusal(services: Services, token: RefreshToken, family: RefreshFamily, user: User,
             *, now: datetime) -> tuple[str, Unauthenticated] | None:
    """Why a known refresh token may not be used now, if it may not."""
    if family.revoked_at is not None:
        return "revoked", _invalid_refresh_token()
    if not user.active:
        return "inactive", _invalid_refresh_token()
    if as_utc(token.expires_at) <= now:
        return "expired", Unauthenticated("Refresh token expired.", code="token_expired")
    if _family_ends_at(services, family.created_at) <= now:
        return "family_expired", Unauthenticated(
            "This sign-in is too old to refresh; sign in again.", code="session_expired")
    return None


def _invalid_refresh_token() -> Unauthenticated:
    return Unauthenticated("Invalid refresh token.", code="invalid_refresh_token")


def _usable_token(session: Session, services: Services, *, refresh_token: str,
                  now: datetime) -> tuple[RefreshToken, RefreshFamily, User]:
    """Find the refresh token with its family and user; raise RefreshRefused if unusable."""
    row = None
    if refresh_token and len(refresh_token) <= MAX_REFRESH_TOKEN_LENGTH:
        row = session.execute(
            select(RefreshToken, RefreshFamily, User)
            .join(RefreshFamily, RefreshFamily.id == RefreshToken.family_id)
            .join(User, User.id == RefreshFamily.user_id)
            .where(RefreshToken.token_hash == _digest(refresh_token))).first()
    if row is None:
        raise RefreshRefused(_invalid_refresh_token(), reason="unknown")
    token, family, user = row
    refusal = _refusal(services, token, family, user, now=now)
    if refusal is not None:
        reason, error = refusal
        raise RefreshRefused(error, reason=reason, user=user, family_id=family.id)
    return token, family, user


def _use_once(session: Session, token: RefreshToken, family: RefreshFamily, user: User, *,
              origin: audit.Origin, now: datetime) -> None:
    """Mark the token used; a token used before means one of its two holders is a thief."""
    used = session.execute(
        update(RefreshToken)
        .where(RefreshToken.id == token.id, RefreshToken.used_at.is_(None))
        .values(used_at=now))
    if used.rowcount == 1:
        return
    revoke_family(session, user_id=user.id, family_id=family.id, reason="refresh_reuse", now=now)
    audit.record(session, action=AuditAction.REFRESH_REUSE_DETECTED, actor=user.username,
                 target=user.id, origin=origin, now=now, details={"family": family.id})
    raise RefreshRefused(Unauthenticated("Refresh token reuse detected; the session is revoked.",
                                         code="refresh_token_reused"),
                         reason="reused", user=user, family_id=family.id)


def rotate(session: Session, services: Services, *, refresh_token: str,
           origin: audit.Origin, now: datetime) -> IssuedTokens:
    """Trade a refresh token for new tokens; a reused one revokes its whole family.

    A refusal is committed too (its audit record, and for a reuse the family's revocation):
    the client gets an error, but the attempt must stay on record.
    """
    try:
        token, family, user = _usable_token(session, services, refresh_token=refresh_token,
                                            now=now)
        _use_once(session, token, family, user, origin=origin, now=now)
    except RefreshRefused as refused:
        _audit_refusal(session, refused, origin=origin, now=now)
        session.commit()
        raise refused.error from None
    issued = _issue(session, services, user=user, family=family, now=now)
    audit.record(session, action=AuditAction.TOKEN_REFRESHED, actor=user.username,
                 target=user.id, origin=origin, now=now, details={"family": family.id})
    session.commit()
    return issued


def authenticate(services: Services, *, token: str, now: datetime) -> Principal:
    """Return the principal of a valid, unrevoked access token of an active user.

    One query, or with Redis configured one GET and the row cached in this process while
    the user's auth version is unchanged (principal_cache); the checks are the same.
    """
    claims = services.token_verifier.verify(token, now=now.timestamp())
    row = services.principals.row(claims["sub"], claims["sid"])
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
    revoke_family(session, user_id=principal.account.id, family_id=claims["sid"],
                  reason="logout", now=now)
    audit.record(session, action=AuditAction.LOGOUT, actor=principal.account.username,
                 target=principal.account.id, origin=origin, now=now, details={"family": claims["sid"]})
    session.commit()
