"""Service endpoints, envelope, error handlers, security headers, negotiation."""
import re

import pytest

from tests.conftest import bearer

SECURITY_HEADERS = {
    "Strict-Transport-Security": "max-age=63072000; includeSubDomains",
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}


def test_ping(client):
    response = client.get("/v1/ping")
    assert response.status_code == 200
    assert response.json == {"message": "pong"}


@pytest.mark.parametrize("path", ["/v1/ping", "/nope", "/v1/login", "/v1/profile", "/v1/docs"])
def test_security_headers_on_every_response(client, path):
    response = client.get(path)
    for name, value in SECURITY_HEADERS.items():
        assert response.headers[name] == value
    assert "default-src 'none'" in response.headers["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]
    assert response.headers["Server"] == "security-api"
    assert response.headers["X-Request-ID"]


def test_request_id_is_echoed_when_sane(client):
    assert client.get("/v1/ping", headers={"X-Request-ID": "abc-123"}).headers["X-Request-ID"] == "abc-123"


@pytest.mark.parametrize("bad", ["a b", "x" * 200, "<script>", "é"])
def test_request_id_is_replaced_when_not_sane(client, bad):
    echoed = client.get("/v1/ping", headers={"X-Request-ID": bad}).headers["X-Request-ID"]
    assert echoed != bad and len(echoed) == 32


def test_unknown_path_is_json_404(client):
    response = client.get("/v1/does-not-exist")
    assert response.status_code == 404
    assert response.json["error"] == "not_found"
    assert response.mimetype == "application/json"


def test_wrong_method_is_json_405_with_allow(client):
    response = client.delete("/v1/ping")
    assert response.status_code == 405
    assert response.json["message"] == \
        "Method not allowed or missing params, check API doc to solve the problem."
    assert "GET" in response.headers["Allow"]


@pytest.mark.parametrize("path", ["/", "/v1"])
def test_index_json_by_default_and_html_for_browsers(client, path):
    as_json = client.get(path)
    assert as_json.status_code == 200
    assert as_json.json["links"]["docs"] == "/v1/docs"
    as_html = client.get(path, headers={"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"})
    if path == "/":  # API.md part 2: a browser at the root goes to the portal
        assert as_html.status_code == 302 and as_html.headers["Location"] == "/portal/"
        return
    assert as_html.mimetype == "text/html"
    assert b"/v1/docs" in as_html.data
    # Only what a browser can open is a link: login is POST-only (a link showed a 405).
    hrefs = re.findall(r'href="([^"]+)"', as_html.get_data(as_text=True))
    assert "/v1/login" not in hrefs and "/v1/docs" in hrefs
    assert all(client.get(href).status_code == 200 for href in hrefs)
    assert b"<code>/v1/login</code>" in as_html.data


def test_accept_excluding_json_is_406(client):
    response = client.get("/v1/ping", headers={"Accept": "text/html"})
    assert response.status_code == 406
    assert response.json["error"] == "not_acceptable"


def test_health_reports_database(client):
    response = client.get("/v1/health")
    assert response.status_code == 200
    assert response.json["checks"]["database"] == "ok"


def test_health_is_503_when_database_is_down(make_app):
    app = make_app(database_url="postgresql+psycopg://nobody@127.0.0.1:1/none")
    response = app.test_client().get("/v1/health")
    assert response.status_code == 503
    assert response.json["checks"]["database"] == "down"


def test_database_down_on_login_is_503_not_500(make_app):
    app = make_app(database_url="postgresql+psycopg://nobody@127.0.0.1:1/none")
    response = app.test_client().post("/v1/login", json={"totp": "123456"},
                                      headers={"Authorization": "Basic YTpi"})
    assert response.status_code == 503
    assert response.json["error"] == "service_unavailable"


def test_unhandled_error_is_generic_500_with_request_id(app):
    @app.get("/v1/boom")
    def boom():
        raise RuntimeError("secret detail")

    response = app.test_client().get("/v1/boom", headers={"X-Request-ID": "req-1"})
    assert response.status_code == 500
    assert response.json["request_id"] == "req-1"
    assert "secret detail" not in response.get_data(as_text=True)


def test_cors_is_off_by_default(client):
    response = client.get("/v1/ping", headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in response.headers


def test_cors_allows_only_configured_origins(make_app):
    client = make_app(cors_origins=("https://tools.example",)).test_client()
    allowed = client.get("/v1/ping", headers={"Origin": "https://tools.example"})
    assert allowed.headers["Access-Control-Allow-Origin"] == "https://tools.example"
    other = client.get("/v1/ping", headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in other.headers


def test_docs_page_uses_local_assets_only(client):
    page = client.get("/v1/docs", headers={"Accept": "text/html"})
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert "http://" not in html and "https://" not in html
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css", "init.js"):
        with client.get(f"/v1/docs/assets/{asset}") as response:
            assert response.status_code == 200
    assert client.get("/v1/docs/assets/../../config.py").status_code == 404


def test_jwks_is_empty_for_hs256(client):
    response = client.get("/v1/.well-known/jwks.json")
    assert response.status_code == 200
    assert response.json["keys"] == []


def test_openapi_document_is_valid_and_lists_every_route(app, client):
    from openapi_spec_validator import validate

    document = client.get("/v1/openapi.json").json
    assert document["openapi"] == "3.1.0"
    validate(document)
    for rule in app.url_map.iter_rules():
        view = app.view_functions[rule.endpoint]
        if getattr(view, "serves_assets", False) or rule.rule.startswith("/v1/boom") \
                or rule.endpoint.startswith("portal."):  # HTML pages, not the API
            continue
        path = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule)  # <converter:name>
        assert path in document["paths"], f"{rule.rule} missing from the OpenAPI document"
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            assert method.lower() in document["paths"][path]


def test_openapi_marks_bearer_routes(client):
    paths = client.get("/v1/openapi.json").json["paths"]
    assert paths["/v1/profile"]["get"]["security"] == [{"bearerAuth": []}]
    assert paths["/v1/login"]["post"]["security"] == [{"basicAuth": []}]
    assert paths["/v1/ping"]["get"]["security"] == []


def test_every_route_is_in_the_postman_collection(app):
    import json
    import pathlib
    import re

    collection = json.loads((pathlib.Path(__file__).parent.parent / "postman_collection.json").read_text())
    seen = set()

    def walk(items):
        for item in items:
            if "item" in item:
                walk(item["item"])
            else:
                request = item["request"]
                url = request["url"]["raw"] if isinstance(request["url"], dict) else request["url"]
                path = "/" + url.split("}}", 1)[-1].lstrip("/").split("?")[0]
                path = re.sub(r"\{\{[^}]+\}\}", "*", path)
                seen.add((request["method"], path.rstrip("/") or "/"))

    walk(collection["item"])
    for rule in app.url_map.iter_rules():
        if getattr(app.view_functions[rule.endpoint], "serves_assets", False) \
                or rule.endpoint.startswith("portal."):  # HTML pages, not the API
            continue
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            path = re.sub(r"<[^>]+>", "*", rule.rule)
            assert (method, path) in seen, f"{method} {rule.rule} missing from Postman"


def test_profile_requires_a_token(client):
    response = client.get("/v1/profile")
    assert response.status_code == 401
    assert response.json["error"] == "missing_token"
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_basic_credentials_are_not_accepted_for_bearer_routes(client, make_user):
    make_user()
    response = client.get("/v1/profile", headers={"Authorization": "Basic YWxpY2U6eA=="})
    assert response.status_code == 401


def test_profile_shows_claims_and_user(client, make_user, login_as):
    user = make_user(email="alice@example.com")
    response = client.get("/v1/profile", headers=bearer(login_as(user)["token"]))
    assert response.status_code == 200
    claims = response.json["jwt_data"]
    for claim in ("iss", "aud", "sub", "iat", "nbf", "exp", "jti", "user_id", "user_name",
                  "user_roles", "role", "subrole"):
        assert claim in claims
    assert claims["type"] == "access"
    assert claims["user_roles"] == ["developer", "developer/backend"]
    assert response.json["user"] == {
        "id": user.id, "username": "alice", "email": "alice@example.com", "role": "developer",
        "subrole": "backend", "kind": "person", "active": True, "totp_enabled": True,
        "created_at": response.json["user"]["created_at"]}
    assert response.json["user"]["created_at"].endswith("Z")


def test_options_answers_json_with_allow(client):
    response = client.options("/v1/login")
    assert response.status_code == 200
    assert response.json == {"message": None}
    assert "POST" in response.headers["Allow"]
