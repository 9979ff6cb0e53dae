"""The policy file's `conflicts` section: read (line:column), plan (dry-run), apply, export.

Absent, the section leaves the conflict sets alone (an old file applies unchanged); present, it is
their full desired state, like every other section.
"""
from __future__ import annotations

import pytest
from sqlalchemy import select

from security_api.access import policyfile
from security_api.access.admin_conflicts import members
from security_api.enums import AuditAction
from security_api.models import AuditEvent, ConflictSet
from tests.test_policyfile import apply_text, policy_runner, problems_of, settings  # noqa: F401

OLD = """\
version: 1
roles:
  - name: dev
    subroles: [backend]
permissions:
  - {key: pay-create, name: Create payments, max_duration_minutes: 60}
  - {key: pay-approve, name: Approve payments, max_duration_minutes: 60}
  - {key: vpn, name: VPN, max_duration_minutes: 60}
rules:
  - {permission: vpn, role: dev, subrole: backend, mode: auto}
"""
WITH_SETS = OLD + """\
conflicts:
  - name: payments
    permissions: [pay-create, pay-approve]
    description: Makers never check
"""


def stored(session) -> dict:
    session.expire_all()
    keys = members(session)
    return {row.name: (keys.get(row.name), row.description)
            for row in session.scalars(select(ConflictSet))}


@pytest.mark.parametrize(("section", "expected"), [
    ("  - {name: s, permissions: [vpn]}\n", "line 12, column 28: conflicts[0].permissions: at least 2"),
    ("  - {name: s, permissions: [vpn, wifi]}\n",
     "line 12, column 34: conflicts[0].permissions[1]: 'wifi' is neither in the file's permissions"),
    ("  - {name: s, permissions: [vpn, vpn]}\n",
     "line 12, column 28: conflicts[0].permissions: 'vpn' is listed twice"),
    ("  - {name: S S, permissions: [vpn, pay-create]}\n",
     "line 12, column 12: conflicts[0].name: 'S S' is not a lowercase slug"),
    ("  - {name: s, permissions: [vpn, pay-create], colour: red}\n",
     "line 12, column 47: conflicts[0].colour: unknown key"),
    ("  - {name: s, permissions: [vpn, pay-create]}\n  - {name: s, permissions: [vpn, pay-approve]}\n",
     "line 13, column 12: conflicts[1].name: conflict set 's' is listed twice"),
    ("  - {permissions: [vpn, pay-create]}\n",
     "line 12, column 5: conflicts[0]: missing required key 'name'"),
    ("  just text\n", "line 12, column 3: conflicts: must be a list"),
])
def test_bad_sections_are_refused_with_line_and_column(settings, section, expected):  # noqa: F811
    problems = problems_of(OLD + "conflicts:\n" + section, settings)
    assert any(problem.startswith(expected) for problem in problems), problems


def test_dry_run_apply_export_round_trip(policy_runner, db_session, settings, tmp_path):  # noqa: F811
    apply_text(db_session, OLD, settings)
    path = tmp_path / "sets.yaml"
    path.write_text(WITH_SETS)
    dry = policy_runner.invoke(args=["policy", "apply", str(path), "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert "+ conflict payments: pay-approve, pay-create" in dry.output
    assert stored(db_session) == {}
    assert policy_runner.invoke(args=["policy", "apply", str(path)]).exit_code == 0
    assert stored(db_session) == {"payments": (["pay-approve", "pay-create"], "Makers never check")}
    db_session.expire_all()
    event = db_session.scalar(select(AuditEvent).where(
        AuditEvent.action == str(AuditAction.CONFLICT_CREATED)))
    assert event.target == "payments" and '"via":"policy_file"' in event.details

    exported = policy_runner.invoke(args=["policy", "export"]).output
    assert "conflicts:\n- name: payments\n  permissions:\n  - pay-approve\n  - pay-create\n" in exported
    path.write_text(exported)
    again = policy_runner.invoke(args=["policy", "apply", str(path)])
    assert again.exit_code == 0 and "Nothing to change" in again.output, again.output

    changed = WITH_SETS.replace("[pay-create, pay-approve]", "[pay-create, pay-approve, vpn]")
    path.write_text(changed)
    dry = policy_runner.invoke(args=["policy", "apply", str(path), "--dry-run"]).output
    assert '~ conflict payments: permissions ["pay-approve", "pay-create"] -> ' \
           '["pay-approve", "pay-create", "vpn"]' in dry
    apply_text(db_session, changed, settings)
    assert stored(db_session)["payments"][0] == ["pay-approve", "pay-create", "vpn"]


def test_an_old_file_leaves_sets_alone_and_an_empty_section_deletes_them(db_session, settings):  # noqa: F811
    apply_text(db_session, WITH_SETS, settings)
    diff = policyfile.plan(db_session, policyfile.parse(OLD, settings=settings))
    assert diff.empty  # no `conflicts` section: nothing to say about the sets
    apply_text(db_session, OLD.replace("name: VPN", "name: The VPN"), settings)
    assert list(stored(db_session)) == ["payments"]
    diff = policyfile.plan(db_session, policyfile.parse(OLD + "conflicts: []\n", settings=settings))
    assert diff.lines() == ["~ permission vpn: name 'The VPN' -> 'VPN'", "- conflict payments"]
    apply_text(db_session, OLD + "conflicts: []\n", settings)
    assert stored(db_session) == {}


def test_an_old_file_cannot_delete_a_permission_a_set_names(db_session, settings):  # noqa: F811
    apply_text(db_session, WITH_SETS, settings)
    without = OLD.replace("  - {key: pay-approve, name: Approve payments, max_duration_minutes: 60}\n", "")
    with pytest.raises(policyfile.PolicyFileError) as caught:
        policyfile.plan(db_session, policyfile.parse(without, settings=settings))
    assert caught.value.problems == [
        "permission pay-approve is not in the file, but conflict set payments names it; add a "
        "`conflicts` section without it, or change the set first"]
    # With the section saying so, the set shrinks... to one permission, which the file refuses.
    problems = problems_of(without + "conflicts:\n  - {name: payments, permissions: [pay-create, "
                                     "pay-approve]}\n", settings)
    assert any("'pay-approve' is neither in the file's permissions" in p for p in problems)
    # Dropping the set and the permission together works, in one transaction.
    apply_text(db_session, without + "conflicts: []\n", settings)
    assert stored(db_session) == {}
