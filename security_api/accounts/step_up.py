"""Step-up: a fresh code from the caller's authenticator app before a risky action.

Final interface (stable; request creation, approve, deny, extend and break-glass call it):

    require_step_up(session, services, *, user_id, code, origin, now) -> None
    require_step_up_for(session, services, *, permission_key, user_id, code, origin,
                        now) -> None   # the same, only when the permission has step_up

`services` (not bare settings) because checking a code needs the secret box (the TOTP secret
is stored encrypted) and the state store (the lockout count) besides the settings; `origin`
and `now` because refusals are audited and codes are checked against the domain's clock.

A step-up code is a login code in every way that matters to an attacker: six ASCII digits,
accepted once per user (the same replay mark, users.last_totp_step, so a code used for a login
cannot step up and the other way round), and every wrong or replayed one counts toward the
username's lockout like a failed login (the same reserved attempt), so a stolen access token
is not a free code-guessing oracle.

Call it BEFORE the operation writes anything. On success the replay mark is committed at once
(the code is spent once checked, even if the operation then fails for another reason); on a
refusal the session is rolled back and the refusal is counted and audited (`step_up.refused`)
in transactions of their own, so nothing of the refused operation is written.
"""
from __future__ import annotations

from datetime import datetime
from typing import NoReturn

from sqlalchemy.orm import Session

from security_api import audit, metrics
from security_api.accounts import totp
from security_api.accounts.signin import check_totp
from security_api.accounts.signin_attempts import MAX_ACTOR_LENGTH, reserved_attempt
from security_api.enums import AuditAction, FailureReason, UserKind
from security_api.errors import InvalidStepUp, StepUpRequired, Throttled, Unauthenticated
from security_api.models import Permission, User
from security_api.services import Services

PURPOSE = "step_up"
# Why a step-up was refused: recorded in the audit log and the metric's label.
MISSING, MALFORMED, WRONG, REPLAYED = "missing", "malformed", "wrong_code", "replayed"
SERVICE_ACCOUNT, NOT_ENROLLED, LOCKED = "service_account", "not_enrolled", "locked"


def require_step_up_for(session: Session, services: Services, *, permission_key: str,
                        user_id: str, code: object, origin: audit.Origin,
                        now: datetime) -> None:
    """Require a step-up code when the permission asks for one; do nothing otherwise."""
    permission = session.get(Permission, permission_key)
    if permission is not None and permission.step_up:
        require_step_up(session, services, user_id=user_id, code=code, origin=origin, now=now)


def require_step_up(session: Session, services: Services, *, user_id: str, code: object,
                    origin: audit.Origin, now: datetime) -> None:
    """Accept one fresh TOTP code of the user, or raise.

    StepUpRequired (401 `step_up_required`) when no code was sent; InvalidStepUp (401
    `invalid_step_up`) when it is malformed, wrong or replayed, or when the user cannot step
    up at all (a service account, or 2FA not confirmed); Throttled (429 `locked`) while the
    username is locked out.
    """
    user = session.get(User, user_id)
    username = user.username if user else user_id
    if user is None or user.kind != UserKind.PERSON:
        _refuse(session, user_id, username, SERVICE_ACCOUNT, origin, now, InvalidStepUp(
            "Service accounts cannot step up: a person must do this."))
    if code is None:
        _refuse(session, user_id, username, MISSING, origin, now, StepUpRequired())
    if not user.totp_confirmed:
        _refuse(session, user_id, username, NOT_ENROLLED, origin, now, InvalidStepUp(
            "Step-up needs two-factor authentication enrolled first."))
    reason = _spend_code(session, services, user=user, code=code, origin=origin, now=now)
    if reason is not None:
        _refuse(session, user_id, username, reason, origin, now, InvalidStepUp())


def _spend_code(session: Session, services: Services, *, user: User, code: object,
                origin: audit.Origin, now: datetime) -> str | None:
    """Check the code inside a reserved lockout attempt; return why it failed, or None.

    The replay mark is committed before the attempt is settled: settling writes through the
    state store, which on SQLite would wait for the lock this session's update holds.
    """
    try:
        with reserved_attempt(session, services, username=user.username, purpose=PURPOSE,
                              origin=origin, now=now) as current:
            try:
                check_totp(session, services, attempt=current, user=user, code=code)
            except Unauthenticated:
                failure = current.failure
                raise _Failed(REPLAYED if failure and failure.reason == FailureReason.TOTP_REPLAYED
                              else WRONG if totp.is_well_formed(code) else MALFORMED) from None
            session.commit()
            current.succeed()
    except _Failed as failed:
        return failed.reason
    except Throttled:
        metrics.count_step_up_refusal(LOCKED)
        raise
    return None


class _Failed(Exception):
    """Carries the refusal reason out of the reserved attempt (which counts it on the way)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def _refuse(session: Session, user_id: str, username: str, reason: str, origin: audit.Origin,
            now: datetime, error: Unauthenticated) -> NoReturn:
    """Audit and count the refusal, then raise: the caller's transaction wrote nothing."""
    session.rollback()
    audit.record(session, action=AuditAction.STEP_UP_REFUSED,
                 actor=(username or "")[:MAX_ACTOR_LENGTH], target=user_id, origin=origin,
                 now=now, details={"reason": reason, "purpose": PURPOSE})
    session.commit()
    metrics.count_step_up_refusal(reason)
    raise error
