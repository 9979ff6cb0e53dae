"""The permission field `step_up`: admin API, policy file (plan, apply, export) and the CLI."""
from __future__ import annotations

import pytest

from security_api import audit
from security_api.access import policyfile
from security_api.clock import utcnow
from security_api.models import Permission
from tests.conftest import bearer

OLD_FORMAT = """\
version: 1
roles:
  - name: dev
    subroles: [backend]
permissions:
  - key: vpn
    name: VPN
    max_duration_minutes: 60
  - key: deploy
    name: Deploy
    max_duration_minutes: 30
rules:
  - {permission: vpn, role: dev, subrole: backend, mode: auto}
  - {permission: deploy, role: dev, subrole: backend, mode: approval, approvers: [dev/backend]}
"""
STEPPED = OLD_FORMAT.replace("    max_duration_minutes: 30\n",
                             "    max_duration_minutes: 30\n    step_up: true\n")


@pytest.fixture
def settings(app):
    return app.extensions["security_api"].settings


@pytest.fixture
def admin(client, make_user, login_as) -> dict:
    return bearer(login_as(make_user("root", role="security", subrole="admin"))["token"])


def apply_text(session, text: str, settings) -> policyfile.Diff:
    diff = policyfile.plan(session, policyfile.parse(text, settings=settings))
    policyfile.apply(session, diff, actor="test", origin=audit.Origin(), now=utcnow())
    session.expire_all()
    return diff


# ---- admin API ---------------------------------------------------------------------------------
def test_admin_creates_reads_lists_and_changes_step_up(client, admin):
    created = client.post("/v1/admin/permissions", headers=admin, json={
        "key": "deploy", "name": "Deploy", "max_duration_minutes": 30, "step_up": True})
    assert created.status_code == 201, created.json
    assert created.json["permission"]["step_up"] is True
    assert client.get("/v1/admin/permissions/deploy", headers=admin).json["permission"][
        "step_up"] is True
    changed = client.patch("/v1/admin/permissions/deploy", headers=admin, json={"step_up": False})
    assert changed.status_code == 200 and changed.json["permission"]["step_up"] is False
    listed = client.get("/v1/admin/permissions", headers=admin).json["permissions"]
    assert {p["key"]: p["step_up"] for p in listed}["deploy"] is False


def test_step_up_defaults_to_false(client, admin):
    created = client.post("/v1/admin/permissions", headers=admin, json={
        "key": "wiki", "name": "Wiki", "max_duration_minutes": 30})
    assert created.status_code == 201 and created.json["permission"]["step_up"] is False


@pytest.mark.parametrize("value", ["yes", 1, None, [True]])
def test_step_up_must_be_a_boolean(client, admin, db_session, value):
    created = client.post("/v1/admin/permissions", headers=admin, json={
        "key": "deploy", "name": "Deploy", "max_duration_minutes": 30, "step_up": value})
    assert created.status_code == 412
    assert db_session.get(Permission, "deploy") is None


def test_patch_refuses_null_step_up(client, admin):
    client.post("/v1/admin/permissions", headers=admin,
                json={"key": "deploy", "name": "Deploy", "max_duration_minutes": 30})
    response = client.patch("/v1/admin/permissions/deploy", headers=admin, json={"step_up": None})
    assert response.status_code == 412


# ---- policy file -------------------------------------------------------------------------------
def test_an_old_format_file_applies_unchanged_and_stays_a_no_op(db_session, settings):
    apply_text(db_session, OLD_FORMAT, settings)
    assert db_session.get(Permission, "deploy").step_up is False
    assert policyfile.plan(db_session, policyfile.parse(OLD_FORMAT, settings=settings)).empty
    assert "step_up" not in policyfile.export(db_session)


def test_step_up_is_planned_applied_and_exported(db_session, settings):
    apply_text(db_session, OLD_FORMAT, settings)
    diff = apply_text(db_session, STEPPED, settings)
    assert diff.lines() == ["~ permission deploy: step_up False -> True"]
    assert db_session.get(Permission, "deploy").step_up is True
    exported = policyfile.export(db_session)
    assert exported.count("step_up: true") == 1
    assert policyfile.plan(db_session, policyfile.parse(exported, settings=settings)).empty
    # And back: a file without the field turns it off again.
    assert apply_text(db_session, OLD_FORMAT, settings).lines() == [
        "~ permission deploy: step_up True -> False"]


def test_step_up_in_a_file_must_be_a_boolean(settings):
    with pytest.raises(policyfile.PolicyFileError) as refused:
        policyfile.parse(STEPPED.replace("step_up: true", "step_up: 'yes'"), settings=settings)
    assert "permissions[1].step_up" in refused.value.problems[0]


def test_cli_creates_a_step_up_permission(runner, db_session):
    result = runner.invoke(args=["create-permission", "deploy", "--name", "Deploy",
                                 "--max-duration-minutes", "30", "--step-up"])
    assert result.exit_code == 0, result.output
    db_session.expire_all()
    assert db_session.get(Permission, "deploy").step_up is True
