"""The read side of the `aws_security_group` provisioner: which rules of a group are ours.

Every rule the provisioner creates carries the description ``security-api request <id> for
<user>`` (see `rule_description`). Reading that marker back is what revoke (remove exactly
ours), read-back (is ours there / gone) and drift detection (ours without a grant, a grant
without ours) all need, so it lives here, apart from the calls that change the group. The
leading underscore keeps the provisioner registry from taking it for a provisioner.
"""
from __future__ import annotations

import re

from botocore.exceptions import BotoCoreError, ClientError

from security_api.provisioners.base import ProvisioningError

MARKER_PREFIX = "security-api request "
# AWS accepts only these characters in a rule description; the rest become "_".
DISALLOWED_DESCRIPTION_CHARS = re.compile(r"[^a-zA-Z0-9 ._\-:/()#,@\[\]+=&;{}!$*]")


def marker(request_id: str) -> str:
    """Return the description prefix that names one request's rules."""
    return DISALLOWED_DESCRIPTION_CHARS.sub("_", f"{MARKER_PREFIX}{request_id}")


def group_rules(client, group_id: str) -> list[dict]:
    """Return the group's ingress rules (IpPermissions) as EC2 describes them."""
    try:
        answer = client.describe_security_groups(GroupIds=[group_id])
    except ClientError as exc:
        raise ProvisioningError(f"AWS {error_code(exc)}") from None
    except BotoCoreError as exc:
        raise ProvisioningError(f"AWS {type(exc).__name__}") from None
    return [rule for group in answer.get("SecurityGroups", [])
            for rule in group.get("IpPermissions", [])]


def rules_of_request(client, group_id: str, *, request_id: str) -> list[dict]:
    """Return the group's ingress rules whose description names this request, one per range."""
    mark = marker(request_id)
    ours = []
    for rule in group_rules(client, group_id):
        ours.extend(own_ranges(rule, marker=mark))
    return ours


def own_ranges(rule: dict, *, marker: str) -> list[dict]:
    """Split one IpPermissions entry into single-range permissions carrying `marker`."""
    def is_ours(entry: dict) -> bool:
        description = entry.get("Description") or ""
        return description == marker or description.startswith(marker + " ")

    base = {key: rule[key] for key in ("IpProtocol", "FromPort", "ToPort") if key in rule}
    ranges = [{**base, "IpRanges": [{"CidrIp": r["CidrIp"]}]}
              for r in rule.get("IpRanges", []) if is_ours(r)]
    ranges += [{**base, "Ipv6Ranges": [{"CidrIpv6": r["CidrIpv6"]}]}
               for r in rule.get("Ipv6Ranges", []) if is_ours(r)]
    return ranges


def describe_rule(permission: dict) -> dict:
    """Return a single-range permission as {"cidr", "protocol", "from", "to"}."""
    ranges = permission.get("IpRanges") or permission.get("Ipv6Ranges")
    cidr = ranges[0].get("CidrIp") or ranges[0].get("CidrIpv6")
    return {"cidr": cidr, "protocol": permission.get("IpProtocol"), **range_of(permission)}


def range_of(permission: dict) -> dict:
    return {"from": permission.get("FromPort"), "to": permission.get("ToPort")}


def error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code") or "ClientError")[:100]
