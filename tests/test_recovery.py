"""What a crashed worker leaves behind is finished by the reaper: no grant stuck, no revoke lost."""
from datetime import timedelta

import pytest
from sqlalchemy import update

from security_api.access import reaper
from security_api.access.provisioning import REVOKE_RETRY_SECONDS, stuck_after
from security_api.clock import utcnow
from security_api.enums import PolicyMode
from security_api.models import AccessRequest
from tests import test_concurrency as kit

receiver = kit.receiver
add_webhook_permission, audit_count = kit.add_webhook_permission, kit.audit_count
create_pending, request_status = kit.create_pending, kit.request_status


@pytest.fixture
def app(make_app):
    return make_app(webhook_signing_secret=kit.SIGNING_SECRET)


def _set(app, request_id, **values):
    with app.extensions["security_api"].session_factory() as session:
        session.execute(update(AccessRequest).where(AccessRequest.id == request_id).values(**values))
        session.commit()


def test_an_abandoned_grant_fails_and_is_undone(app, make_user, receiver):
    alice = make_user("alice")
    add_webhook_permission(app, receiver, "vpn", mode=PolicyMode.AUTO)
    request_id = create_pending(app, alice, "vpn")
    # As if the worker died between claiming the grant and recording its outcome.
    started = utcnow() - stuck_after(app.extensions["security_api"]) - timedelta(seconds=1)
    _set(app, request_id, status="granting", provisioning_started_at=started, expires_at=None)
    reaper.reap_once(app.extensions["security_api"])
    assert request_status(app, request_id) == "failed"
    assert receiver.count("revoke", request_id) == 1
    assert audit_count(app, "request.failed", request_id) == 1


def test_a_fresh_grant_claim_is_left_alone(app, make_user, receiver):
    alice = make_user("alice")
    add_webhook_permission(app, receiver, "vpn", mode=PolicyMode.AUTO)
    request_id = create_pending(app, alice, "vpn")
    _set(app, request_id, status="granting", provisioning_started_at=utcnow())
    reaper.reap_once(app.extensions["security_api"])
    assert request_status(app, request_id) == "granting"


def test_a_failed_revoke_is_tried_again_later_once(app, make_user, receiver):
    alice = make_user("alice")
    add_webhook_permission(app, receiver, "vpn", mode=PolicyMode.AUTO)
    request_id = create_pending(app, alice, "vpn")
    receiver.status = 500
    _set(app, request_id, expires_at=utcnow() - timedelta(seconds=1))
    reaper.reap_once(app.extensions["security_api"])
    assert request_status(app, request_id) == "expired"
    assert receiver.count("revoke", request_id) == 1
    receiver.status = 200
    reaper.reap_once(app.extensions["security_api"])  # too soon: not retried yet
    assert receiver.count("revoke", request_id) == 1
    _set(app, request_id,
         provisioning_started_at=utcnow() - timedelta(seconds=REVOKE_RETRY_SECONDS + 1))
    services = app.extensions["security_api"]
    reaper.reap_once(services)
    reaper.reap_once(services)
    assert receiver.count("revoke", request_id) == 2
    with services.session_factory() as session:
        row = session.get(AccessRequest, request_id)
        assert row.provisioning_state is None and row.provisioning["revoke"]["ok"] is True
