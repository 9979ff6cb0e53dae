"""The catalog's concepts as pydantic models: role, subrole, permission, policy rule.

Each rule about a concept (slug patterns, lengths, ranges, cross-field rules) is written once,
here. The admin HTTP bodies (web/api/admin_catalog_schemas.py) subclass these models, the policy file
reader (policyfile/read.py) validates each YAML item with them, and the CLI and seed code check
their arguments through them (catalog.py). A provisioner's own config and params are
declared by the provisioner as its `config_model` and `params_model` (provisioners/), since
only it knows their shape; `problem_text` words their problems too.

A conflict set (`ConflictSetSpec`, separation of duties) is one more model next to `RuleSpec`.
"""
from __future__ import annotations

from typing import Annotated, Literal, TypeVar, get_args

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr, ValidationError, field_validator
from pydantic_core import PydanticCustomError

from security_api.access.policy import WILDCARD
from security_api.errors import InvalidParams

MAX_MINUTES = 525600
MAX_APPROVALS = 10
# Roles and subroles: lowercase slugs without dots (dots would read like keys in paths).
NAME = r"^[a-z0-9][a-z0-9_-]{0,63}$"
# Permission keys: dots allowed, e.g. security-api.admin.
KEY = r"^[a-z0-9][a-z0-9._-]{0,63}$"
ROLE_OR_WILDCARD = r"^(\*|[a-z0-9][a-z0-9_-]{0,63})$"
Mode = Literal["standing", "auto", "approval", "break_glass"]
DEFAULT_REVIEW_MINUTES = 1440

RoleName = Annotated[StrictStr, Field(pattern=NAME)]
PermissionKey = Annotated[StrictStr, Field(pattern=KEY)]
RoleDescription = Annotated[StrictStr, Field(max_length=500)]
PermissionName = Annotated[StrictStr, Field(min_length=1, max_length=200)]
PermissionDescription = Annotated[StrictStr, Field(max_length=2000)]
Minutes = Annotated[int, Field(ge=1, le=MAX_MINUTES)]
Approvals = Annotated[int, Field(ge=1, le=MAX_APPROVALS)]
# `role` or `role/subrole`; whether it names a known one is checked against the catalog.
Approver = StrictStr


class CatalogModel(BaseModel):
    """Unknown fields and wrong types are refused, never coerced (a YAML "60" is no 60)."""

    model_config = ConfigDict(extra="forbid", strict=True)


class SubroleSpec(CatalogModel):
    """A subrole of a role, e.g. developer/backend."""

    name: RoleName
    description: RoleDescription = ""


class RoleSpec(CatalogModel):
    """A role with its subroles; every role but security needs at least one subrole."""

    name: RoleName = Field(description="Lowercase slug, e.g. developer.")
    description: RoleDescription = ""
    subroles: list[SubroleSpec] = Field(default_factory=list, max_length=100)

    @field_validator("subroles", mode="before")
    @classmethod
    def _bare_names(cls, value: object) -> object:
        # A bare name is a subrole without a description: `[backend, {name: frontend}]`.
        if isinstance(value, list):
            return [{"name": item} if isinstance(item, str) else item for item in value]
        return value


class ProvisionerRef(CatalogModel):
    """Which provisioner makes a permission real, and its config (checked by the provisioner)."""

    name: StrictStr = Field(default="none", max_length=64)
    config: dict = Field(default_factory=dict)


class PermissionSpec(CatalogModel):
    """A permission as the policy file writes it: the provisioner as {name, config}."""

    key: PermissionKey = Field(description="Slug, e.g. prod-db-readonly.")
    name: PermissionName
    description: PermissionDescription = ""
    max_duration_minutes: Minutes
    requires_justification: StrictBool = False
    step_up: StrictBool = Field(default=False, description=(
        "Creating, extending, approving or denying a request needs a fresh TOTP code."))
    provisioner: ProvisionerRef = Field(default_factory=ProvisionerRef)


class RuleSpec(CatalogModel):
    """A policy rule: who (role, subrole, or * for all) may have a permission, and how."""

    permission: PermissionKey
    role: StrictStr = Field(pattern=ROLE_OR_WILDCARD, description="A role, or * for everyone.")
    subrole: StrictStr = Field(default=WILDCARD, pattern=ROLE_OR_WILDCARD,
                               description="A subrole of the role, or * for all of them.")
    mode: Mode
    max_duration_minutes: Minutes | None = None
    approvers: list[Approver] = Field(default_factory=list, max_length=50,
                                      description="`role` or `role/subrole` entries.")
    approvals_required: Approvals = 1
    pending_ttl_minutes: Minutes = Field(
        default=1440, description="How long a request may wait for a decision before it "
                                  "expires (`expired_reason: not_decided`).")
    review_within_minutes: Minutes = Field(
        default=DEFAULT_REVIEW_MINUTES,
        description="break_glass: minutes the approvers have to review a use (1-525600).")

    @property
    def ident(self) -> tuple[str, str, str]:
        """Return what makes a rule unique: permission, role, subrole."""
        return (self.permission, self.role, self.subrole)

    def problems(self) -> list[tuple[str, str]]:
        """Return (field, problem) for the rules that tie fields together."""
        return rule_problems(role=self.role, subrole=self.subrole, mode=self.mode,
                             approvers=self.approvers)


def rule_problems(*, role: str, subrole: str, mode: str, approvers: list[str]) -> list[tuple[str, str]]:
    """The cross-field rules of a policy rule, for a whole rule or one being changed."""
    problems = []
    if role == WILDCARD and subrole != WILDCARD:
        problems.append(("subrole", "must be * when role is *"))
    if mode == "approval" and not approvers:
        problems.append(("approvers", "an approval rule needs approvers"))
    if mode == "break_glass" and not approvers:
        # Someone must review each use after the fact.
        problems.append(("approvers", "a break_glass rule needs approvers (its reviewers)"))
    return problems


MAX_CONFLICT_MEMBERS = 50
ConflictMembers = Annotated[list[PermissionKey], Field(min_length=2, max_length=MAX_CONFLICT_MEMBERS,
                                                       json_schema_extra={"uniqueItems": True})]


def distinct_members(keys: list[str]) -> list[str]:
    """Refuse a permission listed twice: a set of one permission twice would block nothing."""
    for i, key in enumerate(keys):
        if key in keys[:i]:
            raise PydanticCustomError("listed_twice", "'{key}' is listed twice", {"key": key})
    return keys


class ConflictSetSpec(CatalogModel):
    """Separation of duties: of these permissions a person may hold or wait for one at a time."""

    name: RoleName = Field(description="Lowercase slug, e.g. payments-maker-checker.")
    permissions: ConflictMembers = Field(description="Two or more distinct permission keys.")
    description: PermissionDescription = ""

    @field_validator("permissions")
    @classmethod
    def _distinct(cls, keys: list[str]) -> list[str]:
        return distinct_members(keys)


# ---- readable problems -------------------------------------------------------------------------
# Ranges by field name: pydantic reports one bound, the reader wants to see both.
RANGES = {"max_duration_minutes": (1, MAX_MINUTES), "approvals_required": (1, MAX_APPROVALS),
          "pending_ttl_minutes": (1, MAX_MINUTES),
          "review_within_minutes": (1, MAX_MINUTES)}
TYPE_PROBLEMS = {"int_type": "must be an integer", "int_parsing": "must be an integer",
                 "string_type": "must be a string", "bool_type": "must be true or false",
                 "dict_type": "must be a mapping", "model_type": "must be a mapping",
                 "model_attributes_type": "must be a mapping", "list_type": "must be a list",
                 "extra_forbidden": "unknown key", "string_too_short": "must not be empty"}
Model = TypeVar("Model", bound=BaseModel)


def problem_text(error: dict) -> str:
    """Say what is wrong in the words of the catalog, not of pydantic (for people and CLIs)."""
    kind, value, ctx = error["type"], error.get("input"), error.get("ctx") or {}
    field = next((part for part in reversed(error["loc"]) if isinstance(part, str)), "")
    if kind in TYPE_PROBLEMS:
        return TYPE_PROBLEMS[kind]
    if kind == "string_pattern_mismatch":
        return f"{value!r} is not a lowercase slug"
    if kind in ("greater_than_equal", "less_than_equal"):
        low, high = RANGES.get(field, (ctx.get("ge", ctx.get("le")), ctx.get("le", ctx.get("ge"))))
        return f"{value} is out of range: from {low} to {high}"
    if kind in ("string_too_long", "too_long"):
        unit = "characters" if kind == "string_too_long" else "items"
        return f"at most {ctx['max_length']} {unit}"
    if kind == "too_short":
        return f"at least {ctx['min_length']} item(s)"
    if kind == "literal_error":
        return f"{value!r} is not one of {', '.join(get_args(Mode))}"
    return error["msg"]


def checked(model: type[Model], data: dict) -> Model:
    """Validate `data` with a catalog model; 412 naming each bad field (CLI, seed code)."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = [{"field": ".".join(str(part) for part in error["loc"]) or "(fields)",
                   "problem": f"missing required key {error['loc'][-1]!r}"
                   if error["type"] == "missing" else problem_text(error)}
                  for error in exc.errors(include_url=False)]
        raise InvalidParams(errors=errors) from None
