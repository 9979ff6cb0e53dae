"""Query strings go through read_query(Model): authentication first, then NUL, then the model.

The operations and their parameters are taken from /v1/openapi.json, which is generated from
the same models the views validate with, so a new query parameter is covered here unasked.
"""
from __future__ import annotations

import pytest

from security_api import audit
from security_api.access.catalog import ensure_rule
from security_api.clock import utcnow
from security_api.enums import PolicyMode
from tests.conftest import bearer
from tests.portal_support import signed_in_client

NUL_TEXT = "a\x00b"
NUL_PROBLEM = "must not contain NUL characters"
# Known operations with query parameters: the walk below must find at least these.
EXPECTED = {("/v1/check", "get"), ("/v1/requests", "get"), ("/v1/admin/users", "get"),
            ("/v1/admin/policies", "get"), ("/v1/admin/policies/explain", "get"),
            ("/v1/audit", "get"), ("/v1/audit/export", "get")}


@pytest.fixture
def caller(app, make_user, login_as):
    """Headers of a security/admin who also holds security-api.check (every query endpoint)."""
    services = app.extensions["security_api"]
    with services.session_factory() as session:
        ensure_rule(session, permission="security-api.check", role="security", subrole="admin",
                    mode=PolicyMode.STANDING, actor="test", origin=audit.Origin(), now=utcnow())
        session.commit()
    return bearer(login_as(make_user("root", role="security", subrole="admin"))["token"])


def _query_operations(client) -> list[tuple[str, str, list[str], bool]]:
    """(path, method, query parameter names, needs a token) of every documented operation."""
    document = client.get("/v1/openapi.json").json
    found = []
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            names = [p["name"] for p in operation.get("parameters", []) if p["in"] == "query"]
            if names:
                found.append((path, method, names, {"bearerAuth": []} in operation["security"]))
    return found


def _valid_query(names: list[str]) -> dict:
    """Values every parameter accepts, so only the poisoned one is refused."""
    valid = {"scope": "own", "status": "pending", "kind": "person", "active": "true",
             "limit": "5", "since": "2026-01-01T00:00:00Z", "until": "2026-01-02T00:00:00Z"}
    return {name: valid.get(name, "x") for name in names if name != "cursor"}


def test_every_query_endpoint_is_found_and_needs_a_token(client):
    operations = _query_operations(client)
    assert EXPECTED <= {(path, method) for path, method, _names, _token in operations}
    assert all(token for _path, _method, _names, token in operations)


def test_without_a_token_a_nul_in_the_query_is_still_a_401(client):
    for path, method, names, _token in _query_operations(client):
        for name in names:
            response = client.open(path, method=method.upper(),
                                   query_string={**_valid_query(names), name: NUL_TEXT})
            assert response.status_code == 401, (path, name, response.json)
            assert response.json["error"] == "missing_token"
            assert "Bearer" in response.headers["WWW-Authenticate"]


def test_the_reported_fuzz_case_is_a_401(client):
    response = client.get("/v1/audit/export?since=%00")
    assert response.status_code == 401, response.json


def test_with_a_token_a_nul_in_the_query_is_a_412_naming_the_parameter(client, caller):
    for path, method, names, _token in _query_operations(client):
        for name in names:
            response = client.open(path, method=method.upper(), headers=caller,
                                   query_string={**_valid_query(names), name: NUL_TEXT})
            assert response.status_code == 412, (path, name, response.json)
            assert response.json["errors"] == [{"field": name, "problem": NUL_PROBLEM}], path


def test_a_nul_in_a_parameter_name_is_named_escaped(client, caller):
    response = client.get("/v1/requests", headers=caller, query_string={"x\x00y": "1"})
    assert response.status_code == 412
    assert response.json["errors"] == [{"field": "x\\x00y", "problem": NUL_PROBLEM}]


def test_a_nul_where_no_query_is_read_never_reaches_anything(client, caller):
    # /v1/profile reads no query parameter: the NUL is ignored like any unknown parameter.
    response = client.get("/v1/profile", headers=caller, query_string={"junk": NUL_TEXT})
    assert response.status_code == 200, response.json


def test_the_token_is_judged_before_the_parameters(client, make_user, login_as):
    # A valid token without the permission: 403, whatever the query says.
    alice = bearer(login_as(make_user("alice"))["token"])
    response = client.get("/v1/audit", headers=alice, query_string={"limit": "0"})
    assert response.status_code == 403, response.json


@pytest.mark.parametrize("path,query", [
    ("/v1/check", {}), ("/v1/check", {"user": "", "permission": "p"}),
    ("/v1/admin/policies/explain", {"permission": "p"}),
])
def test_missing_or_empty_required_parameters(client, caller, path, query):
    response = client.get(path, headers=caller, query_string=query)
    assert response.status_code == 412, response.json
    assert response.json["error"] == "missing_params"
    expected = [name for name in ("user", "permission") if not query.get(name)]
    assert response.json["errors"] == [{"field": name, "problem": "is required"}
                                       for name in expected]


@pytest.mark.parametrize("limit", ["0", "201", "+5", " 5", "5.0", "\u0665", "1" * 5000, ""])
def test_one_limit_rule_for_every_list(client, caller, limit):
    for path in ("/v1/requests", "/v1/admin/users", "/v1/audit"):
        response = client.get(path, headers=caller, query_string={"limit": limit})
        assert response.status_code == 412, (path, response.json)
        assert response.json["errors"] == [{"field": "limit",
                                            "problem": "a whole number from 1 to 200"}]


@pytest.mark.parametrize("limit", ["1", "200", "007"])
def test_limits_in_range_are_taken(client, caller, limit):
    for path in ("/v1/requests", "/v1/admin/users", "/v1/audit"):
        assert client.get(path, headers=caller, query_string={"limit": limit}).status_code == 200


def test_every_problem_is_reported_at_once_in_parameter_order(client, caller):
    response = client.get("/v1/audit", headers=caller, query_string={
        "actor": "\x1b", "since": "2026-01-02T00:00:00Z", "until": "2026-01-01T00:00:00Z",
        "limit": "0"})
    assert response.status_code == 412
    assert [error["field"] for error in response.json["errors"]] == ["actor", "until", "limit"]
    assert response.json["errors"][1]["problem"] == "must not be before since"


@pytest.mark.parametrize("path", ["/portal/requests", "/portal/approvals", "/portal/admin/users",
                                  "/portal/admin/audit", "/portal/sign-in"])
@pytest.mark.parametrize("name", ["cursor", "q", "role", "active", "actor", "since", "next"])
def test_portal_pages_never_fail_on_a_nul_in_the_query(app, make_user, path, name):
    portal = signed_in_client(app, make_user("root", role="security", subrole="admin"))
    response = portal.get(path, query_string={name: NUL_TEXT})
    assert response.status_code < 500, (path, name)
