"""The portal: server-rendered pages for people, a second face on the same domain operations.

It differs from the API only in how it authenticates (a server-side session instead of a bearer
token) and how it answers (HTML instead of JSON); every rule is the domain's.
"""
from __future__ import annotations

import hashlib
import hmac

from flask import Flask
from flask_babel import Babel
from flask_wtf.csrf import CSRFProtect

from security_api.accounts.portal_sessions import make_portal_sessions

from .blueprint import bp
from .i18n import select_locale
from .session_interface import ServerSessionInterface

csrf = CSRFProtect()
babel = Babel()


def init_app(app: Flask) -> None:
    """Attach the portal: sessions, CSRF protection, translations, its pages."""
    services = app.extensions["security_api"]
    settings = services.settings
    # Signs the CSRF tokens; derived, so no new secret to manage, and never the data key itself.
    app.secret_key = hmac.new(settings.data_encryption_keys[0].encode("utf-8"),
                              b"security-api portal csrf", hashlib.sha256).hexdigest()
    app.config.update(WTF_CSRF_CHECK_DEFAULT=False, WTF_CSRF_TIME_LIMIT=None,
                      WTF_CSRF_SSL_STRICT=False)
    app.session_interface = ServerSessionInterface(
        make_portal_sessions(session_factory=services.session_factory,
                             redis_url=settings.redis_url, redis_prefix=settings.redis_prefix),
        secure=True)
    csrf.init_app(app)
    babel.init_app(app, locale_selector=select_locale)
    from . import (  # noqa: F401  (pages: each module adds its views to the blueprint)
        admin_views,
        approval_views,
        auth_views,
        break_glass_views,
        catalog_views,
        drift_views,
        extend_views,
        home_views,
        password_views,
        request_actions,
        request_views,
    )
    app.register_blueprint(bp)


def error_page(status: int):
    """Answer a portal path that matches no page (or not with this method) in HTML."""
    from flask import g
    from flask_babel import gettext as _

    from .blueprint import PORTAL_CSP, render
    g.csp = PORTAL_CSP
    return render("portal/error.html", status=status, title=_("Page not found"),
                  message=_("There is no such page. Use the menu to find your way."))
