"""Sign-in checks: password, second factor, TOTP enrollment, password change. One answer for
every failure; the throttling and lockout around them are signin_attempts.py's."""
from __future__ import annotations

import logging
from datetime import datetime

from sqlalchemy import or_, update
from sqlalchemy.orm import Session

from security_api import audit
from security_api.accounts import totp
from security_api.accounts.passwords import verify_password
from security_api.accounts.secretbox import SecretUnreadable
from security_api.accounts.sessions import IssuedTokens, start_session
from security_api.accounts.signin_attempts import Attempt, record_password_checked, reserved_attempt
from security_api.accounts.users import (
    confirm_totp,
    consume_recovery_code,
    ensure_enrollment_started,
    find_user,
    set_password,
    start_totp_enrollment,
)
from security_api.enums import AuditAction, FailureReason, UserKind
from security_api.errors import Forbidden, InvalidParams
from security_api.models import User
from security_api.services import Services

log = logging.getLogger(__name__)
def check_password(session: Session, services: Services, *, attempt: Attempt,
                   password: str) -> User:
    """Return the active user whose password this is; fail the same way for every other case."""
    user = find_user(session, attempt.username)
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
        raise attempt.fail(user=user, reason=reason)
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


def _claim_step(session: Session, *, user_id: str, step: int) -> bool:
    """Move the user's last accepted step forward; False for a replayed or older step.

    The database is the one authority, whatever happens to a cache: a conditional update
    checked by row count, so of parallel requests with one code exactly one wins (the others
    wait for its row lock, then match no row).
    """
    claimed = session.execute(
        update(User)
        .where(User.id == user_id,
               or_(User.last_totp_step.is_(None), User.last_totp_step < step))
        .values(last_totp_step=step))
    return claimed.rowcount == 1


def check_totp(session: Session, services: Services, *, attempt: Attempt, user: User,
               code: str | None) -> None:
    """Accept a TOTP code once per user, within one step of drift; fail generically otherwise."""
    secret = _totp_secret(services, user)
    step = totp.matching_step(secret, code, unix_time=attempt.now.timestamp()) \
        if secret and code else None
    reason = None
    if step is None:
        reason = FailureReason.BAD_SECOND_FACTOR
    elif not _claim_step(session, user_id=user.id, step=step):
        reason = FailureReason.TOTP_REPLAYED
    if reason is not None:
        raise attempt.fail(user=user, reason=reason)


def sign_in(session: Session, services: Services, *, username: str, password: str,
            totp_code: str | None, recovery_code: str | None, origin: audit.Origin,
            now: datetime) -> tuple[User, IssuedTokens]:
    """Check every factor and open a session; raise the generic error on any failure."""
    with reserved_attempt(session, services, username=username, purpose="login",
                          origin=origin, now=now) as current:
        user = check_password(session, services, attempt=current, password=password)
        used_recovery = False
        if user.kind == UserKind.PERSON:
            if not user.totp_confirmed:
                raise Forbidden("Two-factor authentication must be enrolled first: "
                                "POST /v1/totp/enroll, then /v1/totp/confirm.",
                                code="totp_enrollment_required")
            if totp_code is not None:
                check_totp(session, services, attempt=current, user=user, code=totp_code)
            elif recovery_code is not None and consume_recovery_code(
                    session, user_id=user.id, code=recovery_code, now=now):
                used_recovery = True
            else:
                reason = (FailureReason.BAD_SECOND_FACTOR if recovery_code is not None
                          else FailureReason.MISSING_SECOND_FACTOR)
                raise current.fail(user=user, reason=reason)
        issued = start_session(session, services, user=user, now=now)
        audit.record(session, action=AuditAction.LOGIN_SUCCEEDED, actor=user.username,
                     target=user.id, origin=origin, now=now,
                     details={"family": issued.claims["sid"], "kind": user.kind})
        if used_recovery:
            audit.record(session, action=AuditAction.RECOVERY_CODE_USED, actor=user.username,
                         target=user.id, origin=origin, now=now)
        session.commit()
        # After the commit: the store must not wait on a lock this request still holds.
        current.succeed()
    return user, issued


def _check_password_to_enroll(session: Session, services: Services, *, attempt: Attempt,
                              password: str) -> User:
    """Check the password alone, for enroll and confirm; refuse it like a wrong one once 2FA is on.

    Without the second factor these endpoints must not tell a right password from a wrong
    one: an account with 2FA confirmed gets the generic 401 either way, and the attempt
    counts toward the lockout either way (a count left alone would say "right" too).
    """
    user = check_password(session, services, attempt=attempt, password=password)
    if user.totp_confirmed:
        # One transaction, as for a wrong password: not even the time may differ.
        raise attempt.fail(user=user, reason=FailureReason.TOTP_ALREADY_ENROLLED,
                           password_checked=True)
    record_password_checked(session, attempt=attempt, user_id=user.id, username=user.username,
                            totp_confirmed=user.totp_confirmed)
    return user


def enroll_totp(session: Session, services: Services, *, username: str, password: str,
                origin: audit.Origin, now: datetime) -> tuple[str, str]:
    """Check the password and hand out a new TOTP secret and its otpauth URI."""
    with reserved_attempt(session, services, username=username, purpose="totp_enroll",
                          origin=origin, now=now) as current:
        user = _check_password_to_enroll(session, services, attempt=current, password=password)
        session.commit()  # the password check's record stays, whatever happens next
        return start_totp_enrollment(session, user=user, issuer=services.settings.totp_issuer,
                                     secret_box=services.secret_box, origin=origin, now=now)


def confirm_totp_enrollment(session: Session, services: Services, *, username: str,
                            password: str, code: str, origin: audit.Origin,
                            now: datetime) -> list[str]:
    """Check the password and a first code, turn 2FA on and return the recovery codes."""
    with reserved_attempt(session, services, username=username, purpose="totp_confirm",
                          origin=origin, now=now) as current:
        user = _check_password_to_enroll(session, services, attempt=current, password=password)
        session.commit()  # the password check's record stays, even after a 409 or a wrong code
        ensure_enrollment_started(user)
        check_totp(session, services, attempt=current, user=user, code=code)
        codes = confirm_totp(session, user=user, origin=origin, now=now)
        session.commit()
        current.succeed()
        return codes


def change_password(session: Session, services: Services, *, user: User, current_password: str,
                    new_password: str, origin: audit.Origin, now: datetime) -> None:
    """Replace the password after checking the current one; every older token dies."""
    with reserved_attempt(session, services, username=user.username,
                          purpose="password_change", origin=origin, now=now) as current:
        if not verify_password(current_password, user.password_hash):
            # A stolen token must not become a password-guessing oracle: count it like a login.
            current.fail(user=user, reason=FailureReason.BAD_PASSWORD)
            raise Forbidden("The current password is wrong.", code="wrong_password")
        if new_password == current_password:
            raise InvalidParams.one("new_password", "must differ from the current password")
        set_password(session, user=user, new_password=new_password,
                     bcrypt_rounds=services.settings.bcrypt_rounds, now=now)
        audit.record(session, action=AuditAction.PASSWORD_CHANGED, actor=user.username,
                     target=user.id, origin=origin, now=now)
        session.commit()
