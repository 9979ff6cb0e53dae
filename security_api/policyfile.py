"""Policy as code: a YAML file of roles, permissions and rules, checked whole, planned, applied.

The file is the full desired state of every non-built-in permission, role and rule: what it
does not name is deleted, except the built-in permissions, the security/admin role and its
standing rules for security-api.admin and security-api.audit, which are always kept.

    version: 1
    roles:
      - name: developer
        description: People who build the product
        subroles: [backend, {name: frontend, description: Web and mobile}]
    permissions:
      - key: vpn
        name: VPN access
        max_duration_minutes: 720
        provisioner: {name: none, config: {}}
    rules:
      - {permission: vpn, role: "*", subrole: "*", mode: auto}

Nodes are read with ``yaml.compose`` (never constructed into arbitrary objects), so every
problem names the line and column of the offending node; a file with any problem is refused
whole and nothing changes.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from datetime import datetime

import yaml
from sqlalchemy import func, select
from sqlalchemy.orm import Session
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from . import audit
from .accounts import NAME_PATTERN
from .catalog import BUILTIN_PERMISSIONS, KEY_PATTERN, MAX_MINUTES, refuse_service_only_approvers
from .enums import AuditAction, PolicyMode, RequestStatus
from .errors import Conflict, InvalidParams
from .grants import ADMIN_PERMISSION, refuse_admin_for_service_accounts
from .models import AccessRequest, Permission, PolicyRule, Role, Subrole, User
from .policy import WILDCARD
from .provisioners import get_provisioner
from .schema import ADMIN_ROLE, ADMIN_STANDING, ADMIN_SUBROLE

FILE_VERSION = 1
MAX_FILE_CHARS = 1_000_000
MAX_CONFIG_DEPTH = 20
MAX_APPROVALS = 10
OPEN_STATUSES = (RequestStatus.PENDING, RequestStatus.GRANTING, RequestStatus.ACTIVE,
                 RequestStatus.FAILED)
# Grants whose revoke will read the permission's provisioner config.
GRANTED_STATUSES = (RequestStatus.GRANTING, RequestStatus.ACTIVE)

_STR = "tag:yaml.org,2002:str"
_INT = "tag:yaml.org,2002:int"
_BOOL = "tag:yaml.org,2002:bool"
_NULL = "tag:yaml.org,2002:null"
_FLOAT = "tag:yaml.org,2002:float"
_CONSTRUCTOR = yaml.constructor.SafeConstructor()


class PolicyFileError(InvalidParams):
    """The file (or the change it asks for) is refused whole; `problems` lists every reason."""

    def __init__(self, problems: list[str]):
        super().__init__(f"The policy file is refused ({len(problems)} problem(s)); nothing changed.",
                         code="policy_file_invalid",
                         errors=[{"field": "policy", "problem": p} for p in problems])
        self.problems = problems


@dataclass(frozen=True)
class RoleSpec:
    """A role as the file wants it."""

    name: str
    description: str
    subroles: dict[str, str]  # subrole name -> description


@dataclass(frozen=True)
class PermissionSpec:
    """A permission as the file wants it; the provisioner config is already normalised."""

    key: str
    name: str
    description: str
    max_duration_minutes: int
    requires_justification: bool
    provisioner: str
    provisioner_config: dict


@dataclass(frozen=True)
class RuleSpec:
    """A policy rule as the file wants it."""

    permission: str
    role: str
    subrole: str
    mode: PolicyMode
    max_duration_minutes: int | None = None
    approvers: tuple[str, ...] = ()
    approvals_required: int = 1

    @property
    def ident(self) -> tuple[str, str, str]:
        """Return what makes a rule unique: permission, role, subrole."""
        return (self.permission, self.role, self.subrole)


@dataclass(frozen=True)
class PolicyFile:
    """A checked policy file: the desired state."""

    roles: dict[str, RoleSpec]
    permissions: dict[str, PermissionSpec]
    rules: dict[tuple[str, str, str], RuleSpec]
    sha256: str = ""


def _protected_rule(ident: tuple[str, str, str]) -> bool:
    permission, role, subrole = ident
    return permission in ADMIN_STANDING and role == ADMIN_ROLE and subrole == ADMIN_SUBROLE


# ----------------------------------------------------------------------------------------------
# Reading


class _Reader:
    """Turns composed YAML nodes into specs, collecting every problem with its position."""

    def __init__(self, settings):
        self.settings = settings
        self.problems: list[str] = []
        self.declared_permissions: set[str] = set()

    def fail(self, node: Node, path: str, problem: str) -> None:
        mark = node.start_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}"
        self.problems.append(f"{where}: {path}: {problem}" if path else f"{where}: {problem}")

    def mapping(self, node: Node, path: str, *, required: tuple[str, ...] = (),
                optional: tuple[str, ...] = ()) -> dict[str, Node] | None:
        if not isinstance(node, MappingNode):
            self.fail(node, path, "must be a mapping")
            return None
        fields: dict[str, Node] = {}
        allowed = (*required, *optional)
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, ScalarNode) and key_node.tag == _STR else None
            inner = f"{path}.{key}" if path and key else (key or path)
            if key is None:
                self.fail(key_node, path, "keys must be strings")
            elif key in fields:
                self.fail(key_node, inner, "duplicate key")
            elif key not in allowed:
                self.fail(key_node, inner, f"unknown key; expected one of {', '.join(allowed)}")
            else:
                fields[key] = value_node
        for missing in required:
            if missing not in fields:
                self.fail(node, path, f"missing required key {missing!r}")
        return fields

    def sequence(self, node: Node, path: str) -> list[Node]:
        if not isinstance(node, SequenceNode):
            self.fail(node, path, "must be a list")
            return []
        return list(node.value)

    def string(self, node: Node, path: str, *, max_length: int, pattern=None,
               required: bool = False) -> str | None:
        if not isinstance(node, ScalarNode) or node.tag != _STR:
            self.fail(node, path, "must be a string")
            return None
        value = node.value
        if len(value) > max_length:
            self.fail(node, path, f"at most {max_length} characters")
            return None
        if required and not value.strip():
            self.fail(node, path, "must not be empty")
            return None
        if pattern is not None and not pattern.fullmatch(value):
            self.fail(node, path, f"{value!r} is not a lowercase slug")
            return None
        return value

    def integer(self, node: Node, path: str, *, low: int, high: int,
                nullable: bool = False) -> int | None:
        if nullable and isinstance(node, ScalarNode) and node.tag == _NULL:
            return None
        if not isinstance(node, ScalarNode) or node.tag != _INT:
            self.fail(node, path, "must be an integer" + (" or null" if nullable else ""))
            return None
        value = _CONSTRUCTOR.construct_yaml_int(node)
        if not low <= value <= high:
            self.fail(node, path, f"{value} is out of range: from {low} to {high}")
            return None
        return value

    def boolean(self, node: Node, path: str) -> bool | None:
        if not isinstance(node, ScalarNode) or node.tag != _BOOL:
            self.fail(node, path, "must be true or false")
            return None
        return _CONSTRUCTOR.construct_yaml_bool(node)

    def plain(self, node: Node, path: str, depth: int = 0):
        """Return JSON-like data (str, int, float, bool, null, lists, string-keyed mappings)."""
        if depth > MAX_CONFIG_DEPTH:
            self.fail(node, path, "nested too deeply")
            return None
        if isinstance(node, MappingNode):
            result, seen = {}, set()
            for key_node, value_node in node.value:
                if not isinstance(key_node, ScalarNode) or key_node.tag != _STR:
                    self.fail(key_node, path, "keys must be strings")
                    continue
                if key_node.value in seen:
                    self.fail(key_node, f"{path}.{key_node.value}", "duplicate key")
                    continue
                seen.add(key_node.value)
                result[key_node.value] = self.plain(value_node, f"{path}.{key_node.value}",
                                                    depth + 1)
            return result
        if isinstance(node, SequenceNode):
            return [self.plain(item, f"{path}[{i}]", depth + 1) for i, item in enumerate(node.value)]
        if node.tag == _STR:
            return node.value
        if node.tag == _INT:
            return _CONSTRUCTOR.construct_yaml_int(node)
        if node.tag == _BOOL:
            return _CONSTRUCTOR.construct_yaml_bool(node)
        if node.tag == _NULL:
            return None
        if node.tag == _FLOAT:
            value = _CONSTRUCTOR.construct_yaml_float(node)
            if math.isfinite(value):
                return value
        self.fail(node, path, f"unsupported value {node.value!r}; quote it to make it a string")
        return None


def parse(text: str, *, settings) -> PolicyFile:
    """Check a whole policy file and return the desired state; raise PolicyFileError otherwise."""
    if len(text) > MAX_FILE_CHARS:
        raise PolicyFileError([f"the file is larger than {MAX_FILE_CHARS} characters"])
    try:
        # Aliases could expand a small file into a huge one; a policy file has no use for them.
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            if isinstance(event, yaml.AliasEvent):
                mark = event.start_mark
                raise PolicyFileError([f"line {mark.line + 1}, column {mark.column + 1}: "
                                       "anchors and aliases are not supported"])
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise PolicyFileError([f"{where}not valid YAML: {exc.problem or exc.context}"]) from None
    except yaml.YAMLError as exc:
        raise PolicyFileError([f"not valid YAML: {exc}"]) from None
    if root is None:
        raise PolicyFileError(["the file is empty"])
    reader = _Reader(settings)
    top = reader.mapping(root, "", required=("version", "roles", "permissions", "rules"))
    desired = None
    if top is not None:
        if "version" in top:
            reader.integer(top["version"], "version", low=FILE_VERSION, high=FILE_VERSION)
        roles = _read_roles(reader, top["roles"]) if "roles" in top else {}
        permissions = _read_permissions(reader, top["permissions"]) if "permissions" in top else {}
        rules = _read_rules(reader, top["rules"], roles=roles) if "rules" in top else {}
        digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
        desired = PolicyFile(roles, permissions, rules, digest)
    if reader.problems or desired is None:
        raise PolicyFileError(reader.problems)
    return desired


def _read_roles(reader: _Reader, node: Node) -> dict[str, RoleSpec]:
    roles: dict[str, RoleSpec] = {}
    for i, item in enumerate(reader.sequence(node, "roles")):
        path = f"roles[{i}]"
        fields = reader.mapping(item, path, required=("name",), optional=("description", "subroles"))
        if fields is None:
            continue
        name = reader.string(fields["name"], f"{path}.name", max_length=64, pattern=NAME_PATTERN) \
            if "name" in fields else None
        description = _description(reader, fields, path, 500)
        subroles: dict[str, str] = {}
        for j, sub in enumerate(reader.sequence(fields["subroles"], f"{path}.subroles")
                                if "subroles" in fields else []):
            sub_path = f"{path}.subroles[{j}]"
            sub_name, sub_description = _read_subrole(reader, sub, sub_path)
            if sub_name is None:
                continue
            if sub_name in subroles:
                reader.fail(sub, sub_path, f"subrole {sub_name!r} is listed twice")
            subroles[sub_name] = sub_description
        if name is None:
            continue
        if name in roles:
            reader.fail(fields["name"], f"{path}.name", f"role {name!r} is listed twice")
            continue
        if not subroles and name != ADMIN_ROLE:
            reader.fail(item, path, "a role needs at least one subrole")
        roles[name] = RoleSpec(name, description, subroles)
    return roles


def _read_subrole(reader: _Reader, node: Node, path: str) -> tuple[str | None, str]:
    if isinstance(node, ScalarNode):
        return reader.string(node, path, max_length=64, pattern=NAME_PATTERN), ""
    fields = reader.mapping(node, path, required=("name",), optional=("description",))
    if fields is None or "name" not in fields:
        return None, ""
    name = reader.string(fields["name"], f"{path}.name", max_length=64, pattern=NAME_PATTERN)
    return name, _description(reader, fields, path, 500)


def _description(reader: _Reader, fields: dict[str, Node], path: str, limit: int) -> str:
    if "description" not in fields:
        return ""
    return reader.string(fields["description"], f"{path}.description", max_length=limit) or ""


PERMISSION_KEYS = ("key", "name", "description", "max_duration_minutes", "requires_justification",
                   "provisioner")


def _read_permissions(reader: _Reader, node: Node) -> dict[str, PermissionSpec]:
    permissions: dict[str, PermissionSpec] = {}
    for i, item in enumerate(reader.sequence(node, "permissions")):
        path = f"permissions[{i}]"
        fields = reader.mapping(item, path, required=("key", "name", "max_duration_minutes"),
                                optional=PERMISSION_KEYS[2:])
        if fields is None:
            continue
        key = reader.string(fields["key"], f"{path}.key", max_length=64, pattern=KEY_PATTERN) \
            if "key" in fields else None
        if key is not None:
            # Rules may name it even if another of its fields is wrong: report only that field.
            reader.declared_permissions.add(key)
        if key is not None and key in BUILTIN_PERMISSIONS:
            reader.fail(fields["key"], f"{path}.key",
                        f"{key!r} is built in; rules may use it, the file cannot define it")
            key = None
        elif key is not None and key in permissions:
            reader.fail(fields["key"], f"{path}.key", f"permission {key!r} is listed twice")
            key = None
        name = reader.string(fields["name"], f"{path}.name", max_length=200, required=True) \
            if "name" in fields else None
        minutes = reader.integer(fields["max_duration_minutes"], f"{path}.max_duration_minutes",
                                 low=1, high=MAX_MINUTES) if "max_duration_minutes" in fields else None
        justification = reader.boolean(fields["requires_justification"],
                                       f"{path}.requires_justification") \
            if "requires_justification" in fields else False
        provisioner, config = _read_provisioner(reader, fields.get("provisioner"), path)
        description = _description(reader, fields, path, 2000)
        if None in (key, name, minutes, justification, provisioner, config):
            continue
        permissions[key] = PermissionSpec(key, name, description, minutes, justification,
                                          provisioner, config)
    return permissions


def _read_provisioner(reader: _Reader, node: Node | None, path: str) -> tuple[str | None, dict | None]:
    if node is None:
        return "none", {}
    path = f"{path}.provisioner"
    fields = reader.mapping(node, path, required=("name",), optional=("config",))
    if fields is None or "name" not in fields:
        return None, None
    name = reader.string(fields["name"], f"{path}.name", max_length=64)
    config_node = fields.get("config")
    problems_before = len(reader.problems)
    config = reader.plain(config_node, f"{path}.config") if config_node is not None else {}
    if name is None or len(reader.problems) > problems_before:
        return None, None
    try:
        provisioner = get_provisioner(name, reader.settings)
    except InvalidParams as exc:
        reader.fail(fields["name"], f"{path}.name", exc.errors[0]["problem"])
        return None, None
    try:
        return name, provisioner.validate_config(config)
    except InvalidParams as exc:
        for error in exc.errors or [{"field": "config", "problem": exc.message}]:
            target = _config_node(config_node, error["field"]) or config_node or node
            reader.fail(target, f"{path}.{error['field']}", error["problem"])
        return None, None


def _config_node(config_node: Node | None, field_name: str) -> Node | None:
    """Find the node a provisioner's `config.x` complaint is about, for its line number."""
    if not isinstance(config_node, MappingNode) or not field_name.startswith("config."):
        return None
    wanted = field_name.removeprefix("config.")
    for key_node, value_node in config_node.value:
        if key_node.value == wanted:
            return value_node
    return None


RULE_KEYS = ("permission", "role", "mode", "subrole", "max_duration_minutes", "approvers",
             "approvals_required")


def _read_rules(reader: _Reader, node: Node, *,
                roles: dict[str, RoleSpec]) -> dict[tuple[str, str, str], RuleSpec]:
    known = {name: set(spec.subroles) for name, spec in roles.items()}
    # security/admin always exists, whether or not the file lists it.
    known.setdefault(ADMIN_ROLE, set()).add(ADMIN_SUBROLE)
    rules: dict[tuple[str, str, str], RuleSpec] = {}
    first_line: dict[tuple[str, str, str], int] = {}
    for i, item in enumerate(reader.sequence(node, "rules")):
        path = f"rules[{i}]"
        fields = reader.mapping(item, path, required=("permission", "role", "mode"),
                                optional=RULE_KEYS[3:])
        if fields is None:
            continue
        rule = _read_rule(reader, fields, path, known=known)
        if rule is None:
            continue
        if rule.ident in rules:
            reader.fail(item, path, f"a rule for {rule.permission} and {rule.role}/{rule.subrole} "
                                    f"is already on line {first_line[rule.ident]}")
            continue
        if _protected_rule(rule.ident) and rule != RuleSpec(*rule.ident, PolicyMode.STANDING):
            reader.fail(item, path, f"the security/admin rule for {rule.permission} is built in: "
                                    "standing, with no other settings")
            continue
        rules[rule.ident] = rule
        first_line[rule.ident] = item.start_mark.line + 1
    return rules


def _read_rule(reader: _Reader, fields: dict[str, Node], path: str, *,
               known: dict[str, set[str]]) -> RuleSpec | None:
    problems_before = len(reader.problems)
    permission = role = subrole = mode = None
    if "permission" in fields:
        permission = reader.string(fields["permission"], f"{path}.permission", max_length=64)
        if permission is not None and permission not in reader.declared_permissions \
                and permission not in BUILTIN_PERMISSIONS:
            reader.fail(fields["permission"], f"{path}.permission",
                        f"{permission!r} is neither in the file's permissions nor built in")
    if "role" in fields:
        role = reader.string(fields["role"], f"{path}.role", max_length=64)
        if role is not None and role != WILDCARD and role not in known:
            reader.fail(fields["role"], f"{path}.role", f"{role!r} is not a role of the file")
            role = None
    subrole_node = fields.get("subrole")
    subrole = WILDCARD if subrole_node is None else \
        reader.string(subrole_node, f"{path}.subrole", max_length=64)
    if role is not None and subrole is not None and subrole_node is not None:
        if role == WILDCARD and subrole != WILDCARD:
            reader.fail(subrole_node, f"{path}.subrole", "must be * when role is *")
        elif subrole != WILDCARD and role != WILDCARD and subrole not in known[role]:
            reader.fail(subrole_node, f"{path}.subrole", f"{role}/{subrole} is not a subrole of the file")
    if "mode" in fields:
        mode = reader.string(fields["mode"], f"{path}.mode", max_length=16)
        if mode is not None and mode not in {m.value for m in PolicyMode}:
            reader.fail(fields["mode"], f"{path}.mode",
                        f"{mode!r} is not one of {', '.join(m.value for m in PolicyMode)}")
    minutes = reader.integer(fields["max_duration_minutes"], f"{path}.max_duration_minutes",
                             low=1, high=MAX_MINUTES, nullable=True) \
        if "max_duration_minutes" in fields else None
    approvals = reader.integer(fields["approvals_required"], f"{path}.approvals_required",
                               low=1, high=MAX_APPROVALS) if "approvals_required" in fields else 1
    approvers = _read_approvers(reader, fields.get("approvers"), path, known=known)
    if mode == PolicyMode.APPROVAL and not approvers and len(reader.problems) == problems_before:
        reader.fail(fields.get("approvers") or fields["mode"], f"{path}.approvers",
                    "an approval rule needs approvers")
    if len(reader.problems) > problems_before:
        return None
    return RuleSpec(permission, role, subrole, PolicyMode(mode), minutes, tuple(approvers),
                    approvals)


def _read_approvers(reader: _Reader, node: Node | None, path: str, *,
                    known: dict[str, set[str]]) -> list[str]:
    if node is None:
        return []
    approvers: list[str] = []
    for i, item in enumerate(reader.sequence(node, f"{path}.approvers")):
        item_path = f"{path}.approvers[{i}]"
        entry = reader.string(item, item_path, max_length=129)
        if entry is None:
            continue
        entry_role, slash, entry_subrole = entry.partition("/")
        matches = entry_role in known and (not slash or entry_subrole in known[entry_role])
        if not matches:
            reader.fail(item, item_path, f"{entry!r} matches no role or subrole")
        elif entry in approvers:
            reader.fail(item, item_path, f"{entry!r} is listed twice")
        else:
            approvers.append(entry)
    return approvers


# ----------------------------------------------------------------------------------------------
# Planning


CREATE, UPDATE, DELETE = "create", "update", "delete"
# The order changes are applied in: what others refer to exists first and goes last.
STEPS = [("role", CREATE), ("role", UPDATE), ("subrole", CREATE), ("subrole", UPDATE),
         ("permission", CREATE), ("permission", UPDATE), ("rule", DELETE), ("rule", UPDATE),
         ("rule", CREATE), ("permission", DELETE), ("subrole", DELETE), ("role", DELETE)]
SYMBOLS = {CREATE: "+", UPDATE: "~", DELETE: "-"}


@dataclass(frozen=True)
class Change:
    """One object to create, update or delete; `values` holds new values or [old, new] pairs."""

    kind: str
    action: str
    target: str
    ident: tuple
    values: dict = field(default_factory=dict)

    def describe(self) -> str:
        """Return one readable line, e.g. `~ permission vpn: max_duration_minutes 720 -> 600`."""
        line = f"{SYMBOLS[self.action]} {self.kind} {self.target}"
        if self.action == UPDATE:
            # Provisioner configs may hold credentials: dry-run output often lands in CI logs.
            parts = [f"{name} changed" if name == "provisioner_config"
                     else f"{name} {_show(old)} -> {_show(new)}"
                     for name, (old, new) in self.values.items()]
            line += ": " + ", ".join(parts)
        elif self.action == CREATE and self.kind == "rule":
            line += f": {self.values['mode']}"
        return line


def _show(value) -> str:
    return json.dumps(value, sort_keys=True) if isinstance(value, dict | list) else repr(value)


@dataclass(frozen=True)
class Diff:
    """Every change needed to make the database match a policy file, in applying order."""

    changes: tuple[Change, ...]
    sha256: str = ""

    @property
    def empty(self) -> bool:
        """Tell whether the database already matches the file."""
        return not self.changes

    def counts(self) -> dict[str, int]:
        """Return how many objects are created, updated and deleted."""
        return {f"{action}d": sum(1 for c in self.changes if c.action == action)
                for action in (CREATE, UPDATE, DELETE)}

    def lines(self) -> list[str]:
        """Return one readable line per change."""
        return [change.describe() for change in self.changes]


def _rule_target(ident: tuple[str, str, str]) -> str:
    return f"{ident[0]} for {ident[1]}/{ident[2]}"


def plan(session: Session, desired: PolicyFile) -> Diff:
    """Compute the changes that make the database match `desired`; refuse impossible deletions."""
    changes: list[Change] = []
    problems: list[str] = []
    _plan_roles(session, desired, changes, problems)
    _plan_permissions(session, desired, changes, problems)
    _plan_rules(session, desired, changes)
    if problems:
        raise PolicyFileError(problems)
    order = {step: i for i, step in enumerate(STEPS)}
    changes.sort(key=lambda c: (order[(c.kind, c.action)], c.target))
    return Diff(tuple(changes), desired.sha256)


def _plan_roles(session: Session, desired: PolicyFile, changes: list[Change],
                problems: list[str]) -> None:
    existing_roles = {r.name: r for r in session.scalars(select(Role))}
    existing_subs = {(s.role, s.name): s for s in session.scalars(select(Subrole))}
    wanted_subs = {(role.name, sub): description for role in desired.roles.values()
                   for sub, description in role.subroles.items()}
    for role in desired.roles.values():
        current = existing_roles.get(role.name)
        if current is None:
            changes.append(Change("role", CREATE, role.name, (role.name,),
                                  {"description": role.description}))
        elif current.description != role.description:
            changes.append(Change("role", UPDATE, role.name, (role.name,),
                                  {"description": [current.description, role.description]}))
    for (role, sub), description in wanted_subs.items():
        current = existing_subs.get((role, sub))
        if current is None:
            changes.append(Change("subrole", CREATE, f"{role}/{sub}", (role, sub),
                                  {"description": description}))
        elif current.description != description:
            changes.append(Change("subrole", UPDATE, f"{role}/{sub}", (role, sub),
                                  {"description": [current.description, description]}))
    holders = _count_by(session, User.role, User.subrole)
    for role, sub in sorted(existing_subs):
        if (role, sub) in wanted_subs or (role, sub) == (ADMIN_ROLE, ADMIN_SUBROLE):
            continue
        if holders.get((role, sub)):
            problems.append(f"subrole {role}/{sub} is not in the file, but {holders[(role, sub)]} "
                            "user(s) (deactivated ones too) hold it; move them first")
        changes.append(Change("subrole", DELETE, f"{role}/{sub}", (role, sub)))
    for name in sorted(existing_roles):
        if name in desired.roles or name == ADMIN_ROLE:
            continue
        changes.append(Change("role", DELETE, name, (name,)))


def _plan_permissions(session: Session, desired: PolicyFile, changes: list[Change],
                      problems: list[str]) -> None:
    existing = {p.key: p for p in session.scalars(select(Permission).where(
        Permission.builtin.is_(False)))}
    granted = _count_by(session, AccessRequest.permission_key,
                        where=AccessRequest.status.in_(GRANTED_STATUSES)
                        | AccessRequest.provisioning_state.is_not(None))
    for spec in desired.permissions.values():
        current = existing.get(spec.key)
        wanted = _permission_values(spec)
        if current is None:
            if session.get(Permission, spec.key) is not None:  # a built-in row under this key
                problems.append(f"permission {spec.key} exists as a built-in permission")
                continue
            changes.append(Change("permission", CREATE, spec.key, (spec.key,), wanted))
            continue
        before = _permission_values(current)
        diff = {name: [before[name], value] for name, value in wanted.items() if before[name] != value}
        if {"provisioner", "provisioner_config"} & diff.keys() and granted.get((spec.key,)):
            # Revoking reads the current config: changing it under live grants would strand them.
            problems.append(f"permission {spec.key}: its provisioner cannot change while "
                            f"{granted[(spec.key,)]} grant(s) are live or owe a revoke")
        if diff:
            changes.append(Change("permission", UPDATE, spec.key, (spec.key,), diff))
    open_requests = _count_by(session, AccessRequest.permission_key,
                              where=AccessRequest.status.in_(OPEN_STATUSES))
    all_requests = _count_by(session, AccessRequest.permission_key)
    for key in sorted(set(existing) - set(desired.permissions)):
        if open_requests.get((key,)):
            problems.append(f"permission {key} is not in the file, but {open_requests[(key,)]} "
                            "open access request(s) use it")
        elif all_requests.get((key,)):
            problems.append(f"permission {key} is not in the file, but past access requests refer "
                            "to it; it stays for the record")
        changes.append(Change("permission", DELETE, key, (key,)))


def _permission_values(source) -> dict:
    return {"name": source.name, "description": source.description,
            "max_duration_minutes": source.max_duration_minutes,
            "requires_justification": bool(source.requires_justification),
            "provisioner": source.provisioner,
            "provisioner_config": source.provisioner_config}


def _plan_rules(session: Session, desired: PolicyFile, changes: list[Change]) -> None:
    existing = {(r.permission_key, r.role, r.subrole): r for r in session.scalars(select(PolicyRule))}
    for ident, spec in desired.rules.items():
        if _protected_rule(ident) and ident in existing:
            continue
        wanted = _rule_values(spec)
        current = existing.get(ident)
        if current is None:
            changes.append(Change("rule", CREATE, _rule_target(ident), ident, wanted))
            continue
        before = _rule_values(current)
        diff = {name: [before[name], value] for name, value in wanted.items() if before[name] != value}
        if diff:
            changes.append(Change("rule", UPDATE, _rule_target(ident), ident, diff))
    for ident in sorted(set(existing) - set(desired.rules)):
        if not _protected_rule(ident):
            changes.append(Change("rule", DELETE, _rule_target(ident), ident))


def _rule_values(source) -> dict:
    return {"mode": str(source.mode), "max_duration_minutes": source.max_duration_minutes,
            "approvers": list(source.approvers or []), "approvals_required": source.approvals_required}


def _count_by(session: Session, *columns, where=None) -> dict[tuple, int]:
    query = select(*columns, func.count()).group_by(*columns)
    if where is not None:
        query = query.where(where)
    return {tuple(row[:-1]): row[-1] for row in session.execute(query)}


# ----------------------------------------------------------------------------------------------
# Applying


EVENTS = {("role", CREATE): AuditAction.ROLE_CREATED, ("role", UPDATE): AuditAction.ROLE_UPDATED,
          ("role", DELETE): AuditAction.ROLE_DELETED,
          ("subrole", CREATE): AuditAction.ROLE_UPDATED,
          ("subrole", UPDATE): AuditAction.ROLE_UPDATED,
          ("subrole", DELETE): AuditAction.SUBROLE_DELETED,
          ("permission", CREATE): AuditAction.PERMISSION_CREATED,
          ("permission", UPDATE): AuditAction.PERMISSION_UPDATED,
          ("permission", DELETE): AuditAction.PERMISSION_DELETED,
          ("rule", CREATE): AuditAction.POLICY_CREATED, ("rule", UPDATE): AuditAction.POLICY_UPDATED,
          ("rule", DELETE): AuditAction.POLICY_DELETED}


def apply(session: Session, diff: Diff, *, actor: str, origin: audit.Origin, now: datetime,
          source: str | None = None, commit: bool = True) -> dict[str, int]:
    """Perform every change of `diff` and its audit events in one transaction; return the counts."""
    if diff.empty:
        return diff.counts()
    try:
        for change in diff.changes:
            target = _APPLY[(change.kind, change.action)](session, change, now)
            details = {"via": "policy_file", **_audit_details(change)}
            audit.record(session, action=EVENTS[(change.kind, change.action)], actor=actor,
                         target=target, origin=origin, now=now, details=details)
            # Flush per change: without ORM relationships the unit of work cannot order
            # deletes after the rows that refer to them.
            session.flush()
        for change in diff.changes:
            if change.kind == "rule" and change.ident[0] == ADMIN_PERMISSION:
                # Refused as in the admin API: no service account may end up an admin.
                refuse_admin_for_service_accounts(session, role=change.ident[1],
                                                  subrole=change.ident[2])
            if change.kind == "rule" and change.action != DELETE and "approvers" in change.values:
                # As in the admin API: approvers naming only service accounts name nobody.
                approvers = change.values["approvers"]
                refuse_service_only_approvers(
                    session, list(approvers[1] if change.action == UPDATE else approvers))
        counts = diff.counts()
        audit.record(session, action=AuditAction.POLICY_FILE_APPLIED, actor=actor, target=source,
                     origin=origin, now=now, details={**counts, "sha256": diff.sha256})
        if commit:
            session.commit()
    except BaseException:
        session.rollback()
        raise
    return counts


def _audit_details(change: Change) -> dict:
    details: dict = {"change": change.action}
    if change.kind == "subrole":
        details["subrole"] = change.ident[1]
    if change.kind == "rule":
        details.update(permission=change.ident[0], role=change.ident[1], subrole=change.ident[2])
    details.update(change.values)
    # Provisioner configs may hold credentials (webhook headers): the log says only that it changed.
    if "provisioner_config" in details:
        details["provisioner_config"] = "changed" if change.action == UPDATE else "set"
    return details


def _one(session: Session, model, key):
    row = session.get(model, key)
    if row is None:
        raise Conflict("The database changed while the policy file was applied; "
                       "nothing changed.", code="policy_changed_meanwhile")
    return row


def _create_role(session: Session, change: Change, now: datetime) -> str:
    session.add(Role(name=change.ident[0], description=change.values["description"], created_at=now))
    return change.target


def _update_role(session: Session, change: Change, now: datetime) -> str:
    _one(session, Role, change.ident[0]).description = change.values["description"][1]
    return change.target


def _delete_role(session: Session, change: Change, now: datetime) -> str:
    session.delete(_one(session, Role, change.ident[0]))
    return change.target


def _create_subrole(session: Session, change: Change, now: datetime) -> str:
    role, name = change.ident
    session.add(Subrole(role=role, name=name, description=change.values["description"],
                        created_at=now))
    return role


def _update_subrole(session: Session, change: Change, now: datetime) -> str:
    _one(session, Subrole, change.ident).description = change.values["description"][1]
    return change.ident[0]


def _delete_subrole(session: Session, change: Change, now: datetime) -> str:
    session.delete(_one(session, Subrole, change.ident))
    return change.target


def _create_permission(session: Session, change: Change, now: datetime) -> str:
    session.add(Permission(key=change.ident[0], **change.values, builtin=False, created_at=now))
    return change.target


def _update_permission(session: Session, change: Change, now: datetime) -> str:
    permission = _one(session, Permission, change.ident[0])
    for name, (_, new) in change.values.items():
        setattr(permission, name, new)
    return change.target


def _delete_permission(session: Session, change: Change, now: datetime) -> str:
    session.delete(_one(session, Permission, change.ident[0]))
    return change.target


def _find_rule(session: Session, ident: tuple) -> PolicyRule:
    permission, role, subrole = ident
    rule = session.scalar(select(PolicyRule).where(
        PolicyRule.permission_key == permission, PolicyRule.role == role,
        PolicyRule.subrole == subrole))
    if rule is None:
        raise Conflict("The database changed while the policy file was applied; "
                       "nothing changed.", code="policy_changed_meanwhile")
    return rule


def _create_rule(session: Session, change: Change, now: datetime) -> str:
    permission, role, subrole = change.ident
    values = change.values
    rule = PolicyRule(permission_key=permission, role=role, subrole=subrole, mode=values["mode"],
                      max_duration_minutes=values["max_duration_minutes"],
                      approvers=list(values["approvers"]),
                      approvals_required=values["approvals_required"], created_at=now)
    session.add(rule)
    session.flush()
    return rule.id


def _update_rule(session: Session, change: Change, now: datetime) -> str:
    rule = _find_rule(session, change.ident)
    for name, (_, new) in change.values.items():
        setattr(rule, name, new)
    return rule.id


def _delete_rule(session: Session, change: Change, now: datetime) -> str:
    rule = _find_rule(session, change.ident)
    session.delete(rule)
    return rule.id


_APPLY = {("role", CREATE): _create_role, ("role", UPDATE): _update_role,
          ("role", DELETE): _delete_role, ("subrole", CREATE): _create_subrole,
          ("subrole", UPDATE): _update_subrole, ("subrole", DELETE): _delete_subrole,
          ("permission", CREATE): _create_permission, ("permission", UPDATE): _update_permission,
          ("permission", DELETE): _delete_permission, ("rule", CREATE): _create_rule,
          ("rule", UPDATE): _update_rule, ("rule", DELETE): _delete_rule}


# ----------------------------------------------------------------------------------------------
# Exporting


EXPORT_HEADER = """\
# Security API policy file (flask --app flask_api policy apply FILE).
# The full desired state: roles, permissions and rules missing here are deleted. Built-in
# permissions, the security/admin role and its standing security-api.admin and
# security-api.audit rules are always kept and need not be listed.
"""


def export(session: Session) -> str:
    """Write the current roles, permissions and rules as a policy file."""
    subroles: dict[str, list[Subrole]] = {}
    for sub in session.scalars(select(Subrole).order_by(Subrole.role, Subrole.name)):
        subroles.setdefault(sub.role, []).append(sub)
    roles = []
    for role in session.scalars(select(Role).order_by(Role.name)):
        entry: dict = {"name": role.name}
        if role.description:
            entry["description"] = role.description
        entry["subroles"] = [{"name": s.name, "description": s.description} if s.description
                             else s.name for s in subroles.get(role.name, [])]
        roles.append(entry)
    permissions = []
    for permission in session.scalars(select(Permission).where(Permission.builtin.is_(False))
                                      .order_by(Permission.key)):
        values = _permission_values(permission)
        permissions.append({
            "key": permission.key, "name": values["name"], "description": values["description"],
            "max_duration_minutes": values["max_duration_minutes"],
            "requires_justification": values["requires_justification"],
            "provisioner": {"name": values["provisioner"], "config": values["provisioner_config"]}})
    rules = []
    for rule in session.scalars(select(PolicyRule).order_by(
            PolicyRule.permission_key, PolicyRule.role, PolicyRule.subrole)):
        if _protected_rule((rule.permission_key, rule.role, rule.subrole)):
            continue
        values = _rule_values(rule)
        entry = {"permission": rule.permission_key, "role": rule.role, "subrole": rule.subrole,
                 "mode": values["mode"]}
        if values["max_duration_minutes"] is not None:
            entry["max_duration_minutes"] = values["max_duration_minutes"]
        if values["approvers"]:
            entry["approvers"] = values["approvers"]
        if values["approvals_required"] != 1:
            entry["approvals_required"] = values["approvals_required"]
        rules.append(entry)
    document = {"version": FILE_VERSION, "roles": roles, "permissions": permissions, "rules": rules}
    return EXPORT_HEADER + yaml.safe_dump(document, sort_keys=False, allow_unicode=True,
                                          default_flow_style=False, width=100)
