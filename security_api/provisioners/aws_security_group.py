"""The `aws_security_group` provisioner: open ports of a security group to one address.

Config: ``{"group_id": "sg-...", "ports": [22, {"from": 8000, "to": 8080}], "protocol": "tcp",
"region": "eu-west-1", "description": "bastion"}`` (protocol tcp by default, or udp; region
defaults to AWS_REGION). Params: optional ``{"cidr": "203.0.113.0/24"}``; without it the
requester's address is opened as a /32 (/128 for IPv6).

Every rule this creates carries the description ``security-api request <id> for <user>``.
Revoke removes exactly the rules of the group that carry this request's id, whatever their
address or ports: so it never removes a rule someone else made (an office-wide rule that
happened to cover the same address, another request's rule), and it still closes everything
if the config, the params or the requester's address changed since the grant.

Credentials come from the standard AWS chain (environment, instance or task role), never
from this service's database. IAM needs ec2:AuthorizeSecurityGroupIngress,
ec2:RevokeSecurityGroupIngress and ec2:DescribeSecurityGroups on the group. Read-back
looks for a rule with this request's marker (_aws_security_group_rules, shared with drift).
"""
from __future__ import annotations

import ipaddress
import threading
from typing import Annotated, ClassVar, Literal

import boto3
from botocore.config import Config as BotoConfig
from botocore.exceptions import BotoCoreError, ClientError
from pydantic import AfterValidator, Field, StrictInt, StrictStr, model_validator

from security_api.errors import InvalidParams
from security_api.provisioners._aws_inventory import SecurityGroupInventory
from security_api.provisioners._aws_security_group_rules import (
    DISALLOWED_DESCRIPTION_CHARS,
    describe_rule,
    error_code,
    marker,
    range_of,
    rules_of_request,
)
from security_api.provisioners.base import GrantContext, Provisioner, ProvisionerModel, ProvisioningError

GROUP_ID = r"^sg-[0-9a-f]{8,17}$"
REGION = r"^[a-z]{2}(-[a-z]+)+-[0-9]{1,2}$"
PROTOCOLS = ("tcp", "udp")
MAX_PORT_RANGES = 10
CIDR_PROBLEM = "must be a network like 203.0.113.7/32"
PORTS_PROBLEM = (f"must be a list of 1 to {MAX_PORT_RANGES} ports (1-65535) "
                 "or {\"from\", \"to\"} ranges with from <= to")
MAX_DESCRIPTION = 255
# A personal access is one address or a small network, never a large part of the internet.
MIN_PREFIX = {4: 16, 6: 48}
DUPLICATE = "InvalidPermission.Duplicate"
NOT_FOUND = "InvalidPermission.NotFound"


def canonical_network(value) -> str:
    """Return the network in canonical form; ValueError unless it is exact and narrow enough."""
    if not isinstance(value, str) or not value or len(value) > 64:
        raise ValueError(CIDR_PROBLEM)
    try:
        network = ipaddress.ip_network(value.strip(), strict=True)
    except ValueError:
        raise ValueError(_cidr_problem(value.strip())) from None
    if network.prefixlen < MIN_PREFIX[network.version]:
        raise ValueError(f"too broad: IPv{network.version} networks need a prefix of at least "
                         f"/{MIN_PREFIX[network.version]}")
    return str(network)


def _cidr_problem(value: str) -> str:
    try:
        loose = ipaddress.ip_network(value, strict=False)
    except ValueError:
        return CIDR_PROBLEM
    return f"host bits are set; did you mean {loose}?"


Port = Annotated[StrictInt, Field(ge=1, le=65535)]


class PortRange(ProvisionerModel):
    """Ports `from` to `to`, both included; a single port is a range of one."""

    from_: Port = Field(alias="from")
    to: Port

    @model_validator(mode="after")
    def _ordered(self) -> PortRange:
        if self.from_ > self.to:
            raise ValueError(PORTS_PROBLEM)
        return self


def _as_ranges(ports: list[int | PortRange]) -> list[PortRange]:
    return [PortRange(from_=p, to=p) if isinstance(p, int) else p for p in ports]


class SecurityGroupConfig(ProvisionerModel):
    """Which group, which ports and protocol; region defaults to AWS_REGION."""

    problems: ClassVar[dict[str, str]] = {
        "group_id": "must be a security group id like sg-0123abcd",
        "ports": PORTS_PROBLEM,
        "protocol": f"must be one of {list(PROTOCOLS)}",
        "region": "must be an AWS region like eu-west-1",
        "description": f"must be a string of at most {MAX_DESCRIPTION} characters"}

    group_id: Annotated[StrictStr, Field(pattern=GROUP_ID)]
    ports: Annotated[list[Port | PortRange], Field(min_length=1, max_length=MAX_PORT_RANGES),
                     AfterValidator(_as_ranges)]
    # "-1" (every protocol) is refused: a personal access names its ports.
    protocol: Literal["tcp", "udp"] = "tcp"
    region: Annotated[StrictStr, Field(pattern=REGION)] | None = None
    description: Annotated[StrictStr, Field(max_length=MAX_DESCRIPTION)] | None = None


class SecurityGroupParams(ProvisionerModel):
    """Optionally a network to open instead of the requester's own address."""

    # Validated only when given: an explicit null is refused like any other non-network.
    cidr: Annotated[object, AfterValidator(canonical_network)] = None


class AwsSecurityGroupProvisioner(SecurityGroupInventory, Provisioner):
    """Authorizes, then revokes, ingress for one address on configured ports."""

    name = "aws_security_group"

    config_model = SecurityGroupConfig
    params_model = SecurityGroupParams

    def grant(self, ctx: GrantContext) -> dict:
        """Open every configured port range to the cidr param or the requester's address."""
        config = self._config_for(ctx)
        cidr = _grant_cidr(ctx)
        client = self._client(config)
        description = rule_description(ctx, config)
        opened, already_open = [], []
        for port_range in config["ports"]:
            permission = _ip_permission(config, port_range, cidr, description=description)
            try:
                created = _authorize(client, config["group_id"], permission)
            except ProvisioningError:
                # Never leave the request half-granted: close what this call opened.
                _close_quietly(client, config["group_id"], opened)
                raise
            (opened if created else already_open).append(permission)
        return {"provisioner": self.name, "group_id": config["group_id"], "cidr": cidr,
                "protocol": config["protocol"], "ports": config["ports"],
                "already_open": [range_of(p) for p in already_open]}

    def revoke(self, ctx: GrantContext) -> dict:
        """Remove every rule of the group that this request created (see the module doc)."""
        config = self._config_for(ctx)
        client = self._client(config)
        ours = rules_of_request(client, config["group_id"], request_id=ctx.request_id)
        for permission in ours:
            _revoke(client, config["group_id"], permission)
        return {"provisioner": self.name, "group_id": config["group_id"],
                "removed": [describe_rule(p) for p in ours]}

    def is_present(self, ctx: GrantContext) -> bool:
        """Whether the group holds a rule tagged with this request (not merely the address:
        someone else's rule opening it is not a grant this service made or can take back)."""
        config = self._config_for(ctx)
        return bool(rules_of_request(self._client(config), config["group_id"],
                                     request_id=ctx.request_id))

    def _config_for(self, ctx: GrantContext) -> dict:
        # The stored config was checked when saved; check again in case it was edited by hand.
        try:
            return self.validate_config(ctx.config)
        except InvalidParams as exc:
            raise ProvisioningError(f"aws_security_group config is invalid: {exc.message}") from None

    def _client(self, config: dict):
        return ec2_client(region=config.get("region") or self.settings.aws_region,
                          endpoint_url=self.settings.aws_endpoint_url or None,
                          timeout=self.settings.provisioner_timeout_seconds)


_clients: dict[tuple, object] = {}
_clients_lock = threading.Lock()


def ec2_client(*, region: str, endpoint_url: str | None, timeout: int):
    """Return a shared EC2 client: clients are thread-safe, and building one costs ~100 ms."""
    key = (region, endpoint_url, timeout)
    # Sessions are not thread-safe: build each client under the lock, from its own session.
    with _clients_lock:
        if key not in _clients:
            _clients[key] = _new_client(region=region, endpoint_url=endpoint_url, timeout=timeout)
        return _clients[key]


def close_clients() -> None:
    """Close and forget every shared client: a process about to fork must not hand its open
    connections to its children (gunicorn's master after the start-up tasks)."""
    with _clients_lock:
        clients = list(_clients.values())
        _clients.clear()
    for client in clients:
        client.close()


def _new_client(*, region: str, endpoint_url: str | None, timeout: int):
    session = boto3.session.Session()
    try:
        # A client built without credentials would keep failing after they appear (a slow
        # instance metadata service at start-up): refuse to build, and so to cache, that one.
        if session.get_credentials() is None:
            raise ProvisioningError("AWS NoCredentialsError")
        boto_config = BotoConfig(connect_timeout=timeout, read_timeout=timeout,
                                 retries={"max_attempts": 2})
        return session.client("ec2", region_name=region, endpoint_url=endpoint_url,
                              config=boto_config)
    except BotoCoreError as exc:
        raise ProvisioningError(f"AWS {type(exc).__name__}") from None
    except ValueError:
        # botocore's answer to a malformed AWS_ENDPOINT_URL.
        raise ProvisioningError("AWS endpoint URL is invalid") from None


def checked_cidr(value) -> str:
    """Return the network in canonical form; 412 unless it is exact and narrow enough."""
    try:
        return canonical_network(value)
    except ValueError as exc:
        raise InvalidParams.one("params.cidr", str(exc)) from None


def rule_description(ctx: GrantContext, config: dict) -> str:
    """Return the rule description: the request marker first, so truncation never cuts it."""
    text = f"{marker(ctx.request_id)} for {ctx.requester}"
    if config.get("description"):
        text += f": {config['description']}"
    return DISALLOWED_DESCRIPTION_CHARS.sub("_", text)[:MAX_DESCRIPTION]


def _grant_cidr(ctx: GrantContext) -> str:
    if ctx.params.get("cidr"):
        try:
            return checked_cidr(ctx.params["cidr"])
        except InvalidParams as exc:
            raise ProvisioningError(exc.message) from None
    if not ctx.requester_ip:
        raise ProvisioningError("no address to allow")
    try:
        address = ipaddress.ip_address(ctx.requester_ip)
    except ValueError:
        raise ProvisioningError("no address to allow: requester address is not an IP") from None
    # A v4 client seen through a dual-stack socket must be opened as v4, or AWS never matches it.
    if address.version == 6 and address.ipv4_mapped:
        address = address.ipv4_mapped
    return str(ipaddress.ip_network(address))


def _ip_permission(config: dict, port_range: dict, cidr: str, *, description: str) -> dict:
    permission = {"IpProtocol": config["protocol"], "FromPort": port_range["from"],
                  "ToPort": port_range["to"]}
    if ipaddress.ip_network(cidr).version == 4:
        permission["IpRanges"] = [{"CidrIp": cidr, "Description": description}]
    else:
        permission["Ipv6Ranges"] = [{"CidrIpv6": cidr, "Description": description}]
    return permission


def _authorize(client, group_id: str, permission: dict) -> bool:
    """Add one rule; False when it already existed (granting twice is not an error)."""
    try:
        client.authorize_security_group_ingress(GroupId=group_id, IpPermissions=[permission])
    except ClientError as exc:
        if error_code(exc) == DUPLICATE:
            return False
        raise ProvisioningError(f"AWS {error_code(exc)}") from None
    except BotoCoreError as exc:
        raise ProvisioningError(f"AWS {type(exc).__name__}") from None
    return True


def _revoke(client, group_id: str, permission: dict) -> None:
    try:
        client.revoke_security_group_ingress(GroupId=group_id, IpPermissions=[permission])
    except ClientError as exc:
        # Already gone (a racing revoke, a human): the goal is reached.
        if error_code(exc) != NOT_FOUND:
            raise ProvisioningError(f"AWS {error_code(exc)}") from None
    except BotoCoreError as exc:
        raise ProvisioningError(f"AWS {type(exc).__name__}") from None


def _close_quietly(client, group_id: str, permissions: list[dict]) -> None:
    for permission in permissions:
        try:
            _revoke(client, group_id, permission)
        except ProvisioningError:
            pass  # The grant error is what gets reported; the rule is tagged for a later revoke.
