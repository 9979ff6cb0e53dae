"""Request and response bodies: validation and the OpenAPI document come from these."""
from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictStr, field_validator


class Body(BaseModel):
    """A request body: unknown fields and wrong types are refused, never coerced."""

    model_config = ConfigDict(extra="forbid", strict=True)

    @field_validator("*", mode="before")
    @classmethod
    def _integral_float_to_int(cls, value: object) -> object:
        # JSON Schema counts 16.0 as an integer, so an `integer` field must accept it; strict
        # mode still refuses "16", true and 16.5, and a string or boolean field refuses 16.
        if isinstance(value, float) and value.is_integer():
            return int(value)
        return value

    # NUL and lone surrogates, in any string or key, are refused before validation, by
    # web.api.inputs.read_json (security_api.jsontext.unstorable).


class LoginBody(Body):
    totp: StrictStr | None = Field(
        default=None, pattern=r"^[0-9]{6}$",
        description="Current code of the authenticator app: 6 ASCII digits.")
    recovery_code: StrictStr | None = Field(default=None, min_length=1, max_length=64,
                                            description="One of the recovery codes, instead of totp.")


class EmptyBody(Body):
    """No fields: an empty body or {}."""


class TotpConfirmBody(Body):
    totp: StrictStr = Field(pattern=r"^[0-9]{6}$", description="Current code: 6 ASCII digits.")


class RefreshBody(Body):
    refresh_token: StrictStr = Field(min_length=1, max_length=128)


class PasswordBody(Body):
    current_password: StrictStr = Field(min_length=1, max_length=4096)
    new_password: StrictStr = Field(
        min_length=1, max_length=4096,
        description="12 to 1024 characters; common or guessable ones are refused.")


# Responses: documented shapes, every one with the contract's `message`.
class Message(BaseModel):
    message: str | None


class ErrorItem(BaseModel):
    field: str
    problem: str


class Error(BaseModel):
    message: str
    error: str = Field(description="Stable snake_case code.")
    errors: list[ErrorItem] | None = None
    request_id: str | None = None
    conflicts_with: list[str] | None = Field(
        default=None, description="With 409 `conflicting_permission`: the permissions the "
                                  "requester holds or waits for that share a conflict set with "
                                  "the one asked for.")


class Tokens(BaseModel):
    message: str | None
    token: str = Field(description="Access token (JWT).")
    token_type: str = Field(examples=["Bearer"])
    expires_in: int
    refresh_token: str
    refresh_expires_in: int


class Enrollment(BaseModel):
    message: str | None
    secret: str
    otpauth_uri: str
    qr_png: str = Field(description="data:image/png;base64,... of the otpauth URI.")


class RecoveryCodes(BaseModel):
    message: str | None
    recovery_codes: list[str]


class UserOut(BaseModel):
    id: str
    username: str
    email: str | None
    role: str
    subrole: str
    kind: str
    active: bool
    totp_enabled: bool
    created_at: str
    slack_user_id: str | None = Field(default=None, description="Admin bodies only: the Slack "
                                      "member whose buttons act as this account (set by an "
                                      "administrator).")


class Profile(BaseModel):
    message: str | None
    jwt_data: dict
    user: UserOut


class Health(BaseModel):
    message: str | None = Field(description="healthy, degraded (200) or unhealthy (503)")
    checks: dict[str, str] = Field(
        description="Each dependency: ok or down; the database also slow (no answer within "
                    "health's own 2 s bound: 200, degraded).")


class Jwks(BaseModel):
    message: str | None
    keys: list[dict]


class Index(BaseModel):
    message: str | None
    name: str
    version: str
    links: dict[str, str]


# ---- permissions and access requests -----------------------------------------------------------
SLUG = r"^[a-z0-9][a-z0-9._-]{0,63}$"


# No pattern on purpose: a malformed code is the domain's to judge (401 `invalid_step_up`,
# counted toward the lockout like a wrong one), not a free 412 that guesses around the count.
StepUpCode = Annotated[StrictStr | None, Field(
    default=None, max_length=64,
    description="Step-up: a current code of your authenticator app (6 ASCII digits), needed "
                "when the permission has `step_up` (missing: 401 `step_up_required`; wrong, "
                "malformed or already used: 401 `invalid_step_up`, counted toward the lockout "
                "like a failed login); always needed under a `break_glass` rule. Ignored "
                "otherwise.")]


class RequestCreateBody(Body):
    permission: StrictStr = Field(pattern=SLUG, description="Permission key, e.g. vpn.")
    justification: StrictStr = Field(default="", max_length=2000)
    duration_minutes: int | None = Field(default=None, ge=1, le=525600,
                                         description="Defaults to the effective maximum.")
    params: dict = Field(default_factory=dict, description="Checked by the permission's provisioner.")
    # Always needed under a break_glass rule, whatever the permission's step_up.
    totp: StepUpCode = None


class ExtendBody(Body):
    duration_minutes: int | None = Field(
        default=None, ge=1, le=525600,
        description="The grant then ends this many minutes from now (at most the effective "
                    "maximum of the rule that decides a new request); defaults to that maximum.")
    justification: StrictStr = Field(default="", max_length=2000,
                                     description="Required when the permission requires it.")
    totp: StepUpCode = None


class DecisionBody(Body):
    comment: StrictStr = Field(default="", max_length=2000)
    totp: StepUpCode = None


class ReviewBody(Body):
    verdict: Literal["justified", "unjustified"] = Field(
        description="unjustified revokes the grant at once if it is still active.")
    comment: StrictStr = Field(default="", max_length=2000)


class ReviewOut(BaseModel):
    verdict: str | None = Field(description="justified, unjustified, or null: not reviewed yet.")
    by: str | None = Field(description="The reviewer's username (null before the review).")
    at: str | None
    comment: str | None
    due_at: str = Field(description="When the review is due: the use + the rule's "
                                    "review_within_minutes.")
    overdue: bool = Field(description="Due time passed without a verdict, or the verdict came "
                                      "late.")


class ApprovalOut(BaseModel):
    approver: str
    decision: str
    comment: str
    at: str


class VerifiedAtOut(BaseModel):
    grant: str | None = Field(description="the grant was read back present at the target")
    revoke: str | None = Field(description="the revoke (or cleanup) was read back: gone")


class RequestOut(BaseModel):
    id: str
    requester: str
    permission: str
    justification: str
    params: dict
    duration_minutes: int
    status: str = Field(description="pending, active, denied, cancelled, failed, expired, revoked")
    mode: str
    approvals_required: int
    created_at: str
    decided_at: str | None
    approvals: list[ApprovalOut]
    expires_at: str | None
    ended_at: str | None
    extends: str | None = Field(
        description="The grant this request asked to extend (POST .../extend), else null.")
    extended_by: list[str] = Field(
        description="Ids of the extensions asked for this request, oldest first.")
    provisioning: dict = Field(description="grant/revoke outcomes: ok, result, error, at; "
                               "verify_grant/verify_revoke: the last read-back of each step "
                               "(outcome, error, at, attempts).")
    verified_at: VerifiedAtOut = Field(description="When the target confirmed the grant and the "
                                       "revoke (read-back); null until confirmed, and always "
                                       "null for a provisioner that cannot read back.")
    pending_expires_at: str | None = Field(
        description="While pending: when it expires undecided (the rule's pending_ttl_minutes "
                    "after creation, fixed then; later rule changes do not move it).")
    expired_reason: str | None = Field(
        description="null unless expired: `not_decided` (pending past pending_expires_at) or "
                    "`ended` (an active grant reached expires_at).")
    review: ReviewOut | None = Field(
        description="Break-glass requests: the after-the-fact review; null for the others.")


class RequestEnvelope(BaseModel):
    message: str | None
    request: RequestOut


class RequestList(BaseModel):
    message: str | None
    requests: list[RequestOut]
    next_cursor: str | None


class CatalogItem(BaseModel):
    key: str
    name: str
    description: str
    mode: str
    max_duration_minutes: int
    requires_justification: bool
    step_up: bool = Field(description="Creating, approving or denying a request for it needs "
                                      "\"totp\": a fresh code from the authenticator app.")
    approvals_required: int | None
    blocked_by: list[str] = Field(
        description="Permissions the caller holds or waits for that share a conflict set with "
                    "this one (separation of duties): while any is listed, a request is "
                    "refused with 409 `conflicting_permission`. Empty when nothing blocks it.")


class Catalog(BaseModel):
    message: str | None
    permissions: list[CatalogItem]


class HeldItem(BaseModel):
    permission: str
    name: str
    source: str = Field(description="standing or grant")
    expires_at: str | None
    request_id: str | None


class Held(BaseModel):
    message: str | None
    permissions: list[HeldItem]


class CheckResult(BaseModel):
    message: str | None
    allowed: bool
    expires_at: str | None
