"""Helpers for the portal's HTTP-level tests: a browser-like client that signs in through the form."""
from __future__ import annotations

import re

from flask.testing import FlaskClient

# The session cookie is Secure (__Host- prefix), so the test client speaks HTTPS like a browser.
BASE_URL = "https://localhost"
CSRF_FIELD = re.compile(r'name="csrf_token" value="([^"]+)"')


class HttpsClient(FlaskClient):
    """A test client whose requests go to https://localhost, so Secure cookies travel."""

    def open(self, *args, **kwargs):
        if not args or isinstance(args[0], str):
            kwargs.setdefault("base_url", BASE_URL)
        return super().open(*args, **kwargs)


def portal_client(app) -> FlaskClient:
    """Return a test client that sends the portal's cookies (HTTPS, as a browser must)."""
    app.test_client_class = HttpsClient
    try:
        return app.test_client()
    finally:
        app.test_client_class = None


def csrf_token(client: FlaskClient, path: str = "/portal/sign-in") -> str:
    """Load a page and return the CSRF token of its first form."""
    page = client.get(path)
    match = CSRF_FIELD.search(page.get_data(as_text=True))
    assert match, f"no CSRF token on {path} ({page.status_code})"
    return match.group(1)


def post_form(client: FlaskClient, path: str, data: dict | None = None, *, token_from: str | None = None):
    """Post a form the way a browser would: with the CSRF token of the page it came from."""
    fields = dict(data or {})
    fields.setdefault("csrf_token", csrf_token(client, token_from or path))
    return client.post(path, data=fields)


def sign_in(client: FlaskClient, user, *, code: str | None = None):
    """Sign in through the portal's form with a real TOTP code; return the response."""
    code = user.next_code() if code is None and user.totp_secret else (code or "")
    return post_form(client, "/portal/sign-in",
                     {"username": user.username, "password": user.password, "code": code})


def signed_in_client(app, user) -> FlaskClient:
    """Return a portal client already signed in as the user."""
    client = portal_client(app)
    response = sign_in(client, user)
    assert response.status_code == 302, response.get_data(as_text=True)[:500]
    return client
