"""User administration for holders of security-api.admin: list, create, update, resets, unlock."""
from __future__ import annotations

from typing import Literal

from flask import Blueprint, request
from pydantic import BaseModel, Field, StrictBool, StrictStr

from flask_api_functions import (
    ADMIN_PERMISSION,
    current_principal,
    db,
    envelope,
    origin,
    read_json,
    require_permission,
    services,
)
from security_api import admin_users
from security_api.accounts import NewUser
from security_api.clock import utcnow
from security_api.enums import UserKind
from security_api.errors import InvalidParams

from . import schemas
from .auth import user_json
from .openapi import CURSOR, LIMIT, Query, documented

bp = Blueprint("admin_users", __name__, url_prefix="/v1/admin")
E = schemas.Error
TAG = "admin"
MAX_LIMIT, DEFAULT_LIMIT = 200, 50
NAME = r"^[a-z0-9][a-z0-9_-]{0,63}$"
_SHORT = {"type": "string", "maxLength": 256}
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
    return envelope(SHOWN_ONCE, status=status, user=user_json(created.user),
                    **{name: created.secret})


def _actor() -> str:
    return current_principal().account.username


def _list_params() -> tuple[admin_users.UserFilters, int, str | None]:
    args = request.args
    errors = []
    kind = args.get("kind")
    if kind is not None and kind not in {k.value for k in UserKind}:
        errors.append({"field": "kind", "problem": "person or service"})
    active = args.get("active")
    if active is not None and active not in ("true", "false"):
        errors.append({"field": "active", "problem": "true or false"})
    raw_limit = args.get("limit", str(DEFAULT_LIMIT))
    limit = int(raw_limit) if raw_limit.isdigit() and raw_limit.isascii() else 0
    if not 1 <= limit <= MAX_LIMIT:
        errors.append({"field": "limit", "problem": f"a whole number from 1 to {MAX_LIMIT}"})
    for name in ("role", "subrole", "q", "cursor"):
        if len(args.get(name, "")) > 256:
            errors.append({"field": name, "problem": "too long"})
    if errors:
        raise InvalidParams(errors=errors)
    filters = admin_users.UserFilters(
        role=args.get("role"), subrole=args.get("subrole"),
        kind=UserKind(kind) if kind else None,
        active=None if active is None else active == "true", q=args.get("q"))
    return filters, limit, args.get("cursor")


@bp.get("/users")
@documented(summary="List users, ordered by username", tag=TAG,
            responses={200: AdminUserList, 403: E, 412: E},
            query={"role": Query("filter by role", _SHORT), "subrole": Query("filter by subrole", _SHORT),
                   "kind": Query("person | service", {"type": "string", "enum": [k.value for k in UserKind]}),
                   "active": Query("true | false", {"type": "string", "enum": ["true", "false"]}),
                   "q": Query("username prefix", _SHORT), "limit": LIMIT,
                   "cursor": Query(CURSOR.description, _SHORT)})
@require_permission(ADMIN_PERMISSION)
def list_users():
    """List users one page at a time."""
    filters, limit, cursor = _list_params()
    page, next_cursor = admin_users.list_users(db(), filters=filters, limit=limit, cursor=cursor)
    return envelope(None, users=[user_json(user) for user in page], next_cursor=next_cursor)


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
    return envelope(None, user=user_json(admin_users.get_user(db(), user_id=user_id)))


@bp.patch("/users/<user_id>")
@documented(summary="Change role, subrole, email or active (deactivation, not deletion)",
            tag=TAG, body=UserUpdateBody, responses={200: AdminUser, 403: E, 404: E, 409: E},
            description="Only these four fields; any other is refused (412). A new role or "
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
            {"field": "(body)", "problem": "name at least one of role, subrole, email, active"}])
    user = admin_users.update_user(db(), services(), user_id=user_id, actor=_actor(),
                                   origin=origin(), now=utcnow(), **named)
    return envelope(None, user=user_json(user))


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
    return envelope("Two-factor authentication reset; every session was signed out.",
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
    return envelope("Unlocked.", user=user_json(user))
