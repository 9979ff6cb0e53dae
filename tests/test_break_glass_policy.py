"""Break-glass in the policy: the catalog, explain, the admin API and the policy file."""
from __future__ import annotations

import pytest
from sqlalchemy import select

from security_api import audit
from security_api.access import policyfile
from security_api.clock import utcnow
from security_api.demo import DEMO_POLICY_FILE
from security_api.models import PolicyRule
from tests import test_break_glass as shared

# The break-glass world (users, catalog, receivers) of the API tests, shared as fixtures.
app, hook, inbox, world = shared.app, shared.hook, shared.inbox, shared.world


def test_the_catalog_and_explain_name_break_glass(client, world):
    catalog = client.get("/v1/permissions", headers=world.h("alice")).json["permissions"]
    assert {p["key"]: p["mode"] for p in catalog}["bg"] == "break_glass"
    explained = client.get("/v1/admin/policies/explain?user=alice&permission=bg",
                           headers=world.h("admin")).json
    assert explained["decision"] == "break_glass"
    assert explained["rule"]["review_within_minutes"] == 60


@pytest.mark.parametrize("extra, field", [({}, "approvers"),
                                          ({"approvers": ["security/lead"],
                                            "review_within_minutes": 0}, "review_within_minutes"),
                                          ({"approvers": ["security/lead"],
                                            "review_within_minutes": "60"},
                                           "review_within_minutes")])
def test_admin_api_checks_break_glass_rules(client, world, extra, field):
    response = client.post("/v1/admin/policies", headers=world.h("admin"),
                           json={"permission": "vpn", "role": "developer", "subrole": "backend",
                                 "mode": "break_glass", **extra})
    assert response.status_code == 412
    assert field in {e["field"] for e in response.json["errors"]}


def test_admin_api_creates_and_changes_the_review_window(client, world):
    created = client.post("/v1/admin/policies", headers=world.h("admin"),
                          json={"permission": "vpn", "role": "developer", "subrole": "backend",
                                "mode": "break_glass", "approvers": ["security/lead"]})
    assert created.status_code == 201, created.json
    policy = created.json["policy"]
    assert policy["review_within_minutes"] == 1440
    changed = client.patch(f"/v1/admin/policies/{policy['id']}", headers=world.h("admin"),
                           json={"review_within_minutes": 30})
    assert changed.status_code == 200 and changed.json["policy"]["review_within_minutes"] == 30


def test_policy_file_round_trips_and_an_old_file_applies_unchanged(world):
    settings = world.services.settings
    with world.services.session_factory() as session:
        exported = policyfile.export(session)
        assert "mode: break_glass" in exported and "review_within_minutes: 60" in exported
        assert policyfile.plan(session, policyfile.parse(exported, settings=settings)).empty
        # A file of the old format (the demo's, no review_within_minutes anywhere) applies, and
        # applying it again changes nothing: its rules keep the default window.
        for _ in range(2):
            diff = policyfile.plan(session, policyfile.parse(DEMO_POLICY_FILE.read_text(),
                                                              settings=settings))
            policyfile.apply(session, diff, actor="test", origin=audit.Origin(), now=utcnow(),
                             source="demo.yaml")
        assert diff.empty
        windows = set(session.scalars(select(PolicyRule.review_within_minutes)))
        assert windows == {1440}
