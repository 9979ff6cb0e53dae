"""Bad input at the edge (issue 10, "Hardening", defects 1, 2, 6 and 9), through the HTTP API.

- NUL and lone surrogates in any body string or key are a 412 naming where they are; rows
  stored before that rule still read, approve and revoke without a 500;
- bodies nested deeper than jsontext.MAX_DEPTH are a 400 `bad_json`, parsed or not;
- cursors and time filters that cannot reach a query are a 412 naming the parameter;
- a chunked body over MAX_BODY_BYTES is a 413, never its first 64 KiB parsed.
"""
from __future__ import annotations

import base64
import http.client
import io
import json
import uuid
from datetime import timedelta
from urllib.parse import urlsplit

import pytest
from sqlalchemy import select

from security_api import audit
from security_api.access.catalog import ensure_permission, ensure_rule
from security_api.clock import utcnow
from security_api.enums import PolicyMode
from security_api.jsontext import MAX_DEPTH
from security_api.models import AccessRequest, AuditEvent, Permission, RequestApproverGroup
from tests.conftest import bearer
from tests.servers import start_gunicorn

SIGNING_SECRET = "x" * 40
LONE = "\udc00"
NUL = "\x00"
BOGUS_BASIC = {"Authorization": "Basic " + base64.b64encode(b"nobody:whatever").decode()}


@pytest.fixture
def app(make_app):
    return make_app(webhook_signing_secret=SIGNING_SECRET)


def _kw():
    return {"actor": "test", "origin": audit.Origin(), "now": utcnow()}


@pytest.fixture
def world(app, make_user, login_as):
    """alice (developer/backend) may ask for `hook` (webhook, approved by security/lead) and
    `vpn` (none, approved by security/lead); lead approves; root is an admin."""
    users = {"alice": make_user("alice"), "lead": make_user("lead", role="security", subrole="lead"),
             "root": make_user("root", role="security", subrole="admin")}
    services = app.extensions["security_api"]
    with services.session_factory() as session:
        ensure_permission(session, key="hook", name="Hook", max_duration_minutes=60,
                          provisioner="webhook",
                          provisioner_config={"url": "http://127.0.0.1:9/hook"},
                          settings=services.settings, **_kw())
        ensure_permission(session, key="vpn", name="VPN", max_duration_minutes=60,
                          settings=services.settings, **_kw())
        for key in ("hook", "vpn"):
            ensure_rule(session, permission=key, role="developer", subrole="backend",
                        mode=PolicyMode.APPROVAL, approvers=["security/lead"], **_kw())
        session.commit()
    return {name: bearer(login_as(user)["token"]) for name, user in users.items()} | {"ids": users}


def _raw(text: str) -> bytes:
    """A body as a client would send it: JSON escapes kept, so "\\udc00" stays an escape."""
    return text.encode("utf-8")


def _post(client, path: str, headers: dict, body: object):
    return client.post(path, headers=headers, content_type="application/json",
                       data=_raw(json.dumps(body)))


def _count(db_session, model) -> int:
    return len(db_session.scalars(select(model)).all())


# ---- 1. NUL and lone surrogates in free-form JSON and text fields --------------------------------
@pytest.mark.parametrize(("params", "field", "problem"), [
    ({"a": LONE}, "params.a", "lone surrogates"),
    ({"a": {"b": [1, 2, "x" + LONE]}}, "params.a.b[2]", "lone surrogates"),
    ({"a": {"b": [1, 2, "x" + NUL]}}, "params.a.b[2]", "NUL"),
    ({"k" + LONE: "v"}, "params.k\\udc00", "a key must not contain lone surrogates"),
    ({"k" + NUL: "v"}, "params.k\\x00", "a key must not contain NUL"),
    ({"a": "\ud800\udc00" + LONE}, "params.a", "lone surrogates"),  # a pair, then a lone one
])
def test_params_that_cannot_be_stored_are_a_412_naming_them(client, world, db_session, params,
                                                             field, problem):
    before = _count(db_session, AuditEvent)
    response = _post(client, "/v1/requests", world["alice"], {"permission": "hook",
                                                               "params": params})
    assert response.status_code == 412, response.json
    assert response.json["error"] == "invalid_params"
    assert response.json["errors"][0]["field"] == field
    assert problem in response.json["errors"][0]["problem"]
    # Nothing was stored, nothing audited, and the lists still answer.
    assert _count(db_session, AccessRequest) == 0
    assert _count(db_session, AuditEvent) == before
    assert client.get("/v1/requests", headers=world["alice"]).status_code == 200


def test_a_non_bmp_character_is_stored_and_read_back(client, world):
    response = _post(client, "/v1/requests", world["alice"],
                     {"permission": "hook", "params": {"a": "\U0001f600 \u00e9"}})
    assert response.status_code == 201, response.json
    listed = client.get("/v1/requests", headers=world["alice"])
    assert listed.json["requests"][0]["params"] == {"a": "\U0001f600 \u00e9"}


@pytest.mark.parametrize(("path", "who", "body", "field"), [
    ("/v1/requests", "alice", {"permission": "hook", "justification": "x" + LONE},
     "justification"),
    ("/v1/admin/permissions", "root", {"key": "k1", "name": "n" + LONE,
                                       "max_duration_minutes": 5}, "name"),
    ("/v1/admin/permissions", "root", {
        "key": "k2", "name": "n", "max_duration_minutes": 5, "provisioner": "webhook",
        "provisioner_config": {"url": "http://127.0.0.1:9/", "headers": {"X-A": LONE}}},
     "provisioner_config.headers.X-A"),
    ("/v1/admin/roles", "root", {"name": "r1", "subroles": ["x", LONE]}, "subroles[1]"),
    ("/v1/admin/users", "root", {"username": "u1", "email": "a" + LONE + "@b.cc",
                                 "role": "security", "subrole": "admin"}, "email"),
    ("/v1/login", None, {"totp": LONE}, "totp"),
    ("/v1/token/refresh", None, {"refresh_token": LONE}, "refresh_token"),
    ("/v1/token/refresh", None, {"refresh_token": "x", "extra" + NUL: 1}, "extra\\x00"),
])
def test_every_body_refuses_what_cannot_be_stored(client, world, path, who, body, field):
    headers = world[who] if who else {}
    if path == "/v1/login":
        headers = BOGUS_BASIC  # any Basic header: the body is read before the password
    response = _post(client, path, headers, body)
    assert response.status_code == 412, response.json
    assert response.json["errors"][0]["field"] == field


def test_provisioner_config_update_is_refused_too(client, world):
    response = client.patch("/v1/admin/permissions/hook", headers=world["root"],
                            content_type="application/json", data=_raw(json.dumps(
                                {"provisioner_config": {"url": "http://127.0.0.1:9/",
                                                        "headers": {"X-A": "v" + LONE}}})))
    assert response.status_code == 412, response.json
    assert response.json["errors"][0]["field"] == "provisioner_config.headers.X-A"
    assert client.get("/v1/admin/permissions", headers=world["root"]).status_code == 200


def test_query_bytes_that_are_not_utf8_never_reach_a_query(client, world):
    response = client.get("/v1/requests?permission=%ED%B0%80", headers=world["alice"])
    assert response.status_code == 200, response.json


# ---- 1. rows stored before the rule: read back without the lone surrogate ------------------------
# Stored (JSONText) as the ASCII escapes that rows written before bodies were checked hold.
POISONED = {"a": LONE, "k" + LONE: ["\ud83d", NUL, "\U0001f600"], "b": "\\udc00"}


def _poisoned_request(db_session, world, *, status: str, expires: bool = False) -> str:
    now = utcnow()
    request = AccessRequest(
        requester_id=world["ids"]["alice"].id, permission_key="vpn", justification="",
        params=POISONED, duration_minutes=30, status=status, mode="approval",
        approvals_required=1, created_at=now,
        decided_at=now if status == "active" else None,
        expires_at=now + timedelta(minutes=30) if expires else None,
        provisioning={"grant": {"ok": True, "result": {"x": LONE}}})
    db_session.add(request)
    db_session.flush()
    db_session.add(RequestApproverGroup(request_id=request.id, role="security", subrole="lead"))
    db_session.commit()
    return request.id


def test_stored_lone_surrogates_and_nul_read_back_everywhere(client, world, db_session):
    pending = _poisoned_request(db_session, world, status="pending")
    expected = {"a": "\ufffd", "k\ufffd": ["\ufffd", NUL, "\U0001f600"], "b": "\\udc00"}
    for who, query in [("alice", ""), ("lead", "?scope=approvable"), ("root", "?scope=all")]:
        response = client.get("/v1/requests" + query, headers=world[who])
        assert response.status_code == 200, (who, response.json)
        assert response.json["requests"][0]["params"] == expected
    detail = client.get(f"/v1/requests/{pending}", headers=world["alice"])
    assert detail.status_code == 200
    assert detail.json["request"]["provisioning"] == {"grant": {"ok": True,
                                                                "result": {"x": "\ufffd"}}}
    approved = _post(client, f"/v1/requests/{pending}/approve", world["lead"], {})
    assert approved.status_code == 200, approved.json
    assert approved.json["request"]["status"] == "active"
    revoked = _post(client, f"/v1/requests/{pending}/revoke", world["alice"], {})
    assert revoked.status_code == 200, revoked.json
    assert revoked.json["request"]["status"] == "revoked"


def test_a_stored_active_grant_is_revoked(client, world, db_session):
    active = _poisoned_request(db_session, world, status="active", expires=True)
    revoked = _post(client, f"/v1/requests/{active}/revoke", world["root"], {})
    assert revoked.status_code == 200, revoked.json
    assert revoked.json["request"]["params"]["a"] == "\ufffd"


def test_stored_provisioner_config_and_audit_details_read_back(client, world, db_session):
    permission = db_session.get(Permission, "hook")
    permission.provisioner_config = {"url": "http://127.0.0.1:9/", "headers": {"X-A": LONE}}
    audit.record(db_session, action="test.poisoned", actor="test", target=None,
                 origin=audit.Origin(), now=utcnow(), details={"x": LONE, "y": NUL})
    db_session.commit()
    listed = client.get("/v1/admin/permissions", headers=world["root"])
    assert listed.status_code == 200, listed.json
    hook = next(p for p in listed.json["permissions"] if p["key"] == "hook")
    assert hook["provisioner_config"]["headers"] == {"X-A": "\ufffd"}
    events = client.get("/v1/audit", headers=world["root"], query_string={"action": "test.poisoned"})
    assert events.status_code == 200, events.json
    assert events.json["events"][0]["details"] == {"x": "\ufffd", "y": NUL}
    export = client.get("/v1/audit/export", headers=world["root"],
                        query_string={"action": "test.poisoned"})
    assert export.status_code == 200
    assert json.loads(export.data.decode("utf-8"))["details"]["x"] == "\ufffd"
    assert client.get("/v1/audit/verify", headers=world["root"]).json["ok"] is True


# ---- 2. nesting depth ----------------------------------------------------------------------------
def _nested(depth: int, *, kind: str = "array") -> str:
    """A body whose top-level object is level 1 and whose `n` field adds depth - 1 levels."""
    inner_levels = depth - 1
    if kind == "array":
        inner = "[" * inner_levels + "]" * inner_levels
    else:
        inner = '{"a":' * inner_levels + "1" + "}" * inner_levels if inner_levels else "1"
    return '{"refresh_token":"x","n":' + (inner or "1") + "}"


@pytest.mark.parametrize("kind", ["array", "object"])
def test_a_body_at_the_depth_limit_is_parsed(client, kind):
    response = client.post("/v1/token/refresh", content_type="application/json",
                           data=_nested(MAX_DEPTH, kind=kind))
    assert response.status_code == 412, response.json  # parsed: `n` is an unknown field
    assert response.json["errors"][0]["field"] == "n"


@pytest.mark.parametrize("kind", ["array", "object"])
def test_a_body_just_over_the_limit_is_bad_json(client, kind):
    response = client.post("/v1/token/refresh", content_type="application/json",
                           data=_nested(MAX_DEPTH + 1, kind=kind))
    assert response.status_code == 400, response.json
    assert response.json["error"] == "bad_json"


@pytest.mark.parametrize("path", ["/v1/login", "/v1/token/refresh", "/v1/requests",
                                  "/v1/admin/permissions"])
@pytest.mark.parametrize("body", ["[" * 1000, "[" * 1000 + "]" * 1000,
                                  '{"a":' * 1000 + "1" + "}" * 1000, "[" * 60000])
def test_deep_nesting_is_bad_json_everywhere(client, world, path, body):
    headers = {"/v1/requests": world["alice"], "/v1/admin/permissions": world["root"],
               "/v1/login": BOGUS_BASIC}.get(path, {})
    response = client.post(path, headers=headers, content_type="application/json", data=body)
    assert response.status_code == 400, response.json
    assert response.json["error"] == "bad_json"


@pytest.mark.parametrize("text", ["[" * 1000, "{" * 1000, '\\"' + "[" * 1000,
                                  "\\\\" + "[" * 50])
def test_brackets_inside_strings_do_not_count(client, text):
    body = json.dumps({"refresh_token": "x", "n": text})
    response = client.post("/v1/token/refresh", content_type="application/json", data=body)
    assert response.status_code == 412, response.json  # parsed: `n` is an unknown field
    assert response.json["errors"] == [{"field": "n", "problem": "unknown field"}]


def test_an_escaped_quote_does_not_end_a_string(client):
    # If \" ended the string, the brackets after it would count (and be over the limit).
    body = '{"refresh_token":"a\\"' + "[" * (MAX_DEPTH + 5) + '"}'
    response = client.post("/v1/token/refresh", content_type="application/json", data=body)
    assert response.status_code == 401, response.json


# ---- 6. cursors and time filters -----------------------------------------------------------------
def _cursor(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode("utf-8")).decode("ascii").rstrip("=")


REQUEST_CURSORS = [
    _cursor(json.dumps(["0001-01-01T00:00:00+14:00", str(uuid.uuid4())])),
    _cursor(json.dumps(["9999-12-31T23:59:59-14:00", str(uuid.uuid4())])),
    _cursor(json.dumps(["2026-01-01T00:00:00+00:00", "a\x00b"])),
    _cursor(json.dumps(["2026-01-01T00:00:00", str(uuid.uuid4())])),   # no time zone
    _cursor(json.dumps(["2026-01-01T00:00:00+00:00", 7])),
    _cursor(json.dumps(["2026-01-01T00:00:00+00:00", str(uuid.uuid4()), 1])),
    _cursor(json.dumps({"at": "2026-01-01T00:00:00+00:00"})),
    _cursor('["2026-01-01T00:00:00+00:00", "' + str(uuid.uuid4()) + '"]\x00'),
    _cursor("\x00"), "", "a" * 600, "AAA=", "a=b",
]


@pytest.mark.parametrize("cursor", REQUEST_CURSORS)
def test_a_request_cursor_of_the_wrong_shape_is_a_412(client, world, cursor):
    response = client.get("/v1/requests", headers=world["root"],
                          query_string={"scope": "all", "cursor": cursor})
    if cursor == "":
        assert response.status_code == 200  # an empty cursor is the first page
        return
    assert response.status_code == 412, response.json
    assert response.json["errors"] == [{"field": "cursor",
                                        "problem": "is not a cursor this API returned"}]


@pytest.mark.parametrize("cursor", [_cursor("a\x00b"), _cursor("root\x1b"), _cursor("x" * 100),
                                    _cursor("\u00e9t\u00e9"), "_w", "cm9vdA=", "cm9vdB"])
def test_a_user_cursor_of_the_wrong_shape_is_a_412(client, world, cursor):
    response = client.get("/v1/admin/users", headers=world["root"], query_string={"cursor": cursor})
    assert response.status_code == 412, response.json
    assert response.json["errors"][0]["field"] == "cursor"


@pytest.mark.parametrize("cursor", [_cursor("seq:1\x00"), _cursor("seq:01"), _cursor("seq:+1"),
                                    _cursor("seq:" + "9" * 19), _cursor("seq:\u0661")])
def test_an_audit_cursor_of_the_wrong_shape_is_a_412(client, world, cursor):
    response = client.get("/v1/audit", headers=world["root"], query_string={"cursor": cursor})
    assert response.status_code == 412, response.json
    assert response.json["errors"][0]["field"] == "cursor"


@pytest.mark.parametrize("path", ["/v1/audit", "/v1/audit/export"])
@pytest.mark.parametrize(("name", "value"), [
    ("since", "0001-01-01T00:00:00+14:00"), ("until", "9999-12-31T23:59:59-14:00"),
    ("since", "2026-01-01T00:00:00\x00"), ("until", "2026-13-01T00:00:00Z"),
])
def test_a_time_outside_utc_is_a_412_naming_it(client, world, path, name, value):
    response = client.get(path, headers=world["root"], query_string={name: value})
    assert response.status_code == 412, response.json
    assert response.json["errors"][0]["field"] == name


@pytest.mark.parametrize(("name", "value"), [("since", "0001-01-01T00:00:00Z"),
                                             ("since", "0001-01-01T00:00:00-14:00"),
                                             ("until", "9999-12-31T23:59:59+14:00")])
def test_times_at_the_edges_of_utc_still_work(client, world, name, value):
    response = client.get("/v1/audit", headers=world["root"], query_string={name: value})
    assert response.status_code == 200, response.json


def test_cursors_this_api_returned_still_walk_every_page(client, world, db_session):
    for _ in range(3):
        _poisoned_request(db_session, world, status="denied")
    for path, key, query in [("/v1/requests", "requests", {"scope": "all"}),
                             ("/v1/admin/users", "users", {}), ("/v1/audit", "events", {})]:
        seen, cursor = 0, None
        while True:
            page = client.get(path, headers=world["root"], query_string={
                **query, "limit": 1, **({"cursor": cursor} if cursor else {})})
            assert page.status_code == 200, (path, page.json)
            seen += len(page.json[key])
            cursor = page.json["next_cursor"]
            if cursor is None:
                break
        assert seen >= 3, path


# ---- 9. chunked bodies over the limit ------------------------------------------------------------
def _chunked(client, body: bytes, *, limit_headers: dict | None = None):
    """A streamed body with no Content-Length, as a server passes on a chunked request."""
    return client.post("/v1/token/refresh", input_stream=io.BytesIO(body),
                       content_type="application/json",
                       headers={"Transfer-Encoding": "chunked", **(limit_headers or {})},
                       environ_overrides={"wsgi.input_terminated": True})


def _padded(size: int) -> bytes:
    """A valid JSON body of exactly `size` bytes (JSON whitespace pads it)."""
    body = b'{"refresh_token":"x"}'
    return body + b" " * (size - len(body))


def test_a_chunked_body_over_the_limit_is_a_413(client):
    body = _padded(65536) + b'{"more": "text after the first 64 KiB"}'
    response = _chunked(client, body)
    assert response.status_code == 413, response.json
    assert response.json["error"] == "payload_too_large"


def test_a_chunked_body_of_exactly_the_limit_is_read(client):
    response = _chunked(client, _padded(65536))
    assert response.status_code == 401, response.json  # parsed; the token is unknown


# ---- 9. the same under gunicorn, which de-chunks the body and marks the input terminated -------
@pytest.fixture
def served(app, database_url, tmp_path):
    with start_gunicorn(database_url, log_dir=tmp_path, workers=1) as running:
        yield running


def _send_chunked(base: str, body: bytes) -> tuple[int, dict]:
    address = urlsplit(base)
    connection = http.client.HTTPConnection(address.hostname, address.port, timeout=15)
    try:
        chunks = (body[start:start + 8192] for start in range(0, len(body), 8192))
        connection.request("POST", "/v1/token/refresh", body=chunks, encode_chunked=True,
                           headers={"Content-Type": "application/json",
                                    "Transfer-Encoding": "chunked"})
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def test_gunicorn_answers_413_to_a_chunked_body_over_the_limit(served):
    status, body = _send_chunked(served.base, _padded(65536) + b'{"more": "after 64 KiB"}')
    assert status == 413, body
    assert body["error"] == "payload_too_large"
    # At the limit it is read whole, and deep nesting is refused there as well.
    status, body = _send_chunked(served.base, _padded(65536))
    assert status == 401, body
    status, body = _send_chunked(served.base, b"[" * 1000)
    assert (status, body["error"]) == (400, "bad_json")


# ---- the shared codec and the scanner, directly --------------------------------------------------
def test_every_cursor_kind_round_trips():
    from security_api import cursors
    from security_api.accounts.users import USERNAME_PATTERN
    at, row_id = utcnow(), str(uuid.uuid4())
    assert cursors.decode_position(cursors.encode_position(at, row_id)) == (at, row_id)
    assert cursors.decode_seq(cursors.encode_seq(0)) == 0
    assert cursors.decode_seq(cursors.encode_seq(10**17)) == 10**17
    assert cursors.decode_key(cursors.encode_key("dana.o-k_1"), USERNAME_PATTERN) == "dana.o-k_1"


@pytest.mark.parametrize(("raw", "deep"), [
    (b"{}", False), (b"[" * MAX_DEPTH + b"]" * MAX_DEPTH, False),
    (b"[" * (MAX_DEPTH + 1), True), (b'"' + b"[" * 100 + b'"', False),
    (b'["\\\\"' + b",[" * MAX_DEPTH + b"]", True),   # an escaped backslash ends no string early
    (b'"\\"' + b"[" * 100, False),                      # unterminated: the parser refuses it
])
def test_the_depth_scan(raw, deep):
    from security_api.jsontext import too_deep
    assert too_deep(raw) is deep
