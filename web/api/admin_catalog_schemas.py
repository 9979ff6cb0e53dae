"""The HTTP shapes of the catalog administration: request bodies, query models, *Out responses.

Kept apart from the views (web/api/admin_catalog.py) so that the views read as the operations
they are; the rules behind the bodies live in security_api.access.catalog_schemas.
"""
from __future__ import annotations

from pydantic import BaseModel, Field, StrictBool, StrictStr

from security_api.access.catalog_schemas import (
    Approvals,
    Approver,
    Minutes,
    Mode,
    PermissionDescription,
    PermissionName,
    PermissionSpec,
    RoleDescription,
    RoleName,
    RuleSpec,
    SubroleSpec,
)
from web.api.queries import QueryModel, text
from web.api.schemas import Body


# ---- bodies ------------------------------------------------------------------------------------
# The rules live in security_api.access.catalog_schemas; these add only the HTTP shape.
class RoleCreateBody(Body):
    name: RoleName = Field(description="Lowercase slug, e.g. developer.")
    description: RoleDescription = ""
    subroles: list[RoleName] = Field(
        min_length=1, max_length=100, json_schema_extra={"uniqueItems": True},
        description="At least one subrole, e.g. [\"backend\"].")


class RoleUpdateBody(Body):
    description: RoleDescription


class SubroleCreateBody(Body, SubroleSpec):
    pass


class PermissionCreateBody(Body, PermissionSpec):
    # Over HTTP the provisioner is a name, and its config a field of its own.
    provisioner: StrictStr = Field(default="none", max_length=64)
    provisioner_config: dict = Field(default_factory=dict,
                                     description="Checked by the provisioner.")


class PermissionUpdateBody(Body):
    name: PermissionName | None = None
    description: PermissionDescription | None = None
    max_duration_minutes: Minutes | None = None
    requires_justification: StrictBool | None = None
    step_up: StrictBool | None = None
    provisioner: StrictStr | None = Field(default=None, max_length=64)
    provisioner_config: dict | None = Field(
        default=None, description="Replaces the config; a new provisioner starts from {}.")


class PolicyCreateBody(Body, RuleSpec):
    pass


class PolicyUpdateBody(Body):
    mode: Mode | None = None
    max_duration_minutes: Minutes | None = Field(default=None,
                                                 description="null: the permission's maximum.")
    approvers: list[Approver] | None = Field(default=None, max_length=50)
    approvals_required: Approvals | None = None
    pending_ttl_minutes: Minutes | None = Field(
        default=None, description="Requests made from now on wait at most this long for a "
                                  "decision; requests already waiting keep their deadline.")
    review_within_minutes: Minutes | None = Field(
        default=None, description="break_glass: minutes the approvers have to review a use.")


# ---- responses ---------------------------------------------------------------------------------
class SubroleOut(BaseModel):
    name: str
    description: str
    created_at: str


class RoleOut(BaseModel):
    name: str
    description: str
    created_at: str
    subroles: list[SubroleOut]


class RoleEnvelope(BaseModel):
    message: str | None
    role: RoleOut


class RoleList(BaseModel):
    message: str | None
    roles: list[RoleOut]


class PermissionOut(BaseModel):
    key: str
    name: str
    description: str
    max_duration_minutes: int
    requires_justification: bool
    step_up: bool
    provisioner: str
    provisioner_config: dict
    builtin: bool
    created_at: str


class PermissionEnvelope(BaseModel):
    message: str | None
    permission: PermissionOut


class PermissionList(BaseModel):
    message: str | None
    permissions: list[PermissionOut]


class PolicyOut(BaseModel):
    id: str
    permission: str
    role: str
    subrole: str
    mode: str
    max_duration_minutes: int | None
    approvers: list[str]
    approvals_required: int
    pending_ttl_minutes: int = Field(description="How long a request may wait for a decision.")
    review_within_minutes: int = Field(description="break_glass rules: minutes to review a use.")
    created_at: str | None = None


class PolicyEnvelope(BaseModel):
    message: str | None
    policy: PolicyOut


class PolicyList(BaseModel):
    message: str | None
    policies: list[PolicyOut]


class ConsideredRule(PolicyOut):
    specificity: int | None = Field(description="2 role/subrole, 1 role/*, 0 */*.")
    matched: bool = Field(description="True for the rule that decides.")


class ExplainedConflict(BaseModel):
    name: str
    permissions: list[str]
    blocked_by: list[str] = Field(description="Of the set's other permissions, those the user "
                                              "holds or waits for now.")


class Explanation(BaseModel):
    message: str | None
    user: str
    role: str
    subrole: str
    user_active: bool
    permission: str
    decision: str | None = Field(
        description="standing, auto, approval, break_glass, or null: not requestable.")
    max_duration_minutes: int | None
    rule: PolicyOut | None
    considered: list[ConsideredRule]
    conflicts: list[ExplainedConflict] = Field(
        default_factory=list, description="Conflict sets naming the permission (separation of "
                                          "duties); a non-empty `blocked_by` means a request "
                                          "is refused with 409 `conflicting_permission`.")


# ---- queries -----------------------------------------------------------------------------------
PermissionFilter = text("only rules of this permission key")
RoleFilter = text("only rules of this role (or *)")


class PoliciesQuery(QueryModel):
    """GET /v1/admin/policies: optional filters."""

    permission: PermissionFilter = None
    role: RoleFilter = None
