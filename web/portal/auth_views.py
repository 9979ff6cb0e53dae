"""Sign-in, enrollment on the spot, recovery codes, sign-out and the language switch."""
from __future__ import annotations

import re
from datetime import timedelta
from functools import partial

from flask import Response, flash, g, redirect, request, session, url_for
from flask_babel import gettext as _

from flask_api_functions import db, origin, services
from security_api import metrics
from security_api.accounts import portal_signin, signin, signin_attempts, totp, users
from security_api.accounts.users import find_user
from security_api.clock import epoch, utcnow
from security_api.errors import Forbidden, Throttled, Unauthenticated
from security_api.models import User
from web.api.auth import _qr_data_uri, login_outcome

from .blueprint import bp, render, safe_next, signed_in
from .forms import field
from .i18n import LANG_COOKIE, LANGUAGES

TOTP_FORMAT = re.compile(r"[0-9]{6}")
# Between a right password and a confirmed code, at most this long.
ENROLL_WINDOW = timedelta(minutes=10)
# Sign-in fields are short: read less of them than of the other forms.
sign_in_field = partial(field, limit=1024)


def _sign_in_page(*, status: int = 200, error: str | None = None) -> Response:
    return render("portal/sign_in.html", status=status, error=error,
                  username=sign_in_field("username"), next=request.values.get("next", ""))


@bp.get("/sign-in")
def sign_in() -> Response:
    """Show the sign-in form (or go straight in when already signed in)."""
    if signed_in():
        return redirect(safe_next(request.args.get("next")))
    return _sign_in_page()


@bp.post("/sign-in")
def sign_in_submit() -> Response:
    """Check username, password and code exactly as POST /v1/login does."""
    username, password = sign_in_field("username"), sign_in_field("password")
    code = sign_in_field("code").strip()
    totp_code = code if TOTP_FORMAT.fullmatch(code) else None
    recovery_code = code if code and totp_code is None else None
    try:
        signin_attempts.throttle_address(services(), ip=origin().ip, scope="auth", now=utcnow())
        user, issued = signin.sign_in(db(), services(), username=username, password=password,
                                      totp_code=totp_code, recovery_code=recovery_code,
                                      origin=origin(), now=utcnow())
    except Forbidden as exc:
        metrics.count_login(login_outcome(exc))
        return _start_enrollment(username) if exc.code == "totp_enrollment_required" else \
            _sign_in_page(status=403, error=exc.message)
    except Throttled as exc:
        metrics.count_login(login_outcome(exc))
        minutes = max(1, -(-exc.retry_after // 60))
        message = (_("Too many failed attempts: this account is locked for %(minutes)s minutes.",
                     minutes=minutes) if exc.code == "locked" else
                   _("Too many attempts from your address; wait %(minutes)s minutes.",
                     minutes=minutes))
        response = _sign_in_page(status=429, error=message)
        response.headers["Retry-After"] = str(exc.retry_after)
        return response
    except Unauthenticated as exc:
        metrics.count_login(login_outcome(exc))
        # The contract's one failure message, in the page's language.
        return _sign_in_page(status=401, error=_(
            "(d'oh!) Wrong user, password, totp value or maybe user is not active."))
    metrics.count_login("success")
    _open(user.id, issued.claims["sid"])
    return redirect(safe_next(request.form.get("next")))


def _open(user_id: str, family_id: str) -> None:
    """Bind this browser to a sign-in, under a new session id (no session fixation)."""
    session.clear()
    session.regenerate()
    session["user_id"], session["family_id"] = user_id, family_id


def _start_enrollment(username: str) -> Response:
    """The password was right and 2FA is not on yet: enroll now, within a short window."""
    user = find_user(db(), username)
    portal_signin.note_password_for_enrollment(db(), user=user, origin=origin(), now=utcnow())
    session.clear()
    session.regenerate()
    session["enroll_user_id"], session["enroll_since"] = user.id, epoch(utcnow())
    session["enroll_secret_issued"] = False
    return redirect(url_for("portal.enroll"))


def _enrolling_user() -> User | None:
    user_id, since = session.get("enroll_user_id"), session.get("enroll_since", 0)
    if not user_id or epoch(utcnow()) - since > ENROLL_WINDOW.total_seconds():
        return None
    user = db().get(User, user_id)
    return user if user is not None and user.active and not user.totp_confirmed else None


def _enrollment_expired() -> Response:
    session.pop("enroll_user_id", None)
    flash(_("Sign in again to set up two-factor authentication."), "error")
    return redirect(url_for("portal.sign_in"))


@bp.get("/enroll")
def enroll() -> Response:
    """Show a new TOTP secret as a QR code and as text, with the form to confirm it."""
    user = _enrolling_user()
    if user is None:
        return _enrollment_expired()
    issuer = services().settings.totp_issuer
    if session.get("enroll_secret_issued") and user.totp_secret:
        # A reload shows the secret already scanned, not a new one that would undo the scan.
        secret = services().secret_box.decrypt(user.totp_secret)
        uri = totp.provisioning_uri(secret, account=user.username, issuer=issuer)
    else:
        secret, uri = users.start_totp_enrollment(
            db(), user=user, issuer=issuer, secret_box=services().secret_box, origin=origin(),
            now=utcnow())
        session["enroll_secret_issued"] = True
    return render("portal/enroll.html", secret=secret, qr_png=_qr_data_uri(uri))


@bp.post("/enroll")
def enroll_submit() -> Response:
    """Confirm the new secret with a current code; sign in and show the recovery codes once."""
    user = _enrolling_user()
    if user is None:
        return _enrollment_expired()
    try:
        codes, family_id = portal_signin.enroll_and_sign_in(
            db(), services(), user=user, code=sign_in_field("totp").strip(), origin=origin(),
            now=utcnow())
    except Unauthenticated:
        flash(_("That code did not work. Scan the new QR code and try the current code."),
              "error")
        return redirect(url_for("portal.enroll"))
    _open(user.id, family_id)
    session["recovery_codes"] = codes
    return redirect(url_for("portal.recovery_codes"))


@bp.get("/recovery-codes")
def recovery_codes() -> Response:
    """Show the recovery codes of a just-finished enrollment; they are kept nowhere else."""
    if not signed_in():
        return redirect(url_for("portal.sign_in"))
    return render("portal/recovery_codes.html", codes=session.get("recovery_codes"))


@bp.get("/recovery-codes.txt")
def recovery_codes_download() -> Response:
    """Download the same codes as a text file while the page still holds them."""
    codes = session.get("recovery_codes") if signed_in() else None
    if not codes:
        return redirect(url_for("portal.recovery_codes"))
    body = "\n".join([_("Security API recovery codes for %(user)s; each works once.",
                        user=g.principal.account.username), "", *codes, ""])
    return Response(body, mimetype="text/plain", headers={
        "Content-Disposition": 'attachment; filename="security-api-recovery-codes.txt"'})


@bp.post("/recovery-codes/done")
def recovery_codes_done() -> Response:
    """Forget the recovery codes: from now on nobody can show them again."""
    session.pop("recovery_codes", None)
    return redirect(url_for("portal.my_access"))


@bp.post("/sign-out")
def sign_out() -> Response:
    """End the sign-in everywhere (its family), then this browser's session."""
    if signed_in():
        portal_signin.sign_out(db(), account=g.principal.account,
                               family_id=session["family_id"], origin=origin(), now=utcnow())
    session.end()
    flash(_("You are signed out."), "info")
    return redirect(url_for("portal.sign_in"))


@bp.get("/lang/<code>")
def switch_language(code: str) -> Response:
    """Remember the chosen language and go back to the page."""
    response = redirect(safe_next(request.args.get("next")))
    if code in LANGUAGES:
        response.set_cookie(LANG_COOKIE, code, max_age=365 * 24 * 3600, secure=True,
                            httponly=True, samesite="Lax", path="/")
    return response
