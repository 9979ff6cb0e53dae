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
ec2:RevokeSecurityGroupIngress and ec2:DescribeSecurityGroups on the group.
"""
from __future__ import annotations

import ipaddress
import re
import threading

import boto3
from botocore.config import Config as BotoConfig
from botocore.exceptions import BotoCoreError, ClientError

from ..errors import InvalidParams
from .base import GrantContext, Provisioner, ProvisioningError

GROUP_ID = re.compile(r"sg-[0-9a-f]{8,17}")
REGION = re.compile(r"[a-z]{2}(-[a-z]+)+-[0-9]{1,2}")
PROTOCOLS = ("tcp", "udp")
MAX_PORT_RANGES = 10
MAX_DESCRIPTION = 255
# A personal access is one address or a small network, never a large part of the internet.
MIN_PREFIX = {4: 16, 6: 48}
# AWS accepts only these characters in a rule description; the rest become "_".
DISALLOWED_DESCRIPTION_CHARS = re.compile(r"[^a-zA-Z0-9 ._\-:/()#,@\[\]+=&;{}!$*]")
DUPLICATE = "InvalidPermission.Duplicate"
NOT_FOUND = "InvalidPermission.NotFound"


class AwsSecurityGroupProvisioner(Provisioner):
    """Authorizes, then revokes, ingress for one address on configured ports."""

    name = "aws_security_group"

    def validate_config(self, config: dict) -> dict:
        """Return the config with protocol filled in and port ranges as {"from", "to"}."""
        if not isinstance(config, dict):
            raise InvalidParams.one("config", "must be a JSON object")
        unknown = set(config) - {"group_id", "ports", "protocol", "region", "description"}
        if unknown:
            raise InvalidParams.one("config", f"unknown keys {sorted(unknown)}")
        group_id = config.get("group_id")
        if not isinstance(group_id, str) or not GROUP_ID.fullmatch(group_id):
            raise InvalidParams.one("config.group_id", "must be a security group id like sg-0123abcd")
        checked = {"group_id": group_id, "ports": _checked_ports(config.get("ports")),
                   "protocol": _checked_protocol(config.get("protocol", "tcp"))}
        if config.get("region") is not None:
            checked["region"] = _checked_region(config["region"])
        if config.get("description") is not None:
            checked["description"] = _checked_description(config["description"])
        return checked

    def validate_params(self, params: dict, *, config: dict) -> dict:
        """Return {} or {"cidr": network}; 412 for a malformed or too broad network."""
        if params is None:
            return {}
        if not isinstance(params, dict):
            raise InvalidParams.one("params", "must be a JSON object")
        unknown = set(params) - {"cidr"}
        if unknown:
            raise InvalidParams.one("params", f"unknown keys {sorted(unknown)}; only cidr")
        return {"cidr": checked_cidr(params["cidr"])} if "cidr" in params else {}

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
                "already_open": [_range_of(p) for p in already_open]}

    def revoke(self, ctx: GrantContext) -> dict:
        """Remove every rule of the group that this request created (see the module doc)."""
        config = self._config_for(ctx)
        client = self._client(config)
        ours = _rules_of_request(client, config["group_id"], marker=_marker(ctx.request_id))
        for permission in ours:
            _revoke(client, config["group_id"], permission)
        return {"provisioner": self.name, "group_id": config["group_id"],
                "removed": [_describe_rule(p) for p in ours]}

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
    if not isinstance(value, str) or not value or len(value) > 64:
        raise InvalidParams.one("params.cidr", "must be a network like 203.0.113.7/32")
    try:
        network = ipaddress.ip_network(value.strip(), strict=True)
    except ValueError:
        raise InvalidParams.one("params.cidr", _cidr_problem(value.strip())) from None
    if network.prefixlen < MIN_PREFIX[network.version]:
        raise InvalidParams.one("params.cidr", f"too broad: IPv{network.version} networks need a "
                                               f"prefix of at least /{MIN_PREFIX[network.version]}")
    return str(network)


def rule_description(ctx: GrantContext, config: dict) -> str:
    """Return the rule description: the request marker first, so truncation never cuts it."""
    text = f"{_marker(ctx.request_id)} for {ctx.requester}"
    if config.get("description"):
        text += f": {config['description']}"
    return DISALLOWED_DESCRIPTION_CHARS.sub("_", text)[:MAX_DESCRIPTION]


def _marker(request_id: str) -> str:
    return DISALLOWED_DESCRIPTION_CHARS.sub("_", f"security-api request {request_id}")


def _cidr_problem(value: str) -> str:
    try:
        loose = ipaddress.ip_network(value, strict=False)
    except ValueError:
        return "must be a network like 203.0.113.7/32"
    return f"host bits are set; did you mean {loose}?"


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
        if _error_code(exc) == DUPLICATE:
            return False
        raise ProvisioningError(f"AWS {_error_code(exc)}") from None
    except BotoCoreError as exc:
        raise ProvisioningError(f"AWS {type(exc).__name__}") from None
    return True


def _revoke(client, group_id: str, permission: dict) -> None:
    try:
        client.revoke_security_group_ingress(GroupId=group_id, IpPermissions=[permission])
    except ClientError as exc:
        # Already gone (a racing revoke, a human): the goal is reached.
        if _error_code(exc) != NOT_FOUND:
            raise ProvisioningError(f"AWS {_error_code(exc)}") from None
    except BotoCoreError as exc:
        raise ProvisioningError(f"AWS {type(exc).__name__}") from None


def _close_quietly(client, group_id: str, permissions: list[dict]) -> None:
    for permission in permissions:
        try:
            _revoke(client, group_id, permission)
        except ProvisioningError:
            pass  # The grant error is what gets reported; the rule is tagged for a later revoke.


def _rules_of_request(client, group_id: str, *, marker: str) -> list[dict]:
    """Return the group's ingress rules whose description names this request."""
    try:
        answer = client.describe_security_groups(GroupIds=[group_id])
    except ClientError as exc:
        raise ProvisioningError(f"AWS {_error_code(exc)}") from None
    except BotoCoreError as exc:
        raise ProvisioningError(f"AWS {type(exc).__name__}") from None
    ours = []
    for group in answer.get("SecurityGroups", []):
        for rule in group.get("IpPermissions", []):
            ours.extend(_own_ranges(rule, marker=marker))
    return ours


def _own_ranges(rule: dict, *, marker: str) -> list[dict]:
    def is_ours(entry: dict) -> bool:
        description = entry.get("Description") or ""
        return description == marker or description.startswith(marker + " ")

    base = {key: rule[key] for key in ("IpProtocol", "FromPort", "ToPort") if key in rule}
    ranges = [{**base, "IpRanges": [{"CidrIp": r["CidrIp"]}]}
              for r in rule.get("IpRanges", []) if is_ours(r)]
    ranges += [{**base, "Ipv6Ranges": [{"CidrIpv6": r["CidrIpv6"]}]}
               for r in rule.get("Ipv6Ranges", []) if is_ours(r)]
    return ranges


def _describe_rule(permission: dict) -> dict:
    ranges = permission.get("IpRanges") or permission.get("Ipv6Ranges")
    cidr = ranges[0].get("CidrIp") or ranges[0].get("CidrIpv6")
    return {"cidr": cidr, "protocol": permission.get("IpProtocol"), **_range_of(permission)}


def _range_of(permission: dict) -> dict:
    return {"from": permission.get("FromPort"), "to": permission.get("ToPort")}


def _error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code") or "ClientError")[:100]


def _checked_ports(ports) -> list[dict]:
    if not isinstance(ports, list) or not 1 <= len(ports) <= MAX_PORT_RANGES:
        raise InvalidParams.one("config.ports", f"must be a list of 1 to {MAX_PORT_RANGES} ports "
                                                "or {\"from\", \"to\"} ranges")
    return [_checked_port_range(entry) for entry in ports]


def _checked_port_range(entry) -> dict:
    if isinstance(entry, dict) and set(entry) == {"from", "to"}:
        low, high = entry["from"], entry["to"]
    else:
        low = high = entry
    if not (_is_port(low) and _is_port(high) and low <= high):
        raise InvalidParams.one("config.ports", f"{entry!r} is not a port (1-65535) or a range "
                                                "with from <= to")
    return {"from": low, "to": high}


def _is_port(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 65535


def _checked_protocol(protocol) -> str:
    # "-1" (every protocol) is refused: a personal access names its ports.
    if protocol not in PROTOCOLS:
        raise InvalidParams.one("config.protocol", f"must be one of {list(PROTOCOLS)}")
    return protocol


def _checked_region(region) -> str:
    if not isinstance(region, str) or not REGION.fullmatch(region):
        raise InvalidParams.one("config.region", "must be an AWS region like eu-west-1")
    return region


def _checked_description(description) -> str:
    if not isinstance(description, str) or len(description) > MAX_DESCRIPTION:
        raise InvalidParams.one("config.description",
                                f"must be a string of at most {MAX_DESCRIPTION} characters")
    return description
