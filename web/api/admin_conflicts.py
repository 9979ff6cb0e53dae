"""Administration of conflict sets (separation of duties), for holders of security-api.admin.

A module of its own beside admin_catalog.py (which would pass 300 lines); same auth, audit and
error shapes. The rules behind the bodies are ConflictSetSpec's (access/catalog_schemas.py), the
operations security_api.access.admin_conflicts.
"""
from __future__ import annotations

from flask import Blueprint
from pydantic import BaseModel, Field

from flask_api_functions import ADMIN_PERMISSION, current_principal, db, origin, require_permission, respond
from security_api.access import admin_conflicts
from security_api.access.catalog_schemas import ConflictMembers, ConflictSetSpec, PermissionDescription
from security_api.clock import utcnow
from web.api import schemas
from web.api.inputs import read_json
from web.api.openapi import documented
from web.api.schemas import Body

bp = Blueprint("admin_conflicts", __name__, url_prefix="/v1/admin")
E = schemas.Error


# ---- HTTP shapes -------------------------------------------------------------------------------
class ConflictCreateBody(Body, ConflictSetSpec):
    pass


class ConflictUpdateBody(Body):
    permissions: ConflictMembers | None = Field(default=None,
                                                description="Replaces the set's permissions.")
    description: PermissionDescription | None = None


class ConflictSetOut(BaseModel):
    name: str
    permissions: list[str] = Field(description="Of these a person may hold or wait for one.")
    description: str
    created_at: str


class ConflictEnvelope(BaseModel):
    message: str | None
    conflict: ConflictSetOut


class ConflictList(BaseModel):
    message: str | None
    conflicts: list[ConflictSetOut]


def _who() -> dict:
    return {"actor": current_principal().account.username, "origin": origin(), "now": utcnow()}


# ---- routes ------------------------------------------------------------------------------------
@bp.get("/conflicts")
@documented(summary="List conflict sets (separation of duties)", tag="admin",
            responses={200: ConflictList, 403: E})
@require_permission(ADMIN_PERMISSION)
def conflicts_list():
    """List every conflict set with its permissions."""
    return respond(None, conflicts=admin_conflicts.list_conflicts(db()))


@bp.post("/conflicts")
@documented(summary="Create a conflict set", tag="admin", body=ConflictCreateBody,
            responses={201: ConflictEnvelope, 403: E, 409: E},
            description="A person may hold or wait for at most one permission of a set "
                        "(standing, active or pending). The set applies from now on: it refuses "
                        "new requests and approvals and takes nothing away. 412 for fewer than "
                        "two, repeated or unknown permissions; 409 `conflict_set_exists`.")
@require_permission(ADMIN_PERMISSION)
def conflict_create():
    """Create a conflict set."""
    body = read_json(ConflictCreateBody)
    conflict = admin_conflicts.create_conflict(db(), name=body.name, permissions=body.permissions,
                                               description=body.description, **_who())
    return respond("Conflict set created.", status=201, conflict=conflict)


@bp.get("/conflicts/<name>")
@documented(summary="One conflict set", tag="admin",
            responses={200: ConflictEnvelope, 403: E, 404: E})
@require_permission(ADMIN_PERMISSION)
def conflict_detail(name: str):
    """Show one conflict set."""
    return respond(None, conflict=admin_conflicts.get_conflict(db(), name=name))


@bp.patch("/conflicts/<name>")
@documented(summary="Change a conflict set", tag="admin", body=ConflictUpdateBody,
            responses={200: ConflictEnvelope, 403: E, 404: E},
            description="Only the fields sent change; `permissions` replaces the list.")
@require_permission(ADMIN_PERMISSION)
def conflict_update(name: str):
    """Update the fields sent."""
    body = read_json(ConflictUpdateBody)
    changes = {field: getattr(body, field) for field in body.model_fields_set}
    conflict = admin_conflicts.update_conflict(db(), name=name, changes=changes, **_who())
    return respond("Conflict set updated.", conflict=conflict)


@bp.delete("/conflicts/<name>")
@documented(summary="Delete a conflict set", tag="admin",
            responses={200: schemas.Message, 403: E, 404: E})
@require_permission(ADMIN_PERMISSION)
def conflict_delete(name: str):
    """Delete a conflict set."""
    admin_conflicts.delete_conflict(db(), name=name, **_who())
    return respond("Conflict set deleted.")
