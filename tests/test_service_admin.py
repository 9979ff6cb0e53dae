"""A service account never holds security-api.admin, nor decides requests.

One stolen admin access token must not buy a permanent, 2FA-free admin: a service account in
security/admin signs in with its secret alone and could reset the human admins. Refused
wherever it could arise (user create and update, policy rules by API, file and CLI), and
refused again at authorization time, whatever the rules say.
"""
from __future__ import annotations

import pytest
from sqlalchemy import select, update

from security_api import audit
from security_api.access.catalog import ensure_rule
from security_api.accounts import principal_cache
from security_api.clock import utcnow
from security_api.enums import PolicyMode
from security_api.models import PolicyRule, User
from tests.conftest import basic, bearer
from web import cli_policy

USERS = "/v1/admin/users"
POLICIES = "/v1/admin/policies"
SECRET = "s3rvice-secret-long-enough-42"


@pytest.fixture
def admin(make_user, login_as):
    return bearer(login_as(make_user("root", role="security", subrole="admin"))["token"])


@pytest.fixture
def bot(make_user):
    return make_user("ci-bot", role="tools", subrole="ci", kind="service", password=SECRET)


def _field(response) -> list[str]:
    return [error["field"] for error in response.json.get("errors", [])]


def test_creating_a_service_account_in_an_admin_role_is_refused(client, admin, db_session):
    response = client.post(USERS, headers=admin, json={
        "username": "evil-bot", "role": "security", "subrole": "admin", "kind": "service"})
    assert response.status_code == 412, response.json
    assert _field(response) == ["role"]
    assert db_session.scalar(select(User).where(User.username == "evil-bot")) is None
    # A person may still be created there.
    response = client.post(USERS, headers=admin, json={
        "username": "dana", "role": "security", "subrole": "admin", "kind": "person"})
    assert response.status_code == 201, response.json


def test_moving_a_service_account_into_an_admin_role_is_refused(client, admin, bot, db_session):
    response = client.patch(f"{USERS}/{bot.id}", headers=admin,
                            json={"role": "security", "subrole": "admin"})
    assert response.status_code == 412, response.json
    assert _field(response) == ["role"]
    db_session.expire_all()
    assert db_session.get(User, bot.id).role == "tools"


def test_a_rule_giving_admin_to_service_accounts_is_refused(client, admin, bot, db_session):
    for role, subrole in (("tools", "ci"), ("tools", "*"), ("*", "*")):
        response = client.post(POLICIES, headers=admin, json={
            "permission": "security-api.admin", "role": role, "subrole": subrole,
            "mode": "standing"})
        assert response.status_code == 409, response.json
        assert response.json["error"] == "service_account_admin"
        assert "ci-bot" in response.json["message"]
    assert db_session.scalar(select(PolicyRule).where(
        PolicyRule.permission_key == "security-api.admin", PolicyRule.role != "security")) is None
    # Patching a rule into standing is refused the same way.
    response = client.post(POLICIES, headers=admin, json={
        "permission": "security-api.admin", "role": "tools", "subrole": "ci", "mode": "approval",
        "approvers": ["security/admin"]})
    assert response.status_code == 201, response.json
    rule_id = response.json["policy"]["id"] if "policy" in response.json \
        else response.json["rule"]["id"]
    response = client.patch(f"{POLICIES}/{rule_id}", headers=admin, json={"mode": "standing"})
    assert response.status_code == 409 and response.json["error"] == "service_account_admin"


def test_approvers_that_are_only_service_accounts_are_refused(client, admin, bot):
    response = client.post("/v1/admin/permissions", headers=admin, json={
        "key": "vpn", "name": "VPN", "max_duration_minutes": 60})
    assert response.status_code == 201, response.json
    response = client.post(POLICIES, headers=admin, json={
        "permission": "vpn", "role": "*", "subrole": "*", "mode": "approval",
        "approvers": ["tools/ci"]})
    assert response.status_code == 412, response.json
    assert _field(response) == ["approvers"]


def _apply_policy_file(app, runner, tmp_path, text: str):
    """Run `flask policy apply` on a policy file holding `text`."""
    if "policy" not in app.cli.commands:
        cli_policy.init_app(app)
    path = tmp_path / "policy.yaml"
    path.write_text(text, encoding="utf-8")
    return runner.invoke(args=["policy", "apply", str(path)])


def test_policy_file_giving_admin_to_service_accounts_is_refused(app, runner, bot, tmp_path,
                                                                  db_session):
    result = _apply_policy_file(app, runner, tmp_path, (
        "version: 1\nroles:\n  - name: tools\n    subroles: [ci]\npermissions: []\nrules:\n"
        "  - permission: security-api.admin\n    role: tools\n    subrole: ci\n"
        "    mode: standing\n"))
    assert result.exit_code != 0, result.output
    assert "ci-bot" in result.output
    assert db_session.scalar(select(PolicyRule).where(PolicyRule.role == "tools")) is None


def test_policy_file_with_approvers_that_are_only_service_accounts_is_refused(
        app, runner, bot, tmp_path, db_session):
    result = _apply_policy_file(app, runner, tmp_path, (
        "version: 1\nroles:\n  - name: tools\n    subroles: [ci]\n"
        "  - name: developer\n    subroles: [backend]\npermissions:\n"
        "  - key: vpn\n    name: VPN\n    max_duration_minutes: 60\nrules:\n"
        "  - permission: vpn\n    role: developer\n    mode: approval\n"
        "    approvers: [tools/ci]\n"))
    assert result.exit_code != 0, result.output
    assert "service accounts" in result.output
    assert db_session.scalar(select(PolicyRule).where(PolicyRule.permission_key == "vpn")) is None


def test_cli_refuses_a_service_account_in_an_admin_role(runner, db_session):
    result = runner.invoke(args=["create-user", "ci-bot", "--role", "security", "--subrole",
                                 "admin", "--service"])
    assert result.exit_code != 0
    assert "security-api.admin" in result.output
    assert db_session.scalar(select(User).where(User.username == "ci-bot")) is None


def test_a_service_account_already_in_an_admin_role_never_administers(app, client, bot):
    # As if written before these checks existed: the rules say admin, authorization says no.
    services = app.extensions["security_api"]
    with services.session_factory() as session:
        principal_cache.changed(session, bot.id)  # a bulk update must register (safety net)
        session.execute(update(User).where(User.id == bot.id)
                        .values(role="security", subrole="admin"))
        session.commit()
    response = client.post("/v1/login", headers=basic("ci-bot", SECRET), json={})
    assert response.status_code == 200, response.json
    headers = bearer(response.json["token"])
    assert client.get(USERS, headers=headers).status_code == 403
    held = client.get("/v1/me/permissions", headers=headers)
    assert held.status_code == 200 and "security-api.admin" not in str(held.json), held.json


def test_a_service_account_rule_added_before_is_not_honoured(app, client, bot):
    services = app.extensions["security_api"]
    with services.session_factory() as session:
        # Straight in the domain, bypassing the admin API's refusal (an old database).
        ensure_rule(session, permission="security-api.admin", role="tools", subrole="ci",
                    mode=PolicyMode.STANDING, actor="test", origin=audit.Origin(), now=utcnow())
        session.commit()
    response = client.post("/v1/login", headers=basic("ci-bot", SECRET), json={})
    headers = bearer(response.json["token"])
    assert client.get(USERS, headers=headers).status_code == 403
