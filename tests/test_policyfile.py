"""Policy files: line-precise refusal, whole-file checks, plan/apply/export, the policy commands."""
from __future__ import annotations

import json

import pytest
from sqlalchemy import func, select

from security_api import audit
from security_api.access import policyfile
from security_api.clock import utcnow
from security_api.demo import DEMO_POLICY_FILE
from security_api.enums import AuditAction, RequestStatus
from security_api.models import AccessRequest, AuditEvent, Permission, PolicyRule, Role, Subrole
from web import cli_policy

DEMO = DEMO_POLICY_FILE.read_text(encoding="utf-8")
HEADER = "version: 1\n"


@pytest.fixture
def settings(app):
    return app.extensions["security_api"].settings


@pytest.fixture
def policy_runner(app, runner):
    """The CLI runner, with the policy group registered even before web/cli.py does it."""
    if "policy" not in app.cli.commands:
        cli_policy.init_app(app)
    return runner


def snapshot(session) -> dict:
    """Return everything a policy file can change, plus the audit length."""
    session.expire_all()
    return {
        "roles": sorted((r.name, r.description) for r in session.scalars(select(Role))),
        "subroles": sorted((s.role, s.name, s.description) for s in session.scalars(select(Subrole))),
        "permissions": sorted((p.key, p.name, p.max_duration_minutes, p.provisioner_config)
                              for p in session.scalars(select(Permission))),
        "rules": sorted((r.permission_key, r.role, r.subrole, r.mode, r.approvers,
                         r.approvals_required, r.max_duration_minutes)
                        for r in session.scalars(select(PolicyRule))),
        "audit": session.scalar(select(func.count()).select_from(AuditEvent)),
    }


def apply_text(session, text: str, settings) -> dict:
    diff = policyfile.plan(session, policyfile.parse(text, settings=settings))
    return policyfile.apply(session, diff, actor="test", origin=audit.Origin(ip="test"),
                            now=utcnow(), source="test.yaml")


def problems_of(text: str, settings) -> list[str]:
    with pytest.raises(policyfile.PolicyFileError) as caught:
        policyfile.parse(text, settings=settings)
    return caught.value.problems


MINIMAL = """\
version: 1
roles:
  - name: dev
    subroles: [backend]
permissions:
  - key: vpn
    name: VPN
    max_duration_minutes: 60
rules:
  - permission: vpn
    role: dev
    subrole: backend
    mode: approval
    approvers: [dev/backend]
"""


@pytest.mark.parametrize(("text", "expected"), [
    (MINIMAL.replace("dev/backend]", "sec/lead]"),
     "line 14, column 17: rules[0].approvers[0]: 'sec/lead' matches no role or subrole"),
    (MINIMAL.replace("    name: VPN\n", "    name: VPN\n    colour: red\n"),
     "line 8, column 5: permissions[0].colour: unknown key"),
    (MINIMAL.replace("max_duration_minutes: 60", "max_duration_minutes: sixty"),
     "line 8, column 27: permissions[0].max_duration_minutes: must be an integer"),
    (MINIMAL.replace("max_duration_minutes: 60", "max_duration_minutes: 0"),
     "line 8, column 27: permissions[0].max_duration_minutes: 0 is out of range"),
    (MINIMAL.replace("role: dev\n", "role: ops\n"),
     "line 11, column 11: rules[0].role: 'ops' is not a role of the file"),
    (MINIMAL.replace("permission: vpn", "permission: wifi"),
     "line 10, column 17: rules[0].permission: 'wifi' is neither in the file's permissions"),
    (MINIMAL.replace("subrole: backend\n    mode", "subrole: mobile\n    mode"),
     "line 12, column 14: rules[0].subrole: dev/mobile is not a subrole of the file"),
    (MINIMAL.replace("mode: approval", "mode: sometimes"),
     "line 13, column 11: rules[0].mode: 'sometimes' is not one of standing, auto, approval"),
    (MINIMAL.replace("subroles: [backend]", "subroles: [backend, backend]"),
     "line 4, column 25: roles[0].subroles[1]: subrole 'backend' is listed twice"),
    (MINIMAL.replace("  - key: vpn\n", "  - key: security-api.admin\n"),
     "line 6, column 10: permissions[0].key: 'security-api.admin' is built in"),
    (MINIMAL.replace("rules:\n", "rules:\n  - {permission: vpn, role: dev, subrole: backend, "
                                 "mode: auto}\n"),
     "line 11, column 5: rules[1]: a rule for vpn and dev/backend is already on line 10"),
    (MINIMAL.replace("    max_duration_minutes: 60\n",
                     "    max_duration_minutes: 60\n    provisioner:\n      name: aws_security_group\n"
                     "      config: {group_id: sg-nope, ports: [22]}\n"),
     "line 11, column 26: permissions[0].provisioner.config.group_id: must be a security group id"),
    (MINIMAL.replace("    max_duration_minutes: 60\n",
                     "    max_duration_minutes: 60\n    provisioner: {name: ftp}\n"),
     "line 9, column 25: permissions[0].provisioner.name: unknown provisioner 'ftp'"),
    (MINIMAL.replace("roles:\n", "roles:\n  - name: x\n    subroles: [a]\n    subroles: [b]\n"),
     "line 5, column 5: roles[0].subroles: duplicate key"),
    (MINIMAL.replace("  - name: dev", "  - name: Dev Team"),
     "line 3, column 11: roles[0].name: 'Dev Team' is not a lowercase slug"),
    (MINIMAL.replace("version: 1\n", ""), "line 1, column 1: missing required key 'version'"),
    (MINIMAL.replace("version: 1", "version: 2"), "line 1, column 10: version: 2 is out of range"),
    (MINIMAL.replace("name: VPN", "name: [VPN"), "line 8, column 25: not valid YAML"),
    (MINIMAL + "extra: &a [1]\nmore: *a\n", "line 16, column 7: anchors and aliases are not supported"),
    ("", "the file is empty"),
    ("- just\n- a list\n", "line 1, column 1: must be a mapping"),
])
def test_parse_errors_name_the_line(settings, text, expected):
    problems = problems_of(text, settings)
    assert any(expected in problem for problem in problems), problems


def test_every_problem_is_reported_at_once(settings):
    text = MINIMAL.replace("max_duration_minutes: 60", "max_duration_minutes: -1") \
        .replace("role: dev\n", "role: ops\n").replace("    name: VPN\n", "    name: VPN\n    x: 1\n")
    problems = problems_of(text, settings)
    assert len(problems) == 3, problems
    assert [p.split(":")[0] for p in problems] == ["line 8, column 5", "line 9, column 27",
                                                   "line 12, column 11"]


def test_approval_rules_need_approvers_and_protected_rules_stay_standing(settings):
    text = HEADER + """roles: []
permissions: []
rules:
  - {permission: security-api.check, role: security, subrole: admin, mode: approval}
  - {permission: security-api.admin, role: security, subrole: admin, mode: auto}
"""
    problems = problems_of(text, settings)
    assert problems[0].startswith("line 5, column 76: rules[0].approvers: an approval rule needs")
    assert problems[1].startswith("line 6, column 5: rules[1]: the security/admin rule")


def test_demo_file_is_valid(settings):
    desired = policyfile.parse(DEMO, settings=settings)
    assert set(desired.permissions) == {"vpn", "prod-db-readonly", "aws-sg-ssh", "prod-deploy"}
    assert desired.permissions["prod-deploy"].step_up is True
    assert desired.permissions["vpn"].step_up is False  # absent: the default
    assert desired.permissions["aws-sg-ssh"].provisioner.config["ports"] == [{"from": 22, "to": 22}]


def test_stage_leaves_the_transaction_to_the_caller(db_session, settings):
    before = snapshot(db_session)
    diff = policyfile.plan(db_session, policyfile.parse(DEMO, settings=settings))
    counts = policyfile.stage(db_session, diff, actor="test", origin=audit.Origin(), now=utcnow())
    assert counts["created"] > 0 and db_session.get(Role, "developer") is not None
    db_session.rollback()
    assert snapshot(db_session) == before


def test_rule_terms_are_checked_by_the_catalog_model(settings):
    text = MINIMAL.replace("    approvers: [dev/backend]\n",
                           "    approvers: [dev/backend]\n    approvals_required: 11\n")
    assert problems_of(text, settings) == [
        "line 15, column 25: rules[0].approvals_required: 11 is out of range: from 1 to 10"]


def test_apply_creates_everything_with_audit_events(db_session, settings):
    counts = apply_text(db_session, DEMO, settings)
    assert counts["created"] > 0 and counts["deleted"] == 0
    db_session.expire_all()
    assert db_session.get(Subrole, ("developer", "frontend")) is not None
    assert db_session.get(Role, "developer").description == "People who build the product"
    rule = db_session.scalar(select(PolicyRule).where(PolicyRule.subrole == "analyst"))
    assert (rule.mode, rule.approvers, rule.approvals_required,
            rule.max_duration_minutes) == ("approval", ["security/lead", "security/admin"], 2, 60)
    ssh = db_session.get(Permission, "aws-sg-ssh")
    assert ssh.provisioner_config["group_id"] == "sg-0123456789abcdef0"
    actions = [e.action for e in db_session.scalars(select(AuditEvent).order_by(AuditEvent.seq))]
    assert actions[-1] == AuditAction.POLICY_FILE_APPLIED
    ours = [e.action for e in db_session.scalars(select(AuditEvent).where(AuditEvent.actor == "test"))]
    assert ours.count(AuditAction.PERMISSION_CREATED) == 4
    assert ours.count(AuditAction.POLICY_CREATED) == 7
    summary = db_session.scalar(select(AuditEvent).where(
        AuditEvent.action == AuditAction.POLICY_FILE_APPLIED))
    assert json.loads(summary.details)["created"] == counts["created"]
    assert audit.verify_chain(db_session).ok


def test_second_apply_is_a_no_op(db_session, settings):
    apply_text(db_session, DEMO, settings)
    before = snapshot(db_session)
    diff = policyfile.plan(db_session, policyfile.parse(DEMO, settings=settings))
    assert diff.empty and diff.lines() == []
    assert apply_text(db_session, DEMO, settings) == {"created": 0, "updated": 0, "deleted": 0}
    assert snapshot(db_session) == before


def test_changes_and_deletions(db_session, settings):
    apply_text(db_session, DEMO, settings)
    changed = (DEMO.replace("max_duration_minutes: 720", "max_duration_minutes: 600")
               .replace("approvers: [security/lead]\n", "approvers: [security/lead, security]\n")
               .replace("    subroles: [backend, frontend]", "    subroles: [backend]")
               .replace("  - {permission: aws-sg-ssh, role: developer, subrole: backend, mode: auto}\n",
                        ""))
    start = changed.index("  - key: aws-sg-ssh")
    changed = changed[:start] + changed[changed.index("rules:"):]
    diff = policyfile.plan(db_session, policyfile.parse(changed, settings=settings))
    assert diff.lines() == [
        "~ permission vpn: max_duration_minutes 720 -> 600",
        "- rule aws-sg-ssh for developer/backend",
        '~ rule prod-db-readonly for developer/*: approvers ["security/lead"] -> '
        '["security/lead", "security"]',
        "- permission aws-sg-ssh",
        "- subrole developer/frontend",
    ]
    policyfile.apply(db_session, diff, actor="test", origin=audit.Origin(), now=utcnow())
    db_session.expire_all()
    assert db_session.get(Permission, "vpn").max_duration_minutes == 600
    assert db_session.get(Permission, "aws-sg-ssh") is None
    assert db_session.get(Subrole, ("developer", "frontend")) is None
    assert policyfile.plan(db_session, policyfile.parse(changed, settings=settings)).empty
    events = {e.action for e in db_session.scalars(select(AuditEvent))}
    assert {AuditAction.PERMISSION_UPDATED, AuditAction.PERMISSION_DELETED,
            AuditAction.POLICY_UPDATED, AuditAction.POLICY_DELETED,
            AuditAction.SUBROLE_DELETED} <= events


def test_an_empty_policy_keeps_only_the_built_in_rows(db_session, settings):
    apply_text(db_session, DEMO, settings)
    apply_text(db_session, HEADER + "roles: []\npermissions: []\nrules: []\n", settings)
    state = snapshot(db_session)
    assert state["roles"] == [("security", "The security team")]
    assert [s[:2] for s in state["subroles"]] == [("security", "admin")]
    assert sorted(p[0] for p in state["permissions"]) == ["security-api.admin", "security-api.audit",
                                                         "security-api.check"]
    assert [r[:4] for r in state["rules"]] == [
        ("security-api.admin", "security", "admin", "standing"),
        ("security-api.audit", "security", "admin", "standing")]


def test_impossible_deletions_are_refused_and_nothing_changes(db_session, settings, make_user):
    apply_text(db_session, DEMO, settings)
    bob = make_user("bob", role="developer", subrole="frontend")
    db_session.add(AccessRequest(requester_id=bob.id, permission_key="aws-sg-ssh",
                                 duration_minutes=30, status=RequestStatus.ACTIVE, mode="auto",
                                 created_at=utcnow(), expires_at=utcnow()))
    db_session.commit()
    before = snapshot(db_session)
    text = (DEMO.replace("    subroles: [backend, frontend]", "    subroles: [backend]")
            .replace("group_id: sg-0123456789abcdef0", "group_id: sg-0123456789abcdef1"))
    with pytest.raises(policyfile.PolicyFileError) as caught:
        policyfile.plan(db_session, policyfile.parse(text, settings=settings))
    assert any("developer/frontend is not in the file, but 1 user(s)" in p
               for p in caught.value.problems)
    assert any("aws-sg-ssh: its provisioner cannot change while 1 grant(s)" in p
               for p in caught.value.problems)
    start = DEMO.index("  - key: aws-sg-ssh")
    without_ssh = DEMO[:start] + DEMO[DEMO.index("rules:"):]
    without_ssh = without_ssh.replace(
        "  - {permission: aws-sg-ssh, role: developer, subrole: backend, mode: auto}\n", "")
    with pytest.raises(policyfile.PolicyFileError) as caught:
        policyfile.plan(db_session, policyfile.parse(without_ssh, settings=settings))
    assert caught.value.problems == [
        "permission aws-sg-ssh is not in the file, but 1 open access request(s) use it"]
    db_session.execute(AccessRequest.__table__.update().values(status=RequestStatus.EXPIRED))
    db_session.commit()
    with pytest.raises(policyfile.PolicyFileError, match="refused") as caught:
        policyfile.plan(db_session, policyfile.parse(without_ssh, settings=settings))
    assert "past access requests refer to it" in caught.value.problems[0]
    assert snapshot(db_session) == before


def test_export_round_trip(db_session, settings):
    apply_text(db_session, DEMO, settings)
    db_session.get(Subrole, ("finance", "analyst")).description = "Reads the books"
    db_session.commit()
    exported = policyfile.export(db_session)
    assert "description: Reads the books" in exported
    desired = policyfile.parse(exported, settings=settings)
    assert policyfile.plan(db_session, desired).empty
    # The exported file rebuilds the same state on a database that lost it.
    apply_text(db_session, HEADER + "roles: []\npermissions: []\nrules: []\n", settings)
    before_rebuild = snapshot(db_session)
    apply_text(db_session, exported, settings)
    assert policyfile.export(db_session) == exported
    assert snapshot(db_session) != before_rebuild


def test_apply_refuses_the_whole_file_through_the_cli(policy_runner, db_session, tmp_path):
    before = snapshot(db_session)
    path = tmp_path / "bad.yaml"
    # The first permission is fine; a later error must still keep it out.
    path.write_text(DEMO.replace("approvers: [security/lead]\n", "approvers: [sec/lead]\n"))
    result = policy_runner.invoke(args=["policy", "apply", str(path)])
    assert result.exit_code == 1
    assert "is refused; nothing was changed" in result.output
    assert "line 55, column 17: rules[1].approvers[0]: 'sec/lead' matches no role or subrole" \
        in result.output
    assert snapshot(db_session) == before


def test_cli_dry_run_apply_and_no_op(policy_runner, db_session, tmp_path):
    path = tmp_path / "demo.yaml"
    path.write_text(DEMO)
    before = snapshot(db_session)
    dry = policy_runner.invoke(args=["policy", "apply", str(path), "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert "+ permission vpn" in dry.output and "Dry run: nothing was changed." in dry.output
    assert "+ rule prod-db-readonly for finance/analyst: approval" in dry.output
    assert snapshot(db_session) == before
    applied = policy_runner.invoke(args=["policy", "apply", str(path)])
    assert applied.exit_code == 0, applied.output
    assert "Applied:" in applied.output
    assert db_session.get(Permission, "vpn") is not None
    again = policy_runner.invoke(args=["policy", "apply", str(path)])
    assert again.exit_code == 0 and "Nothing to change" in again.output
    last = db_session.scalar(select(AuditEvent).order_by(AuditEvent.seq.desc()).limit(1))
    assert (last.action, last.actor, last.target) == (AuditAction.POLICY_FILE_APPLIED, "cli",
                                                      "demo.yaml")


def test_cli_export(policy_runner, db_session, settings, tmp_path):
    apply_text(db_session, DEMO, settings)
    shown = policy_runner.invoke(args=["policy", "export"])
    assert shown.exit_code == 0, shown.output
    assert "key: prod-db-readonly" in shown.output
    path = tmp_path / "out.yaml"
    written = policy_runner.invoke(args=["policy", "export", "-o", str(path)])
    assert written.exit_code == 0, written.output
    assert path.read_text() == shown.output
    again = policy_runner.invoke(args=["policy", "apply", str(path)])
    assert again.exit_code == 0 and "Nothing to change" in again.output


def test_cli_hides_provisioner_configs(policy_runner, db_session, settings, tmp_path):
    apply_text(db_session, DEMO, settings)
    path = tmp_path / "p.yaml"
    path.write_text(DEMO.replace("ports: [22]", "ports: [22, 2222]"))
    result = policy_runner.invoke(args=["policy", "apply", str(path), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "~ permission aws-sg-ssh: provisioner_config changed" in result.output
    assert "sg-0123456789abcdef0" not in result.output
