"""What the portal's sign-in adds to the API's: a session from a sign-in family, enrollment on
the spot, sign-out. The checks themselves are signin.py's, the same code path as POST /v1/login."""
from __future__ import annotations

from datetime import datetime

from sqlalchemy.orm import Session

from security_api import audit
from security_api.accounts.sessions import Account, account_from_row, revoke_family, start_session
from security_api.accounts.signin import check_totp
from security_api.accounts.signin_attempts import reserved_attempt
from security_api.accounts.users import confirm_totp, ensure_enrollment_started
from security_api.enums import AuditAction
from security_api.errors import Unauthenticated
from security_api.models import User
from security_api.services import Services


def signed_in_account(services: Services, *, user_id: str, family_id: str) -> Account:
    """Return the account of a live portal sign-in; raise when any revocation ended it.

    The same one query as an API token check: the sign-in's refresh family must be unrevoked
    (sign-out, password change, role change, deactivation and resets revoke it) and the user
    active.
    """
    row = services.principals.row(user_id, family_id)
    if row is None or row["family_id"] is None or row["family_revoked_at"] is not None \
            or not row["active"]:
        raise Unauthenticated("Your session has ended; sign in again.", code="session_ended")
    return account_from_row(row)


def note_password_for_enrollment(session: Session, *, user: User, origin: audit.Origin,
                                 now: datetime) -> None:
    """Record that a password was right while 2FA is not on yet (API.md, "Audit, part 2")."""
    audit.record(session, action=AuditAction.TOTP_PASSWORD_CHECKED, actor=user.username,
                 target=user.id, origin=origin, now=now,
                 details={"purpose": "portal_enroll", "totp_confirmed": user.totp_confirmed})
    session.commit()


def enroll_and_sign_in(session: Session, services: Services, *, user: User, code: str,
                       origin: audit.Origin, now: datetime) -> tuple[list[str], str]:
    """Confirm 2FA with a current code, then open a sign-in; return (recovery codes, family id).

    The person proved the password moments before (the sign-in form) and now a fresh code of
    the new secret, which is what POST /v1/login asks for. The code is checked as a login
    code: a reserved place in the lockout count, replay-guarded.
    """
    with reserved_attempt(session, services, username=user.username, purpose="totp_confirm",
                          origin=origin, now=now) as current:
        ensure_enrollment_started(user)
        check_totp(session, services, attempt=current, user=user, code=code)
        codes = confirm_totp(session, user=user, origin=origin, now=now)
        issued = start_session(session, services, user=user, now=now)
        family_id = issued.claims["sid"]
        audit.record(session, action=AuditAction.LOGIN_SUCCEEDED, actor=user.username,
                     target=user.id, origin=origin, now=now,
                     details={"family": family_id, "kind": user.kind,
                              "via": "portal_enrollment"})
        session.commit()
        current.succeed()
    return codes, family_id


def sign_out(session: Session, *, account: Account, family_id: str, origin: audit.Origin,
             now: datetime) -> None:
    """End a portal sign-in: its family is revoked, so every tab and token of it dies at once."""
    revoke_family(session, user_id=account.id, family_id=family_id, reason="logout", now=now)
    audit.record(session, action=AuditAction.LOGOUT, actor=account.username, target=account.id,
                 origin=origin, now=now, details={"family": family_id, "via": "portal"})
    session.commit()
