"""Sign-in endpoints: login, TOTP enrollment, refresh, logout, password, profile."""
from __future__ import annotations

import base64
import io

import qrcode
import qrcode.image.pure
from flask import Blueprint

from flask_api_functions import (
    basic_credentials,
    current_principal,
    db,
    origin,
    require_token,
    respond,
    services,
)
from security_api import metrics
from security_api.accounts import sessions, signin, signin_attempts
from security_api.clock import isoformat, utcnow
from security_api.errors import ApiError, Forbidden, Throttled, Unauthenticated
from security_api.models import User
from web.api import schemas
from web.api.inputs import read_json
from web.api.openapi import documented

bp = Blueprint("auth", __name__, url_prefix="/v1")
E = schemas.Error


def user_json(user: User | sessions.Account) -> dict:
    """Render a user as the contract describes it."""
    rendered = {"id": user.id, "username": user.username, "email": user.email,
                "role": user.role, "subrole": user.subrole, "kind": user.kind,
                "active": user.active, "totp_enabled": user.totp_confirmed,
                "created_at": isoformat(user.created_at)}
    if isinstance(user, User):  # the admin body; a token's Account does not read the link
        rendered["slack_user_id"] = user.slack_user_id
    return rendered


def _tokens(issued: sessions.IssuedTokens):
    return respond(None, token=issued.access_token, token_type="Bearer",  # noqa: S106
                    expires_in=issued.expires_in, refresh_token=issued.refresh_token,
                    refresh_expires_in=issued.refresh_expires_in)


def _throttle(scope: str) -> None:
    signin_attempts.throttle_address(services(), ip=origin().ip, scope=scope, now=utcnow())


@bp.post("/login")
@documented(summary="Sign in with Basic (username:password) and a TOTP or recovery code",
            tag="auth", auth="basic", body=schemas.LoginBody,
            responses={200: schemas.Tokens, 401: E, 403: E, 429: E},
            description="Every failure (unknown user, wrong password, wrong or replayed code, "
                        "inactive user, missing code) answers the same 401. 403 "
                        "`totp_enrollment_required` when the password is right but 2FA is not "
                        "enrolled. 429 `locked` after 5 failures in a row for 15 minutes; "
                        "429 `throttled` per client address. Service accounts send no code.")
def login():
    """Exchange credentials for an access token and a refresh token."""
    try:
        _throttle("auth")
        username, password = basic_credentials()
        body = read_json(schemas.LoginBody)
        _user, issued = signin.sign_in(db(), services(), username=username, password=password,
                                       totp_code=body.totp, recovery_code=body.recovery_code,
                                       origin=origin(), now=utcnow())
    except Exception as exc:
        metrics.count_login(login_outcome(exc))
        raise
    metrics.count_login("success")
    return _tokens(issued)


def login_outcome(exc: Exception) -> str:
    """Name a failed sign-in for the metrics: the 429 codes, the one 401, the 403, bad input."""
    if isinstance(exc, Throttled):
        return "locked" if exc.code == "locked" else "throttled"
    if isinstance(exc, Unauthenticated):
        return "failure"
    if isinstance(exc, Forbidden):
        return "enrollment_required"
    if isinstance(exc, ApiError) and exc.status < 500:
        return "invalid_request"
    return "error"


def _qr_data_uri(uri: str) -> str:
    buffer = io.BytesIO()
    qrcode.make(uri, image_factory=qrcode.image.pure.PyPNGImage, box_size=6).save(buffer)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


@bp.post("/totp/enroll")
@documented(summary="Start TOTP enrollment (Basic auth, password only)", tag="auth",
            auth="basic", body=schemas.EmptyBody,
            responses={200: schemas.Enrollment, 401: E, 409: E, 429: E},
            description="Returns a new secret each call until confirmed. Once 2FA is "
                        "confirmed the answer is the generic 401 `invalid_credentials`, right "
                        "password or not (counted toward the lockout), so the endpoint is no "
                        "password oracle without the second factor. 409 "
                        "`totp_not_applicable` for a service account.")
def totp_enroll():
    """Give the caller a TOTP secret, its otpauth URI and a QR code."""
    _throttle("auth")
    username, password = basic_credentials()
    read_json(schemas.EmptyBody)
    secret, uri = signin.enroll_totp(db(), services(), username=username, password=password,
                                     origin=origin(), now=utcnow())
    return respond("Scan the QR code, then confirm with POST /v1/totp/confirm.",
                    secret=secret, otpauth_uri=uri, qr_png=_qr_data_uri(uri))


@bp.post("/totp/confirm")
@documented(summary="Confirm TOTP enrollment with a current code", tag="auth", auth="basic",
            body=schemas.TotpConfirmBody,
            responses={200: schemas.RecoveryCodes, 401: E, 409: E, 429: E},
            description="Returns 10 single-use recovery codes, shown once. Once 2FA is "
                        "confirmed the answer is the generic 401 `invalid_credentials`, right "
                        "password or not (counted toward the lockout). 409 "
                        "`totp_enrollment_not_started` before an enroll.")
def totp_confirm():
    """Turn on 2FA and hand out the recovery codes."""
    _throttle("auth")
    username, password = basic_credentials()
    body = read_json(schemas.TotpConfirmBody)
    codes = signin.confirm_totp_enrollment(db(), services(), username=username,
                                           password=password, code=body.totp,
                                           origin=origin(), now=utcnow())
    return respond("Two-factor authentication is on. Keep these recovery codes safe; "
                    "each works once.", recovery_codes=codes)


@bp.post("/token/refresh")
@documented(summary="Rotate a refresh token into new tokens", tag="auth",
            body=schemas.RefreshBody, responses={200: schemas.Tokens, 401: E, 429: E},
            description="A refresh token works once. Presenting a used one revokes its whole "
                        "family (401 `refresh_token_reused`), access tokens included. 401 "
                        "`session_expired` once the sign-in is older than "
                        "REFRESH_FAMILY_MAX_SECONDS (default 7 days); no refresh token "
                        "outlives that. Every refusal is audited.")
def token_refresh():
    """Trade a refresh token for a new pair."""
    _throttle("auth")
    body = read_json(schemas.RefreshBody)
    issued = sessions.rotate(db(), services(), refresh_token=body.refresh_token,
                             origin=origin(), now=utcnow())
    return _tokens(issued)


@bp.post("/logout")
@documented(summary="Revoke this access token and its refresh family", tag="auth",
            body=schemas.EmptyBody, responses={200: schemas.Message})
@require_token
def logout():
    """End the caller's session."""
    read_json(schemas.EmptyBody)
    sessions.end_session(db(), services(), principal=current_principal(), origin=origin(),
                         now=utcnow())
    return respond("Logged out.")


@bp.post("/password")
@documented(summary="Change the caller's password", tag="auth", body=schemas.PasswordBody,
            responses={200: schemas.Message, 403: E, 429: E},
            description="403 `wrong_password` when the current password is wrong (counts "
                        "toward the lockout). Every token issued before is revoked.")
@require_token
def change_password():
    """Replace the password and revoke every older token."""
    _throttle("auth")
    body = read_json(schemas.PasswordBody)
    session = db()
    user = session.get(User, current_principal().account.id)
    signin.change_password(session, services(), user=user,
                           current_password=body.current_password,
                           new_password=body.new_password, origin=origin(), now=utcnow())
    return respond("Password changed. Every session was signed out; sign in again.")


@bp.get("/profile")
@documented(summary="The caller's token claims and user", tag="auth",
            responses={200: schemas.Profile})
@require_token
def profile():
    """Show who the token belongs to."""
    principal = current_principal()
    return respond(None, jwt_data=principal.claims, user=user_json(principal.account))
