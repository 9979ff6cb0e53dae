"""End-to-end journeys through the portal's pages in Chromium, with real TOTP codes.

The page contract is /work/wt/portal-spec.md (and API.md part 2, "The portal").
"""
from __future__ import annotations

import re
from pathlib import Path

import pyotp

from tests.browser.conftest import (
    WRONG_CREDENTIALS,
    assert_page_headers,
    axe_check,
    csrf_token,
    fill_sign_in,
    main_text,
    path_of,
    screenshot,
    sign_in,
    submit,
)


def request_from_catalog(page, permission: str, *, justification: str = "browser journey",
                         minutes: int = 30) -> str:
    """Request a permission from its card in the catalog; return the new request's id."""
    page.goto("/portal/catalog")
    form = page.locator(f"form:has(input[name=permission][value='{permission}'])")
    assert form.count() == 1, f"no request form for {permission}: {main_text(page)}"
    form.locator("textarea[name=justification]").fill(justification)
    form.locator("input[name=duration_minutes]").fill(str(minutes))
    with page.expect_navigation():
        submit(form)
    match = re.fullmatch(r"/portal/requests/([^/?#]+)", path_of(page))
    assert match, f"after Request: {path_of(page)} {main_text(page)}"
    return match.group(1)


def section(page, heading: str):
    """The element holding the section titled `heading` (a <section> with that heading)."""
    return page.locator("section", has=page.get_by_role("heading", name=heading))


def test_enroll_then_request_an_auto_permission_then_revoke_it(page, make_user):
    newcomer = make_user("new", totp=False)
    response = fill_sign_in(page, newcomer.username, newcomer.password, "")
    assert path_of(page) == "/portal/enroll", (response.status, main_text(page))

    qr = page.get_by_alt_text("QR code for your authenticator app")
    assert qr.is_visible()
    assert qr.evaluate("img => img.complete && img.naturalWidth > 0"), "the QR code does not load"
    secret = page.locator("code#totp-secret").inner_text().replace(" ", "").strip()
    assert re.fullmatch(r"[A-Z2-7]{16,}", secret), secret
    screenshot(page, "enroll")
    axe_check(page)
    newcomer.totp_secret = secret
    page.locator("input[name=totp]").fill(newcomer.next_code())
    with page.expect_navigation() as navigation:
        page.get_by_role("button", name="Confirm").click()

    assert path_of(page) == "/portal/recovery-codes"
    assert "no-store" in navigation.value.headers.get("cache-control", ""), "codes may be cached"
    codes = [code.strip() for code in page.locator("ul#recovery-codes > li").all_inner_texts()]
    assert len(codes) == 10 and len(set(codes)) == 10, codes
    screenshot(page, "recovery-codes")
    axe_check(page)
    with page.expect_download() as download_info:
        page.get_by_role("link", name="Download").click()
    download = download_info.value
    downloaded = Path(download.path()).read_text(encoding="utf-8")
    assert all(code in downloaded for code in codes), downloaded
    with page.expect_navigation():
        page.get_by_role("link", name="Continue").or_(
            page.get_by_role("button", name="Continue")).first.click()
    assert path_of(page) == "/portal/"

    # Shown once: neither the page nor the download gives the codes again.
    page.goto("/portal/recovery-codes")
    assert not any(code in page.content() for code in codes)
    again = page.request.get("/portal/recovery-codes.txt", max_redirects=0)
    assert not any(code in again.text() for code in codes), again.status

    page.goto("/portal/catalog")
    cards = {key: page.locator(".card, article, li, section", has=page.locator(
        f"input[name=permission][value='{key}']")).last for key in ("vpn", "prod-db-readonly")}
    assert re.search(r"Granted at once for up to \d+ minutes", cards["vpn"].inner_text()), \
        cards["vpn"].inner_text()
    assert "Needs approval by" in cards["prod-db-readonly"].inner_text(), \
        cards["prod-db-readonly"].inner_text()
    request_id = request_from_catalog(page, "vpn", minutes=45)
    assert page.locator(".badge-active").count() >= 1, main_text(page)
    page.goto("/portal/")
    grants = section(page, "Active grants")
    row = grants.locator("li, tr", has=page.locator(f"a[href*='/portal/requests/{request_id}']"))
    assert row.count() == 1, f"grant {request_id} not under Active grants: {main_text(page)}"
    assert re.search(r"\b4[0-5] min left\b", row.inner_text()), row.inner_text()
    screenshot(page, "my-access-with-grant")

    revoke = row.locator(f"form[action*='/portal/requests/{request_id}/revoke']")
    assert revoke.count() == 1, row.inner_html()
    with page.expect_navigation():
        submit(revoke)
    page.goto("/portal/")
    assert section(page, "Active grants").locator(
        f"a[href*='/portal/requests/{request_id}']").count() == 0
    page.goto(f"/portal/requests/{request_id}")
    assert page.locator(".badge-revoked").count() >= 1, main_text(page)


def test_a_request_approved_by_the_approver_becomes_active(new_context, make_user):
    requester = make_user("dev")
    approver = make_user("lead", role="security", subrole="lead")
    mine = new_context().new_page()
    sign_in(mine, requester)
    request_id = request_from_catalog(mine, "prod-db-readonly", justification="incident 4711")
    assert mine.locator(".badge-pending").count() >= 1, main_text(mine)
    assert mine.locator("ol.timeline > li").count() >= 1
    mine.goto("/portal/")
    assert section(mine, "Pending requests").locator(
        f"a[href*='/portal/requests/{request_id}']").count() == 1, main_text(mine)

    theirs = new_context().new_page()
    sign_in(theirs, approver)
    theirs.goto("/portal/approvals")
    approve = theirs.locator(f"form[action*='/portal/requests/{request_id}/approve']")
    assert approve.count() == 1, main_text(theirs)
    approve.locator("[name=comment]").fill("ok for the incident")
    with theirs.expect_navigation():
        submit(approve)
    theirs.goto("/portal/approvals")
    assert theirs.locator(f"form[action*='/portal/requests/{request_id}/approve']").count() == 0

    mine.goto(f"/portal/requests/{request_id}")
    assert mine.locator(".badge-active").count() >= 1, main_text(mine)
    assert "ok for the incident" in main_text(mine)
    mine.goto("/portal/")
    assert section(mine, "Active grants").locator(
        f"a[href*='/portal/requests/{request_id}']").count() == 1, main_text(mine)


def test_five_wrong_codes_lock_the_account(page, console, make_user):
    console.allow_status(401, 429)
    victim = make_user("victim")
    right = victim.next_code()
    wrong = f"{(int(right) + 1) % 1_000_000:06d}"
    for attempt in range(5):
        response = fill_sign_in(page, victim.username, victim.password, wrong)
        assert response.status == 401, (attempt, response.status)
        assert page.get_by_text(WRONG_CREDENTIALS).is_visible(), main_text(page)
        assert path_of(page).startswith("/portal/sign-in")
    response = fill_sign_in(page, victim.username, victim.password, right)
    assert response.status == 429, response.status
    assert_page_headers(response)
    alert = page.locator(".flash-error[role=alert]")
    assert "locked" in alert.inner_text().lower(), main_text(page)
    screenshot(page, "sign-in-locked")
    page.goto("/portal/")
    assert path_of(page).startswith("/portal/sign-in"), "locked, yet signed in"


def test_sign_out_in_one_tab_ends_the_other_tabs_session(new_context, make_user):
    user = make_user("tabs")
    context = new_context()
    first, second = context.new_page(), context.new_page()
    sign_in(first, user)
    second.goto("/portal/")
    assert path_of(second) == "/portal/" and user.username in second.content()
    [session] = [c for c in context.cookies() if c["name"] == "__Host-session"]

    with first.expect_navigation():
        submit(first.locator("form[action*='/portal/sign-out']"))
    assert path_of(first) == "/portal/sign-in"
    assert first.locator(".flash[role=status]").inner_text().strip() == "You are signed out."

    second.reload()
    assert path_of(second).startswith("/portal/sign-in"), path_of(second)
    # Ended on the server, not only forgotten by this browser: the old cookie is refused.
    replay = new_context()
    replay.add_cookies([session])
    stale = replay.new_page()
    stale.goto("/portal/")
    assert path_of(stale).startswith("/portal/sign-in"), path_of(stale)


def test_a_form_without_its_csrf_token_changes_nothing(page, console, make_user):
    console.allow_status(400)
    user = make_user("csrf")
    sign_in(page, user)
    page.goto("/portal/catalog")
    assert csrf_token(page), "the catalog's forms carry no csrf_token"
    form = {"permission": "vpn", "justification": "no token", "duration_minutes": "30"}

    answer = page.request.post("/portal/requests", form=form, max_redirects=0)
    assert answer.status == 400, answer.status
    answer = page.request.post("/portal/requests", form={**form, "csrf_token": "forged"},
                               max_redirects=0)
    assert answer.status == 400, answer.status
    # The same, from the page itself: the hidden input removed before pressing Request.
    card = page.locator("form:has(input[name=permission][value='vpn'])")
    card.locator("input[name=csrf_token]").evaluate("input => input.remove()")
    card.locator("textarea[name=justification]").fill("no token")
    card.locator("input[name=duration_minutes]").fill("30")
    with page.expect_navigation() as navigation:
        submit(card)
    assert navigation.value.status == 400
    assert_page_headers(navigation.value)
    axe_check(page)
    screenshot(page, "csrf-refused")

    page.goto("/portal/requests")
    assert "VPN access" not in main_text(page)
    assert page.locator(".badge-active, .badge-pending").count() == 0
    # Sign-out without the token is refused as well: still signed in.
    answer = page.request.post("/portal/sign-out", form={}, max_redirects=0)
    assert answer.status == 400
    page.goto("/portal/")
    assert path_of(page) == "/portal/"


def test_spanish_pages(new_context, make_user):
    user = make_user("es")
    spanish = new_context(locale="es-ES").new_page()
    spanish.goto("/portal/sign-in")
    assert spanish.locator("html").get_attribute("lang") == "es"
    assert spanish.locator("form:has(input[name=username])").get_by_role(
        "button", name="Sign in").count() == 0, "the sign-in button is in English"
    sign_in(spanish, user)
    spanish.goto("/portal/")
    assert spanish.locator("html").get_attribute("lang") == "es"
    header = spanish.locator("header").first.inner_text()
    for english in ("My access", "Request access", "My requests", "Approvals", "Sign out"):
        assert english not in header, f"{english!r} in the Spanish header: {header}"
    for english in ("Active grants", "Pending requests", "Standing permissions"):
        assert english not in main_text(spanish), f"{english!r} on the Spanish My access"
    screenshot(spanish, "my-access-es")

    # The switch link on an English page: to Spanish and back, staying on the same page.
    english = new_context(locale="en-US").new_page()
    english.goto("/portal/sign-in")
    assert english.locator("html").get_attribute("lang") == "en"
    with english.expect_navigation():
        english.get_by_role("link", name="Español").click()
    assert english.locator("html").get_attribute("lang") == "es"
    assert path_of(english).startswith("/portal/sign-in")
    assert any(c["name"] == "lang" and c["value"] == "es" for c in english.context.cookies())
    with english.expect_navigation():
        english.get_by_role("link", name="English").click()
    assert english.locator("html").get_attribute("lang") == "en"


def test_a_deactivated_user_is_signed_out_at_the_next_page(new_context, make_user):
    user = make_user("leaver")
    admin = make_user("admin", role="security", subrole="admin")
    theirs = new_context().new_page()
    sign_in(theirs, user)
    theirs.goto("/portal/")
    assert path_of(theirs) == "/portal/"

    mine = new_context().new_page()
    sign_in(mine, admin)
    mine.goto(f"/portal/admin/users?q={user.username}")
    deactivate = mine.locator(f"form[action*='/portal/admin/users/{user.id}/deactivate']")
    assert deactivate.count() == 1, main_text(mine)
    with mine.expect_navigation():
        submit(deactivate)

    theirs.goto("/portal/catalog")
    assert path_of(theirs).startswith("/portal/sign-in"), path_of(theirs)
    assert user.username not in main_text(theirs)


def test_back_after_sign_out_shows_nothing_of_the_session(page, make_user):
    user = make_user("back")
    sign_in(page, user)
    response = page.goto("/portal/requests")
    assert "no-store" in response.headers.get("cache-control", "")
    assert path_of(page) == "/portal/requests"
    with page.expect_navigation():
        submit(page.locator("form[action*='/portal/sign-out']"))
    assert path_of(page) == "/portal/sign-in"

    page.go_back()
    page.wait_for_load_state()
    assert path_of(page).startswith("/portal/sign-in"), path_of(page)
    assert user.username not in page.content()
    assert page.locator("form[action*='/portal/sign-out']").count() == 0


def test_a_totp_code_is_used_once(new_context, console, make_user):
    """The same code twice: the second sign-in is refused (the replay guard of /v1/login)."""
    console.allow_status(401)
    user = make_user("replay")
    code = user.next_code()
    sign_in(new_context().new_page(), user, code=code)
    response = fill_sign_in(new_context().new_page(), user.username, user.password, code)
    assert response.status == 401


def test_a_recovery_code_signs_in_once(new_context, make_user):
    """Recovery codes from enrollment replace a TOTP code, once each."""
    newcomer = make_user("recover", totp=False)
    page = new_context().new_page()
    fill_sign_in(page, newcomer.username, newcomer.password, "")
    secret = page.locator("code#totp-secret").inner_text().replace(" ", "").strip()
    page.locator("input[name=totp]").fill(pyotp.TOTP(secret).now())
    with page.expect_navigation():
        page.get_by_role("button", name="Confirm").click()
    codes = [code.strip() for code in page.locator("ul#recovery-codes > li").all_inner_texts()]
    assert codes

    fresh = new_context().new_page()
    sign_in(fresh, newcomer, code=codes[0])
    assert path_of(fresh) == "/portal/"


def test_a_password_change_ends_every_session(new_context, make_user):
    user = make_user("rotate")
    here, elsewhere = new_context().new_page(), new_context().new_page()
    sign_in(here, user)
    sign_in(elsewhere, user)
    here.goto("/portal/password")
    form = here.locator("form:has(input[name=new_password])")
    form.locator("input[name=current_password]").fill(user.password)
    form.locator("input[name=new_password]").fill("quartz-lantern-meadow-77")
    form.locator("input[name=confirm_password]").fill("quartz-lantern-meadow-77")
    with here.expect_navigation():
        submit(form)
    assert path_of(here).startswith("/portal/sign-in"), main_text(here)
    assert here.locator(".flash[role=status]").count() == 1, main_text(here)
    here.goto("/portal/")
    assert path_of(here).startswith("/portal/sign-in"), "this session survived"
    elsewhere.goto("/portal/")
    assert path_of(elsewhere).startswith("/portal/sign-in"), "the other session survived"


def test_a_pending_request_cancelled_then_one_denied_with_a_reason(new_context, make_user):
    requester = make_user("dev")
    approver = make_user("lead", role="security", subrole="lead")
    mine = new_context().new_page()
    sign_in(mine, requester)
    first = request_from_catalog(mine, "prod-db-readonly", justification="changed my mind")
    mine.goto("/portal/")
    cancel = section(mine, "Pending requests").locator(
        f"form[action*='/portal/requests/{first}/cancel']")
    assert cancel.count() == 1, main_text(mine)
    with mine.expect_navigation():
        submit(cancel)
    mine.goto(f"/portal/requests/{first}")
    assert mine.locator(".badge-cancelled").count() >= 1, main_text(mine)

    second = request_from_catalog(mine, "prod-db-readonly", justification="second try")
    theirs = new_context().new_page()
    sign_in(theirs, approver)
    theirs.goto("/portal/approvals")
    assert theirs.locator(f"form[action*='/portal/requests/{first}/']").count() == 0
    deny = theirs.locator(f"form[action*='/portal/requests/{second}/deny']")
    assert deny.count() == 1, main_text(theirs)
    deny.locator("[name=comment]").fill("use the replica instead")
    with theirs.expect_navigation():
        submit(deny)
    mine.goto(f"/portal/requests/{second}")
    assert mine.locator(".badge-denied").count() >= 1, main_text(mine)
    assert "use the replica instead" in main_text(mine)


def session_cookie(context) -> str | None:
    found = [c["value"] for c in context.cookies() if c["name"] == "__Host-session"]
    return found[0] if found else None


def test_sign_in_gives_a_new_session_and_follows_only_local_next(new_context, make_user):
    user = make_user("next")
    page = new_context().new_page()
    page.goto("/portal/catalog")
    assert path_of(page).startswith("/portal/sign-in?next=")
    before = session_cookie(page.context)
    form = page.locator("form:has(input[name=username])")
    form.locator("input[name=username]").fill(user.username)
    form.locator("input[name=password]").fill(user.password)
    form.locator("input[name=code]").fill(user.next_code())
    with page.expect_navigation():
        submit(form)
    assert path_of(page) == "/portal/catalog", "next= was not followed"
    after = session_cookie(page.context)
    assert after and after != before, "the session id did not change at sign-in (fixation)"

    # An off-site next is never followed (open redirect).
    origin = re.match(r"^https?://[^/]+", page.url).group(0)
    for target in ("//evil.example/", "https://evil.example/", "/\\evil.example/"):
        other = new_context().new_page()
        other.goto(f"/portal/sign-in?next={target}")
        response = fill_sign_in_keeping_next(other, make_user("next"))
        assert response.url.startswith(origin + "/"), (target, response.url)
        assert path_of(other).startswith("/portal/"), (target, other.url)


def fill_sign_in_keeping_next(page, user):
    """Fill the sign-in form already open (with its hidden next) and send it."""
    form = page.locator("form:has(input[name=username])")
    form.locator("input[name=username]").fill(user.username)
    form.locator("input[name=password]").fill(user.password)
    form.locator("input[name=code]").fill(user.next_code())
    with page.expect_navigation() as navigation:
        submit(form)
    return navigation.value
