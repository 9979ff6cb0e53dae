"""What schemathesis (scripts/fuzz.sh) found against the live service, pinned through the API.

Each test names the request that went wrong and checks the fix: the service answers what
/v1/openapi.json promises, and the document tells the truth about what the service accepts.
"""
from __future__ import annotations

import pytest

from tests.conftest import bearer


@pytest.fixture
def admin(make_user, login_as):
    """Headers of a signed-in security/admin (holds security-api.admin and .audit standing)."""
    return bearer(login_as(make_user("root", role="security", subrole="admin"))["token"])


@pytest.fixture
def document(client):
    return client.get("/v1/openapi.json").json


def _operation(document, method: str, path: str) -> dict:
    return document["paths"][path][method]


def _query(document, method: str, path: str) -> dict:
    return {p["name"]: p for p in _operation(document, method, path).get("parameters", [])
            if p["in"] == "query"}


def _body_schema(document, method: str, path: str) -> dict:
    ref = _operation(document, method, path)["requestBody"]["content"]["application/json"][
        "schema"]["$ref"]
    return document["components"]["schemas"][ref.rsplit("/", 1)[1]]


# ---- POST /v1/admin/permissions {"max_duration_minutes": 16.0} answered 412 -----------------------
# JSON Schema's `integer` includes 16.0; strict pydantic refused it.
@pytest.mark.parametrize("value", [16.0, 16])
def test_an_integral_number_is_an_integer(client, admin, value):
    response = client.post("/v1/admin/permissions", headers=admin, json={
        "key": "vpn", "name": "VPN", "max_duration_minutes": value})
    assert response.status_code == 201, response.json
    assert response.json["permission"]["max_duration_minutes"] == 16


@pytest.mark.parametrize("value", ["16", True, 16.5])
def test_other_numbers_and_strings_are_still_refused(client, admin, value):
    response = client.post("/v1/admin/permissions", headers=admin, json={
        "key": "vpn", "name": "VPN", "max_duration_minutes": value})
    assert response.status_code == 412
    assert response.json["errors"][0]["field"] == "max_duration_minutes"


def test_a_string_field_does_not_take_an_integral_number(client, admin):
    response = client.post("/v1/admin/permissions", headers=admin, json={
        "key": "vpn", "name": 1.0, "max_duration_minutes": 5})
    assert response.status_code == 412


# ---- POST /v1/admin/roles {"subroles": [""]} / ["0", "0"] answered 412 undocumented --------------
def test_subroles_are_documented_as_unique_slugs(document):
    subroles = _body_schema(document, "post", "/v1/admin/roles")["properties"]["subroles"]
    assert subroles["uniqueItems"] is True
    assert subroles["items"]["pattern"] == "^[a-z0-9][a-z0-9_-]{0,63}$"


def test_an_empty_subrole_is_refused_where_it_is(client, admin):
    response = client.post("/v1/admin/roles", headers=admin,
                           json={"name": "developer", "subroles": [""]})
    assert response.status_code == 412
    assert response.json["errors"][0]["field"] == "subroles.0"


# ---- POST /v1/password with no body answered 412: the document said the body was optional -------
@pytest.mark.parametrize(("method", "path", "required"), [
    ("post", "/v1/password", True),
    ("post", "/v1/admin/roles/{name}/subroles", True),
    ("post", "/v1/login", False),
    ("post", "/v1/logout", False),
    ("patch", "/v1/admin/users/{user_id}", False),
])
def test_request_body_is_required_when_a_field_is(document, method, path, required):
    assert _operation(document, method, path)["requestBody"]["required"] is required


def test_no_body_where_one_is_required_is_a_412(client, make_user, login_as):
    token = login_as(make_user("alice"))["token"]
    response = client.post("/v1/password", headers=bearer(token))
    assert response.status_code == 412
    assert response.json["error"] == "missing_params"


# ---- GET /v1/requests?scope=&limit= answered 412 for "strings" the document allowed --------------
def test_query_parameters_are_documented_as_parsed(document):
    requests = _query(document, "get", "/v1/requests")
    assert requests["limit"]["schema"] == {"type": "integer", "minimum": 1, "maximum": 200}
    assert requests["scope"]["schema"]["enum"] == ["own", "approvable", "all", "unreviewed"]
    assert "pending" in requests["status"]["schema"]["enum"]
    users = _query(document, "get", "/v1/admin/users")
    assert users["kind"]["schema"]["enum"] == ["person", "service"]
    assert users["active"]["schema"]["enum"] == ["true", "false"]
    audit = _query(document, "get", "/v1/audit")
    assert audit["since"]["schema"]["format"] == "date-time"
    assert audit["actor"]["schema"]["pattern"]
    for path in ("/v1/check", "/v1/admin/policies/explain"):
        for name in ("user", "permission"):
            parameter = _query(document, "get", path)[name]
            assert parameter["required"] is True
            assert parameter["schema"]["minLength"] == 1


@pytest.mark.parametrize(("actor", "status"), [
    ("r\u00f6ot", 200),      # printable, not ASCII: the document's pattern allows it
    ("root\x1b[2J", 412),    # a control character: refused by both
    ("", 412),
    ("x" * 257, 412),
])
def test_audit_text_filters_follow_the_documented_pattern(client, admin, actor, status):
    assert client.get("/v1/audit", query_string={"actor": actor},
                      headers=admin).status_code == status


# ---- PATCH /v1/admin/users/<id> {"subrole": null} --------------------------------------------------
# The document offered null for role, subrole and active though the API refuses it; the first
# fix (a skipped null branch) turned the refusal into a 500, which the fuzzer caught too.
@pytest.mark.parametrize("field", ["role", "subrole", "active"])
def test_null_is_refused_and_not_documented(client, admin, make_user, document, field):
    user = make_user("bob")
    response = client.patch(f"/v1/admin/users/{user.id}", headers=admin, json={field: None})
    assert response.status_code == 412
    assert response.json["errors"][0]["field"] == field
    schema = _body_schema(document, "patch", "/v1/admin/users/{user_id}")["properties"][field]
    assert "anyOf" not in schema and "default" not in schema


# ---- OPTIONS /v1/admin/policies/explain advertised PATCH and DELETE -------------------------------
def test_explain_is_not_a_rule_id(client, admin):
    options = client.options("/v1/admin/policies/explain", headers=admin)
    assert set(options.headers["Allow"].split(", ")) == {"GET", "HEAD", "OPTIONS"}
    patched = client.patch("/v1/admin/policies/explain", headers=admin, json={"mode": "auto"})
    assert patched.status_code == 405
    assert patched.json["error"] == "method_not_allowed"
    assert set(patched.headers["Allow"].split(", ")) == {"GET", "HEAD", "OPTIONS"}


def test_other_rule_ids_still_reach_the_handler(client, admin):
    assert client.get("/v1/admin/policies/explained", headers=admin).status_code == 404


# ---- GET /v1/admin/policies/explain?...&token=x answered an undocumented 400 --------------------
def test_credentials_in_the_query_are_a_documented_400_everywhere(client, document):
    response = client.get("/v1/ping", query_string={"token": "x"})
    assert response.status_code == 400
    assert response.json["error"] == "credentials_in_query"
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            assert "400" in operation["responses"], (method, path)


def test_gunicorn_refusals_are_documented_everywhere(document):
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            assert {"414", "431"} <= set(operation["responses"]), (method, path)


# ---- PATCH /v1/admin/permissions/vpn with the body b"\x0c" answered 200 "Permission updated." ---
# bytes.strip() took the form feed for whitespace, so the body counted as empty, i.e. {}.
def _patch_new_permission(client, admin, body: bytes):
    created = client.post("/v1/admin/permissions", headers=admin, json={
        "key": "vpn", "name": "VPN", "max_duration_minutes": 60})
    assert created.status_code == 201, created.json
    return client.patch("/v1/admin/permissions/vpn", headers=admin, data=body,
                        content_type="application/json")


@pytest.mark.parametrize("body", [b"\x0c", b"\x0b", b" \x0c\n", b"\x1c", b"\xc2\xa0"])
def test_a_body_of_non_json_whitespace_is_bad_json(client, admin, body):
    response = _patch_new_permission(client, admin, body)
    assert response.status_code == 400, response.json
    assert response.json["error"] == "bad_json"


@pytest.mark.parametrize("body", [b"", b" \t\r\n"])
def test_an_empty_or_json_whitespace_body_is_still_empty(client, admin, body):
    response = _patch_new_permission(client, admin, body)
    assert response.status_code == 200, response.json
    assert response.json["permission"]["max_duration_minutes"] == 60


# ---- GET /v1/admin/policies?permission=Z%C2%89%C2%89%00%23~ answered 500 on PostgreSQL ------------
# PostgreSQL refuses NUL in text, even to compare; SQLite stored it. Query parameters, path
# segments and body text fields all reached a query.
NUL_TEXT = "a\x00b"
NUL_QUERIES = [("/v1/admin/policies", "permission"), ("/v1/admin/policies", "role"),
               ("/v1/admin/users", "role"), ("/v1/admin/users", "subrole"),
               ("/v1/admin/users", "q"), ("/v1/requests", "permission")]
# /v1/check needs security-api.check, which decides before its parameters do (403 first): its
# NUL case, and every other query parameter's, is in test_query_params.py with a caller who
# holds it.


@pytest.mark.parametrize("path,name", NUL_QUERIES)
def test_a_query_parameter_with_nul_is_a_412_naming_it(client, admin, path, name):
    response = client.get(path, headers=admin, query_string={"user": "x", "permission": "y",
                                                               name: NUL_TEXT})
    assert response.status_code == 412, response.json
    assert response.json["errors"] == [{"field": name,
                                        "problem": "must not contain NUL characters"}]


@pytest.mark.parametrize("path", ["/v1/admin/permissions/a%00b", "/v1/admin/policies/a%00b",
                                  "/v1/admin/roles/a%00b", "/v1/admin/users/a%00b",
                                  "/v1/requests/a%00b"])
def test_a_path_segment_with_nul_matches_nothing(client, admin, path):
    response = client.get(path, headers=admin)
    assert response.status_code == 404, response.json
    assert response.json["error"] == "not_found"


@pytest.mark.parametrize("path,body,field", [
    ("/v1/admin/permissions", {"key": "k1", "name": NUL_TEXT, "max_duration_minutes": 5}, "name"),
    ("/v1/admin/permissions", {"key": "k2", "name": "n", "description": NUL_TEXT,
                               "max_duration_minutes": 5}, "description"),
    ("/v1/admin/roles", {"name": "r1", "description": NUL_TEXT, "subroles": ["x"]},
     "description"),
    ("/v1/admin/users", {"username": "u1", "email": "a\x00@b.cc", "role": "security",
                         "subrole": "admin"}, "email"),
])
def test_a_body_text_with_nul_is_a_412_naming_it(client, admin, path, body, field):
    response = client.post(path, headers=admin, json=body)
    assert response.status_code == 412, response.json
    assert response.json["errors"][0]["field"] == field
    assert "NUL" in response.json["errors"][0]["problem"]


def test_a_list_item_with_nul_is_refused_too(client, admin):
    response = client.post("/v1/admin/roles", headers=admin,
                           json={"name": "r1", "subroles": ["x", NUL_TEXT]})
    assert response.status_code == 412, response.json


def test_the_document_says_free_text_holds_no_nul(document):
    no_nul = "^[^\\x00]*$"
    assert _query(document, "get", "/v1/admin/policies")["permission"]["schema"]["pattern"] \
        == no_nul
    permission = _body_schema(document, "post", "/v1/admin/permissions")["properties"]
    assert permission["name"]["pattern"] == no_nul
    assert permission["key"]["pattern"] != no_nul  # its own slug pattern excludes NUL already


def test_operations_with_query_or_path_parameters_document_412_and_404(document):
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            where = {p["in"] for p in operation.get("parameters", [])}
            if "query" in where:
                assert "412" in operation["responses"], (method, path)
            if "path" in where:
                assert "404" in operation["responses"], (method, path)
