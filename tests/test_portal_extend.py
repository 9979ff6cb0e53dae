"""The portal's "Extend" action: on an active grant's page and in "my access", with CSRF."""
from __future__ import annotations

import html
import re
from datetime import timedelta

import pytest

from security_api import audit
from security_api.access import lifecycle
from security_api.access.catalog import ensure_permission, ensure_rule
from security_api.access.grants import Subject
from security_api.clock import as_utc, utcnow
from security_api.enums import PolicyMode, RequestStatus
from security_api.models import AccessRequest
from tests.portal_support import portal_client, post_form, signed_in_client

ALERT = re.compile(r'<div class="flash flash-error" role="alert">(.*?)</div>', re.S)
STATUS = re.compile(r'<div class="flash" role="status">(.*?)</div>', re.S)


def _kw():
    return {"actor": "test", "origin": audit.Origin(), "now": utcnow()}


@pytest.fixture
def people(app, make_user):
    services = app.extensions["security_api"]
    users = {"alice": make_user("alice"), "fred": make_user("fred", subrole="frontend"),
             "lead": make_user("lead", role="security", subrole="lead")}
    with services.session_factory() as session:
        for key, mode in [("pext-auto", PolicyMode.AUTO), ("pext-appr", PolicyMode.APPROVAL)]:
            ensure_permission(session, key=key, name=f"Portal {key}", max_duration_minutes=60,
                              settings=services.settings, **_kw())
            ensure_rule(session, permission=key, role="developer", subrole="*", mode=mode,
                        approvers=["security/lead"] if mode == PolicyMode.APPROVAL else None,
                        **_kw())
        session.commit()
    return users


def subject(user, role="developer", subrole="backend") -> Subject:
    return Subject(user.id, user.username, role, subrole, "person")


def grant(app, people, key: str) -> str:
    """alice holds `key` for 10 minutes (approved by lead when it needs approval)."""
    services = app.extensions["security_api"]
    with services.session_factory() as session:
        created = lifecycle.create_request(
            session, services, requester=subject(people["alice"]), permission_key=key,
            justification="work", duration_minutes=10, params={}, origin=audit.Origin(),
            now=utcnow())
        if created.status == RequestStatus.PENDING:
            lead = lifecycle.Actor(subject(people["lead"], "security", "lead"))
            created = lifecycle.approve(session, services, request_id=created.id, actor=lead,
                                        comment="", origin=audit.Origin(), now=utcnow())
        assert created.status == RequestStatus.ACTIVE
        return created.id


def row(app, request_id: str) -> AccessRequest:
    with app.extensions["security_api"].session_factory() as session:
        return session.get(AccessRequest, request_id)


def page_of(client, response) -> str:
    assert response.status_code == 302, response.get_data(as_text=True)[:300]
    return html.unescape(client.get(response.headers["Location"]).get_data(as_text=True))


def test_extend_from_the_grants_page_moves_its_end(app, people):
    request_id = grant(app, people, "pext-auto")
    before = row(app, request_id).expires_at
    client = signed_in_client(app, people["alice"])
    page = client.get(f"/portal/requests/{request_id}").get_data(as_text=True)
    assert f'action="/portal/requests/{request_id}/extend"' in page
    response = post_form(client, f"/portal/requests/{request_id}/extend",
                         {"duration_minutes": "45", "justification": "longer"},
                         token_from=f"/portal/requests/{request_id}")
    assert response.headers["Location"] == f"/portal/requests/{request_id}"
    shown = page_of(client, response)
    assert any(text.startswith("Extended: the access now ends") for text in STATUS.findall(shown))
    after = as_utc(row(app, request_id).expires_at)
    assert after > as_utc(before) and after > utcnow() + timedelta(minutes=40)


def test_extend_from_my_access_and_without_csrf(app, people):
    request_id = grant(app, people, "pext-auto")
    client = signed_in_client(app, people["alice"])
    home = client.get("/portal/").get_data(as_text=True)
    assert f'action="/portal/requests/{request_id}/extend"' in home
    before = row(app, request_id).expires_at
    refused = client.post(f"/portal/requests/{request_id}/extend",
                          data={"duration_minutes": "30"})
    assert refused.status_code == 400 and row(app, request_id).expires_at == before
    response = post_form(client, f"/portal/requests/{request_id}/extend",
                         {"duration_minutes": "30", "next": "/portal/"}, token_from="/portal/")
    assert response.headers["Location"] == "/portal/"
    assert row(app, request_id).expires_at != before
    too_long = post_form(client, f"/portal/requests/{request_id}/extend",
                         {"duration_minutes": "61"}, token_from="/portal/")
    assert any("duration_minutes" in a or "Duration" in a
               for a in ALERT.findall(page_of(client, too_long)))


def test_extend_under_approval_shows_the_waiting_extension(app, people):
    request_id = grant(app, people, "pext-appr")
    client = signed_in_client(app, people["alice"])
    response = post_form(client, f"/portal/requests/{request_id}/extend",
                         {"duration_minutes": "20", "justification": "more"},
                         token_from=f"/portal/requests/{request_id}")
    location = response.headers["Location"]
    assert location.startswith("/portal/requests/") and request_id not in location
    page = page_of(client, response)
    assert any(text.startswith("Extension sent for approval") for text in STATUS.findall(page))
    assert f'href="/portal/requests/{request_id}"' in page  # "Extends": the earlier grant
    extension = row(app, location.rsplit("/", 1)[1])
    assert (extension.status, extension.extends_id) == ("pending", request_id)
    original = html.unescape(client.get(f"/portal/requests/{request_id}").get_data(as_text=True))
    assert f'href="{location}"' in original  # "Extensions"
    again = post_form(client, f"/portal/requests/{request_id}/extend", {"duration_minutes": "20"},
                      token_from=f"/portal/requests/{request_id}")
    assert ALERT.findall(page_of(client, again)) == [
        "An extension of this grant is already waiting for approval."]


def test_someone_elses_grant_has_no_extend_and_cannot_be_extended(app, people):
    request_id = grant(app, people, "pext-auto")
    fred = signed_in_client(app, people["fred"])
    before = row(app, request_id).expires_at
    response = post_form(fred, f"/portal/requests/{request_id}/extend",
                         {"duration_minutes": "30"}, token_from="/portal/")
    assert response.status_code == 404 and row(app, request_id).expires_at == before
    assert portal_client(app).post(f"/portal/requests/{request_id}/extend").status_code in (
        302, 400)
