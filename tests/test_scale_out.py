"""Two instances of one deployment (two gunicorns, 2 workers each, one PostgreSQL schema, one
Redis prefix, one JWT secret): every security guarantee holds across them.

Lockout, TOTP replay, token revocation and exactly-once approval must not depend on which
instance a load balancer picks.
"""
from __future__ import annotations

import threading
import uuid

import pytest

from security_api.enums import AuditAction, PolicyMode
from tests import test_concurrency as kit
from tests.conftest import TEST_DATABASE_URL, TEST_REDIS_URL
from tests.servers import basic_header, call, start_gunicorn
from tests.test_concurrency import SIGNING_SECRET, add_webhook_permission, audit_count

pytestmark = pytest.mark.skipif(
    not ((TEST_DATABASE_URL or "").startswith("postgresql") and TEST_REDIS_URL),
    reason="scale-out needs PostgreSQL (TEST_DATABASE_URL) and Redis (TEST_REDIS_URL)")
receiver = kit.receiver
APPROVALS = 12


@pytest.fixture
def app(make_app):
    return make_app(webhook_signing_secret=SIGNING_SECRET)


@pytest.fixture
def pair(app, database_url, tmp_path):
    """Instances A and B sharing the database, the Redis prefix and every secret."""
    shared = {"jwt_secret": "scale-out-" + uuid.uuid4().hex + uuid.uuid4().hex,
              "redis_prefix": f"test:{uuid.uuid4().hex}:",
              "env": {"WEBHOOK_SIGNING_SECRET": SIGNING_SECRET}}
    with start_gunicorn(database_url, log_dir=tmp_path, name="a", **shared) as a, \
            start_gunicorn(database_url, log_dir=tmp_path, name="b", **shared) as b:
        yield a.base, b.base


def login(base, user, code=None):
    """Sign in on one instance; return (status, body)."""
    status, body, _ = call(base, "POST", "/v1/login",
                           headers=basic_header(user.username, user.password),
                           body={"totp": code or user.next_code()})
    return status, body


def token_of(base, user) -> dict:
    status, body = login(base, user)
    assert status == 200, body
    return {"Authorization": "Bearer " + body["token"]}


def together(*calls):
    """Run the calls in threads released at once; return their results in order."""
    barrier = threading.Barrier(len(calls))
    results: list = [None] * len(calls)

    def run(index, one):
        barrier.wait(timeout=30)
        results[index] = one()

    threads = [threading.Thread(target=run, args=(i, one)) for i, one in enumerate(calls)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads), "a call hung"
    return results


def test_lockout_counts_failures_on_both_instances(pair, make_user):
    a, b = pair
    alice = make_user("alice")
    wrong = basic_header(alice.username, "not-her-password")
    failures = [call(base, "POST", "/v1/login", headers=wrong, body={"totp": "000000"})[0]
                for base in (a, b, a, b, a)]
    assert failures == [401] * 5
    # Locked everywhere, even with the right password and a fresh code.
    assert login(a, alice)[0] == 429
    assert login(b, alice)[0] == 429


def test_a_totp_code_is_accepted_once_across_instances(pair, make_user):
    a, b = pair
    alice = make_user("alice")
    code = alice.next_code()
    assert login(a, alice, code)[0] == 200
    assert login(b, alice, code)[0] == 401
    for i in range(3):  # the same code raced on both instances: exactly one token
        user = make_user(f"racer{i}")
        code = user.next_code()
        statuses = sorted(status for status, _ in together(
            lambda u=user, c=code: login(a, u, c), lambda u=user, c=code: login(b, u, c)))
        assert statuses == [200, 401]


def test_logout_and_password_change_revoke_tokens_on_the_other_instance(pair, make_user):
    a, b = pair
    alice = make_user("alice")
    on_a = token_of(a, alice)
    assert call(b, "GET", "/v1/profile", headers=on_a)[0] == 200
    assert call(a, "POST", "/v1/logout", headers=on_a)[0] == 200
    assert call(b, "GET", "/v1/profile", headers=on_a)[0] == 401

    kept_on_a, on_b = token_of(a, alice), token_of(b, alice)
    assert call(a, "GET", "/v1/profile", headers=kept_on_a)[0] == 200
    status, body, _ = call(b, "POST", "/v1/password", headers=on_b, body={
        "current_password": alice.password, "new_password": "quartz-lantern-meadow-77"})
    assert status == 200, body
    assert call(a, "GET", "/v1/profile", headers=kept_on_a)[0] == 401
    assert call(b, "GET", "/v1/profile", headers=on_b)[0] == 401


def test_concurrent_approvals_on_both_instances_grant_once(app, pair, make_user, receiver):
    a, b = pair
    alice = make_user("alice")
    leads = [make_user(f"lead{i}", role="security", subrole="lead") for i in range(3)]
    add_webhook_permission(app, receiver, "vpn", mode=PolicyMode.APPROVAL)
    status, created, _ = call(a, "POST", "/v1/requests", headers=token_of(a, alice),
                              body={"permission": "vpn", "justification": "scale-out"})
    assert status == 201, created
    request_id = created["request"]["id"]
    tokens = [token_of(base, lead) for lead in leads for base in (a, b)]

    def approve(index):
        base = (a, b)[index % 2]
        return call(base, "POST", f"/v1/requests/{request_id}/approve",
                    headers=tokens[index % len(tokens)], body={"comment": "ok"}, timeout=60)[0]

    statuses = together(*[lambda i=i: approve(i) for i in range(APPROVALS)])
    assert 200 in statuses and set(statuses) <= {200, 409}, statuses
    assert receiver.count("grant", request_id) == 1
    assert audit_count(app, AuditAction.REQUEST_ACTIVATED, request_id) == 1
    assert audit_count(app, AuditAction.PROVISIONING_SUCCEEDED, request_id) == 1
    status, shown, _ = call(b, "GET", f"/v1/requests/{request_id}", headers=tokens[0])
    assert status == 200 and shown["request"]["status"] == "active"
    admin = make_user("root", role="security", subrole="admin")
    status, report, _ = call(a, "GET", "/v1/audit/verify", headers=token_of(b, admin))
    assert status == 200 and report["ok"] is True, report


@pytest.mark.parametrize("change", ["logout", "password", "deactivation", "role"])
def test_a_revocation_on_a_is_honoured_by_b_on_the_very_next_request(pair, make_user, change):
    # B serves the token from its principal cache after the first use; the change made on A
    # must reach B before A answers (the user's auth version in Redis), not at some expiry.
    a, b = pair
    alice = make_user("alice")
    make_user("bob", role="developer", subrole="frontend")  # a subrole to move alice to
    admin = token_of(a, make_user("root", role="security", subrole="admin"))
    on_b = token_of(a, alice)
    for _ in range(3):  # every worker of B may have cached it: any may answer next
        assert call(b, "GET", "/v1/profile", headers=on_b)[0] == 200
    if change == "logout":
        status, body, _ = call(a, "POST", "/v1/logout", headers=on_b)
    elif change == "password":
        status, body, _ = call(a, "POST", "/v1/password", headers=on_b, body={
            "current_password": alice.password, "new_password": "quartz-lantern-meadow-77"})
    else:
        fields = {"active": False} if change == "deactivation" else {"subrole": "frontend"}
        status, body, _ = call(a, "PATCH", f"/v1/admin/users/{alice.id}", headers=admin,
                               body=fields)
    assert status == 200, body
    for _ in range(3):
        status, body, _ = call(b, "GET", "/v1/profile", headers=on_b)
        assert status == 401 and body["error"] in {"token_revoked", "invalid_token"}, body
