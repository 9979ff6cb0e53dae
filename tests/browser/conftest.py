"""The portal in a real browser: Debian's Chromium driven by Playwright against gunicorn.

Opt-in: set BROWSER_TESTS=1 (CI's browser step does, against PostgreSQL + Redis). Without it
the suite is skipped, so `make test` (SQLite and PostgreSQL) never runs it twice or races it.
Without Chromium (or without axe-core from `npm ci`) it is skipped too, unless BROWSER_TESTS=1
asked for it: then that is a failure, so CI cannot go green without having run it.

    sign_in(page, user)       the sign-in form with a real, unused TOTP code
    axe_check(page)           axe-core 4.14: fails on serious or critical violations
    screenshot(page, name)    docs/screenshots/<name>-375.png and -1440.png
    new_context(locale=...)   a context whose pages fail the test on console errors (CSP)
"""
from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pyotp
import pytest

from flask_api import create_app
from security_api import audit
from security_api.access import policyfile
from security_api.accounts import users as accounts
from security_api.clock import utcnow
from security_api.enums import UserKind
from security_api.installation import bootstrap
from security_api.models import Subrole
from tests.conftest import DEFAULT_PASSWORD, TEST_DATA_KEY, TestUser, migrated_database
from tests.servers import start_gunicorn

ROOT = Path(__file__).resolve().parents[2]
AXE_JS = ROOT / "node_modules" / "axe-core" / "axe.min.js"
SCREENSHOTS = ROOT / "docs" / "screenshots"
POLICY_FILE = ROOT / "policies" / "demo.yaml"
WIDTHS = (375, 1440)
HEIGHT = 900
WRONG_CREDENTIALS = "(d'oh!) Wrong user, password, totp value or maybe user is not active."
REQUESTED = os.environ.get("BROWSER_TESTS", "") not in ("", "0")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _unavailable() -> str | None:
    if not CHROMIUM:
        return "Chromium is not installed (apt-get install -y chromium)"
    if not AXE_JS.exists():
        return f"axe-core is missing ({AXE_JS.relative_to(ROOT)}): run npm ci"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install -r requirements-dev.txt)"
    return None


def pytest_collection_modifyitems(config, items):
    here = Path(__file__).parent
    ours = [item for item in items if here in Path(str(item.fspath)).parents]
    if not ours:
        return
    missing = _unavailable()
    if REQUESTED and missing:
        raise pytest.UsageError(f"BROWSER_TESTS=1 but {missing}")
    reason = missing or "the browser suite is opt-in: BROWSER_TESTS=1 (CI's browser step)"
    if missing or not REQUESTED:
        for item in ours:
            item.add_marker(pytest.mark.skip(reason=reason))


# ---- the service ---------------------------------------------------------------------------
@pytest.fixture(scope="session")
def browser_database_url(tmp_path_factory):
    """A database of its own (a fresh PostgreSQL schema, or a SQLite file), migrated."""
    with migrated_database(tmp_path_factory.mktemp("browser-db"), name="browser") as url:
        yield url


@pytest.fixture(scope="session")
def domain(browser_database_url):
    """The app in-process, on the served database: to create users the way the CLI does."""
    app = create_app({"database_url": browser_database_url, "bcrypt_rounds": 4,
                      "redis_url": None, "data_encryption_keys": (TEST_DATA_KEY,)})
    services = app.extensions["security_api"]
    with services.session_factory() as session:
        bootstrap(session)  # what `flask init-db` adds to the migrated schema: the admin role
        desired = policyfile.parse(POLICY_FILE.read_text(encoding="utf-8"),
                                   settings=services.settings)
        policyfile.stage(session, policyfile.plan(session, desired), actor="browser-tests",
                         origin=audit.Origin(ip="cli"), now=utcnow(),
                         source="policies/demo.yaml")
        session.commit()
    yield services
    services.session_factory.kw["bind"].dispose()


@pytest.fixture(scope="session")
def server(browser_database_url, domain, tmp_path_factory):
    """gunicorn (2 workers) on that database, with Redis when TEST_REDIS_URL is set."""
    log_dir = tmp_path_factory.mktemp("browser-gunicorn")
    with start_gunicorn(browser_database_url, log_dir=log_dir, workers=2,
                        name="portal") as running:
        _SERVERS.append(running)
        yield running
        _SERVERS.remove(running)


_SERVERS: list = []
_LOG_START = pytest.StashKey[int]()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A failing browser test shows the server errors logged during it (tracebacks of 500s)."""
    if _SERVERS and _LOG_START not in item.stash:
        item.stash[_LOG_START] = _SERVERS[0].error_log.stat().st_size
    outcome = yield
    report = outcome.get_result()
    if report.failed and _SERVERS:
        with open(_SERVERS[0].error_log, "rb") as log:
            log.seek(item.stash.get(_LOG_START, 0))
            lines = log.read().decode(errors="replace").splitlines()
        errors = [line[:4000] for line in lines if '"level":"ERROR"' in line]
        if errors:
            report.sections.append(("gunicorn errors during the test", "\n".join(errors[-3:])))


@pytest.fixture(scope="session")
def base_url(server) -> str:
    return server.base


@dataclass
class PortalUser(TestUser):
    role: str = "developer"
    subrole: str = "backend"
    recovery_codes: list[str] = field(default_factory=list)


@pytest.fixture(scope="session")
def make_user(domain):
    """Create a person with a real TOTP secret (or none: `totp=False`, to enroll)."""
    def _make(prefix: str = "dev", *, role: str = "developer", subrole: str = "backend",
              totp: bool = True) -> PortalUser:
        username = f"{prefix}-{uuid.uuid4().hex[:8]}"
        with domain.session_factory() as session:
            if session.get(Subrole, (role, subrole)) is None:
                accounts.create_role(session, name=role, subroles=[subrole], actor="test",
                                     origin=audit.Origin(), now=utcnow())
            created = accounts.create_user(
                session, username=username, role=role, subrole=subrole,
                email=f"{username}@example.com", kind=UserKind.PERSON,
                password=DEFAULT_PASSWORD, bcrypt_rounds=4, actor="browser-tests",
                origin=audit.Origin(ip="cli"), now=utcnow())
            secret = None
            if totp:
                secret = pyotp.random_base32(32)
                created.user.totp_secret = domain.secret_box.encrypt(secret)
                created.user.totp_confirmed = True
            session.commit()
            return PortalUser(created.user.id, username, DEFAULT_PASSWORD, secret,
                              role=role, subrole=subrole)

    return _make


# ---- the browser -----------------------------------------------------------------------------
@pytest.fixture(scope="session")
def playwright_instance():
    from playwright.sync_api import sync_playwright
    with sync_playwright() as playwright:
        yield playwright


@pytest.fixture(scope="session")
def browser(playwright_instance):
    browser = playwright_instance.chromium.launch(executable_path=CHROMIUM)
    yield browser
    browser.close()


class ConsoleWatch:
    """Console errors and uncaught exceptions of every page it watches (CSP reports included)."""

    def __init__(self):
        self.errors: list[str] = []
        self.allowed: list[re.Pattern] = []

    def attach(self, page) -> None:
        page.on("console", lambda message: self._console(page, message))
        page.on("pageerror", lambda error: self.errors.append(f"{page.url}: uncaught {error}"))

    def _console(self, page, message) -> None:
        if message.type == "error" or "Content Security Policy" in message.text:
            self.errors.append(f"{page.url}: {message.text}")

    def allow_status(self, *statuses: int) -> None:
        """Expect a page answered with these statuses (Chromium logs them as console errors)."""
        for status in statuses:
            self.allowed.append(re.compile(
                rf"Failed to load resource: the server responded with a status of {status}\b"))

    def unexpected(self) -> list[str]:
        return [error for error in self.errors
                if not any(pattern.search(error) for pattern in self.allowed)]

    def check(self) -> None:
        found = self.unexpected()
        self.errors.clear()
        assert not found, "console errors (CSP?):\n" + "\n".join(found)


@pytest.fixture
def console():
    watch = ConsoleWatch()
    yield watch
    watch.check()


def open_context(browser, base_url: str, watch: ConsoleWatch, *, locale: str = "en-US",
                 **options):
    context = browser.new_context(base_url=base_url, locale=locale,
                                  viewport={"width": 1440, "height": HEIGHT}, **options)
    context.set_default_timeout(10_000)
    context.on("page", watch.attach)
    return context


@pytest.fixture
def new_context(browser, base_url, console):
    """new_context(locale="es-ES") -> a fresh context (own cookies), closed after the test."""
    made = []

    def _new(locale: str = "en-US", **options):
        context = open_context(browser, base_url, console, locale=locale, **options)
        made.append(context)
        return context

    yield _new
    for context in made:
        context.close()


@pytest.fixture
def page(new_context):
    return new_context().new_page()


# ---- helpers ---------------------------------------------------------------------------------
def submit(form) -> None:
    """Press the form's submit button (whatever the language of its label)."""
    form.locator("button[type=submit], input[type=submit], button:not([type])").first.click()


def fill_sign_in(page, username: str, password: str, code: str):
    """Fill and send the sign-in form; return the navigation's response."""
    page.goto("/portal/sign-in")
    form = page.locator("form:has(input[name=username])")
    form.locator("input[name=username]").fill(username)
    form.locator("input[name=password]").fill(password)
    form.locator("input[name=code]").fill(code)
    with page.expect_navigation() as navigation:
        submit(form)
    return navigation.value


def sign_in(page, user: PortalUser, *, code: str | None = None) -> None:
    """Sign in through the form with a fresh TOTP code (waits for a new step when needed)."""
    response = fill_sign_in(page, user.username, user.password,
                            code if code is not None else user.next_code())
    assert response is not None
    assert "/portal/sign-in" not in page.url, (
        f"sign-in of {user.username} failed: {response.status} {page.locator('main').inner_text()}")


def path_of(page) -> str:
    return re.sub(r"^https?://[^/]+", "", page.url)


def axe_check(page) -> list[dict]:
    """Run axe-core on the page as it is; fail on serious or critical violations.

    axe is served from the page's own origin (a routed URL the server never sees), so it loads
    under the page's real CSP (script-src 'self') and CSP stays enforced for the whole test.
    """
    origin = re.match(r"^https?://[^/]+", page.url).group(0)
    axe_url = f"{origin}/__browser-tests__/axe.min.js"
    page.route(axe_url, lambda route: route.fulfill(
        path=str(AXE_JS), content_type="application/javascript"))
    if not page.evaluate("() => typeof window.axe !== 'undefined'"):
        page.add_script_tag(url=axe_url)
    results = page.evaluate("""async () => {
        const r = await axe.run(document, {resultTypes: ['violations']});
        return r.violations.map(v => ({id: v.id, impact: v.impact, help: v.help,
            nodes: v.nodes.slice(0, 5).map(n => n.target.join(' '))}));
    }""")
    bad = [v for v in results if v["impact"] in ("serious", "critical")]
    assert not bad, f"axe on {path_of(page)}:\n" + json.dumps(bad, indent=1)
    return results


def screenshot(page, name: str) -> list[Path]:
    """Full-page screenshots at 375 and 1440 px wide into docs/screenshots/."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    original = page.viewport_size
    written = []
    for width in WIDTHS:
        page.set_viewport_size({"width": width, "height": HEIGHT})
        target = SCREENSHOTS / f"{name}-{width}.png"
        page.screenshot(path=str(target), full_page=True, animations="disabled")
        written.append(target)
    if original:
        page.set_viewport_size(original)
    return written


CSP = {
    "default-src": "'none'", "script-src": "'self'", "style-src": "'self'",
    "img-src": "'self' data:", "form-action": "'self'", "frame-ancestors": "'none'",
    "base-uri": "'none'",
}


def directives(policy: str) -> dict[str, str]:
    parts = [part.strip().split(None, 1) for part in policy.split(";") if part.strip()]
    return {part[0]: (part[1] if len(part) > 1 else "") for part in parts}


def assert_page_headers(response) -> None:
    """no-store and the contract's CSP, as the browser received them."""
    headers = response.all_headers()
    assert "no-store" in headers.get("cache-control", ""), (response.url, headers)
    assert directives(headers.get("content-security-policy", "")) == CSP, (response.url, headers)


def main_text(page) -> str:
    main = page.locator("main")
    return main.inner_text() if main.count() else page.locator("body").inner_text()


def csrf_token(page) -> str | None:
    token = page.locator("input[name=csrf_token]").first
    return token.get_attribute("value") if token.count() else None
