"""Sign-in attempts: address throttling, the reserved place in a username's lockout count, and
the bookkeeping of a failure. Apart from the checks themselves (signin.py) because every
operation that checks a secret (login, TOTP enrollment, password change, portal sign-in)
runs inside one reserved attempt, whatever it checks."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.orm import Session

from security_api import audit
from security_api.accounts.users import normalise_username
from security_api.clock import epoch
from security_api.enums import AuditAction, FailureReason
from security_api.errors import Throttled, Unauthenticated
from security_api.models import User
from security_api.services import Services

BASIC_CHALLENGE = {"WWW-Authenticate": 'Basic realm="security-api"'}
MAX_ACTOR_LENGTH = 64


def lock_key(username: str) -> str:
    """The store key counting one username's failures: the same for every spelling of it."""
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
        self.services.store.clear_failures(lock_key(self.username))

    def settle(self) -> None:
        """Count a failure, or give the place back when the attempt neither failed nor signed in."""
        if self.settled:
            return
        self.settled = True
        if self.failure is not None:
            record_failed_attempt(self.services, attempt=self, failure=self.failure)
        else:
            self.services.store.release_attempt(lock_key(self.username))


def record_failed_attempt(services: Services, *, attempt: Attempt, failure: Failure) -> None:
    """Count a failed attempt toward the lockout and audit it, in transactions of its own.

    A separate unit of work on purpose: the request that failed rolls back everything it did,
    but the failure must be counted and recorded all the same (else guessing would be free).
    """
    settings = services.settings
    locked = services.store.record_failure(
        lock_key(attempt.username), threshold=settings.lockout_threshold,
        lock_seconds=settings.lockout_seconds, now=epoch(attempt.now))
    actor = attempt.username[:MAX_ACTOR_LENGTH]
    with services.session_factory() as session:
        if failure.password_checked:
            record_password_checked(session, attempt=attempt, user_id=failure.user_id,
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
        lock_key(username), threshold=settings.lockout_threshold,
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


def record_password_checked(session: Session, *, attempt: Attempt, user_id: str | None,
                            username: str | None, totp_confirmed: bool) -> None:
    """Audit that a password was checked without a second factor (TOTP enroll and confirm)."""
    audit.record(session, action=AuditAction.TOTP_PASSWORD_CHECKED, actor=username,
                 target=user_id, origin=attempt.origin, now=attempt.now,
                 details={"purpose": attempt.purpose, "totp_confirmed": totp_confirmed})
