"""User administration for holders of security-api.admin: list, create, update, resets, unlock."""
from __future__ import annotations

from typing import Literal

from flask import Blueprint
from pydantic import BaseModel, Field, StrictBool, StrictStr

from flask_api_functions import (
    ADMIN_PERMISSION,
    current_principal,
    db,
    origin,
    require_permission,
    respond,
    services,
)
from security_api.accounts import admin_users
from security_api.accounts.users import NewUser
from security_api.clock import utcnow
from security_api.enums import UserKind
from security_api.errors import InvalidParams
from web.api import schemas
from web.api.auth import user_json
from web.api.inputs import read_json, read_query
from web.api.openapi import documented
from web.api.queries import CURSOR_TEXT, DEFAULT_LIMIT, Limit, QueryModel, bounded_text, choice

bp = Blueprint("admin_users", __name__, url_prefix="/v1/admin")
E = schemas.Error
TAG = "admin"
NAME = r"^[a-z0-9][a-z0-9_-]{0,63}$"
SHOWN_ONCE = "Shown once: hand it over safely, it cannot be read again."


# ---- bodies: every writable field is named here, nothing else gets through ------------------
class UserCreateBody(schemas.Body):
    username: StrictStr = Field(min_length=2, max_length=64,
                                description="2-64 of a-z 0-9 . _ -; stored lowercased.")
    email: StrictStr | None = Field(default=None, max_length=254)
    role: StrictStr = Field(pattern=NAME, description="An existing role.")
    subrole: StrictStr = Field(pattern=NAME, description="An existing subrole of the role.")
    kind: Literal["person", "service"] = Field(
        default="person", description="person (password + TOTP) or service (secret, no TOTP).")


def _no_default(schema: dict) -> None:
    schema.pop("default", None)  # the internal None stands for "absent", never a value to send


class UserUpdateBody(schemas.Body):
    # Absent means "unchanged" (defaults are not validated); an explicit null is refused by the
    # type, so the document offers no null either.
    role: StrictStr = Field(default=None, pattern=NAME, json_schema_extra=_no_default)
    subrole: StrictStr = Field(default=None, pattern=NAME, json_schema_extra=_no_default)
    email: StrictStr | None = Field(default=None, max_length=254, description="null clears it.")
    active: StrictBool = Field(default=None, description="false deactivates.",
                               json_schema_extra=_no_default)
    slack_user_id: StrictStr | None = Field(
        default=None, max_length=32, description="The Slack member id (U012AB3CD) whose Approve "
        "/ Deny buttons act as this person; null unlinks. People only; unique (409 "
        "`slack_user_taken`).")


# ---- responses ---------------------------------------------------------------------------------
class AdminUser(BaseModel):
    message: str | None
    user: schemas.UserOut


class AdminUserList(BaseModel):
    message: str | None
    users: list[schemas.UserOut]
    next_cursor: str | None


class AdminUserSecret(BaseModel):
    message: str | None
    user: schemas.UserOut
    password: str | None = Field(default=None, description="People only; shown once.")
    secret: str | None = Field(default=None, description="Service accounts only; shown once.")


def _with_secret(created: NewUser, *, status: int = 200):
    name = "secret" if created.user.kind == UserKind.SERVICE else "password"
    return respond(SHOWN_ONCE, status=status, user=user_json(created.user),
                    **{name: created.secret})


def _actor() -> str:
    return current_principal().account.username


Kind = choice("person | service", [kind.value for kind in UserKind], "person or service")
Active = choice("true | false", ["true", "false"], "true or false")
MAX_FILTER = 256


class UsersQuery(QueryModel):
    """GET /v1/admin/users: filters, then the page (its cursor bounded like the filters)."""

    kind: Kind = None
    active: Active = None
    limit: Limit = DEFAULT_LIMIT
    role: bounded_text("filter by role", max_length=MAX_FILTER) = None
    subrole: bounded_text("filter by subrole", max_length=MAX_FILTER) = None
    q: bounded_text("username prefix", max_length=MAX_FILTER) = None
    cursor: bounded_text(CURSOR_TEXT, max_length=MAX_FILTER) = None

    def filters(self) -> admin_users.UserFilters:
        """The domain's filters for these parameters."""
        return admin_users.UserFilters(
            role=self.role, subrole=self.subrole, kind=UserKind(self.kind) if self.kind else None,
            active=None if self.active is None else self.active == "true", q=self.q)


@bp.get("/users")
@documented(summary="List users, ordered by username", tag=TAG,
            responses={200: AdminUserList, 403: E, 412: E}, query=UsersQuery)
@require_permission(ADMIN_PERMISSION)
def list_users():
    """List users one page at a time."""
    query = read_query(UsersQuery)
    page, next_cursor = admin_users.list_users(db(), filters=query.filters(), limit=query.limit,
                                               cursor=query.cursor)
    return respond(None, users=[user_json(user) for user in page], next_cursor=next_cursor)


@bp.post("/users")
@documented(summary="Create a person or service account", tag=TAG, body=UserCreateBody,
            responses={201: AdminUserSecret, 403: E, 409: E, 412: E},
            description="The password (people) or secret (service accounts) is generated by "
                        "the server and returned once, under `password` or `secret`. People "
                        "enroll TOTP at their first sign-in. 409 `user_exists`; 412 for an "
                        "unknown role or subrole, and 412 on `role` for a service account in a "
                        "role/subrole holding security-api.admin (service accounts never "
                        "administer).")
@require_permission(ADMIN_PERMISSION)
def create_user():
    """Create an account and show its generated secret once."""
    body = read_json(UserCreateBody)
    created = admin_users.create_user(
        db(), services(), username=body.username, role=body.role, subrole=body.subrole,
        email=body.email, kind=UserKind(body.kind), actor=_actor(), origin=origin(), now=utcnow())
    return _with_secret(created, status=201)


@bp.get("/users/<user_id>")
@documented(summary="One user", tag=TAG, responses={200: AdminUser, 403: E, 404: E})
@require_permission(ADMIN_PERMISSION)
def get_user(user_id: str):
    """Show one user."""
    return respond(None, user=user_json(admin_users.get_user(db(), user_id=user_id)))


@bp.patch("/users/<user_id>")
@documented(summary="Change role, subrole, email or active (deactivation, not deletion)",
            tag=TAG, body=UserUpdateBody, responses={200: AdminUser, 403: E, 404: E, 409: E},
            description="Only these five fields (role, subrole, email, active, "
                        "slack_user_id); any other is refused (412). A new role or "
                        "subrole, or a deactivation, revokes every token of the user at once. "
                        "A deactivation also cancels their pending requests and revokes their "
                        "active grants (the provisioner's revoke included; audited with reason "
                        "`deactivated`); a role or subrole change does so for what the new "
                        "role could not request (reason `role_changed`). Reactivation gives "
                        "nothing back. 409 `self_change_refused` when an administrator would "
                        "change their own role or deactivate themselves; 412 on `role` when a "
                        "service account would move into (or be reactivated in) a role holding "
                        "security-api.admin.")
@require_permission(ADMIN_PERMISSION)
def update_user(user_id: str):
    """Change the named fields of a user."""
    body = read_json(UserUpdateBody)
    named = {field: getattr(body, field) for field in body.model_fields_set}
    if not named:
        raise InvalidParams(code="missing_params", errors=[
            {"field": "(body)",
             "problem": "name at least one of role, subrole, email, active, slack_user_id"}])
    user = admin_users.update_user(db(), services(), user_id=user_id, actor=_actor(),
                                   origin=origin(), now=utcnow(), **named)
    return respond(None, user=user_json(user))


@bp.post("/users/<user_id>/reset-totp")
@documented(summary="Reset a person's TOTP: they enroll again at next sign-in", tag=TAG,
            body=schemas.EmptyBody, responses={200: AdminUser, 403: E, 404: E, 409: E},
            description="Forgets the secret and the recovery codes and revokes every token. "
                        "409 `totp_not_applicable` for service accounts.")
@require_permission(ADMIN_PERMISSION)
def reset_totp(user_id: str):
    """Make the user enroll a new second factor."""
    read_json(schemas.EmptyBody)
    user = admin_users.reset_totp(db(), user_id=user_id, actor=_actor(), origin=origin(),
                                  now=utcnow())
    return respond("Two-factor authentication reset; every session was signed out.",
                    user=user_json(user))


@bp.post("/users/<user_id>/reset-password")
@documented(summary="Generate a new password (or service secret), returned once", tag=TAG,
            body=schemas.EmptyBody, responses={200: AdminUserSecret, 403: E, 404: E, 409: E},
            description="Returned under `password` (people) or `secret` (service accounts). "
                        "Every token of the user is revoked.")
@require_permission(ADMIN_PERMISSION)
def reset_password(user_id: str):
    """Replace the user's password with a generated one."""
    read_json(schemas.EmptyBody)
    created = admin_users.reset_password(db(), services(), user_id=user_id, actor=_actor(),
                                         origin=origin(), now=utcnow())
    return _with_secret(created)


@bp.post("/users/<user_id>/unlock")
@documented(summary="Lift the sign-in lockout of a user", tag=TAG, body=schemas.EmptyBody,
            responses={200: AdminUser, 403: E, 404: E})
@require_permission(ADMIN_PERMISSION)
def unlock(user_id: str):
    """Clear the failed sign-in count of the user's username."""
    read_json(schemas.EmptyBody)
    user = admin_users.unlock(db(), services(), user_id=user_id, actor=_actor(),
                              origin=origin(), now=utcnow())
    return respond("Unlocked.", user=user_json(user))
