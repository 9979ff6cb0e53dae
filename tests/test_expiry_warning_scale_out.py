"""Expiry warnings across two instances x two workers on one PostgreSQL: one per grant.

Four background reapers (one per worker, every second) race for the same grants; the claim
(a conditional UPDATE of expiry_warned_for, in the transaction that writes the outbox row)
lets exactly one of them warn each grant, and the outbox delivers that row once.
"""
from __future__ import annotations

import time
import uuid
from collections import Counter
from datetime import timedelta

import pytest
from sqlalchemy import update

from security_api import audit
from security_api.access.catalog import ensure_permission, ensure_rule
from security_api.clock import utcnow
from security_api.enums import PolicyMode
from security_api.models import AccessRequest
from tests.conftest import TEST_DATABASE_URL, bearer
from tests.receivers import serving
from tests.servers import start_gunicorn
from tests.test_announce import undelivered, wait_for

pytestmark = pytest.mark.skipif(
    not (TEST_DATABASE_URL or "").startswith("postgresql"),
    reason="two instances on one database need PostgreSQL (TEST_DATABASE_URL)")
GRANTS = 4
SETTLE_SECONDS = 3  # a few more reaper rounds on every worker: a second warning would show


@pytest.fixture
def receiver():
    with serving() as server:
        yield server


@pytest.fixture
def app(make_app, receiver):
    return make_app(notify_webhook_url=receiver.url)


def _grants(app, client, make_user, login_as) -> list[str]:
    services = app.extensions["security_api"]
    with services.session_factory() as session:
        kw = {"actor": "test", "origin": audit.Origin(), "now": utcnow()}
        ensure_permission(session, key="vpn", name="VPN", max_duration_minutes=120,
                          settings=services.settings, **kw)
        ensure_rule(session, permission="vpn", role="*", subrole="*", mode=PolicyMode.AUTO, **kw)
        session.commit()
    ids = []
    for n in range(GRANTS):
        token = login_as(make_user(f"holder{n}"))["token"]
        created = client.post("/v1/requests", headers=bearer(token), json={"permission": "vpn"})
        assert created.json["request"]["status"] == "active"
        ids.append(created.json["request"]["id"])
    return ids


def _warnings_per_grant(receiver, ids: list[str]) -> Counter:
    with receiver.lock:
        texts = [(call["json"] or {}).get("text", "") for call in receiver.received]
    return Counter(request_id for text in texts if "Access ending soon" in text
                   for request_id in ids if f"/portal/requests/{request_id}" in text)


def test_one_warning_per_grant_across_two_instances(app, client, make_user, login_as,
                                                    database_url, receiver, tmp_path):
    ids = _grants(app, client, make_user, login_as)
    shared = {"redis_prefix": f"test:{uuid.uuid4().hex}:",
              "env": {"REAPER_INTERVAL_SECONDS": "1", "EXPIRY_WARNING_MINUTES": "15",
                      "NOTIFY_WEBHOOK_URL": receiver.url}}
    with start_gunicorn(database_url, log_dir=tmp_path, name="a", **shared) as a, \
            start_gunicorn(database_url, log_dir=tmp_path, name="b", **shared) as b:
        assert len(a.worker_pids()) == 2 and len(b.worker_pids()) == 2
        with app.extensions["security_api"].session_factory() as session:
            session.execute(update(AccessRequest).where(AccessRequest.id.in_(ids))
                            .values(expires_at=utcnow() + timedelta(minutes=10)))
            session.commit()
        wait_for(lambda: len(_warnings_per_grant(receiver, ids)) == GRANTS, timeout=30,
                 what="a warning for every grant")
        time.sleep(SETTLE_SECONDS)
        wait_for(lambda: undelivered(app) == 0, timeout=30, what="every delivery")
    assert _warnings_per_grant(receiver, ids) == Counter({request_id: 1 for request_id in ids})
