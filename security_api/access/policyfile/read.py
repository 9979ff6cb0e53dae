"""Reading a policy file: YAML text -> the catalog models, every problem with its line:column.

Nodes are read with ``yaml.compose`` (never constructed into arbitrary objects) and turned into
plain data while remembering which node each value came from; the catalog models
(catalog_schemas) then check each item, and their error locations are mapped back to nodes.
What only the whole file can tell (a rule naming a role of the file) is checked last.
"""
from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass
from typing import Annotated

import yaml
from pydantic import Field, ValidationError
from yaml.nodes import MappingNode, Node, SequenceNode

from security_api.access.catalog import BUILTIN_PERMISSIONS
from security_api.access.catalog_schemas import (
    KEY,
    CatalogModel,
    ConflictSetSpec,
    PermissionSpec,
    RoleSpec,
    RuleSpec,
    problem_text,
)
from security_api.access.policy import WILDCARD
from security_api.access.policyfile.conflicts import read_conflicts
from security_api.errors import InvalidParams
from security_api.installation import ADMIN_ROLE, ADMIN_STANDING, ADMIN_SUBROLE
from security_api.provisioners import get_provisioner

FILE_VERSION = 1
MAX_FILE_CHARS = 1_000_000
MAX_DEPTH = 24
SCALARS = {"tag:yaml.org,2002:str": "construct_yaml_str", "tag:yaml.org,2002:int": "construct_yaml_int",
           "tag:yaml.org,2002:bool": "construct_yaml_bool", "tag:yaml.org,2002:null": "construct_yaml_null",
           "tag:yaml.org,2002:float": "construct_yaml_float"}
_CONSTRUCTOR = yaml.constructor.SafeConstructor()
Loc = tuple


class PolicyFileError(InvalidParams):
    """The file (or the change it asks for) is refused whole; `problems` lists every reason."""

    def __init__(self, problems: list[str]):
        super().__init__(f"The policy file is refused ({len(problems)} problem(s)); nothing changed.",
                         code="policy_file_invalid",
                         errors=[{"field": "policy", "problem": p} for p in problems])
        self.problems = problems


class PolicyDocument(CatalogModel):
    """The top of the file; each item is checked by its own catalog model."""

    version: Annotated[int, Field(ge=FILE_VERSION, le=FILE_VERSION)]
    roles: list[dict]
    permissions: list[dict]
    rules: list[dict]
    # Optional, unlike the others: a file written before conflict sets existed still applies
    # and leaves the sets alone; a `conflicts` section (even empty) is their full desired state.
    conflicts: list[dict] | None = None


@dataclass(frozen=True)
class PolicyFile:
    """A checked policy file: the desired state; provisioner configs are normalised."""

    roles: dict[str, RoleSpec]
    permissions: dict[str, PermissionSpec]
    rules: dict[tuple[str, str, str], RuleSpec]
    sha256: str = ""
    # None: the file has no `conflicts` section, and the sets in the database stay as they are.
    conflicts: dict[str, ConflictSetSpec] | None = None


def protected_rule(ident: tuple[str, str, str]) -> bool:
    """Tell whether a rule is one of the security/admin standing rules that always stay."""
    permission, role, subrole = ident
    return permission in ADMIN_STANDING and role == ADMIN_ROLE and subrole == ADMIN_SUBROLE


def show(loc: Loc) -> str:
    """Write a location the way the file reads: roles[0].subroles[1]."""
    return "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc).lstrip(".")


class _Located:
    """Plain data from the YAML nodes, with the node (and key node) behind every location."""

    def __init__(self):
        self.nodes: dict[Loc, Node] = {}
        self.keys: dict[Loc, Node] = {}
        self.problems: list[tuple[int, int, str]] = []

    def fail(self, loc: Loc, problem: str, *, key: bool = False, near: Loc | None = None) -> None:
        # A default the file left out has no node: point at `near`, else at what holds it.
        node = (self.keys if key else self.nodes).get(loc) or next(
            self.nodes[place] for place in (near, *(loc[:n] for n in range(len(loc), -1, -1)))
            if place in self.nodes)
        self.at(node, f"{show(loc)}: {problem}" if loc else problem)

    def at(self, node: Node, text: str) -> None:
        mark = node.start_mark
        self.problems.append((mark.line + 1, mark.column + 1, text))

    def fail_all(self, exc: ValidationError, prefix: Loc) -> None:
        for error in exc.errors(include_url=False):
            loc = prefix + tuple(error["loc"])
            if error["type"] == "missing":
                self.fail(loc[:-1], f"missing required key {loc[-1]!r}")
            else:
                self.fail(loc, problem_text(error), key=error["type"] == "extra_forbidden")

    def plain(self, node: Node, loc: Loc):
        """Return JSON-like data: str, int, finite float, bool, null, lists, string-keyed maps."""
        self.nodes[loc] = node
        if len(loc) > MAX_DEPTH:
            return self.fail(loc, "nested too deeply")
        if isinstance(node, SequenceNode):
            return [self.plain(item, loc + (i,)) for i, item in enumerate(node.value)]
        if isinstance(node, MappingNode):
            result = {}
            for key_node, value_node in node.value:
                key = key_node.value if key_node.tag == "tag:yaml.org,2002:str" else None
                if key is None or key in result:
                    where = show(loc if key is None else loc + (key,))
                    problem = "keys must be strings" if key is None else "duplicate key"
                    self.at(key_node, f"{where}: {problem}" if where else problem)
                    continue
                self.keys[loc + (key,)] = key_node
                result[key] = self.plain(value_node, loc + (key,))
            return result
        value = getattr(_CONSTRUCTOR, SCALARS[node.tag])(node) if node.tag in SCALARS else math.inf
        if isinstance(value, float) and not math.isfinite(value):
            return self.fail(loc, f"unsupported value {node.value!r}; quote it to make it a string")
        return value


def compose(text: str) -> Node:
    """Return the YAML root node; refuse oversized files, aliases and malformed YAML."""
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
    return root


def parse(text: str, *, settings) -> PolicyFile:
    """Check a whole policy file and return the desired state; raise PolicyFileError otherwise."""
    located = _Located()
    data = located.plain(compose(text), ())
    if not isinstance(data, dict):
        located.fail((), "must be a mapping")
        data = {}
    try:
        PolicyDocument.model_validate(data)
    except ValidationError as exc:
        located.fail_all(exc, ())
    reader = _Reader(located, settings)
    items = {name: [(i, item) for i, item in enumerate(data.get(name) or [])
                    if isinstance(item, dict)] if isinstance(data.get(name), list) else []
             for name in ("roles", "permissions", "rules", "conflicts")}
    roles = reader.roles(items["roles"])
    permissions = reader.permissions(items["permissions"])
    rules = reader.rules(items["rules"], roles=roles)
    conflicts = read_conflicts(reader, items["conflicts"]) if data.get("conflicts") is not None else None
    if located.problems:
        raise PolicyFileError([f"line {line}, column {column}: {text}"
                               for line, column, text in sorted(located.problems)])
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
    return PolicyFile(roles, permissions, rules, digest, conflicts)


class _Reader:
    """Checks each item with its catalog model, then what ties the file together."""

    def __init__(self, located: _Located, settings):
        self.located, self.settings = located, settings
        self.fail = located.fail

    def model(self, model, item: dict, loc: Loc):
        try:
            return model.model_validate(item)
        except ValidationError as exc:
            self.located.fail_all(exc, loc)
            return None

    def roles(self, items: list[tuple[int, dict]]) -> dict[str, RoleSpec]:
        roles: dict[str, RoleSpec] = {}
        for i, item in items:
            role = self.model(RoleSpec, item, ("roles", i))
            if role is None:
                continue
            names = [sub.name for sub in role.subroles]
            for j, name in enumerate(names):
                if name in names[:j]:
                    self.fail(("roles", i, "subroles", j), f"subrole {name!r} is listed twice")
            if role.name in roles:
                self.fail(("roles", i, "name"), f"role {role.name!r} is listed twice")
            elif not role.subroles and role.name != ADMIN_ROLE:
                self.fail(("roles", i), "a role needs at least one subrole")
            else:
                roles[role.name] = role
        return roles

    def permissions(self, items: list[tuple[int, dict]]) -> dict[str, PermissionSpec]:
        # Rules may name a permission even if another of its fields is wrong: report only that.
        self.declared = {item["key"] for _, item in items
                         if isinstance(item.get("key"), str) and re.fullmatch(KEY, item["key"])}
        permissions: dict[str, PermissionSpec] = {}
        for i, item in items:
            spec = self.model(PermissionSpec, item, ("permissions", i))
            if spec is None:
                continue
            if spec.key in BUILTIN_PERMISSIONS:
                self.fail(("permissions", i, "key"),
                          f"{spec.key!r} is built in; rules may use it, the file cannot define it")
            elif spec.key in permissions:
                self.fail(("permissions", i, "key"), f"permission {spec.key!r} is listed twice")
            elif (config := self.provisioner_config(spec, ("permissions", i, "provisioner"))) \
                    is not None:
                provisioner = spec.provisioner.model_copy(update={"config": config})
                permissions[spec.key] = spec.model_copy(update={"provisioner": provisioner})
        return permissions

    def provisioner_config(self, spec: PermissionSpec, loc: Loc) -> dict | None:
        try:
            provisioner = get_provisioner(spec.provisioner.name, self.settings)
        except InvalidParams as exc:
            self.fail(loc + ("name",), exc.errors[0]["problem"])
            return None
        try:
            return provisioner.validate_config(spec.provisioner.config)
        except InvalidParams as exc:
            for error in exc.errors or [{"field": "config", "problem": exc.message}]:
                self.fail(loc + tuple(error["field"].split(".")), error["problem"])
            return None

    def rules(self, items: list[tuple[int, dict]], *,
              roles: dict[str, RoleSpec]) -> dict[tuple[str, str, str], RuleSpec]:
        known = {name: {sub.name for sub in role.subroles} for name, role in roles.items()}
        # security/admin always exists, whether or not the file lists it.
        known.setdefault(ADMIN_ROLE, set()).add(ADMIN_SUBROLE)
        rules: dict[tuple[str, str, str], RuleSpec] = {}
        first_line: dict[tuple[str, str, str], int] = {}
        for i, item in items:
            rule = self.model(RuleSpec, item, ("rules", i))
            if rule is None or not self.rule_fits(rule, ("rules", i), known=known):
                continue
            line = self.located.nodes[("rules", i)].start_mark.line + 1
            if rule.ident in rules:
                self.fail(("rules", i), f"a rule for {rule.permission} and {rule.role}/"
                                        f"{rule.subrole} is already on line {first_line[rule.ident]}")
            elif protected_rule(rule.ident) and (rule.mode, rule.max_duration_minutes,
                                                 rule.approvers, rule.approvals_required) \
                    != ("standing", None, [], 1):
                self.fail(("rules", i), f"the security/admin rule for {rule.permission} is "
                                        "built in: standing, with no other settings")
            else:
                rules[rule.ident], first_line[rule.ident] = rule, line
        return rules

    def rule_fits(self, rule: RuleSpec, loc: Loc, *, known: dict[str, set[str]]) -> bool:
        before = len(self.located.problems)
        if rule.permission not in self.declared and rule.permission not in BUILTIN_PERMISSIONS:
            self.fail(loc + ("permission",),
                      f"{rule.permission!r} is neither in the file's permissions nor built in")
        if rule.role != WILDCARD and rule.role not in known:
            self.fail(loc + ("role",), f"{rule.role!r} is not a role of the file")
        elif WILDCARD not in (rule.role, rule.subrole) and rule.subrole not in known[rule.role]:
            self.fail(loc + ("subrole",), f"{rule.role}/{rule.subrole} is not a subrole of the file")
        for j, entry in enumerate(rule.approvers):
            entry_role, slash, entry_subrole = entry.partition("/")
            if entry_role not in known or (slash and entry_subrole not in known[entry_role]):
                self.fail(loc + ("approvers", j), f"{entry!r} matches no role or subrole")
            elif entry in rule.approvers[:j]:
                self.fail(loc + ("approvers", j), f"{entry!r} is listed twice")
        for field, problem in rule.problems():
            if len(self.located.problems) == before or field != "approvers":
                self.fail(loc + (field,), problem, near=loc + ("mode",))
        return len(self.located.problems) == before
