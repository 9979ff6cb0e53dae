"""TRUSTED_PROXY_COUNT: which X-Forwarded-For entry, if any, becomes the client address."""
from __future__ import annotations

import runpy
from pathlib import Path

import pytest
from sqlalchemy import select

from config import ConfigError, load_settings
from security_api.models import AuditEvent
from tests.conftest import basic

GUNICORN_CONF = Path(__file__).resolve().parent.parent / "gunicorn.conf.py"
PEER = "10.0.0.2"  # the address the service's socket sees: the nearest proxy, or the client


def _failed_login(client, forwarded_for: str | None):
    headers = basic("nobody", "wrong-password-here")
    if forwarded_for is not None:
        headers["X-Forwarded-For"] = forwarded_for
    return client.post("/v1/login", headers=headers, json={"totp": "000000"},
                       environ_base={"REMOTE_ADDR": PEER})


def _audited_ips(app) -> list[str]:
    with app.extensions["security_api"].session_factory() as session:
        return list(session.scalars(select(AuditEvent.ip).where(
            AuditEvent.action == "login.failed").order_by(AuditEvent.seq)))


def test_without_trusted_proxies_forwarded_for_is_ignored(make_app):
    app = make_app(auth_rate_limit=2)
    client = app.test_client()
    answers = [_failed_login(client, spoofed).status_code
               for spoofed in ("203.0.113.1", "203.0.113.2", "203.0.113.3")]
    # A client cannot escape the per-address throttle by inventing a new address each time.
    assert answers == [401, 401, 429]
    assert _audited_ips(app) == [PEER, PEER]


def test_one_trusted_proxy_uses_the_address_it_appended(make_app):
    app = make_app(auth_rate_limit=2, trusted_proxy_count=1)
    client = app.test_client()
    assert _failed_login(client, "203.0.113.5").status_code == 401
    assert _failed_login(client, "203.0.113.5").status_code == 401
    # Another client behind the same proxy has its own budget...
    assert _failed_login(client, "203.0.113.6").status_code == 401
    # ...and the first one is throttled on its own address, not the proxy's.
    assert _failed_login(client, "203.0.113.5").status_code == 429
    assert _audited_ips(app) == ["203.0.113.5", "203.0.113.5", "203.0.113.6"]


def test_one_trusted_proxy_ignores_entries_the_client_sent(make_app):
    app = make_app(auth_rate_limit=2, trusted_proxy_count=1)
    client = app.test_client()
    answers = [_failed_login(client, f"198.51.100.{i}, 203.0.113.5").status_code for i in range(3)]
    assert answers == [401, 401, 429]
    assert _audited_ips(app) == ["203.0.113.5", "203.0.113.5"]


def test_elastic_beanstalk_shape_two_proxies(make_app):
    """ALB appends the client, nginx appends the ALB: the client is second from the right."""
    app = make_app(trusted_proxy_count=2)
    _failed_login(app.test_client(), "198.51.100.66, 203.0.113.7, 172.31.5.9")
    assert _audited_ips(app) == ["203.0.113.7"]


def test_fewer_entries_than_proxies_keeps_the_socket_address(make_app):
    app = make_app(trusted_proxy_count=2)
    _failed_login(app.test_client(), "203.0.113.7")
    assert _audited_ips(app) == [PEER]


@pytest.mark.parametrize("value", ["-1", "6", "two"])
def test_trusted_proxy_count_is_validated(value):
    with pytest.raises(ConfigError, match="TRUSTED_PROXY_COUNT"):
        load_settings({"SECURITY_API_ENV": "testing", "TRUSTED_PROXY_COUNT": value})


@pytest.mark.parametrize(("count", "allowed"), [(None, ""), ("0", ""), ("2", "127.0.0.1,::1")])
def test_gunicorn_trusts_forwarded_headers_only_with_trusted_proxies(monkeypatch, count, allowed):
    monkeypatch.delenv("FORWARDED_ALLOW_IPS", raising=False)
    if count is None:
        monkeypatch.delenv("TRUSTED_PROXY_COUNT", raising=False)
    else:
        monkeypatch.setenv("TRUSTED_PROXY_COUNT", count)
    assert runpy.run_path(str(GUNICORN_CONF))["forwarded_allow_ips"] == allowed
