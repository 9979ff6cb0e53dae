"""Break-glass in the portal: the request-access card, using it, and the reviews page."""
from __future__ import annotations

import html

from sqlalchemy import select

from security_api.models import AccessRequest
from tests import test_break_glass as shared
from tests.portal_support import post_form, signed_in_client

# The break-glass world (users, catalog, receivers) of the API tests, shared as fixtures.
app, hook, inbox, world = shared.app, shared.hook, shared.inbox, shared.world


def _page(client, path: str, **headers) -> str:
    response = client.get(path, headers=headers)
    assert response.status_code == 200, response.status_code
    return html.unescape(response.get_data(as_text=True))


def _use(app, world) -> tuple[object, str]:
    alice = world.people["alice"]
    client = signed_in_client(app, alice)
    response = post_form(client, "/portal/break-glass",
                         {"permission": "bg", "justification": "prod is down",
                          "duration_minutes": "30", "totp": alice.next_code()},
                         token_from="/portal/catalog")
    assert response.status_code == 302, response.get_data(as_text=True)[:400]
    request_id = response.headers["Location"].rsplit("/", 1)[-1]
    return client, request_id


def test_the_catalog_offers_break_glass_with_a_warning_and_a_code_field(app, world):
    client = signed_in_client(app, world.people["alice"])
    page = _page(client, "/portal/catalog")
    assert 'action="/portal/break-glass"' in page and 'name="totp"' in page
    assert "The security team is told at once" in page
    assert "Emergency only: granted at once for up to 60 minutes" in page
    spanish = _page(client, "/portal/catalog", **{"Accept-Language": "es"})
    assert "Romper el cristal" in spanish


def test_using_break_glass_grants_at_once(app, world, hook):
    client, request_id = _use(app, world)
    page = _page(client, f"/portal/requests/{request_id}")
    assert "Break-glass used: you hold it until" in page and "Awaiting review until" in page
    with world.services.session_factory() as session:
        row = session.get(AccessRequest, request_id)
        assert (row.status, row.mode, row.duration_minutes) == ("active", "break_glass", 30)
    assert hook.count("grant", request_id) == 1


def test_without_a_code_nothing_is_granted(app, world):
    client = signed_in_client(app, world.people["alice"])
    response = post_form(client, "/portal/break-glass",
                         {"permission": "bg", "justification": "prod is down",
                          "duration_minutes": "30"}, token_from="/portal/catalog")
    assert response.status_code == 401
    with world.services.session_factory() as session:
        assert session.scalars(select(AccessRequest)).all() == []


def test_the_reviews_page_lists_and_reviews(app, world, hook):
    _client, request_id = _use(app, world)
    lead = signed_in_client(app, world.people["lead"])
    page = _page(lead, "/portal/reviews")
    assert "alice used break-glass for Prod DB (emergency)" in page
    assert f'action="/portal/requests/{request_id}/review"' in page
    response = post_form(lead, f"/portal/requests/{request_id}/review",
                         {"verdict": "unjustified", "comment": "no incident",
                          "next": "/portal/reviews"}, token_from="/portal/reviews")
    assert response.status_code == 302
    assert "Reviewed as unjustified: the access is revoked." in _page(lead, "/portal/reviews")
    assert hook.count("revoke", request_id) == 1
    assert "No break-glass use is waiting for your review." in _page(lead, "/portal/reviews")


def test_the_requester_gets_no_review_form(app, world):
    client, request_id = _use(app, world)
    page = _page(client, "/portal/reviews")
    assert f"/portal/requests/{request_id}/review" not in page
