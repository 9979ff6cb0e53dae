"""Observability: structured access logs without secrets, and Prometheus metrics behind a token."""
import io
import json
import logging
import secrets
import urllib.error
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor

import pyotp
import pytest
from prometheus_client.parser import text_string_to_metric_families

import config
from security_api import audit
from security_api.access.catalog import ensure_permission, ensure_rule
from security_api.clock import utcnow
from security_api.enums import PolicyMode
from tests.conftest import basic, bearer
from tests.servers import free_port, start_gunicorn
from web.structured_logging import JsonFormatter, RequestIdFilter, make_handler

METRICS_TOKEN = "metrics-" + secrets.token_urlsafe(32)
SCRAPER_ACCEPT = "text/plain;version=0.0.4;q=1,*/*;q=0.1"


# ---- logs ------------------------------------------------------------------------------------
@pytest.fixture
def captured_logs():
    """Every record of the process at DEBUG, formatted as JSON before any redaction."""
    root = logging.getLogger()
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter())
    previous = root.level
    root.handlers.insert(0, handler)  # first: it sees records before our redaction filter
    root.setLevel(logging.DEBUG)
    yield stream
    root.removeHandler(handler)
    root.setLevel(previous)


def _records(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_no_secret_reaches_the_logs(app, client, make_user, login_as, captured_logs):
    """Drive every flow that carries a secret; none of them appears in any log record."""
    root_user = make_user("root", role="security", subrole="admin")
    admin_tokens = login_as(root_user)
    newbie = make_user("newbie", totp=False, password="Marble:orchid-sextant-77")
    seen = [root_user.password, newbie.password, admin_tokens["token"],
            admin_tokens["refresh_token"]]
    seen += [basic(u.username, u.password)["Authorization"].split()[1] for u in (root_user, newbie)]

    enrolled = client.post("/v1/totp/enroll", headers=basic(newbie.username, newbie.password),
                           json={})
    assert enrolled.status_code == 200
    seed = enrolled.json["secret"]
    seen += [seed, enrolled.json["otpauth_uri"]]
    code = pyotp.TOTP(seed).now()
    confirmed = client.post("/v1/totp/confirm", headers=basic(newbie.username, newbie.password),
                            json={"totp": code})
    assert confirmed.status_code == 200
    recovery = confirmed.json["recovery_codes"]
    seen += [code, *recovery]

    by_recovery = client.post("/v1/login", headers=basic(newbie.username, newbie.password),
                              json={"recovery_code": recovery[0]})
    assert by_recovery.status_code == 200
    wrong = "wrong-guess-" + secrets.token_hex(8)
    seen.append(wrong)
    assert client.post("/v1/login", headers=basic(newbie.username, wrong),
                       json={"totp": "000000"}).status_code == 401
    refreshed = client.post("/v1/token/refresh",
                            json={"refresh_token": by_recovery.json["refresh_token"]})
    assert refreshed.status_code == 200
    seen += [by_recovery.json["token"], by_recovery.json["refresh_token"],
             refreshed.json["token"], refreshed.json["refresh_token"]]
    new_password = "Quartz-lantern-" + secrets.token_hex(6)
    seen.append(new_password)
    changed = client.post("/v1/password", headers=bearer(refreshed.json["token"]),
                          json={"current_password": newbie.password, "new_password": new_password})
    assert changed.status_code == 200
    assert client.get("/v1/profile?access_token=" + admin_tokens["token"]).status_code == 400
    assert client.post("/v1/logout", headers=bearer(admin_tokens["token"]), json={}).status_code == 200
    admin_again = login_as(root_user)
    seen += [admin_again["token"], admin_again["refresh_token"]]
    created = client.post("/v1/admin/users", headers=bearer(admin_again["token"]),
                          json={"username": "generated", "role": "security", "subrole": "admin"})
    assert created.status_code == 201
    seen.append(created.json["password"])

    output = captured_logs.getvalue()
    assert output, "nothing was logged"
    for secret in seen:
        assert secret not in output, "a secret reached the logs"
    assert "Authorization" not in output


def test_every_request_has_one_json_access_record(client, make_user, login_as, captured_logs):
    user = make_user()
    token = login_as(user)["token"]
    request_id = uuid.uuid4().hex
    profile = client.get("/v1/profile", headers={**bearer(token), "X-Request-ID": request_id})
    assert profile.status_code == 200
    missing = client.get("/v1/requests/" + str(uuid.uuid4()), headers=bearer(token))
    assert missing.status_code == 404
    assert client.get("/no/such/path").status_code == 404
    assert client.get("/v1/ping", headers={"Accept": "text/html"}).status_code == 406

    access = [r for r in _records(captured_logs) if r.get("event") == "access"]
    assert [(r["method"], r["route"], r["status"]) for r in access] == [
        ("POST", "/v1/login", 200), ("GET", "/v1/profile", 200),
        ("GET", "/v1/requests/<request_id>", 404), ("GET", "unmatched", 404),
        ("GET", "/v1/ping", 406)]
    mine = access[1]
    assert mine["request_id"] == request_id == profile.headers["X-Request-ID"]
    assert mine["user_id"] == user.id and access[2]["user_id"] == user.id
    assert access[0]["user_id"] is None and access[3]["user_id"] is None
    assert mine["client"] == "127.0.0.1" and mine["level"] == "INFO"
    assert all(isinstance(r["latency_ms"], float) and r["latency_ms"] >= 0 for r in access)
    assert all(r["timestamp"].endswith("+00:00") for r in access)
    assert len({r["request_id"] for r in access}) == len(access)


def test_records_logged_during_a_request_carry_its_request_id(app, captured_logs):
    @app.get("/v1/boom-log")
    def _noisy():
        logging.getLogger("security_api.somewhere").warning("something odd")
        return {"message": None}

    response = app.test_client().get("/v1/boom-log", headers={"X-Request-ID": "trace-me-42"})
    assert response.status_code == 200
    odd = [r for r in _records(captured_logs) if r["message"] == "something odd"]
    assert odd == [{**odd[0], "request_id": "trace-me-42", "level": "WARNING",
                    "logger": "security_api.somewhere"}]


def test_the_redaction_filter_scrubs_what_slips_through():
    stream = io.StringIO()
    logger = logging.getLogger("test.redaction")
    logger.propagate = False
    logger.addHandler(make_handler("json", stream))
    try:
        logger.warning("header %s body %s", "Bearer eyJhbGciOi.eyJzdWIiOi.c2lnbmF0dXJl",
                       '{"password": "hunter2-hunter2", "totp": "123456"}')
        logger.warning("uri otpauth://totp/x?secret=JBSWY3DPEHPK3PXP", extra={"note": "token=abc123"})
        try:
            raise ValueError("refresh_token=zzz-secret-zzz")
        except ValueError:
            logger.exception("failed")
    finally:
        logger.handlers.clear()
        logger.propagate = True
    output = stream.getvalue()
    for secret in ("eyJhbGciOi", "hunter2", "123456", "JBSWY3DPEHPK3PXP", "abc123", "zzz-secret"):
        assert secret not in output
    lines = [json.loads(line) for line in output.splitlines()]
    assert len(lines) == 3 and "[REDACTED]" in lines[0]["message"]
    assert lines[1]["note"] == "token=[REDACTED]" and "ValueError" in lines[2]["exception"]


def test_text_format_for_people():
    stream = io.StringIO()
    handler = make_handler("text", stream)
    logger = logging.getLogger("test.text")
    logger.addHandler(handler)
    try:
        logger.warning("plain %s", "words", extra={"route": "/v1/ping"})
    finally:
        logger.removeHandler(handler)
    line = stream.getvalue().strip()
    assert "WARNING test.text [-] plain words route=/v1/ping" in line
    with pytest.raises(ValueError):
        json.loads(line)


@pytest.mark.parametrize("environ, expected", [
    ({}, "text"), ({"SECURITY_API_ENV": "testing"}, "json"),
    ({"SECURITY_API_ENV": "testing", "LOG_FORMAT": "text"}, "text")])
def test_log_format_defaults_to_json_outside_development(environ, expected):
    settings = config.load_settings({"JWT_SECRET": secrets.token_urlsafe(48), **environ})
    assert settings.log_format == expected


def test_bad_log_format_refused():
    with pytest.raises(config.ConfigError, match="LOG_FORMAT"):
        config.load_settings({"JWT_SECRET": secrets.token_urlsafe(48), "LOG_FORMAT": "xml"})


# ---- metrics settings ----------------------------------------------------------------------
def _production(**extra) -> dict:
    from cryptography.fernet import Fernet
    return {"SECURITY_API_ENV": "production", "JWT_SECRET": secrets.token_urlsafe(48),
            "DATABASE_URL": "sqlite:///x.sqlite3",
            "DATA_ENCRYPTION_KEYS": Fernet.generate_key().decode(),
            "AUDIT_CHAIN_KEY": secrets.token_urlsafe(48), **extra}


def test_production_refuses_open_metrics():
    with pytest.raises(config.ConfigError, match="METRICS_TOKEN"):
        config.load_settings(_production(METRICS_ENABLED="true"))
    assert config.load_settings(_production(METRICS_ENABLED="true", METRICS_TOKEN=METRICS_TOKEN)) \
        .metrics_enabled is True
    assert config.load_settings(_production()).metrics_enabled is False


def test_short_metrics_token_refused():
    with pytest.raises(config.ConfigError, match="METRICS_TOKEN"):
        config.load_settings({"JWT_SECRET": secrets.token_urlsafe(48), "METRICS_TOKEN": "short"})


def test_metrics_token_is_not_in_the_settings_repr():
    settings = config.load_settings({"JWT_SECRET": secrets.token_urlsafe(48),
                                     "METRICS_TOKEN": METRICS_TOKEN})
    assert METRICS_TOKEN not in repr(settings)


# ---- /metrics --------------------------------------------------------------------------------
def _scrape(client, token=METRICS_TOKEN) -> dict:
    response = client.get("/metrics", headers={**bearer(token), "Accept": SCRAPER_ACCEPT})
    assert response.status_code == 200, response.data
    return _samples(response.get_data(as_text=True))


def _samples(text: str) -> dict:
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def _value(samples: dict, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_are_off_by_default(client):
    response = client.get("/metrics", headers={"Accept": SCRAPER_ACCEPT})
    assert response.status_code == 404
    assert response.json["error"] == "not_found"
    assert response.json == client.get("/no-such-path").json


def test_metrics_need_the_token(make_app):
    client = make_app(metrics_enabled=True, metrics_token=METRICS_TOKEN).test_client()
    for headers in ({}, bearer("nope"), bearer(METRICS_TOKEN + "x"), basic("metrics", METRICS_TOKEN),
                    {"Authorization": METRICS_TOKEN}):
        response = client.get("/metrics", headers=headers)
        assert response.status_code == 401, headers
        assert response.json["error"] == "invalid_token"
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    ok = client.get("/metrics", headers={**bearer(METRICS_TOKEN), "Accept": SCRAPER_ACCEPT})
    assert ok.status_code == 200
    assert ok.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    assert "# TYPE security_api_http_requests_total counter" in ok.get_data(as_text=True)


def test_metrics_negotiate_their_formats(make_app):
    client = make_app(metrics_enabled=True).test_client()
    openmetrics = client.get("/metrics", headers={"Accept": "application/openmetrics-text"})
    assert openmetrics.status_code == 200
    assert openmetrics.headers["Content-Type"].startswith("application/openmetrics-text")
    assert client.get("/metrics").status_code == 200
    plain = client.get("/metrics", headers={"Accept": "text/plain"})  # no */*: no JSON either
    assert plain.status_code == 200 and plain.headers["Content-Type"].startswith("text/plain")
    assert client.get("/v1/ping", headers={"Accept": "text/plain"}).status_code == 406
    refused = client.get("/metrics", headers={"Accept": "application/json"})
    assert refused.status_code == 406 and refused.json["error"] == "not_acceptable"


def test_http_requests_are_counted_by_route_template(make_app):
    app = make_app(metrics_enabled=True, metrics_token=METRICS_TOKEN)
    client = app.test_client()
    before = _scrape(client)
    for _ in range(3):
        assert client.get("/v1/requests/" + str(uuid.uuid4())).status_code == 401
    assert client.get("/v1/users/raw-path-" + uuid.uuid4().hex).status_code == 404
    assert client.open("/v1/ping", method="BREW").status_code == 405
    after = _scrape(client)
    route = {"route": "/v1/requests/<request_id>", "method": "GET", "status": "401"}
    assert _value(after, "security_api_http_requests_total", **route) \
        - _value(before, "security_api_http_requests_total", **route) == 3
    assert _value(after, "security_api_http_request_duration_seconds_count", **route) \
        - _value(before, "security_api_http_request_duration_seconds_count", **route) == 3
    unmatched = {"route": "unmatched", "method": "GET", "status": "404"}
    assert _value(after, "security_api_http_requests_total", **unmatched) \
        - _value(before, "security_api_http_requests_total", **unmatched) == 1
    assert _value(after, "security_api_http_requests_total", route="unmatched", method="OTHER",
                  status="405") >= 1
    assert not any("raw-path" in str(key) or "BREW" in str(key) for key in after)


def test_logins_are_counted_by_outcome(make_app, make_user):
    app = make_app(metrics_enabled=True, lockout_threshold=2)
    client = app.test_client()
    user = make_user()
    fresh = make_user("fresh", totp=False)
    before = _scrape(client, token="")
    assert client.post("/v1/login", headers=basic(user.username, user.password),
                       json={"totp": user.next_code()}).status_code == 200
    for _ in range(2):
        assert client.post("/v1/login", headers=basic(user.username, "wrong-password-1"),
                           json={"totp": "000000"}).status_code == 401
    locked = client.post("/v1/login", headers=basic(user.username, user.password),
                         json={"totp": user.next_code()})
    assert locked.json["error"] == "locked"
    assert client.post("/v1/login", headers=basic(fresh.username, fresh.password),
                       json={}).status_code == 403
    assert client.post("/v1/login", headers=basic(fresh.username, fresh.password),
                       data="[", content_type="application/json").status_code == 400
    after = _scrape(client, token="")

    def delta(outcome):
        return _value(after, "security_api_logins_total", outcome=outcome) \
            - _value(before, "security_api_logins_total", outcome=outcome)

    assert [delta(o) for o in ("success", "failure", "locked", "enrollment_required",
                               "invalid_request")] == [1, 2, 1, 1, 1]
    throttled = make_app(metrics_enabled=True, auth_rate_limit=1).test_client()
    throttled.post("/v1/login", headers=basic("x1", "y"), json={})
    assert throttled.post("/v1/login", headers=basic("x1", "y"), json={}).status_code == 429
    assert _value(_scrape(throttled, token=""), "security_api_logins_total",
                  outcome="throttled") >= 1


def test_access_requests_and_provisioning_failures_are_counted(make_app, make_user):
    app = make_app(metrics_enabled=True, webhook_signing_secret="w" * 8 + secrets.token_hex(16))
    client = app.test_client()
    services = app.extensions["security_api"]
    with services.session_factory() as session:
        kw = {"actor": "test", "origin": audit.Origin(), "now": utcnow()}
        ensure_permission(session, key="vpn", name="VPN", max_duration_minutes=60,
                          settings=services.settings, **kw)
        ensure_permission(session, key="hook", name="Hook", max_duration_minutes=60,
                          provisioner="webhook",  # nothing listens there
                          provisioner_config={"url": f"http://127.0.0.1:{free_port()}/"},
                          settings=services.settings, **kw)
        for key in ("vpn", "hook"):
            ensure_rule(session, permission=key, role="*", subrole="*", mode=PolicyMode.AUTO, **kw)
        session.commit()
    user = make_user()
    signed_in = client.post("/v1/login", headers=basic(user.username, user.password),
                            json={"totp": user.next_code()})
    alice = bearer(signed_in.json["token"])
    before = _scrape(client, token="")
    active = client.post("/v1/requests", headers=alice, json={"permission": "vpn"}).json["request"]
    failed = client.post("/v1/requests", headers=alice, json={"permission": "hook"}).json["request"]
    assert (active["status"], failed["status"]) == ("active", "failed")
    assert client.post(f"/v1/requests/{active['id']}/revoke", headers=alice, json={}).status_code == 200
    # A refused transition counts nothing.
    assert client.post(f"/v1/requests/{active['id']}/revoke", headers=alice, json={}).status_code == 409
    after = _scrape(client, token="")

    def delta(name, **labels):
        return _value(after, name, **labels) - _value(before, name, **labels)

    transitions = "security_api_access_request_transitions_total"
    assert {s: delta(transitions, status=s) for s in ("granting", "active", "failed", "revoked")} \
        == {"granting": 2, "active": 1, "failed": 1, "revoked": 1}
    failures = "security_api_provisioning_failures_total"
    assert delta(failures, provisioner="webhook", action="grant") == 1
    assert delta(failures, provisioner="webhook", action="cleanup") == 1
    assert delta(failures, provisioner="none", action="revoke") == 0


def test_metrics_are_in_the_openapi_document(client):
    operation = client.get("/v1/openapi.json").json["paths"]["/metrics"]["get"]
    assert operation["responses"]["200"]["content"] == {"text/plain": {"schema": {"type": "string"}}}
    assert operation["security"] == [{"bearerAuth": []}]


# ---- under gunicorn ------------------------------------------------------------------------
def _get(url: str, headers: dict) -> tuple[int, str]:
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.read().decode()


def test_metrics_add_up_across_gunicorn_workers(app, database_url, tmp_path):
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    stale = metrics_dir / "counter_4242.db"
    stale.write_bytes(b"numbers of an earlier run")
    env = {"METRICS_ENABLED": "true", "METRICS_TOKEN": METRICS_TOKEN,
           "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
    with start_gunicorn(database_url, log_dir=tmp_path, workers=2, env=env) as server:
        base, error_log = server.base, server.error_log
        assert not stale.exists()
        scrape = {"Authorization": f"Bearer {METRICS_TOKEN}", "Accept": SCRAPER_ACCEPT}
        assert _get(base + "/metrics", {"Accept": SCRAPER_ACCEPT})[0] == 401
        status, text = _get(base + "/metrics", scrape)
        assert status == 200
        labels = {"route": "/v1/ping", "method": "GET", "status": "200"}
        before = _value(_samples(text), "security_api_http_requests_total", **labels)
        # Concurrent batches: sequential requests on an idle machine may all reach one worker.
        ids = set()
        with ThreadPoolExecutor(max_workers=8) as pool:
            while len(ids) < 400:
                batch = [uuid.uuid4().hex for _ in range(20)]
                statuses = pool.map(lambda rid: _get(base + "/v1/ping", {"X-Request-ID": rid})[0], batch)
                assert set(statuses) == {200}
                ids |= set(batch)
                if len(server.workers_of(ids)) >= 2:
                    break
        sent = len(ids)
        assert len(server.workers_of(ids)) == 2, "one worker answered every ping"
        after = _value(_samples(_get(base + "/metrics", scrape)[1]),
                       "security_api_http_requests_total", **labels)
        assert after - before == sent
    records = [json.loads(line) for line in error_log.read_text().splitlines()
               if line.startswith("{")]
    pings = [r for r in records if r.get("event") == "access" and r["request_id"] in ids]
    assert len(pings) == sent  # exactly one application access record per request
    assert any(r["logger"].startswith("gunicorn") for r in records), "gunicorn's log is not JSON"
    assert not any(request_id in line for line in error_log.read_text().splitlines()
                   if not line.startswith("{") for request_id in ids)

