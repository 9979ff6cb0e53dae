"""The portal's sign-in, enrollment, sessions and page protections, through HTTP."""
from __future__ import annotations

from datetime import timedelta
from urllib.parse import quote

import pytest
from sqlalchemy import update

from security_api.accounts.portal_sessions import id_hash
from security_api.clock import utcnow
from security_api.models import PortalSession

from .conftest import basic, bearer
from .portal_support import csrf_token, portal_client, post_form, sign_in, signed_in_client

ONE_ANSWER = "(d&#39;oh!) Wrong user, password, totp value or maybe user is not active."


def _session_cookie(client):
    return client.get_cookie("__Host-session")


# ---- the way in --------------------------------------------------------------------------------
def test_a_browser_at_the_root_is_sent_to_the_portal_and_api_clients_still_get_json(client):
    browser = client.get("/", headers={"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"})
    assert browser.status_code == 302
    assert browser.headers["Location"] == "/portal/"
    api = client.get("/", headers={"Accept": "application/json"})
    assert api.status_code == 200 and api.json["name"] == "Security API"


def test_signed_out_pages_send_people_to_sign_in_and_back(app):
    client = portal_client(app)
    response = client.get("/portal/")
    assert response.status_code == 302
    assert response.headers["Location"].startswith("/portal/sign-in?next=/portal/")


def test_sign_in_page_is_protected_like_every_page(app):
    response = portal_client(app).get("/portal/sign-in")
    assert response.status_code == 200
    assert response.mimetype == "text/html"
    csp = response.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert "style-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["X-Frame-Options"] == "DENY"
    page = response.get_data(as_text=True)
    assert 'name="csrf_token"' in page
    for field in ("username", "password", "code"):
        assert f'<label for="{field}">' in page and f'id="{field}"' in page
    assert "<script" not in page and "style=" not in page


def test_sign_in_opens_a_session_with_the_contracts_cookie(app, make_user):
    user = make_user()
    client = portal_client(app)
    client.get("/portal/sign-in")
    before = _session_cookie(client).value
    response = sign_in(client, user)
    assert response.status_code == 302 and response.headers["Location"] == "/portal/"
    cookie = _session_cookie(client)
    assert cookie.value != before  # a new id at sign-in: a planted cookie is worth nothing
    assert cookie.http_only and cookie.secure and cookie.same_site == "Lax" and cookie.path == "/"
    header = response.headers["Set-Cookie"]
    assert header.startswith("__Host-session=") and "Domain" not in header
    page = client.get("/portal/")
    assert page.status_code == 200
    assert user.username in page.get_data(as_text=True)


@pytest.mark.parametrize("case", ["wrong_password", "unknown_user", "wrong_code", "inactive"])
def test_every_failure_gets_the_one_answer(app, make_user, case):
    user = make_user(active=case != "inactive")
    client = portal_client(app)
    fields = {"username": user.username, "password": user.password, "code": user.next_code()}
    if case == "wrong_password":
        fields["password"] = "not-the-password-at-all"
    elif case == "unknown_user":
        fields["username"] = "nobody-here"
    elif case == "wrong_code":
        fields["code"] = "000000" if fields["code"] != "000000" else "111111"
    response = post_form(client, "/portal/sign-in", fields)
    assert response.status_code == 401
    assert ONE_ANSWER in response.get_data(as_text=True)
    assert client.get("/portal/").status_code == 302


def test_a_code_works_once(app, make_user):
    user = make_user()
    code = user.next_code()
    assert sign_in(portal_client(app), user, code=code).status_code == 302
    replay = sign_in(portal_client(app), user, code=code)
    assert replay.status_code == 401


def test_wrong_codes_lock_the_account_as_on_the_api(app, make_user, client):
    user = make_user()
    browser = portal_client(app)
    for _ in range(5):
        post_form(browser, "/portal/sign-in", {"username": user.username,
                                               "password": user.password, "code": "000001"})
    locked = sign_in(browser, user)
    assert locked.status_code == 429
    assert "locked" in locked.get_data(as_text=True)
    assert int(locked.headers["Retry-After"]) > 0
    # The same lockout as the API's: one store, one rule.
    api = client.post("/v1/login", headers=basic(user.username, user.password),
                      json={"totp": user.next_code()})
    assert api.status_code == 429 and api.json["error"] == "locked"


def test_a_recovery_code_signs_in_once(app, make_user, client):
    user = make_user(totp=False)
    # Enroll through the API, then use one of its recovery codes in the portal.
    secret = client.post("/v1/totp/enroll", headers=basic(user.username, user.password)).json["secret"]
    user.totp_secret = secret
    codes = client.post("/v1/totp/confirm", headers=basic(user.username, user.password),
                        json={"totp": user.next_code()}).json["recovery_codes"]
    assert sign_in(portal_client(app), user, code=codes[0]).status_code == 302
    assert sign_in(portal_client(app), user, code=codes[0]).status_code == 401


def test_next_never_leads_off_the_portal(app, make_user):
    for number, target in enumerate(("//evil.example/x", "https://evil.example/", "/v1/profile",
                                     "/portal/\\evil")):
        user = make_user(f"next{number}")  # a user each: no wait for a fresh TOTP step
        client = portal_client(app)
        response = post_form(client, "/portal/sign-in", {
            "username": user.username, "password": user.password, "code": user.next_code(),
            "next": target}, token_from="/portal/sign-in")
        assert response.headers["Location"] == "/portal/", target


# ---- enrollment on the spot ----------------------------------------------------------------
def test_first_sign_in_enrolls_and_shows_recovery_codes_once(app, make_user):
    user = make_user(totp=False)
    client = portal_client(app)
    response = post_form(client, "/portal/sign-in",
                         {"username": user.username, "password": user.password, "code": ""})
    assert response.status_code == 302 and response.headers["Location"] == "/portal/enroll"
    page = client.get("/portal/enroll").get_data(as_text=True)
    assert 'src="data:image/png;base64,' in page and 'alt="QR code for your authenticator app"' in page
    secret = page.split('<code id="totp-secret">')[1].split("<")[0]
    user.totp_secret = secret
    confirmed = post_form(client, "/portal/enroll", {"totp": user.next_code()})
    assert confirmed.status_code == 302 and confirmed.headers["Location"] == "/portal/recovery-codes"
    codes_page = client.get("/portal/recovery-codes").get_data(as_text=True)
    assert codes_page.count("<li><code>") == 10
    download = client.get("/portal/recovery-codes.txt")
    assert download.status_code == 200 and download.mimetype == "text/plain"
    assert "attachment" in download.headers["Content-Disposition"]
    post_form(client, "/portal/recovery-codes/done", token_from="/portal/recovery-codes")
    assert "<li><code>" not in client.get("/portal/recovery-codes").get_data(as_text=True)
    assert client.get("/portal/recovery-codes.txt").status_code == 302
    assert client.get("/portal/").status_code == 200  # signed in after enrolling


def test_enrollment_needs_the_password_first(app, make_user):
    make_user(totp=False)
    response = portal_client(app).get("/portal/enroll")
    assert response.status_code == 302 and response.headers["Location"] == "/portal/sign-in"


def test_a_wrong_enrollment_code_turns_nothing_on(app, make_user, db_session):
    user = make_user(totp=False)
    client = portal_client(app)
    post_form(client, "/portal/sign-in", {"username": user.username, "password": user.password})
    client.get("/portal/enroll")
    response = post_form(client, "/portal/enroll", {"totp": "12345x"}, token_from="/portal/enroll")
    assert response.status_code == 302 and response.headers["Location"] == "/portal/enroll"
    from security_api.models import User
    assert db_session.get(User, user.id).totp_confirmed is False


# ---- the session ends with every revocation ------------------------------------------------
def test_sign_out_ends_the_session_in_every_tab(app, make_user):
    user = make_user()
    tab_one = signed_in_client(app, user)
    tab_two = portal_client(app)
    tab_two.set_cookie("__Host-session", _session_cookie(tab_one).value, domain="localhost",
                       secure=True, path="/")
    assert tab_two.get("/portal/").status_code == 200
    out = post_form(tab_one, "/portal/sign-out", token_from="/portal/")
    assert out.status_code == 302 and out.headers["Location"] == "/portal/sign-in"
    assert tab_two.get("/portal/").status_code == 302
    assert tab_one.get("/portal/").status_code == 302


def test_a_password_change_on_the_api_ends_portal_sessions(app, make_user, client, login_as):
    user = make_user()
    browser = signed_in_client(app, user)
    token = login_as(user)["token"]
    changed = client.post("/v1/password", headers=bearer(token), json={
        "current_password": user.password, "new_password": "a-brand-new-long-passphrase-9"})
    assert changed.status_code == 200
    assert browser.get("/portal/").status_code == 302


def test_deactivation_ends_portal_sessions(app, make_user, client, login_as):
    admin = make_user("root", role="security", subrole="admin")
    user = make_user()
    browser = signed_in_client(app, user)
    token = login_as(admin)["token"]
    patched = client.patch(f"/v1/admin/users/{user.id}", headers=bearer(token),
                           json={"active": False})
    assert patched.status_code == 200
    assert browser.get("/portal/").status_code == 302


@pytest.mark.parametrize("clock", ["idle", "absolute"])
def test_sessions_expire_when_idle_and_after_eight_hours(app, make_user, clock):
    user = make_user()
    browser = signed_in_client(app, user)
    key = id_hash(_session_cookie(browser).value)
    now = utcnow()
    services = app.extensions["security_api"]
    if services.settings.redis_url:
        pytest.skip("Redis expires the key itself; the idle clock is checked on the row here")
    values = ({"last_seen_at": now - timedelta(minutes=31)} if clock == "idle" else
              {"created_at": now - timedelta(hours=8, minutes=1)})
    with services.session_factory() as session:
        session.execute(update(PortalSession).where(PortalSession.id_hash == key).values(**values))
        session.commit()
    assert browser.get("/portal/").status_code == 302


def test_a_form_without_its_csrf_token_changes_nothing(app, make_user):
    user = make_user()
    browser = signed_in_client(app, user)
    response = browser.post("/portal/sign-out", data={})
    assert response.status_code == 400
    assert "security token" in response.get_data(as_text=True)
    assert browser.get("/portal/").status_code == 200  # still signed in
    forged = browser.post("/portal/sign-out", data={"csrf_token": "forged"})
    assert forged.status_code == 400
    assert browser.get("/portal/").status_code == 200


def test_junk_session_cookies_are_ignored(app):
    client = portal_client(app)
    for junk in ("x" * 500, "a\x00b", "é", ""):
        client.set_cookie("__Host-session", junk, domain="localhost", secure=True, path="/")
        assert client.get("/portal/sign-in").status_code == 200


# ---- languages and errors --------------------------------------------------------------------
def test_pages_speak_spanish_when_asked(app):
    client = portal_client(app)
    page = client.get("/portal/sign-in", headers={"Accept-Language": "es-ES,es;q=0.9"})
    text = page.get_data(as_text=True)
    assert '<html lang="es">' in text and "Iniciar sesión" in text
    switched = client.get("/portal/lang/en?next=/portal/sign-in",
                          headers={"Accept-Language": "es"})
    assert switched.status_code == 302 and switched.headers["Location"] == "/portal/sign-in"
    english = client.get("/portal/sign-in", headers={"Accept-Language": "es"})
    assert '<html lang="en">' in english.get_data(as_text=True)


def test_unknown_portal_pages_answer_in_html(app):
    response = portal_client(app).get("/portal/no-such-page")
    assert response.status_code == 404 and response.mimetype == "text/html"


def test_dead_sessions_are_swept_when_new_ones_begin(app, db_session):
    if app.extensions["security_api"].settings.redis_url:
        pytest.skip("Redis expires session keys by itself")
    from sqlalchemy import func, select
    old = utcnow() - timedelta(hours=9)
    db_session.add(PortalSession(id_hash="0" * 64, data={}, created_at=old, last_seen_at=old,
                                 expires_at=old + timedelta(minutes=30)))
    db_session.commit()
    portal_client(app).get("/portal/sign-in")
    db_session.expire_all()
    assert db_session.scalar(select(func.count()).select_from(PortalSession)
                             .where(PortalSession.id_hash == "0" * 64)) == 0


@pytest.mark.parametrize("field", ["username", "password", "code"])
@pytest.mark.parametrize("junk", ["a\x00b", "x" * 5000, "ｘ１２３４５６", "%ED%B0%80"])
def test_sign_in_junk_in_any_field_is_the_one_answer_never_a_500(app, make_user, field, junk):
    user = make_user()
    fields = {"username": user.username, "password": user.password, "code": "123456", field: junk}
    client = portal_client(app)
    fields["csrf_token"] = csrf_token(client)
    # Sent as a browser would, percent-encoded; "%ED%B0%80" is a lone surrogate's UTF-8 form,
    # which no browser sends but a script can.
    body = "&".join(f"{name}={value if value.startswith('%') else quote(value)}"
                    for name, value in fields.items())
    response = client.post("/portal/sign-in", data=body.encode("ascii"),
                           content_type="application/x-www-form-urlencoded")
    assert response.status_code in (400, 401), response.status_code


def test_sessions_unreachable_is_a_503_page_not_a_500(make_app):
    # Nothing listens on port 1: the session store (Redis) is down, the portal fails closed.
    app = make_app(redis_url="redis://127.0.0.1:1/0")
    client = portal_client(app)
    client.set_cookie("__Host-session", "a" * 43, domain="localhost", secure=True, path="/")
    response = client.get("/portal/sign-in")
    assert response.status_code == 503
    assert response.mimetype == "text/html"
    assert "Content-Security-Policy" in response.headers
    assert app.test_client().get("/v1/ping").status_code == 200
