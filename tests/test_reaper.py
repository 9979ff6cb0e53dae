"""The background reaper expires due grants by itself."""
import threading
import time
from datetime import timedelta

from sqlalchemy import update

from security_api import audit
from security_api.access.catalog import ensure_permission, ensure_rule
from security_api.access.reaper import start_background_reaper
from security_api.clock import utcnow
from security_api.enums import PolicyMode
from security_api.models import AccessRequest
from tests.conftest import bearer


def test_background_reaper_expires_due_grants(app, client, make_user, login_as, db_session):
    services = app.extensions["security_api"]
    kw = {"actor": "test", "origin": audit.Origin(), "now": utcnow()}
    ensure_permission(db_session, key="vpn", name="VPN", max_duration_minutes=60,
                      settings=services.settings, **kw)
    ensure_rule(db_session, permission="vpn", role="*", subrole="*", mode=PolicyMode.AUTO, **kw)
    db_session.commit()
    token = login_as(make_user())["token"]
    created = client.post("/v1/requests", headers=bearer(token), json={"permission": "vpn"}).json
    request_id = created["request"]["id"]
    db_session.execute(update(AccessRequest).where(AccessRequest.id == request_id)
                       .values(expires_at=utcnow() - timedelta(seconds=1)))
    db_session.commit()
    stop = start_background_reaper(services, interval_seconds=1)
    try:
        deadline = time.time() + 10
        while time.time() < deadline:
            db_session.expire_all()
            row = db_session.get(AccessRequest, request_id)
            # Expiry is committed first, the provisioner's revoke recorded right after.
            if row.status == "expired" and "revoke" in row.provisioning:
                break
            time.sleep(0.2)
    finally:
        stop.set()
        # A run in progress (it also scans for drift) must not outlive the engine it uses.
        for thread in threading.enumerate():
            if thread.name == "security-api-reaper":
                thread.join(30)
    row = db_session.get(AccessRequest, request_id)
    assert row.status == "expired"
    assert "revoke" in row.provisioning
