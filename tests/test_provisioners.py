"""Provisioners against real servers: a local HTTP receiver and moto's EC2 server."""
from __future__ import annotations

import hashlib
import hmac
import json
import socket
import time
import uuid
from datetime import UTC, datetime

import pytest

from config import load_settings
from security_api.errors import InvalidParams
from security_api.provisioners import GrantContext, ProvisioningError, get_provisioner, names
from security_api.provisioners.aws_security_group import AwsSecurityGroupProvisioner
from security_api.provisioners.webhook import WebhookProvisioner
from tests.receivers import serving
from tests.servers import ingress

JWT_SECRET = "Zq8v3LkP0wX1yT7rN4mB6cD9eF2gH5jK"
SIGNING_SECRET = "webhook-signing-Qm7Xr2Lp9Vt4Nc8Kd3Hs6Bw1"
EXPIRES = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


def make_settings(**overrides):
    """Build real, validated settings without the Flask app."""
    values = {"jwt_secret": JWT_SECRET, "webhook_signing_secret": SIGNING_SECRET,
              "provisioner_timeout_seconds": 1, **overrides}
    return load_settings({"DATABASE_URL": "sqlite://"}, **values)


def free_port() -> int:
    """Return a port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def context(**overrides) -> GrantContext:
    """Build a grant context with sensible defaults."""
    values = {"request_id": str(uuid.uuid4()), "requester": "alice", "requester_ip": "198.51.100.7",
              "permission": "vpn", "params": {}, "config": {}, "expires_at": EXPIRES, **overrides}
    return GrantContext(**values)


@pytest.fixture
def receiver():
    with serving() as server:
        yield server


def webhook(**settings) -> WebhookProvisioner:
    return WebhookProvisioner(make_settings(**settings))


# ---- webhook ------------------------------------------------------------------------------------
def test_registry_knows_every_provisioner():
    settings = make_settings()
    assert names() == ["aws_security_group", "none", "webhook"]
    assert isinstance(get_provisioner("webhook", settings), WebhookProvisioner)
    assert isinstance(get_provisioner("aws_security_group", settings), AwsSecurityGroupProvisioner)
    with pytest.raises(InvalidParams):
        get_provisioner("ldap", settings)


def test_a_provisioner_registers_itself_by_subclassing():
    from security_api.provisioners.base import REGISTRY, Provisioner

    class LdapProvisioner(Provisioner):
        name = "ldap"

        def grant(self, ctx):
            return {}

        def revoke(self, ctx):
            return {}

    try:
        assert isinstance(get_provisioner("ldap", make_settings()), LdapProvisioner)
        with pytest.raises(TypeError, match="two provisioners"):
            type("Again", (Provisioner,), {"name": "ldap"})
    finally:
        REGISTRY.pop("ldap", None)


def test_grant_posts_a_signed_event(receiver):
    ctx = context(params={"database": "orders", "readonly": True},
                  config={"url": receiver.url, "headers": {"Authorization": "Bearer xyz"}})
    before = int(time.time())
    result = webhook().grant(ctx)

    assert result == {"provisioner": "webhook", "status": 200}
    [call] = receiver.received
    headers, body = call["headers"], call["body"]
    assert call["path"] == "/hook"
    assert headers["Content-Type"] == "application/json"
    assert headers["Authorization"] == "Bearer xyz"
    expected = hmac.new(SIGNING_SECRET.encode(), body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(headers["X-Security-API-Signature"], f"sha256={expected}")
    timestamp = int(headers["X-Security-API-Timestamp"])
    assert before <= timestamp <= int(time.time())
    event = json.loads(body)
    assert event == {"event": "grant", "request_id": ctx.request_id, "requester": "alice",
                     "requester_ip": "198.51.100.7", "permission": "vpn",
                     "params": {"database": "orders", "readonly": True},
                     "expires_at": "2026-11-28T12:00:00Z", "sent_at": event["sent_at"]}
    # The signed sent_at and the unsigned timestamp header name the same instant.
    sent_at = datetime.strptime(event["sent_at"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    assert int(sent_at.timestamp()) == timestamp


def test_revoke_posts_a_revoke_event(receiver):
    ctx = context(config={"url": receiver.url}, expires_at=None, requester_ip=None)
    assert webhook().revoke(ctx) == {"provisioner": "webhook", "status": 200}
    event = json.loads(receiver.received[0]["body"])
    assert event["event"] == "revoke"
    assert event["expires_at"] is None and event["requester_ip"] is None


def test_signature_changes_with_the_body(receiver):
    provisioner = webhook()
    provisioner.grant(context(config={"url": receiver.url}, requester="alice"))
    provisioner.grant(context(config={"url": receiver.url}, requester="bob"))
    first, second = receiver.received
    assert first["headers"]["X-Security-API-Signature"] != second["headers"]["X-Security-API-Signature"]


@pytest.mark.parametrize("status", [400, 404, 500, 503])
def test_non_2xx_fails(receiver, status):
    receiver.status = status
    with pytest.raises(ProvisioningError, match=f"HTTP {status}"):
        webhook().grant(context(config={"url": receiver.url}))


def test_redirects_are_not_followed(receiver):
    receiver.status = 302
    receiver.location = receiver.url.replace("/hook", "/elsewhere")
    with pytest.raises(ProvisioningError, match="HTTP 302"):
        webhook().grant(context(config={"url": receiver.url}))
    assert [call["path"] for call in receiver.received] == ["/hook"]


def test_a_slow_receiver_times_out(receiver):
    receiver.delay = 5
    # The error names the timeout: the call gave up at 1 s instead of waiting for the answer.
    with pytest.raises(ProvisioningError, match="timed out after 1s"):
        webhook(provisioner_timeout_seconds=1).grant(context(config={"url": receiver.url}))


def test_unreachable_receiver_fails_without_leaking_the_url():
    url = f"http://127.0.0.1:{free_port()}/hook?token=url-secret-token"
    with pytest.raises(ProvisioningError) as caught:
        webhook().grant(context(config={"url": url}))
    assert "ConnectionError" in str(caught.value)
    assert "url-secret-token" not in str(caught.value)


def test_missing_signing_secret_sends_nothing(receiver):
    with pytest.raises(ProvisioningError, match="WEBHOOK_SIGNING_SECRET"):
        webhook(webhook_signing_secret="").grant(context(config={"url": receiver.url}))
    assert receiver.received == []


def test_errors_never_contain_the_secret(receiver):
    receiver.status = 500
    with pytest.raises(ProvisioningError) as caught:
        webhook().grant(context(config={"url": receiver.url}))
    assert SIGNING_SECRET not in str(caught.value)


def test_a_config_broken_after_saving_fails_the_grant(receiver):
    with pytest.raises(ProvisioningError, match="config is invalid"):
        webhook().grant(context(config={"url": "ftp://example.com/"}))


@pytest.mark.parametrize("config,expected", [
    ({"url": "https://hooks.example.com/grant"},
     {"url": "https://hooks.example.com/grant", "headers": {}}),
    ({"url": "http://10.0.0.5:8080/x", "headers": {"Authorization": "Bearer t"}},
     {"url": "http://10.0.0.5:8080/x", "headers": {"Authorization": "Bearer t"}}),
])
def test_webhook_config_accepted(config, expected):
    assert webhook().validate_config(config) == expected


@pytest.mark.parametrize("config,field", [
    ({}, "config.url"),
    ({"url": ""}, "config.url"),
    ({"url": 42}, "config.url"),
    ({"url": "ftp://example.com/"}, "config.url"),
    ({"url": "file:///etc/passwd"}, "config.url"),
    ({"url": "https://"}, "config.url"),
    ({"url": "https://exa mple.com/"}, "config.url"),
    ({"url": "https://example.com:99999/"}, "config.url"),
    ({"url": "https://example.com/", "headers": ["X-A: b"]}, "config.headers"),
    ({"url": "https://example.com/", "headers": {"X-A": 1}}, "config.headers"),
    ({"url": "https://example.com/", "headers": {"X-A": "b\r\nX-Evil: 1"}}, "config.headers"),
    ({"url": "https://example.com/", "headers": {"Bad Name": "b"}}, "config.headers"),
    ({"url": "https://example.com/", "headers": {"X-Security-API-Signature": "sha256=0"}},
     "config.headers"),
    ({"url": "https://example.com/", "headers": {"content-type": "text/plain"}}, "config.headers"),
    ({"url": "https://example.com/", "secret": "x"}, "config"),
    ("https://example.com/", "config"),
])
def test_webhook_config_refused(config, field):
    with pytest.raises(InvalidParams) as caught:
        webhook().validate_config(config)
    assert caught.value.errors[0]["field"] == field


@pytest.mark.parametrize("params,expected", [
    (None, {}),
    ({}, {}),
    ({"database": "orders", "port": 5432, "readonly": True, "note": "x" * 500},
     {"database": "orders", "port": 5432, "readonly": True, "note": "x" * 500}),
    ({f"k{i}": i for i in range(20)}, {f"k{i}": i for i in range(20)}),
    ({"a" * 64: "ok"}, {"a" * 64: "ok"}),
])
def test_webhook_params_accepted(params, expected):
    assert webhook().validate_params(params, config={}) == expected


@pytest.mark.parametrize("params", [
    ["a"],
    "text",
    {f"k{i}": i for i in range(21)},
    {"a" * 65: "too long a key"},
    {"has space": "x"},
    {"": "x"},
    {"note": "x" * 501},
    {"nested": {"a": 1}},
    {"list": [1, 2]},
    {"ratio": 0.5},
    {"nothing": None},
    {"huge": 2**60},
])
def test_webhook_params_refused(params):
    with pytest.raises(InvalidParams) as caught:
        webhook().validate_params(params, config={})
    assert caught.value.errors[0]["field"] == "params"


# ---- aws_security_group against moto's EC2 server -----------------------------------------------
@pytest.fixture
def aws(moto_endpoint, aws_env):
    return AwsSecurityGroupProvisioner(make_settings(aws_endpoint_url=moto_endpoint,
                                                     aws_region="eu-west-1"))


def sg_context(group_id: str, **overrides) -> GrantContext:
    config = {"group_id": group_id, "ports": [22, {"from": 5432, "to": 5433}]}
    return context(config=overrides.pop("config", config), **overrides)


def test_grant_opens_the_ports_to_the_cidr(aws, ec2, group_id):
    ctx = sg_context(group_id, params={"cidr": "203.0.113.0/24"})
    result = aws.grant(ctx)

    assert result == {"provisioner": "aws_security_group", "group_id": group_id,
                      "cidr": "203.0.113.0/24", "protocol": "tcp",
                      "ports": [{"from": 22, "to": 22}, {"from": 5432, "to": 5433}],
                      "already_open": []}
    description = f"security-api request {ctx.request_id} for alice"
    assert ingress(ec2, group_id) == {("tcp", 22, 22, "203.0.113.0/24", description),
                                      ("tcp", 5432, 5433, "203.0.113.0/24", description)}


def test_grant_twice_is_idempotent(aws, ec2, group_id):
    ctx = sg_context(group_id)
    aws.grant(ctx)
    again = aws.grant(ctx)
    assert again["already_open"] == [{"from": 22, "to": 22}, {"from": 5432, "to": 5433}]
    assert len(ingress(ec2, group_id)) == 2


def test_revoke_removes_the_rules_and_twice_is_fine(aws, ec2, group_id):
    ctx = sg_context(group_id, params={"cidr": "203.0.113.0/24"})
    aws.grant(ctx)
    result = aws.revoke(ctx)
    assert result["group_id"] == group_id
    assert sorted((r["from"], r["cidr"]) for r in result["removed"]) == [
        (22, "203.0.113.0/24"), (5432, "203.0.113.0/24")]
    assert ingress(ec2, group_id) == set()
    assert aws.revoke(ctx)["removed"] == []


@pytest.mark.parametrize("requester_ip,cidr", [
    ("198.51.100.7", "198.51.100.7/32"),
    ("2001:db8::7", "2001:db8::7/128"),
    ("::ffff:198.51.100.7", "198.51.100.7/32"),
])
def test_grant_falls_back_to_the_requester_address(aws, ec2, group_id, requester_ip, cidr):
    ctx = sg_context(group_id, requester_ip=requester_ip,
                     config={"group_id": group_id, "ports": [22]})
    assert aws.grant(ctx)["cidr"] == cidr
    assert {rule[3] for rule in ingress(ec2, group_id)} == {cidr}
    aws.revoke(ctx)
    assert ingress(ec2, group_id) == set()


@pytest.mark.parametrize("requester_ip", [None, "", "not-an-ip"])
def test_grant_without_an_address_fails(aws, ec2, group_id, requester_ip):
    with pytest.raises(ProvisioningError, match="no address to allow"):
        aws.grant(sg_context(group_id, requester_ip=requester_ip))
    assert ingress(ec2, group_id) == set()


def test_revoke_leaves_rules_it_did_not_create(aws, ec2, group_id):
    # An office-wide rule made by hand must survive the end of a personal grant on top of it.
    ec2.authorize_security_group_ingress(GroupId=group_id, IpPermissions=[{
        "IpProtocol": "tcp", "FromPort": 22, "ToPort": 22,
        "IpRanges": [{"CidrIp": "198.51.100.7/32", "Description": "office"}]}])
    ctx = sg_context(group_id, config={"group_id": group_id, "ports": [22]})
    assert aws.grant(ctx)["already_open"] == [{"from": 22, "to": 22}]
    assert aws.revoke(ctx)["removed"] == []
    assert ingress(ec2, group_id) == {("tcp", 22, 22, "198.51.100.7/32", "office")}


def test_revoke_leaves_another_requests_rules(aws, ec2, group_id):
    mine = sg_context(group_id, params={"cidr": "203.0.113.0/24"})
    theirs = sg_context(group_id, params={"cidr": "192.0.2.0/24"}, requester="bob")
    aws.grant(mine)
    aws.grant(theirs)
    aws.revoke(mine)
    assert {rule[3] for rule in ingress(ec2, group_id)} == {"192.0.2.0/24"}


def test_revoke_closes_everything_even_after_the_config_changed(aws, ec2, group_id):
    ctx = sg_context(group_id)
    aws.grant(ctx)
    changed = sg_context(group_id, request_id=ctx.request_id, requester_ip="192.0.2.99",
                         config={"group_id": group_id, "ports": [443]})
    aws.revoke(changed)
    assert ingress(ec2, group_id) == set()


def test_rule_description_is_sanitised_and_bounded(aws, ec2, group_id):
    ctx = sg_context(group_id, requester="bob<script>|ü\r\n" + "x" * 300,
                     config={"group_id": group_id, "ports": [22], "description": "bastion"})
    aws.grant(ctx)
    [rule] = ingress(ec2, group_id)
    description = rule[4]
    assert description.startswith(f"security-api request {ctx.request_id} for bob_script__")
    assert len(description) == 255
    assert all(ch.isascii() and (ch.isalnum() or ch in " ._-:/()#,@[]+=&;{}!$*") for ch in description)
    aws.revoke(ctx)
    assert ingress(ec2, group_id) == set()


def test_a_failed_grant_closes_what_it_opened(aws, ec2, group_id):
    # Fill the group to one rule below the VPC limit: the first range fits, the second does not.
    filler = [{"CidrIp": f"192.0.2.{i}/32", "Description": "filler"} for i in range(59)]
    ec2.authorize_security_group_ingress(GroupId=group_id, IpPermissions=[
        {"IpProtocol": "tcp", "FromPort": 80, "ToPort": 80, "IpRanges": filler}])
    ctx = sg_context(group_id, params={"cidr": "203.0.113.0/24"})
    with pytest.raises(ProvisioningError, match="AWS RulesPerSecurityGroupLimitExceeded"):
        aws.grant(ctx)
    assert "203.0.113.0/24" not in {rule[3] for rule in ingress(ec2, group_id)}
    assert len(ingress(ec2, group_id)) == 59


def test_unknown_group_reports_the_aws_error_code(aws):
    with pytest.raises(ProvisioningError, match="AWS InvalidGroup.NotFound"):
        aws.grant(sg_context("sg-0123456789abcdef0"))


def test_unreachable_endpoint_fails(aws_env):
    provisioner = AwsSecurityGroupProvisioner(
        make_settings(aws_endpoint_url=f"http://127.0.0.1:{free_port()}"))
    with pytest.raises(ProvisioningError, match="AWS EndpointConnectionError"):
        provisioner.grant(sg_context("sg-0123456789abcdef0"))


def checker() -> AwsSecurityGroupProvisioner:
    """A provisioner for validation only: no AWS needed."""
    return AwsSecurityGroupProvisioner(make_settings())


def test_missing_credentials_fail(aws_env, monkeypatch):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    provisioner = AwsSecurityGroupProvisioner(
        make_settings(aws_endpoint_url=f"http://127.0.0.1:{free_port()}"))
    with pytest.raises(ProvisioningError, match="AWS NoCredentialsError"):
        provisioner.grant(sg_context("sg-0123456789abcdef0"))


@pytest.mark.parametrize("cidr,expected", [
    ("203.0.113.0/24", "203.0.113.0/24"),
    ("203.0.113.7/32", "203.0.113.7/32"),
    ("203.0.113.7", "203.0.113.7/32"),
    ("10.1.0.0/16", "10.1.0.0/16"),
    ("2001:db8:1::/48", "2001:db8:1::/48"),
    ("2001:DB8::7/128", "2001:db8::7/128"),
])
def test_cidr_accepted(cidr, expected):
    assert checker().validate_params({"cidr": cidr}, config={}) == {"cidr": expected}


@pytest.mark.parametrize("cidr,problem", [
    ("0.0.0.0/0", "too broad"),
    ("::/0", "too broad"),
    ("10.0.0.0/8", "too broad"),
    ("10.0.0.0/15", "too broad"),
    ("2001:db8::/32", "too broad"),
    ("203.0.113.7/24", "host bits"),
    ("2001:db8::1/64", "host bits"),
    ("203.0.113.0/33", "must be a network"),
    ("garbage", "must be a network"),
    ("", "must be a network"),
    (None, "must be a network"),
    (167772160, "must be a network"),
])
def test_cidr_refused(cidr, problem):
    with pytest.raises(InvalidParams) as caught:
        checker().validate_params({"cidr": cidr}, config={})
    assert caught.value.errors[0]["field"] == "params.cidr"
    assert problem in caught.value.errors[0]["problem"]


@pytest.mark.parametrize("params", [{"cidr": "203.0.113.0/24", "port": 22}, ["203.0.113.0/24"]])
def test_other_params_refused(params):
    with pytest.raises(InvalidParams):
        checker().validate_params(params, config={})


def test_no_params_is_fine():
    assert checker().validate_params({}, config={}) == {}
    assert checker().validate_params(None, config={}) == {}


def test_config_normalised():
    config = {"group_id": "sg-0123abcd", "ports": [22, {"from": 8000, "to": 8080}],
              "region": "eu-west-1", "description": "bastion"}
    assert checker().validate_config(config) == {
        "group_id": "sg-0123abcd", "ports": [{"from": 22, "to": 22}, {"from": 8000, "to": 8080}],
        "protocol": "tcp", "region": "eu-west-1", "description": "bastion"}


@pytest.mark.parametrize("config,field", [
    ({"ports": [22]}, "config.group_id"),
    ({"group_id": "vpc-0123abcd", "ports": [22]}, "config.group_id"),
    ({"group_id": "sg-0123abcd"}, "config.ports"),
    ({"group_id": "sg-0123abcd", "ports": []}, "config.ports"),
    ({"group_id": "sg-0123abcd", "ports": [0]}, "config.ports"),
    ({"group_id": "sg-0123abcd", "ports": [65536]}, "config.ports"),
    ({"group_id": "sg-0123abcd", "ports": ["22"]}, "config.ports"),
    ({"group_id": "sg-0123abcd", "ports": [True]}, "config.ports"),
    ({"group_id": "sg-0123abcd", "ports": [{"from": 10, "to": 5}]}, "config.ports"),
    ({"group_id": "sg-0123abcd", "ports": [{"from": 10}]}, "config.ports"),
    ({"group_id": "sg-0123abcd", "ports": list(range(1, 12))}, "config.ports"),
    ({"group_id": "sg-0123abcd", "ports": [22], "protocol": "-1"}, "config.protocol"),
    ({"group_id": "sg-0123abcd", "ports": [22], "protocol": "icmp"}, "config.protocol"),
    ({"group_id": "sg-0123abcd", "ports": [22], "region": "mars"}, "config.region"),
    ({"group_id": "sg-0123abcd", "ports": [22], "description": "x" * 256}, "config.description"),
    ({"group_id": "sg-0123abcd", "ports": [22], "cidr": "0.0.0.0/0"}, "config"),
])
def test_config_refused(config, field):
    with pytest.raises(InvalidParams) as caught:
        checker().validate_config(config)
    assert caught.value.errors[0]["field"] == field


# ---- declared config and params models (base.Provisioner validates through them) --------------
def test_every_module_is_discovered():
    from security_api.provisioners import modules
    assert modules() == ["aws_security_group", "none", "webhook"]
    assert names() == ["aws_security_group", "none", "webhook"]


def test_importing_the_app_does_not_load_boto3():
    import subprocess
    import sys
    code = "import sys, flask_api; assert 'boto3' not in sys.modules, 'boto3 loaded'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_each_provisioner_declares_its_models():
    from security_api.provisioners.aws_security_group import SecurityGroupConfig, SecurityGroupParams
    from security_api.provisioners.base import Nothing
    from security_api.provisioners.none import NoneProvisioner
    from security_api.provisioners.webhook import WebhookConfig, WebhookParams
    assert (NoneProvisioner.config_model, NoneProvisioner.params_model) == (Nothing, Nothing)
    assert (WebhookProvisioner.config_model, WebhookProvisioner.params_model) == \
        (WebhookConfig, WebhookParams)
    assert AwsSecurityGroupProvisioner.config_model is SecurityGroupConfig
    assert AwsSecurityGroupProvisioner.params_model is SecurityGroupParams


@pytest.mark.parametrize("call,problem", [
    (lambda p: p.validate_config({"a": 1}), "the none provisioner takes no config"),
    (lambda p: p.validate_params({"a": 1}, config={}), "the none provisioner takes no params"),
])
def test_none_takes_nothing(call, problem):
    with pytest.raises(InvalidParams) as caught:
        call(get_provisioner("none", make_settings()))
    assert caught.value.errors == [{"field": problem.split()[-1], "problem": problem}]
    assert get_provisioner("none", make_settings()).validate_config({}) == {}


def test_problems_read_as_before():
    """One sentence per field, the message `field: problem`, each problem once."""
    with pytest.raises(InvalidParams) as caught:
        checker().validate_config({"group_id": "sg-0123abcd", "ports": [True], "extra": 1})
    assert [e["field"] for e in caught.value.errors] == ["config", "config.ports"]
    assert caught.value.errors[0]["problem"] == "unknown keys ['extra']"
    assert caught.value.message.startswith("config: unknown keys ['extra']; config.ports: must be")


def test_validator_messages_are_kept():
    with pytest.raises(InvalidParams) as caught:
        webhook().validate_config({"url": "https://example.com/", "headers": {"Host": "x"}})
    assert caught.value.errors == [{"field": "config.headers", "problem": "Host is set by the service"}]
    assert caught.value.message == "config.headers: Host is set by the service"


def test_explicit_null_cidr_refused_absent_cidr_fine():
    with pytest.raises(InvalidParams) as caught:
        checker().validate_params({"cidr": None}, config={})
    assert caught.value.errors[0]["field"] == "params.cidr"
    assert checker().validate_params({"cidr": " 203.0.113.0/24"}, config={}) == {"cidr": "203.0.113.0/24"}


def test_webhook_null_headers_are_none():
    assert webhook().validate_config({"url": "https://example.com/", "headers": None}) == \
        {"url": "https://example.com/", "headers": {}}
