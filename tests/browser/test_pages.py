"""Every portal page as the browser gets it, signed out, as a person, an approver and an admin:
screenshots at 375 and 1440 px, axe (no serious or critical violation), no console error or CSP
report, the headers of the browser's own response objects, and the session cookie's flags.
"""
from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest

from tests.browser.conftest import (
    HEIGHT,
    WIDTHS,
    ConsoleWatch,
    assert_page_headers,
    axe_check,
    fill_sign_in,
    main_text,
    open_context,
    path_of,
    screenshot,
    sign_in,
    submit,
)


@pytest.fixture(scope="module")
def watch():
    return ConsoleWatch()


@pytest.fixture(autouse=True)
def no_console_errors(watch):
    watch.errors.clear()
    watch.allowed.clear()
    yield watch
    watch.check()


@pytest.fixture(scope="module")
def people(make_user):
    return {"person": make_user("person"),
            "approver": make_user("approver", role="security", subrole="lead"),
            "admin": make_user("root", role="security", subrole="admin")}


@pytest.fixture(scope="module")
def pages(browser, base_url, watch, people):
    """One signed-in page per role (signed in once for the module), and a signed-out one."""
    contexts, opened = [], {}
    for role in ("signed-out", "person", "approver", "admin"):
        context = open_context(browser, base_url, watch)
        contexts.append(context)
        opened[role] = context.new_page()
        if role in people:
            sign_in(opened[role], people[role])
    watch.errors.clear()
    yield opened
    for context in contexts:
        context.close()


@pytest.fixture(scope="module")
def pending_request(pages):
    """A request of the person's waiting for the approver (security/lead)."""
    page = pages["person"]
    page.goto("/portal/catalog")
    form = page.locator("form:has(input[name=permission][value='prod-db-readonly'])")
    form.locator("textarea[name=justification]").fill("page tour")
    form.locator("input[name=duration_minutes]").fill("60")
    with page.expect_navigation():
        submit(form)
    return path_of(page).rsplit("/", 1)[-1]


def visit(page, path: str, name: str, *, status: int = 200):
    """Open the page, check its answer and headers, then axe and screenshot at both widths."""
    response = page.goto(path)
    assert response is not None
    assert response.status == status, (path, response.status, main_text(page)[:500])
    assert_page_headers(response)
    assert page.locator("html").get_attribute("lang") in ("en", "es")
    assert page.locator("main#main").count() == 1
    assert page.locator("a[href='#main']").count() >= 1, "no skip link to #main"
    badges = page.locator(".badge").all_inner_texts()
    assert all(text.strip() for text in badges), f"a status badge with no text on {path}"
    screenshot(page, name)  # first, so a failing page still leaves its picture
    for width in WIDTHS:
        page.set_viewport_size({"width": width, "height": HEIGHT})
        axe_check(page)
        # Reflow (WCAG 1.4.10): wide parts scroll in their own box, never the whole page.
        overflow = page.evaluate("() => document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, f"{path} scrolls sideways by {overflow}px at {width}px"
    return response


# (role, screenshot name, path); README.md shows catalog-1440 and approvals-1440.
SIGNED_IN_PAGES = [
    ("person", "my-access", "/portal/"), ("person", "catalog", "/portal/catalog"),
    ("person", "my-requests", "/portal/requests"), ("person", "approvals-empty", "/portal/approvals"),
    ("person", "password", "/portal/password"), ("admin", "admin-users", "/portal/admin/users"),
    ("admin", "admin-audit", "/portal/admin/audit"), ("admin", "admin-my-access", "/portal/"),
    ("admin", "admin-drift", "/portal/admin/drift"), ("approver", "reviews", "/portal/reviews"),
]


def test_sign_in_page(pages):
    page = pages["signed-out"]
    visit(page, "/portal/sign-in", "sign-in")
    assert page.get_by_role("button", name="Sign in").count() == 1
    # The first Tab reaches the skip link, and following it moves focus to the main content.
    page.keyboard.press("Tab")
    assert page.evaluate("() => document.activeElement.getAttribute('href')") == "#main"
    page.keyboard.press("Enter")
    assert page.evaluate("() => document.activeElement.id") == "main"


def test_sign_in_failure_page(pages, no_console_errors):
    no_console_errors.allow_status(401)
    page = pages["signed-out"]
    response = fill_sign_in(page, "nobody-here", "not-a-password", "123456")
    assert response.status == 401
    assert_page_headers(response)
    axe_check(page)
    screenshot(page, "sign-in-wrong")


@pytest.mark.parametrize("path", ["/portal/", "/portal/catalog", "/portal/admin/users"])
def test_signed_out_pages_send_to_sign_in_with_next(pages, path):
    page = pages["signed-out"]
    page.goto(path)
    url = urlsplit(page.url)
    assert url.path == "/portal/sign-in"
    assert parse_qs(url.query).get("next") == [path], page.url


def test_root_sends_a_browser_to_the_portal(pages):
    pages["person"].goto("/")
    assert path_of(pages["person"]) == "/portal/"


@pytest.mark.parametrize("role,name,path", SIGNED_IN_PAGES)
def test_signed_in_page(pages, role, name, path):
    visit(pages[role], path, name)


def test_request_page_as_requester_and_approver(pages, pending_request):
    visit(pages["person"], f"/portal/requests/{pending_request}", "request")
    assert pages["person"].locator("ol.timeline").count() == 1
    assert pages["person"].locator(".badge-pending").count() >= 1
    visit(pages["approver"], "/portal/approvals", "approvals")
    assert pages["approver"].locator(
        f"form[action*='/portal/requests/{pending_request}/approve']").count() == 1
    visit(pages["approver"], f"/portal/requests/{pending_request}", "approver-request")


def test_admin_pages_with_queries(pages, people):
    person = people["person"]
    visit(pages["admin"], f"/portal/admin/users?q={person.username}", "admin-users-found")
    assert person.username in pages["admin"].locator("main").text_content()
    visit(pages["admin"], f"/portal/admin/explain?user={person.username}&permission=vpn",
          "admin-explain")


def test_the_audit_page_admits_an_auditor(pages, no_console_errors):
    """security/lead holds security-api.audit (policies/demo.yaml): the audit log, nothing else."""
    visit(pages["approver"], "/portal/admin/audit", "auditor-audit")
    no_console_errors.allow_status(403)
    for path in ("/portal/admin/users", "/portal/admin/explain"):
        assert pages["approver"].goto(path).status == 403, path


def test_admin_pages_are_403_for_others(pages, no_console_errors):
    no_console_errors.allow_status(403)
    for path in ("/portal/admin/users", "/portal/admin/audit", "/portal/admin/explain"):
        response = pages["person"].goto(path)
        assert response.status == 403, (path, response.status)
        assert_page_headers(response)
    axe_check(pages["person"])
    screenshot(pages["person"], "forbidden")


def test_the_session_cookie_as_the_browser_keeps_it(pages):
    cookies = pages["person"].context.cookies()
    [session] = [cookie for cookie in cookies if cookie["name"] == "__Host-session"]
    assert session["httpOnly"] is True
    assert session["secure"] is True
    assert session["sameSite"] == "Lax"
    assert session["path"] == "/"
    assert session["domain"] == urlsplit(pages["person"].url).hostname  # host-only, no Domain
    assert pages["person"].evaluate("() => document.cookie").find("__Host-session") == -1


def test_the_checks_themselves_catch_a_csp_violation_and_an_axe_violation(pages, watch):
    """The harness is not blind: inline script is refused and reported, axe sees a bad image."""
    page = pages["signed-out"]
    page.goto("/portal/sign-in")
    page.evaluate("""() => {
        const script = document.createElement('script');
        script.textContent = 'window.inlineRan = true';
        document.body.append(script);
        const img = document.createElement('img');
        img.src = 'data:image/gif;base64,R0lGODlhAQABAAAAACw=';
        document.querySelector('main').append(img);
    }""")
    assert page.evaluate("() => window.inlineRan") is None, "inline script ran despite the CSP"
    page.wait_for_timeout(200)
    assert any("Content Security Policy" in error for error in watch.unexpected()), watch.errors
    watch.errors.clear()
    with pytest.raises(AssertionError, match="image-alt"):
        axe_check(page)


def _at_375(page) -> None:
    page.set_viewport_size({"width": 375, "height": HEIGHT})


def test_every_main_menu_item_is_in_view_at_375(pages):
    """The admin's menu is the longest: at 375 px it wraps, nothing hides behind a side scroll."""
    page = pages["admin"]
    page.goto("/portal/admin/users")
    _at_375(page)
    nav = page.locator("nav.main-nav")
    assert nav.evaluate("el => el.scrollWidth - el.clientWidth") <= 0, "the menu scrolls sideways"
    links = nav.locator("a")
    assert links.count() == 10  # with Reviews and Drift
    for link in links.all():
        box = link.bounding_box()
        assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 375, (
            link.inner_text(), box)
    _full_width(page)


def test_the_users_table_is_stacked_cards_at_375_and_still_a_table(pages, people):
    """Each user is a card of labelled lines at 375 px; screen readers still get a table."""
    page = pages["admin"]
    page.goto(f"/portal/admin/users?q={people['admin'].username}")
    _at_375(page)
    wrap = page.locator(".table-wrap")
    assert wrap.evaluate("el => el.scrollWidth - el.clientWidth") <= 0, "the table scrolls"
    row = page.locator(f"tr#user-{people['admin'].username}")
    assert row.evaluate("el => getComputedStyle(el).display") == "block"
    assert page.locator("table thead").evaluate("el => el.getBoundingClientRect().height") <= 1
    role_cell = row.locator("td").first
    # Each line says what it is, in place of the column heading.
    assert role_cell.get_attribute("data-label") == "Role"
    assert role_cell.evaluate("el => getComputedStyle(el, '::before').content") not in (
        "none", "normal")
    for cell in row.locator("td, th").all():
        box = cell.bounding_box()
        if box is not None:
            assert box["x"] >= 0 and box["x"] + box["width"] <= 375, (cell.inner_text(), box)
    roles = _accessibility_roles(page)
    assert "table" in roles and roles.count("columnheader") == 7, roles
    assert "rowheader" in roles and "cell" in roles, roles
    axe_check(page)
    _full_width(page)


def test_the_users_table_is_a_plain_table_at_1440(pages, people):
    """At full width the cards' CSS does not apply: each heading stands over its column.

    The narrow layout once took a class name the page layout already used for vertical flex
    boxes, which squeezed the headings to the left of their columns at every width.
    """
    page = pages["admin"]
    page.goto("/portal/admin/users")
    table = page.locator("table.card-rows")
    assert table.evaluate("el => getComputedStyle(el).display") == "table"
    headings = table.locator("thead th").all()
    cells = table.locator("tbody tr").first.locator("th, td").all()
    assert len(headings) == len(cells) == 7
    for heading, cell in zip(headings, cells, strict=True):
        top, below = heading.bounding_box(), cell.bounding_box()
        assert abs(top["x"] - below["x"]) < 1 and abs(top["width"] - below["width"]) < 1, (
            heading.inner_text(), top, below)


def _accessibility_roles(page) -> list[str]:
    """The roles in Chromium's own accessibility tree (what a screen reader is given)."""
    client = page.context.new_cdp_session(page)
    try:
        nodes = client.send("Accessibility.getFullAXTree")["nodes"]
    finally:
        client.detach()
    return [node.get("role", {}).get("value") for node in nodes if not node.get("ignored")]


def _full_width(page) -> None:
    page.set_viewport_size({"width": 1440, "height": HEIGHT})
