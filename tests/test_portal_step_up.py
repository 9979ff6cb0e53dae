"""Step-up in the portal: the code field where a permission needs it, passed to the domain,
refusals said in the page (English and Spanish)."""
from __future__ import annotations

import html
import re

import pytest
from sqlalchemy import func, select

from security_api import audit
from security_api.access.catalog import ensure_permission, ensure_rule
from security_api.clock import utcnow
from security_api.enums import PolicyMode
from security_api.models import AccessRequest
from tests.portal_support import post_form, signed_in_client
from tests.test_step_up import fresh_code

ALERT = re.compile(r'<div class="flash flash-error" role="alert">(.*?)</div>', re.S)
REQUEST_PATH = re.compile(r"^/portal/requests/([0-9a-f-]{36})$")
CODE_FIELD = 'name="totp"'


@pytest.fixture
def world(app, make_user):
    users = {"alice": make_user("alice"), "lead": make_user("lead", role="security", subrole="lead")}
    services = app.extensions["security_api"]
    kw = {"actor": "test", "origin": audit.Origin(), "now": utcnow()}
    with services.session_factory() as session:
        for key, step_up in (("deploy", True), ("vpn", False)):
            ensure_permission(session, key=key, name=key.title(), max_duration_minutes=60,
                              settings=services.settings, step_up=step_up, **kw)
            ensure_rule(session, permission=key, role="developer", subrole="backend",
                        mode=PolicyMode.APPROVAL, approvers=["security/lead"], **kw)
        session.commit()
    return {"users": users, "clients": {name: signed_in_client(app, user)
                                        for name, user in users.items()}}


def page_text(response) -> str:
    return response.get_data(as_text=True)


def alerts(response) -> list[str]:
    return [html.unescape(m.strip()) for m in ALERT.findall(page_text(response))]


def card(page: str, key: str) -> str:
    return page.split(f'aria-labelledby="perm-{key}"', 1)[1].split("</section>", 1)[0]


def ask(world, permission: str, **fields):
    data = {"permission": permission, "justification": "release", "duration_minutes": "30",
            **fields}
    return post_form(world["clients"]["alice"], "/portal/requests", data,
                     token_from="/portal/catalog")


def requests_count(db_session) -> int:
    db_session.expire_all()
    return db_session.scalar(select(func.count()).select_from(AccessRequest))


def opened(world, db_session) -> str:
    response = ask(world, "deploy", totp=fresh_code(db_session, world["users"]["alice"]))
    assert response.status_code == 302, page_text(response)[:2000]
    return REQUEST_PATH.match(response.headers["Location"]).group(1)


def test_catalog_asks_for_the_code_only_where_needed(world):
    page = page_text(world["clients"]["alice"].get("/portal/catalog"))
    assert CODE_FIELD in card(page, "deploy") and "Code from your authenticator app" in card(
        page, "deploy")
    assert "Step-up: asking needs a code from your authenticator app" in card(page, "deploy")
    assert CODE_FIELD not in card(page, "vpn")


def test_request_without_or_with_a_wrong_code_is_refused_in_the_page(world, db_session):
    missing = ask(world, "deploy")
    assert missing.status_code == 401
    assert alerts(missing) == ["This permission needs a code from your authenticator app."]
    wrong = ask(world, "deploy", totp="12345")
    assert wrong.status_code == 401
    assert alerts(wrong) == ["The code from your authenticator app is wrong or was already "
                             "used; wait for the next one."]
    assert requests_count(db_session) == 0


def test_refusals_are_said_in_spanish(world, db_session):
    client = world["clients"]["alice"]
    client.get("/portal/lang/es?next=/portal/catalog")
    page = page_text(client.get("/portal/catalog"))
    assert "Código de tu app de autenticación" in card(page, "deploy")
    assert alerts(ask(world, "deploy")) == [
        "Este permiso necesita un código de tu app de autenticación."]
    assert alerts(ask(world, "deploy", totp="000")) == [
        "El código de tu app de autenticación es incorrecto o ya se usó; espera al siguiente."]
    assert requests_count(db_session) == 0


def test_request_with_a_good_code_is_created(world, db_session):
    request_id = opened(world, db_session)
    assert db_session.get(AccessRequest, request_id).status == "pending"


def test_decision_forms_carry_the_code_field_and_pass_it(world, db_session):
    request_id = opened(world, db_session)
    lead = world["clients"]["lead"]
    queue = page_text(lead.get("/portal/approvals"))
    assert queue.count(CODE_FIELD) == 2  # approve and deny
    detail = page_text(lead.get(f"/portal/requests/{request_id}"))
    assert detail.count(CODE_FIELD) == 2
    refused = post_form(lead, f"/portal/requests/{request_id}/approve", {"comment": "ok"},
                        token_from="/portal/approvals")
    assert refused.status_code == 302
    assert "needs a code from your authenticator app" in page_text(
        lead.get(refused.headers["Location"]))
    db_session.expire_all()
    assert db_session.get(AccessRequest, request_id).status == "pending"
    approved = post_form(lead, f"/portal/requests/{request_id}/approve",
                         {"totp": fresh_code(db_session, world["users"]["lead"])},
                         token_from="/portal/approvals")
    assert approved.status_code == 302
    db_session.expire_all()
    assert db_session.get(AccessRequest, request_id).status == "active"


def test_plain_permission_forms_have_no_code_field(world, db_session):
    response = ask(world, "vpn")
    assert response.status_code == 302
    queue = page_text(world["clients"]["lead"].get("/portal/approvals"))
    assert CODE_FIELD not in queue and "Approve" in queue
