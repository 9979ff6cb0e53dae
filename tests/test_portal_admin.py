"""The portal's administration pages over HTTP: users and their actions, the audit log, explain.

Each page calls the domain function of its API endpoint, so these tests check what a person sees
and that the effect is the API's own (tokens die, the lock lifts, the chain verifies).
"""
from __future__ import annotations

import re
from datetime import timedelta

import pytest
from flask.testing import FlaskClient
from sqlalchemy import select, update

from security_api import audit
from security_api.access.catalog import ensure_permission, ensure_rule
from security_api.clock import utcnow
from security_api.enums import PolicyMode
from security_api.models import AuditEvent, User
from tests.conftest import basic, bearer
from tests.portal_support import csrf_token, portal_client, post_form, signed_in_client

ADMIN_PAGES = ("/portal/admin/users", "/portal/admin/audit", "/portal/admin/explain")
# Pages the layout links that other parts of the portal provide; stand-ins while they are built.
NAV_ENDPOINTS = ("portal.catalog", "portal.my_requests", "portal.approvals", "portal.password")


@pytest.fixture
def app(make_app):
    built = make_app()
    for endpoint in NAV_ENDPOINTS:
        if endpoint not in built.view_functions:
            built.add_url_rule(f"/portal/_stand-in/{endpoint}", endpoint=endpoint,
                               view_func=lambda: "")
    return built


def browser(app, user=None) -> FlaskClient:
    """A portal client, signed in as the user when one is given."""
    return portal_client(app) if user is None else signed_in_client(app, user)


@pytest.fixture
def root(make_user):
    return make_user("root", role="security", subrole="admin")


@pytest.fixture
def admin(app, root):
    return browser(app, root)


def text(response) -> str:
    return response.get_data(as_text=True)


def user_row(page: str, username: str) -> str:
    match = re.search(rf'<tr id="user-{re.escape(username)}">(.*?)</tr>', page, re.S)
    assert match, f"no row for {username}"
    return match.group(1)


def action_path(page: str, username: str, action: str) -> str:
    match = re.search(rf'action="(/portal/admin/users/[^"/]+/{action}[^"]*)"', user_row(page, username))
    assert match, f"no {action} form for {username}"
    return match.group(1).replace("&amp;", "&")


def flashes(response, kind: str = "flash") -> list[str]:
    return re.findall(rf'<div class="{kind}"[^>]*>(.*?)</div>', text(response), re.S)


def reload_user(db_session, user_id: str) -> User:
    db_session.expire_all()
    return db_session.get(User, user_id)


def events(db_session, action: str) -> list[AuditEvent]:
    db_session.expire_all()
    return list(db_session.scalars(select(AuditEvent).where(AuditEvent.action == action)))


# ---- guards ------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", ADMIN_PAGES)
def test_non_admins_get_a_403_page(app, make_user, path):
    person = browser(app, make_user("alice"))
    response = person.get(path)
    assert response.status_code == 403
    assert response.mimetype == "text/html" and "Not allowed" in text(response)


def test_non_admins_cannot_act_on_users(app, make_user, root, db_session):
    person = browser(app, make_user("alice"))
    token = csrf_token(person, "/portal/admin/users")  # the 403 page still carries sign-out
    response = person.post(f"/portal/admin/users/{root.id}/deactivate",
                           data={"csrf_token": token})
    assert response.status_code == 403
    assert reload_user(db_session, root.id).active is True


@pytest.mark.parametrize("path", ADMIN_PAGES)
def test_signed_out_people_go_to_sign_in_and_come_back(app, path):
    response = browser(app).get(path + "?q=x")
    assert response.status_code == 302
    assert response.headers["Location"].startswith("/portal/sign-in?next=")
    assert "admin" in response.headers["Location"]


def test_auditors_may_read_the_audit_log_but_not_manage_users(app, make_user, db_session):
    audrey = make_user("audrey", role="audit", subrole="reader")
    ensure_rule(db_session, permission="security-api.audit", role="audit", subrole="reader",
                mode=PolicyMode.STANDING, actor="test", origin=audit.Origin(), now=utcnow())
    db_session.commit()
    auditor = browser(app, audrey)
    assert auditor.get("/portal/admin/audit").status_code == 200
    assert auditor.get("/portal/admin/users").status_code == 403


# ---- users -------------------------------------------------------------------------------------
def test_find_users_by_username_prefix(admin, make_user):
    make_user("alice")
    make_user("alfred")
    make_user("bob")
    page = text(admin.get("/portal/admin/users?q=AL"))
    assert 'id="user-alice"' in page and 'id="user-alfred"' in page
    assert 'id="user-bob"' not in page
    assert '<label for="q">' in page  # the search box has a label
    row = user_row(page, "alice")
    assert "developer/backend" in row and "badge-active" in row and ">Active<" in row


def test_filters_by_role_and_status(admin, make_user):
    make_user("alice")
    make_user("bob", active=False)
    page = text(admin.get("/portal/admin/users?role=developer&active=false"))
    assert 'id="user-bob"' in page and 'id="user-alice"' not in page
    assert ">Inactive<" in user_row(page, "bob")
    assert 'id="user-root"' not in text(admin.get("/portal/admin/users?role=developer"))


def test_users_page_with_a_more_link_keeping_the_filters(admin, make_user):
    for i in range(52):
        make_user(f"dev{i:02d}")
    first = text(admin.get("/portal/admin/users?q=dev&active=true"))
    assert first.count('<tr id="user-dev') == 50
    more = re.search(r'href="([^"]+)">More<', first).group(1).replace("&amp;", "&")
    assert "q=dev" in more and "active=true" in more and "cursor=" in more
    second = text(admin.get(more))
    assert 'id="user-dev50"' in second and 'id="user-dev51"' in second
    assert second.count('<tr id="user-dev') == 2 and ">More<" not in second


def test_service_accounts_have_no_second_factor_to_reset(admin, make_user):
    make_user("robot", kind="service")
    row = user_row(text(admin.get("/portal/admin/users?q=robot")), "robot")
    assert "Service" in row and "n/a" in row and "reset-totp" not in row


def test_a_bad_filter_is_a_412_page(admin):
    response = admin.get("/portal/admin/users?active=maybe")
    assert response.status_code == 412
    assert flashes(response, "flash flash-error")


def test_deactivation_ends_the_users_portal_session_and_api_tokens(
        app, admin, make_user, login_as, client, db_session):
    alice = make_user("alice")
    token = login_as(alice)["token"]
    alices_browser = browser(app, alice)
    assert alices_browser.get("/portal/").status_code == 200

    page = text(admin.get("/portal/admin/users?q=al"))
    response = post_form(admin, action_path(page, "alice", "deactivate"),
                         token_from="/portal/admin/users?q=al")
    assert response.status_code == 302
    assert response.headers["Location"] == "/portal/admin/users?q=al"  # back to the same list
    after = admin.get(response.headers["Location"])
    assert "alice is deactivated" in " ".join(flashes(after))
    assert ">Inactive<" in user_row(text(after), "alice")

    assert reload_user(db_session, alice.id).active is False
    assert alices_browser.get("/portal/").headers["Location"].startswith("/portal/sign-in")
    assert client.get("/v1/profile", headers=bearer(token)).status_code == 401
    assert events(db_session, "user.updated")[-1].actor == "root"

    page = text(admin.get("/portal/admin/users?q=al"))
    response = post_form(admin, action_path(page, "alice", "activate"), token_from="/portal/admin/users")
    assert response.status_code == 302
    assert reload_user(db_session, alice.id).active is True


def test_unlock_after_lockout(app, admin, make_user, client, login_as, db_session):
    alice = make_user("alice")
    for _ in range(5):
        client.post("/v1/login", headers=basic("alice", "wrong-password-here"),
                    json={"totp": "000000"})
    assert client.post("/v1/login", headers=basic("alice", alice.password),
                       json={"totp": alice.next_code()}).status_code == 429
    row = user_row(text(admin.get("/portal/admin/users")), "alice")
    assert ">Locked<" in row

    page = text(admin.get("/portal/admin/users"))
    response = post_form(admin, action_path(page, "alice", "unlock"), token_from="/portal/admin/users")
    assert response.status_code == 302
    after = admin.get("/portal/admin/users")
    assert "alice is unlocked" in " ".join(flashes(after))
    assert ">Locked<" not in user_row(text(after), "alice")
    assert login_as(alice)["token"]
    assert [event.target for event in events(db_session, "user.unlocked")] == [alice.id]


def test_reset_2fa(app, admin, make_user, login_as, client, db_session):
    alice = make_user("alice")
    token = login_as(alice)["token"]
    page = text(admin.get("/portal/admin/users"))
    assert ">On<" in user_row(page, "alice")
    response = post_form(admin, action_path(page, "alice", "reset-totp"), token_from="/portal/admin/users")
    assert response.status_code == 302
    after = admin.get("/portal/admin/users")
    assert "Two-factor authentication of alice was reset" in " ".join(flashes(after))
    assert ">Off<" in user_row(text(after), "alice")
    user = reload_user(db_session, alice.id)
    assert user.totp_confirmed is False and user.totp_secret is None
    assert client.get("/v1/profile", headers=bearer(token)).status_code == 401
    assert [event.target for event in events(db_session, "user.totp_reset")] == [alice.id]


def test_an_admin_cannot_deactivate_themself(admin, root, db_session):
    page = text(admin.get("/portal/admin/users"))
    response = post_form(admin, action_path(page, "root", "deactivate"), token_from="/portal/admin/users")
    assert response.status_code == 302
    after = admin.get(response.headers["Location"])
    assert after.status_code == 200  # still signed in
    assert "cannot" in " ".join(flashes(after, "flash flash-error"))
    assert reload_user(db_session, root.id).active is True
    assert events(db_session, "user.updated") == []


def test_a_post_without_csrf_token_is_refused_and_changes_nothing(admin, make_user, db_session):
    alice = make_user("alice")
    response = admin.post(f"/portal/admin/users/{alice.id}/deactivate", data={})
    assert response.status_code == 400
    assert "Nothing was changed" in text(response)
    response = admin.post(f"/portal/admin/users/{alice.id}/deactivate",
                          data={"csrf_token": "forged"})
    assert response.status_code == 400
    assert reload_user(db_session, alice.id).active is True


def test_unknown_action_or_user(admin, make_user, db_session):
    alice = make_user("alice")
    token = csrf_token(admin, "/portal/admin/users")
    response = admin.post(f"/portal/admin/users/{alice.id}/delete", data={"csrf_token": token})
    assert response.status_code == 404 and response.mimetype == "text/html"
    response = admin.post("/portal/admin/users/not-a-user/unlock", data={"csrf_token": token})
    assert response.status_code == 302
    assert "No such user" in " ".join(flashes(admin.get("/portal/admin/users"), "flash flash-error"))
    assert reload_user(db_session, alice.id).active is True


# ---- audit -------------------------------------------------------------------------------------
def _record(db_session, count: int, *, actor: str, action: str, at=None) -> None:
    for i in range(count):
        audit.record(db_session, action=action, actor=actor, target=f"t{i}",
                     origin=audit.Origin(ip="10.0.0.1"), now=at or utcnow(),
                     details={"note": f"n{i}", "count": i})
    db_session.commit()


def test_audit_log_filters_and_verify_status(admin, db_session):
    _record(db_session, 3, actor="carol", action="demo.thing")
    _record(db_session, 2, actor="dave", action="demo.other")
    db_session.expire_all()
    total = db_session.scalar(select(AuditEvent.seq).order_by(AuditEvent.seq.desc()).limit(1))

    page = admin.get("/portal/admin/audit")
    assert page.status_code == 200
    body = text(page)
    assert '<span class="badge badge-intact">Intact</span>' in body
    assert f"{total} events" in body or f"of the {total} events" in body

    carol = text(admin.get("/portal/admin/audit?actor=carol&action=&since=&until="))
    assert carol.count('<code class="nowrap">demo.thing</code>') == 3 and "demo.other" not in carol
    assert "count=0, note=n0" in carol and "10.0.0.1" in carol
    other = text(admin.get("/portal/admin/audit?action=demo.other"))
    assert other.count('<code class="nowrap">demo.other</code>') == 2
    assert '<code class="nowrap">demo.thing</code>' not in other
    future = (utcnow() + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert "No events match." in text(admin.get(f"/portal/admin/audit?since={future}"))
    assert '<code class="nowrap">demo.thing</code>' in text(admin.get(f"/portal/admin/audit?until={future}"))


def test_audit_log_pages_with_a_more_link(admin, db_session):
    _record(db_session, 55, actor="carol", action="demo.thing")
    first = text(admin.get("/portal/admin/audit?actor=carol"))
    assert first.count('<code class="nowrap">demo.thing</code>') == 50
    more = re.search(r'href="([^"]+)" rel="next"', first).group(1).replace("&amp;", "&")
    assert "actor=carol" in more and "cursor=" in more
    second = text(admin.get(more))
    assert second.count('<code class="nowrap">demo.thing</code>') == 5 and 'rel="next"' not in second


def test_bad_audit_filters_are_a_412_page(admin):
    response = admin.get("/portal/admin/audit?since=yesterday")
    assert response.status_code == 412 and response.mimetype == "text/html"
    assert "since" in " ".join(flashes(response, "flash flash-error"))
    assert 'value="yesterday"' in text(response)  # the form keeps what was typed
    assert admin.get("/portal/admin/audit?cursor=nonsense").status_code == 412
    assert admin.get("/portal/admin/audit?since=2026-02-01&until=2026-01-01").status_code == 412


def test_a_tampered_chain_shows_broken(admin, db_session):
    _record(db_session, 3, actor="carol", action="demo.thing")
    db_session.execute(update(AuditEvent).where(AuditEvent.target == "t1")
                       .values(details='{"note": "forged"}'))
    db_session.commit()
    body = text(admin.get("/portal/admin/audit"))
    assert '<span class="badge badge-broken">Broken</span>' in body
    assert "event content changed" in body


# ---- explain -----------------------------------------------------------------------------------
@pytest.fixture
def prod_db(app, db_session):
    settings = app.extensions["security_api"].settings
    kw = {"actor": "test", "origin": audit.Origin(), "now": utcnow()}
    ensure_permission(db_session, key="prod-db", name="Production database",
                      max_duration_minutes=120, settings=settings, **kw)
    db_session.commit()
    return kw


def test_explain_shows_the_matched_rule_and_every_rule_considered(admin, make_user, db_session,
                                                                   prod_db):
    make_user("alice")
    ensure_rule(db_session, permission="prod-db", role="*", subrole="*", mode=PolicyMode.APPROVAL,
                approvers=["security"], **prod_db)
    ensure_rule(db_session, permission="prod-db", role="developer", subrole="backend",
                mode=PolicyMode.AUTO, max_duration_minutes=30, **prod_db)
    db_session.commit()
    response = admin.get("/portal/admin/explain?user=alice&permission=prod-db")
    assert response.status_code == 200
    body = text(response)
    assert "Why alice may request prod-db" in body
    assert "Granted at once on request" in body and "30 minutes" in body
    matched = re.search(r'<dd id="matched-rule">(.*?)</dd>', body, re.S).group(1)
    assert "role developer, subrole backend" in matched
    assert "2: role and subrole" in body and "0: everyone" in body
    assert body.count("<strong>Matched</strong>") == 1 and "Less specific" in body
    assert '<label for="user">' in body and '<label for="permission">' in body


def test_explain_names_the_approvers(admin, make_user, db_session, prod_db):
    make_user("alice")
    ensure_rule(db_session, permission="prod-db", role="developer", subrole="*",
                mode=PolicyMode.APPROVAL, approvers=["security"], approvals_required=2, **prod_db)
    db_session.commit()
    body = text(admin.get("/portal/admin/explain?user=ALICE&permission=prod-db"))
    assert "Needs approval" in body and "2 approvals needed" in body
    assert "120 minutes" in body  # the permission's own maximum, the rule names none
    assert "role developer, subrole *" in body and "1: role, any subrole" in body


def test_explain_when_nothing_matches(admin, make_user, prod_db):
    make_user("alice")
    body = text(admin.get("/portal/admin/explain?user=alice&permission=prod-db"))
    assert "Why alice may not request prod-db" in body and "Not requestable" in body


def test_explain_unknown_or_missing_names_are_clear(admin, make_user, prod_db):
    make_user("alice")
    assert admin.get("/portal/admin/explain").status_code == 200  # just the form
    response = admin.get("/portal/admin/explain?user=ghost&permission=prod-db")
    assert response.status_code == 404
    assert "No such user." in " ".join(flashes(response, "flash flash-error"))
    response = admin.get("/portal/admin/explain?user=alice&permission=nope")
    assert response.status_code == 404
    assert "No permission" in " ".join(flashes(response, "flash flash-error"))
    response = admin.get("/portal/admin/explain?user=alice&permission=")
    assert response.status_code == 412
    assert "permission: is required" in " ".join(flashes(response, "flash flash-error"))


# ---- languages ---------------------------------------------------------------------------------
def test_admin_pages_in_spanish(admin, make_user, prod_db):
    make_user("alice")
    admin.get("/portal/lang/es?next=/portal/admin/users")
    users = text(admin.get("/portal/admin/users"))
    assert '<html lang="es">' in users and "Buscar usuarios" in users
    assert "Registro de auditoría" in text(admin.get("/portal/admin/audit"))
    explain = text(admin.get("/portal/admin/explain?user=alice&permission=prod-db"))
    assert "Por qué alice no puede solicitar prod-db" in explain
