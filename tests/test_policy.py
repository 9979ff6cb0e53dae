"""The policy engine (pure) and the database look-up that feeds it (an index, never a scan)."""
import pytest
from sqlalchemy import event, insert, text

from security_api import audit
from security_api.access.catalog import ensure_permission, ensure_rule
from security_api.access.grants import Subject, candidate_rules
from security_api.access.policy import NOT_REQUESTABLE, Rule, approver_matches, decide, specificity
from security_api.accounts.users import create_role
from security_api.clock import utcnow
from security_api.enums import PolicyMode
from security_api.models import Permission, PolicyRule

AUTO, APPROVAL, STANDING = PolicyMode.AUTO, PolicyMode.APPROVAL, PolicyMode.STANDING


def rule(rule_id, role, subrole, mode, max_minutes=None, permission="vpn", **kw):
    return Rule(id=rule_id, permission=permission, role=role, subrole=subrole, mode=mode,
                max_duration_minutes=max_minutes, **kw)


# One permission, rules at every level of specificity, plus noise for other permissions.
RULES = [
    rule("any", "*", "*", AUTO, 30),
    rule("dev", "developer", "*", APPROVAL, 90, approvers=("security/lead",)),
    rule("backend", "developer", "backend", STANDING),
    rule("ops-sre", "ops", "sre", AUTO, 1000),
    rule("bad-wild", "*", "qa", STANDING),  # role * with a named subrole never matches
    rule("other-perm", "sales", "rep", STANDING, permission="crm"),
    rule("other-perm-any", "*", "*", STANDING, permission="crm"),
]


@pytest.mark.parametrize(("role", "subrole", "rule_id", "mode", "max_minutes"), [
    ("developer", "backend", "backend", STANDING, 120),  # role/subrole beats role/* and */*
    ("developer", "frontend", "dev", APPROVAL, 90),      # role/* beats */*; min(120, 90)
    ("sales", "rep", "any", AUTO, 30),                   # */* only; the crm rule is ignored
    ("ops", "sre", "ops-sre", AUTO, 120),                # rule max above permission max: 120
    ("ops", "dba", "any", AUTO, 30),                     # ops/sre does not name ops/dba
    ("qa", "qa", "any", AUTO, 30),                       # */qa never matches, even for subrole qa
])
def test_most_specific_rule_wins_and_max_is_the_smaller(role, subrole, rule_id, mode, max_minutes):
    # Order must not matter: the same answer whichever way the rules come.
    for rules in (RULES, list(reversed(RULES))):
        decision = decide(role=role, subrole=subrole, permission="vpn", permission_max_minutes=120,
                          candidates=rules)
        assert (decision.rule.id, decision.mode, decision.max_duration_minutes) == \
            (rule_id, mode, max_minutes)
        assert decision.requestable is (mode in (AUTO, APPROVAL))


@pytest.mark.parametrize(("candidates", "role", "subrole"), [
    ([], "developer", "backend"),
    ([rule("x", "developer", "backend", AUTO, permission="db")], "developer", "backend"),
    ([rule("x", "developer", "frontend", AUTO)], "developer", "backend"),
    ([rule("x", "ops", "*", AUTO)], "developer", "backend"),
    ([rule("x", "*", "backend", AUTO)], "developer", "backend"),
])
def test_no_matching_rule_is_not_requestable(candidates, role, subrole):
    decision = decide(role=role, subrole=subrole, permission="vpn", permission_max_minutes=60,
                      candidates=candidates)
    assert decision == NOT_REQUESTABLE
    assert not decision.requestable and decision.max_duration_minutes is None


@pytest.mark.parametrize(("mode", "requestable"), [(AUTO, True), (APPROVAL, True),
                                                   (STANDING, False)])
def test_modes(mode, requestable):
    decision = decide(role="r", subrole="s", permission="vpn", permission_max_minutes=60,
                      candidates=[rule("x", "r", "s", mode, approvals_required=2)])
    assert decision.mode == mode and decision.requestable is requestable
    assert decision.rule.approvals_required == 2
    assert decision.max_duration_minutes == 60  # no rule max: the permission's


@pytest.mark.parametrize(("rule_max", "effective"), [(None, 60), (1, 1), (59, 59), (60, 60),
                                                     (61, 60), (100000, 60)])
def test_effective_max_is_min_of_permission_and_rule(rule_max, effective):
    decision = decide(role="r", subrole="s", permission="vpn", permission_max_minutes=60,
                      candidates=[rule("x", "r", "s", AUTO, rule_max)])
    assert decision.max_duration_minutes == effective


def test_rule_for_another_permission_is_ignored_even_if_more_specific():
    candidates = [rule("exact-db", "developer", "backend", STANDING, permission="db"),
                  rule("any-vpn", "*", "*", AUTO, 15)]
    decision = decide(role="developer", subrole="backend", permission="vpn",
                      permission_max_minutes=60, candidates=candidates)
    assert decision.rule.id == "any-vpn" and decision.mode == AUTO


@pytest.mark.parametrize(("rule_role", "rule_subrole", "rank"), [
    ("developer", "backend", 2), ("developer", "*", 1), ("*", "*", 0),
    ("developer", "frontend", None), ("*", "backend", None), ("ops", "*", None),
    ("backend", "developer", None)])
def test_specificity(rule_role, rule_subrole, rank):
    assert specificity(rule("x", rule_role, rule_subrole, AUTO), role="developer",
                       subrole="backend") == rank


@pytest.mark.parametrize(("entry", "role", "subrole", "expected"), [
    ("security", "security", "lead", True),
    ("security", "security", "admin", True),
    ("security/lead", "security", "lead", True),
    ("security/lead", "security", "admin", False),
    ("security/lead", "developer", "lead", False),
    ("security", "securityx", "lead", False),
    ("security", "developer", "security", False),
    ("lead", "security", "lead", False),
    ("*", "security", "lead", False),
    ("security/*", "security", "lead", False),
    ("", "security", "lead", False),
])
def test_approver_matches(entry, role, subrole, expected):
    assert approver_matches(entry, role=role, subrole=subrole) is expected


# ---- the database look-up ----------------------------------------------------------------------
SUBJECT = Subject(id="u", username="alice", role="developer", subrole="backend", kind="person")


def _kw():
    return {"actor": "test", "origin": audit.Origin(), "now": utcnow()}


def _base_rules(app, session):
    settings = app.extensions["security_api"].settings
    for key in ("vpn", "db"):
        ensure_permission(session, key=key, name=key, max_duration_minutes=60, settings=settings,
                          **_kw())
    session.commit()
    create_role(session, name="developer", subroles=["backend", "frontend"], **_kw())
    ensure_rule(session, permission="vpn", role="*", subrole="*", mode=AUTO, **_kw())
    ensure_rule(session, permission="vpn", role="developer", subrole="*", mode=AUTO, **_kw())
    ensure_rule(session, permission="vpn", role="developer", subrole="backend", mode=AUTO, **_kw())
    ensure_rule(session, permission="vpn", role="developer", subrole="frontend", mode=AUTO, **_kw())
    ensure_rule(session, permission="db", role="developer", subrole="backend", mode=AUTO, **_kw())
    session.commit()


def _add_unrelated_rules(session, count):
    """Rules none of which may come back for (developer/backend, vpn): first other permissions
    for the subject's own role and the wildcard, then other roles, also on vpn."""
    now = utcnow()
    keys = [f"noise-{i}" for i in range(20)]
    session.execute(insert(Permission), [
        {"key": k, "name": k, "description": "", "max_duration_minutes": 60,
         "requires_justification": False, "provisioner": "none", "provisioner_config": {},
         "builtin": False, "created_at": now} for k in keys])
    triples = [(k, role, subrole) for k in keys
               for role, subrole in (("developer", "backend"), ("developer", "*"), ("*", "*"))]
    i = 0
    while len(triples) < count:
        triples.append(("vpn" if i % 2 else keys[i % 20], f"role{i}", "*" if i % 3 else f"sub{i}"))
        i += 1
    session.execute(insert(PolicyRule), [
        {"id": f"noise-{n:05d}", "permission_key": p, "role": r, "subrole": s, "mode": "auto",
         "max_duration_minutes": None, "approvers": [], "approvals_required": 1,
         "created_at": now} for n, (p, r, s) in enumerate(triples[:count])])
    session.commit()


def test_candidate_rules_count_does_not_grow_with_unrelated_rules(app, db_session):
    _base_rules(app, db_session)
    before = candidate_rules(db_session, SUBJECT, permission="vpn")
    assert sorted((r.role, r.subrole) for r in before) == \
        [("*", "*"), ("developer", "*"), ("developer", "backend")]
    _add_unrelated_rules(db_session, 2000)
    after = candidate_rules(db_session, SUBJECT, permission="vpn")
    assert sorted(r.id for r in after) == sorted(r.id for r in before)
    assert [r.id for r in candidate_rules(db_session, SUBJECT, permission="db")] == \
        [r.id for r in candidate_rules(db_session, SUBJECT, permission="db")]
    assert len(candidate_rules(db_session, SUBJECT, permission="db")) == 1


def _captured_lookup(app, session):
    """Run candidate_rules for one permission and return the SQL and parameters it sent."""
    engine = app.extensions["security_api"].engine
    seen = []

    def capture(conn, cursor, statement, parameters, context, executemany):
        if "policy_rules" in statement:
            seen.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", capture)
    try:
        candidate_rules(session, SUBJECT, permission="vpn")
    finally:
        event.remove(engine, "before_cursor_execute", capture)
    assert len(seen) == 1
    return seen[0]


@pytest.mark.parametrize("unrelated", [10, 2000])
def test_candidate_rules_uses_an_index_not_a_scan(app, db_session, database_url, unrelated):
    if not database_url.startswith("sqlite"):
        pytest.skip("EXPLAIN QUERY PLAN is SQLite's; PostgreSQL plans depend on statistics")
    _base_rules(app, db_session)
    _add_unrelated_rules(db_session, unrelated)
    statement, parameters = _captured_lookup(app, db_session)
    raw = db_session.connection().connection.driver_connection
    raw.execute("ANALYZE")
    try:
        plan = " | ".join(row[-1] for row in raw.execute("EXPLAIN QUERY PLAN " + statement,
                                                         parameters).fetchall())
    finally:
        raw.execute("DROP TABLE IF EXISTS sqlite_stat1")
        db_session.rollback()
    assert "USING INDEX" in plan or "USING COVERING INDEX" in plan, plan
    assert "sqlite_autoindex_policy_rules" in plan, plan
    assert "SCAN policy_rules" not in plan, plan
    # The search is bounded by the permission (the index's first column), and by the role.
    assert "(permission_key=? AND role=?" in plan, plan


def test_index_look_up_is_what_sqlite_does_without_the_index(app, db_session, database_url):
    """Control: the same statement on a copy of the table without index is a scan, so the
    previous test can fail."""
    if not database_url.startswith("sqlite"):
        pytest.skip("SQLite only")
    _base_rules(app, db_session)
    statement, parameters = _captured_lookup(app, db_session)
    raw = db_session.connection().connection.driver_connection
    raw.execute("CREATE TEMP TABLE policy_rules AS SELECT * FROM main.policy_rules")
    try:
        plan = " | ".join(row[-1] for row in raw.execute("EXPLAIN QUERY PLAN " + statement,
                                                         parameters).fetchall())
    finally:
        raw.execute("DROP TABLE temp.policy_rules")
        db_session.rollback()
    assert "SCAN policy_rules" in plan, plan


def test_unique_index_exists_on_permission_role_subrole(db_session, database_url):
    """Both databases: the index behind the look-up exists with the right leading columns."""
    if database_url.startswith("sqlite"):
        names = [row[1] for row in db_session.execute(text("PRAGMA index_list('policy_rules')"))]
        columns = {name: [r[2] for r in db_session.execute(text(f"PRAGMA index_info('{name}')"))]
                   for name in names}
    else:
        rows = db_session.execute(text(
            "SELECT i.relname, array_agg(a.attname ORDER BY k.n) FROM pg_index x "
            "JOIN pg_class t ON t.oid = x.indrelid JOIN pg_class i ON i.oid = x.indexrelid "
            "JOIN LATERAL unnest(x.indkey) WITH ORDINALITY AS k(attnum, n) ON true "
            "JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = k.attnum "
            "WHERE t.relname = 'policy_rules' AND t.relnamespace = current_schema()::regnamespace "
            "GROUP BY i.relname"))
        columns = {name: list(cols) for name, cols in rows}
    assert ["permission_key", "role", "subrole"] in columns.values(), columns
