"""The read side of `aws_security_group` for drift: what rules of a group did this service make?

A rule is ours when its description starts with the marker every grant writes,
``security-api request <id> ...`` (see `aws_security_group.rule_description`); the id it names
is the request that made it (or ``instance-startup``, the start-up task's own rules). Rules
without the marker were made by someone else and are never listed, so never touched.

A mixin of the provisioner class, kept apart because the provisioner module is already long;
it imports nothing from that module (the methods it calls, `_client` and `validate_config`,
are the provisioner's own).
"""
from __future__ import annotations

from botocore.exceptions import BotoCoreError, ClientError

from security_api.provisioners._aws_security_group_rules import MARKER_PREFIX, error_code, group_rules
from security_api.provisioners.base import Entry, ProvisioningError

NOT_FOUND = "InvalidPermission.NotFound"
# Request ids are UUIDs; a description someone wrote by hand may name anything, so cap it.
MAX_REQUEST_ID = 128


class SecurityGroupInventory:
    """Drift methods of the aws_security_group provisioner (see Provisioner in base.py)."""

    inspectable = True

    def target_of(self, config: dict) -> str:
        """Return ``<region>/<group id>``: two permissions on one group share one read."""
        return f"{config.get('region') or self.settings.aws_region}/{config['group_id']}"

    def inventory(self, config: dict) -> list[Entry]:
        """List every range of the group whose description carries the marker."""
        target = self.target_of(config)
        entries = []
        for rule in group_rules(self._client(config), config["group_id"]):
            entries.extend(_marked_entries(target, config, rule))
        return entries

    def present(self, config: dict, entries: list[Entry]) -> bool:
        """A grant is whole when every configured port range has a rule of its request."""
        found = {(e.ref["protocol"], e.ref["from"], e.ref["to"]) for e in entries}
        return all((config["protocol"], r["from"], r["to"]) in found for r in config["ports"])

    def remove(self, ref: dict) -> None:
        """Revoke exactly the one range `ref` names; already gone is fine."""
        client = self._client({"region": ref["region"]})
        permission = {"IpProtocol": ref["protocol"]}
        # An all-traffic rule (protocol -1) has no ports; AWS refuses them named as None.
        permission.update({name: ref[key] for name, key in (("FromPort", "from"), ("ToPort", "to"))
                           if ref[key] is not None})
        if ":" in ref["cidr"]:
            permission["Ipv6Ranges"] = [{"CidrIpv6": ref["cidr"]}]
        else:
            permission["IpRanges"] = [{"CidrIp": ref["cidr"]}]
        try:
            client.revoke_security_group_ingress(GroupId=ref["group_id"], IpPermissions=[permission])
        except ClientError as exc:
            if error_code(exc) != NOT_FOUND:
                raise ProvisioningError(_aws_error(exc)) from None
        except BotoCoreError as exc:
            raise ProvisioningError(_aws_error(exc)) from None


def _marked_entries(target: str, config: dict, rule: dict) -> list[Entry]:
    ranges = [(r.get("CidrIp"), r.get("Description") or "") for r in rule.get("IpRanges", [])]
    ranges += [(r.get("CidrIpv6"), r.get("Description") or "") for r in rule.get("Ipv6Ranges", [])]
    entries = []
    for cidr, description in ranges:
        if not description.startswith(MARKER_PREFIX):
            continue
        request_id = description[len(MARKER_PREFIX):].split(" ", 1)[0][:MAX_REQUEST_ID]
        if not request_id or not cidr:
            continue
        region, group_id = target.split("/", 1)
        ref = {"region": region, "group_id": group_id, "protocol": rule.get("IpProtocol"),
               "from": rule.get("FromPort"), "to": rule.get("ToPort"), "cidr": cidr}
        ports = f"{ref['from']}" if ref["from"] == ref["to"] else f"{ref['from']}-{ref['to']}"
        entries.append(Entry(
            target=target, request_id=request_id,
            key=f"{target}|{ref['protocol']}|{ports}|{cidr}|{request_id}",
            description=f"{group_id} {ref['protocol']} {ports} from {cidr} ({description})",
            ref=ref))
    return entries


def _aws_error(exc: Exception) -> str:
    return f"AWS {error_code(exc) if isinstance(exc, ClientError) else type(exc).__name__}"
