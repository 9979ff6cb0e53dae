"""The portal's blueprint: who is signed in, page rendering, guards, and HTML error pages."""
from __future__ import annotations

from functools import wraps
from urllib.parse import urlsplit

from flask import Blueprint, Response, current_app, g, redirect, render_template, request, session, url_for
from flask_babel import get_locale
from flask_babel import gettext as _
from flask_wtf.csrf import CSRFError

from flask_api_functions import current_actor, services
from security_api.accounts.portal_signin import signed_in_account
from security_api.accounts.sessions import Principal
from security_api.errors import ApiError, ServiceUnavailable, Unauthenticated

from .formatting import error_text
from .i18n import LANGUAGES

bp = Blueprint("portal", __name__, url_prefix="/portal", static_folder="../../static/portal",
               static_url_path="/static")
# No inline script or style anywhere; the QR code is a data: image.
PORTAL_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
              "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")


@bp.before_request
def _load_signed_in() -> Response | None:
    """Set the page's CSP and, for a signed-in session, the principal the API's guards read."""
    g.csp = PORTAL_CSP
    if getattr(session, "store_down", False):
        raise ServiceUnavailable()  # sessions cannot be read: fail closed, as the API does
    if request.method not in ("GET", "HEAD", "OPTIONS"):
        # WTF_CSRF_CHECK_DEFAULT is off (the JSON API has no forms): every portal POST is
        # checked here, so a form without its csrf_token gets the 400 page and changes nothing.
        current_app.extensions["csrf"].protect()
    user_id, family_id = session.get("user_id"), session.get("family_id")
    if not user_id or not family_id:
        return None
    try:
        account = signed_in_account(services(), user_id=user_id, family_id=family_id)
    except Unauthenticated:
        session.end()
        return None
    # The API's helpers (current_subject, holds, current_actor) read g.principal: one rule set.
    g.principal = Principal(account, claims={})
    return None


def signed_in() -> bool:
    """Tell whether a live sign-in stands behind this page."""
    return "principal" in g


def render(template: str, *, status: int = 200, **context) -> Response:
    """Render a page as HTML with the layout's context."""
    html = render_template(template, **context)
    return Response(html, status=status, mimetype="text/html")


def safe_next(target: str | None) -> str:
    """Return a portal path to go to after signing in; never another site."""
    if target and target.startswith("/portal/") and not target.startswith("//"):
        parts = urlsplit(target)
        if not parts.scheme and not parts.netloc and "\\" not in target:
            return target
    return url_for("portal.my_access")


def login_required(view):
    """Guard a page: signed-in people only; others go to the sign-in page and come back."""
    @wraps(view)
    def guarded(*args, **kwargs):
        if not signed_in():
            return redirect(url_for("portal.sign_in", next=request.full_path.rstrip("?")))
        return view(*args, **kwargs)
    return guarded


def admin_required(view):
    """Guard a page: holders of security-api.admin only (403 page for others)."""
    @wraps(view)
    @login_required
    def guarded(*args, **kwargs):
        if not current_actor().is_admin:
            return render("portal/error.html", status=403, title=_("Not allowed"),
                          message=_("This page is for administrators."))
        return view(*args, **kwargs)
    return guarded


@bp.app_context_processor
def _layout_context() -> dict:
    """What every page's layout needs: who is signed in, their powers, the languages."""
    if not request.path.startswith("/portal"):
        return {}
    account = g.principal.account if "principal" in g else None
    actor = current_actor() if account else None
    return {"account": account, "page_lang": str(get_locale()),
            "is_admin": bool(actor and actor.is_admin),
            "is_auditor": bool(actor and (actor.is_admin or actor.is_auditor)),
            "languages": LANGUAGES, "current_path": request.full_path.rstrip("?")}


@bp.errorhandler(CSRFError)
def _csrf_error(exc: CSRFError) -> Response:
    return render("portal/error.html", status=400, title=_("The form expired"),
                  message=_("The form could not be verified (missing or wrong security token). "
                            "Nothing was changed; go back, reload the page and try again."))


@bp.errorhandler(ApiError)
def _api_error(exc: ApiError) -> Response:
    response = render("portal/error.html", status=exc.status, title=_("Something went wrong"),
                      message=error_text(exc.code, exc.message))
    if exc.status in (429, 503) and "Retry-After" in exc.headers:
        response.headers["Retry-After"] = exc.headers["Retry-After"]
    return response
