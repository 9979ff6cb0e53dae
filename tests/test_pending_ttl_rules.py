"""A rule's pending_ttl_minutes through the admin API, explain and the policy file (issue 14)."""
from __future__ import annotations

import pytest

from security_api import audit
from security_api.access import policyfile
from security_api.access.catalog import ensure_permission
from security_api.clock import utcnow
from security_api.models import PolicyRule
from tests.conftest import bearer
from tests.test_policyfile import MINIMAL, apply_text, problems_of, settings  # noqa: F401

__all__ = ["settings"]

RULE = {"permission": "db", "role": "developer", "subrole": "*", "mode": "approval",
        "approvers": ["security/lead"]}


@pytest.fixture
def admin_h(app, make_user, login_as):
    make_user("lead", role="security", subrole="lead")
    make_user("alice")
    services = app.extensions["security_api"]
    with services.session_factory() as session:
        ensure_permission(session, key="db", name="DB", max_duration_minutes=60,
                          settings=services.settings, actor="test", origin=audit.Origin(),
                          now=utcnow())
        session.commit()
    return bearer(login_as(make_user("root", role="security", subrole="admin"))["token"])


def test_admin_api_creates_reads_and_patches_the_ttl(client, admin_h):
    default = client.post("/v1/admin/policies", headers=admin_h, json=RULE)
    assert default.status_code == 201 and default.json["policy"]["pending_ttl_minutes"] == 1440
    rule_id = default.json["policy"]["id"]
    patched = client.patch(f"/v1/admin/policies/{rule_id}", headers=admin_h,
                           json={"pending_ttl_minutes": 90})
    assert patched.status_code == 200 and patched.json["policy"]["pending_ttl_minutes"] == 90
    read = client.get(f"/v1/admin/policies/{rule_id}", headers=admin_h).json["policy"]
    assert read["pending_ttl_minutes"] == 90
    explained = client.get("/v1/admin/policies/explain?user=alice&permission=db",
                           headers=admin_h).json
    assert explained["rule"]["pending_ttl_minutes"] == 90


@pytest.mark.parametrize("value", [0, 525601, "60", None, 1.5, True, -1])
def test_bad_ttls_are_412_and_nothing_changes(client, admin_h, db_session, value):
    created = client.post("/v1/admin/policies", headers=admin_h,
                          json={**RULE, "pending_ttl_minutes": value})
    assert created.status_code == 412, created.json
    assert db_session.query(PolicyRule).filter_by(permission_key="db").count() == 0
    rule_id = client.post("/v1/admin/policies", headers=admin_h, json=RULE).json["policy"]["id"]
    patched = client.patch(f"/v1/admin/policies/{rule_id}", headers=admin_h,
                           json={"pending_ttl_minutes": value})
    assert patched.status_code == 412, patched.json
    assert client.get(f"/v1/admin/policies/{rule_id}",
                      headers=admin_h).json["policy"]["pending_ttl_minutes"] == 1440


def test_policy_file_carries_the_ttl_and_old_files_apply_unchanged(db_session, settings):
    apply_text(db_session, MINIMAL, settings)  # an old file: no pending_ttl_minutes
    [rule] = db_session.query(PolicyRule).filter_by(permission_key="vpn").all()
    assert rule.pending_ttl_minutes == 1440
    exported = policyfile.export(db_session)
    assert "pending_ttl_minutes" not in exported  # the default is left out, as before
    assert policyfile.plan(db_session, policyfile.parse(exported, settings=settings)).changes == ()

    with_ttl = MINIMAL + "    pending_ttl_minutes: 120\n"
    diff = policyfile.plan(db_session, policyfile.parse(with_ttl, settings=settings))
    assert [c.describe() for c in diff.changes] == [
        "~ rule vpn for dev/backend: pending_ttl_minutes 1440 -> 120"]
    apply_text(db_session, with_ttl, settings)
    db_session.expire_all()
    assert db_session.get(PolicyRule, rule.id).pending_ttl_minutes == 120
    exported = policyfile.export(db_session)
    assert "pending_ttl_minutes: 120" in exported
    assert policyfile.plan(db_session, policyfile.parse(exported, settings=settings)).changes == ()


def test_policy_file_refuses_a_bad_ttl_on_its_line(settings):
    problems = problems_of(MINIMAL + "    pending_ttl_minutes: 0\n", settings)
    assert any("pending_ttl_minutes" in p and "from 1 to 525600" in p for p in problems), problems


def test_openapi_documents_the_new_fields(client):
    schemas = client.get("/v1/openapi.json").json["components"]["schemas"]
    for model, field in [("RequestOut", "pending_expires_at"), ("RequestOut", "expired_reason"),
                         ("PolicyOut", "pending_ttl_minutes"),
                         ("PolicyCreateBody", "pending_ttl_minutes"),
                         ("PolicyUpdateBody", "pending_ttl_minutes")]:
        assert field in schemas[model]["properties"], (model, field)
    assert schemas["PolicyCreateBody"]["properties"]["pending_ttl_minutes"]["maximum"] == 525600
