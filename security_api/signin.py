"""Sign-in checks: address throttling, lockout, password, second factor. One answer for every failure."""
from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import or_, update
from sqlalchemy.orm import Session

from . import audit, totp
from .accounts import (
    confirm_totp,
    consume_recovery_code,
    ensure_enrollment_started,
    find_user,
    normalise_username,
    set_password,
    start_totp_enrollment,
)
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


@dataclass(frozen=True)
class Failure:
    """Why an attempt failed, captured before the request's transaction ends.

    Plain values, not the User row: the row belongs to a transaction that is rolled back
    before the failure is recorded, and reading it again there would start a new one.
    """

    reason: FailureReason
    user_id: str | None
    username: str | None
    totp_confirmed: bool
    password_checked: bool


class Attempt:
    """One attempt holding a reserved place in its username's lockout count until settled."""

    def __init__(self, services: Services, *, username: str, purpose: str,
                 origin: audit.Origin, now: datetime):
        self.services, self.username = services, username
        self.purpose, self.origin, self.now = purpose, origin, now
        self.failure: Failure | None = None
        self.settled = False

    def fail(self, *, user: User | None, reason: FailureReason,
             password_checked: bool = False) -> Unauthenticated:
        """Mark the attempt failed and return the one generic error for the caller to raise.

        Nothing is written here: reserved_attempt records the failure once the request's
        transaction has ended, so the record survives whatever that transaction did.
        """
        self.failure = Failure(reason, user.id if user else None,
                               user.username if user else None,
                               bool(user and user.totp_confirmed), password_checked)
        return Unauthenticated(headers=BASIC_CHALLENGE)

    def succeed(self) -> None:
        """Forget the failures in a row: every factor was right (call after the commit)."""
        self.settled = True
        self.services.store.clear_failures(_lock_key(self.username))

    def settle(self) -> None:
        """Count a failure, or give the place back when the attempt neither failed nor signed in."""
        if self.settled:
            return
        self.settled = True
        if self.failure is not None:
            record_failed_attempt(self.services, attempt=self, failure=self.failure)
        else:
            self.services.store.release_attempt(_lock_key(self.username))


def record_failed_attempt(services: Services, *, attempt: Attempt, failure: Failure) -> None:
    """Count a failed attempt toward the lockout and audit it, in transactions of its own.

    A separate unit of work on purpose: the request that failed rolls back everything it did,
    but the failure must be counted and recorded all the same (else guessing would be free).
    """
    settings = services.settings
    locked = services.store.record_failure(
        _lock_key(attempt.username), threshold=settings.lockout_threshold,
        lock_seconds=settings.lockout_seconds, now=epoch(attempt.now))
    actor = attempt.username[:MAX_ACTOR_LENGTH]
    with services.session_factory() as session:
        if failure.password_checked:
            _record_password_checked(session, attempt=attempt, user_id=failure.user_id,
                                     username=failure.username,
                                     totp_confirmed=failure.totp_confirmed)
        audit.record(session, action=AuditAction.LOGIN_FAILED, actor=actor,
                     target=failure.user_id, origin=attempt.origin, now=attempt.now,
                     details={"reason": str(failure.reason), "purpose": attempt.purpose})
        if locked:
            audit.record(session, action=AuditAction.LOGIN_LOCKED, actor=actor,
                         target=failure.user_id, origin=attempt.origin, now=attempt.now,
                         details={"seconds": settings.lockout_seconds, "purpose": attempt.purpose})
        session.commit()


@contextmanager
def reserved_attempt(session: Session, services: Services, *, username: str, purpose: str,
                     origin: audit.Origin, now: datetime) -> Iterator[Attempt]:
    """Reserve a place in the username's lockout count before any secret is checked.

    Reading "not locked" and counting the failure later let parallel guesses all pass the
    check first: the place is taken atomically up front, so at most LOCKOUT_THRESHOLD
    passwords or codes are checked in a row, however many requests run at once.

    The public sign-in operations run their whole transaction inside this block, and it is
    where that transaction ends when the operation fails: rolled back before the attempt is
    settled, because settling takes transactions of its own that may need a lock this one
    still holds (SQLite).
    """
    settings = services.settings
    state = services.store.reserve_attempt(
        _lock_key(username), threshold=settings.lockout_threshold,
        lock_seconds=settings.lockout_seconds, now=epoch(now))
    if state.locked:
        audit.record(session, action=AuditAction.LOGIN_REFUSED_LOCKED,
                     actor=username[:MAX_ACTOR_LENGTH], target=None, origin=origin, now=now,
                     details={"purpose": purpose})
        session.commit()
        raise Throttled("Too many failed attempts; this account is locked for a while.",
                        code="locked", retry_after=state.retry_after)
    current = Attempt(services, username=username, purpose=purpose, origin=origin, now=now)
    try:
        yield current
    except BaseException:
        session.rollback()
        raise
    finally:
        current.settle()


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


def _record_password_checked(session: Session, *, attempt: Attempt, user_id: str | None,
                             username: str | None, totp_confirmed: bool) -> None:
    audit.record(session, action=AuditAction.TOTP_PASSWORD_CHECKED, actor=username,
                 target=user_id, origin=attempt.origin, now=attempt.now,
                 details={"purpose": attempt.purpose, "totp_confirmed": totp_confirmed})


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
    _record_password_checked(session, attempt=attempt, user_id=user.id, username=user.username,
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
