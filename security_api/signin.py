"""Sign-in checks: address throttling, lockout, password, second factor. One answer for every failure."""
from __future__ import annotations

import logging
from datetime import datetime

from sqlalchemy.orm import Session

from . import audit, totp
from .accounts import consume_recovery_code, find_user, normalise_username, set_password
from .clock import epoch
from .enums import AuditAction, FailureReason, UserKind
from .errors import Forbidden, InvalidParams, Throttled, Unauthenticated
from .models import User
from .passwords import verify_password
from .secretbox import SecretUnreadable
from .services import Services
from .sessions import IssuedTokens, start_session

log = logging.getLogger(__name__)
BASIC_CHALLENGE = {"WWW-Authenticate": 'Basic realm="security-api"'}
MAX_ACTOR_LENGTH = 64


def _lock_key(username: str) -> str:
    return f"user:{normalise_username(username)}"


def throttle_address(services: Services, *, ip: str | None, scope: str, now: datetime) -> None:
    """Refuse a client address that sent too many sign-in requests in the current window."""
    settings = services.settings
    retry_after = services.store.hit(f"{scope}:{ip or 'unknown'}", limit=settings.auth_rate_limit,
                                     window=settings.auth_rate_window_seconds, now=epoch(now))
    if retry_after:
        raise Throttled("Too many requests from this address; try again later.",
                        retry_after=retry_after)


def _refuse_if_locked(services: Services, username: str, now: datetime) -> None:
    state = services.store.lock_state(_lock_key(username), now=epoch(now))
    if state.locked:
        raise Throttled("Too many failed attempts; this account is locked for a while.",
                        code="locked", retry_after=state.retry_after)


def record_failure(session: Session, services: Services, *, username: str, user: User | None,
                   reason: FailureReason, purpose: str, origin: audit.Origin,
                   now: datetime) -> Unauthenticated:
    """Count a failure toward the lockout, audit it, and return the one generic error."""
    # Release anything this request holds before the store takes its own transaction.
    session.rollback()
    settings = services.settings
    locked = services.store.record_failure(
        _lock_key(username), threshold=settings.lockout_threshold,
        lock_seconds=settings.lockout_seconds, now=epoch(now))
    actor = username[:MAX_ACTOR_LENGTH]
    target = user.id if user else None
    details = {"reason": str(reason), "purpose": purpose}
    audit.record(session, action=AuditAction.LOGIN_FAILED, actor=actor, target=target,
                 origin=origin, now=now, details=details)
    if locked:
        audit.record(session, action=AuditAction.LOGIN_LOCKED, actor=actor, target=target,
                     origin=origin, now=now,
                     details={"seconds": settings.lockout_seconds, "purpose": purpose})
    session.commit()
    return Unauthenticated(headers=BASIC_CHALLENGE)


def check_password(session: Session, services: Services, *, username: str, password: str,
                   purpose: str, origin: audit.Origin, now: datetime) -> User:
    """Return the active user whose password this is; fail the same way for every other case."""
    _refuse_if_locked(services, username, now)
    user = find_user(session, username)
    # Always run one bcrypt check, so an unknown user costs the same time as a known one.
    password_ok = verify_password(password, user.password_hash if user
                                  else services.dummy_password_hash)
    reason = None
    if user is None:
        reason = FailureReason.UNKNOWN_USER
    elif not password_ok:
        reason = FailureReason.BAD_PASSWORD
    elif not user.active:
        reason = FailureReason.INACTIVE
    if reason is not None:
        raise record_failure(session, services, username=username, user=user, reason=reason,
                             purpose=purpose, origin=origin, now=now)
    return user


def _totp_secret(services: Services, user: User) -> str | None:
    if not user.totp_secret:
        return None
    try:
        return services.secret_box.decrypt(user.totp_secret)
    except SecretUnreadable:
        # A rotated-away key or a tampered row: the user needs a TOTP reset, not a 500.
        log.error("TOTP secret of user %s cannot be decrypted with the configured keys", user.id)
        return None


def check_totp(session: Session, services: Services, *, user: User, code: str | None,
               purpose: str, origin: audit.Origin, now: datetime) -> None:
    """Accept a TOTP code once per user, within one step of drift; fail generically otherwise."""
    secret = _totp_secret(services, user)
    step = totp.matching_step(secret, code, unix_time=now.timestamp()) if secret and code else None
    reason = None
    if step is None:
        reason = FailureReason.BAD_SECOND_FACTOR
    elif not services.store.claim_totp_step(user.id, step):
        reason = FailureReason.TOTP_REPLAYED
    if reason is not None:
        raise record_failure(session, services, username=user.username, user=user,
                             reason=reason, purpose=purpose, origin=origin, now=now)


def sign_in(session: Session, services: Services, *, username: str, password: str,
            totp_code: str | None, recovery_code: str | None, origin: audit.Origin,
            now: datetime) -> tuple[User, IssuedTokens]:
    """Check every factor and open a session; raise the generic error on any failure."""
    user = check_password(session, services, username=username, password=password,
                          purpose="login", origin=origin, now=now)
    used_recovery = False
    if user.kind == UserKind.PERSON:
        if not user.totp_confirmed:
            raise Forbidden("Two-factor authentication must be enrolled first: "
                            "POST /v1/totp/enroll, then /v1/totp/confirm.",
                            code="totp_enrollment_required")
        if totp_code is not None:
            check_totp(session, services, user=user, code=totp_code, purpose="login",
                       origin=origin, now=now)
        elif recovery_code is not None and consume_recovery_code(
                session, user_id=user.id, code=recovery_code, now=now):
            used_recovery = True
        else:
            reason = (FailureReason.BAD_SECOND_FACTOR if recovery_code is not None
                      else FailureReason.MISSING_SECOND_FACTOR)
            raise record_failure(session, services, username=username, user=user,
                                 reason=reason, purpose="login", origin=origin, now=now)
    issued = start_session(session, services, user=user, now=now)
    audit.record(session, action=AuditAction.LOGIN_SUCCEEDED, actor=user.username,
                 target=user.id, origin=origin, now=now,
                 details={"family": issued.claims["sid"], "kind": user.kind})
    if used_recovery:
        audit.record(session, action=AuditAction.RECOVERY_CODE_USED, actor=user.username,
                     target=user.id, origin=origin, now=now)
    session.commit()
    # After the commit: the store must not wait on a lock this request still holds.
    services.store.clear_failures(_lock_key(username))
    return user, issued


def change_password(session: Session, services: Services, *, user: User, current_password: str,
                    new_password: str, origin: audit.Origin, now: datetime) -> None:
    """Replace the password after checking the current one; every older token dies."""
    _refuse_if_locked(services, user.username, now)
    if not verify_password(current_password, user.password_hash):
        # A stolen token must not become a password-guessing oracle: count it like a login.
        record_failure(session, services, username=user.username, user=user,
                       reason=FailureReason.BAD_PASSWORD, purpose="password_change",
                       origin=origin, now=now)
        raise Forbidden("The current password is wrong.", code="wrong_password")
    if new_password == current_password:
        raise InvalidParams.one("new_password", "must differ from the current password")
    set_password(session, user=user, new_password=new_password,
                 bcrypt_rounds=services.settings.bcrypt_rounds, now=now)
    audit.record(session, action=AuditAction.PASSWORD_CHANGED, actor=user.username,
                 target=user.id, origin=origin, now=now)
    session.commit()
