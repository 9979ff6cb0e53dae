"""Changing one's password, exactly as POST /v1/password does, then signing in again."""
from __future__ import annotations

from flask import Response, flash, g, redirect, session, url_for
from flask_babel import gettext as _

from flask_api_functions import db, origin, services
from security_api.accounts import signin, signin_attempts
from security_api.clock import utcnow
from security_api.errors import ApiError, Forbidden, InvalidParams, Throttled
from security_api.models import User
from web.api import schemas

from .blueprint import bp, login_required, render
from .forms import field, flash_error, validated


def _password_page(*, status: int = 200) -> Response:
    return render("portal/password.html", status=status)


@bp.get("/password")
@login_required
def password() -> Response:
    """Show the form to change one's password."""
    return _password_page()


def _change_password() -> None:
    """Check the form and change the password; raise the domain's error on any refusal."""
    signin_attempts.throttle_address(services(), ip=origin().ip, scope="auth", now=utcnow())
    body = validated(schemas.PasswordBody, {"current_password": field("current_password"),
                                            "new_password": field("new_password")})
    if field("confirm_password") != body.new_password:
        raise InvalidParams.one("confirm_password", "does not match the new password")
    user = db().get(User, g.principal.account.id)
    signin.change_password(db(), services(), user=user, current_password=body.current_password,
                           new_password=body.new_password, origin=origin(), now=utcnow())


def _throttled_page(exc: Throttled) -> Response:
    """Say how long to wait, in minutes, and tell clients when to come back (Retry-After)."""
    minutes = max(1, -(-exc.retry_after // 60))
    flash(_("Too many failed attempts: this account is locked for %(minutes)s minutes.",
            minutes=minutes) if exc.code == "locked" else
          _("Too many attempts from your address; wait %(minutes)s minutes.",
            minutes=minutes), "error")
    response = _password_page(status=429)
    response.headers["Retry-After"] = str(exc.retry_after)
    return response


@bp.post("/password")
@login_required
def password_submit() -> Response:
    """Change the password exactly as POST /v1/password does; then sign in again."""
    try:
        _change_password()
    except Throttled as exc:
        return _throttled_page(exc)
    except Forbidden as exc:
        flash(_("The current password is wrong.") if exc.code == "wrong_password"
              else exc.message, "error")
        return _password_page(status=exc.status)
    except ApiError as exc:
        if exc.errors and exc.errors[0].get("field") == "confirm_password":
            flash(_("The new password and its confirmation differ. Nothing was changed."),
                  "error")
        else:
            flash_error(exc)
        return _password_page(status=exc.status)
    # Every sign-in of this user was revoked, this one too: end this browser's session now.
    session.end()
    flash(_("Password changed. Sign in again."), "info")
    return redirect(url_for("portal.sign_in"))
