"""The portal shows when a pending request expires undecided, why a request expired, and
highlights grants about to end with a link to their page (where they are extended)."""
from __future__ import annotations

import html
from datetime import timedelta

from sqlalchemy import update

from security_api.access.reaper import reap_once
from security_api.clock import utcnow
from security_api.models import AccessRequest
from tests.test_portal_access import app, text, world  # noqa: F401 -- fixtures reused

__all__ = ["app", "world"]


def _move(world, request_id: str, **values) -> None:
    with world.app.extensions["security_api"].session_factory() as session:
        session.execute(update(AccessRequest).where(AccessRequest.id == request_id).values(**values))
        session.commit()


def test_pending_requests_show_when_they_expire(world):
    request_id = world.open("alice", "db", justification="deploy")
    home = html.unescape(text(world.client("alice").get("/portal/")))
    assert "expires undecided at" in home
    detail = html.unescape(text(world.client("alice").get(f"/portal/requests/{request_id}")))
    deadline = world.row(request_id).pending_expires_at
    assert "Expires undecided at" in detail and f'datetime="{deadline:%Y-%m-%dT%H:%M}' in detail


def test_an_expired_request_says_nobody_decided(world):
    request_id = world.open("alice", "db", justification="deploy")
    _move(world, request_id, pending_expires_at=utcnow() - timedelta(seconds=1))
    before = html.unescape(text(world.client("alice").get(f"/portal/requests/{request_id}")))
    assert "Nobody decided it in time." in before
    assert "Cancel the request" not in before  # too late: it would answer 409
    reap_once(world.app.extensions["security_api"])
    detail = html.unescape(text(world.client("alice").get(f"/portal/requests/{request_id}")))
    assert "Nobody decided it in time." in detail


def test_grants_about_to_end_are_highlighted_with_a_link(world):
    soon = world.open("alice", "vpn")
    page = text(world.client("alice").get("/portal/"))
    assert "ending-soon" not in page
    _move(world, soon, expires_at=utcnow() + timedelta(minutes=5))
    page = html.unescape(text(world.client("alice").get("/portal/")))
    assert 'class="row ending-soon"' in page and "Ends soon: extend" in page
    assert f'href="/portal/requests/{soon}">Ends soon: extend' in page
    detail = html.unescape(text(world.client("alice").get(f"/portal/requests/{soon}")))
    assert "This access ends soon" in detail
