"""Administration of roles, permissions and policy rules (holders of security-api.admin).

The bodies, query models and responses are in web/api/admin_catalog_schemas.py; the operations in
security_api.access.admin_roles, admin_permissions and admin_rules.
"""
from __future__ import annotations

from flask import Blueprint
from pydantic import BaseModel

from flask_api_functions import (
    ADMIN_PERMISSION,
    NulFreeSegment,
    current_principal,
    db,
    origin,
    require_permission,
    respond,
    services,
)
from security_api.access import admin_permissions, admin_roles, admin_rules
from security_api.clock import utcnow
from security_api.enums import PolicyMode
from web.api import schemas
from web.api.admin_catalog_schemas import (
    Explanation,
    PermissionCreateBody,
    PermissionEnvelope,
    PermissionList,
    PermissionUpdateBody,
    PoliciesQuery,
    PolicyCreateBody,
    PolicyEnvelope,
    PolicyList,
    PolicyUpdateBody,
    RoleCreateBody,
    RoleEnvelope,
    RoleList,
    RoleUpdateBody,
    SubroleCreateBody,
)
from web.api.inputs import read_json, read_query
from web.api.openapi import documented
from web.api.queries import UserPermissionQuery

bp = Blueprint("admin_catalog", __name__, url_prefix="/v1/admin")


class RuleIdConverter(NulFreeSegment):
    """A policy rule id: any path segment except `explain`, which is a route of its own.

    Without it, /policies/explain also matched /policies/<rule_id>, so OPTIONS advertised
    PATCH and DELETE there and PATCH /policies/explain reached the update handler.
    """

    regex = rf"(?!explain(?:/|$)){NulFreeSegment.regex}"


bp.record_once(lambda state: state.app.url_map.converters.setdefault("rule_id", RuleIdConverter))
E = schemas.Error


# ---- helpers -----------------------------------------------------------------------------------
def _who() -> dict:
    return {"actor": current_principal().account.username, "origin": origin(), "now": utcnow()}


def _changes(body: BaseModel) -> dict:
    # Only the fields the client sent: an absent field is left alone, null means null.
    return {name: getattr(body, name) for name in body.model_fields_set}


def _role(role, status=200, message=None):
    return respond(message, status=status, role=admin_roles.render_role(db(), role))


def _permission(permission, status=200, message=None):
    return respond(message, status=status, permission=admin_permissions.render_permission(permission))


def _policy(rule, status=200, message=None):
    return respond(message, status=status, policy=admin_rules.render_rule(rule))


# ---- roles -------------------------------------------------------------------------------------
@bp.get("/roles")
@documented(summary="List roles with their subroles", tag="admin",
            responses={200: RoleList, 403: E})
@require_permission(ADMIN_PERMISSION)
def roles_list():
    """List every role."""
    return respond(None, roles=admin_roles.list_roles(db()))


@bp.post("/roles")
@documented(summary="Create a role with its subroles", tag="admin", body=RoleCreateBody,
            responses={201: RoleEnvelope, 403: E, 409: E})
@require_permission(ADMIN_PERMISSION)
def role_create():
    """Create a role."""
    body = read_json(RoleCreateBody)
    role = admin_roles.create_new_role(db(), name=body.name, subroles=body.subroles,
                               description=body.description, **_who())
    return _role(role, status=201, message="Role created.")


@bp.get("/roles/<name>")
@documented(summary="One role with its subroles", tag="admin",
            responses={200: RoleEnvelope, 403: E, 404: E})
@require_permission(ADMIN_PERMISSION)
def role_detail(name: str):
    """Show one role."""
    return _role(admin_roles.get_role(db(), name=name))


@bp.patch("/roles/<name>")
@documented(summary="Change a role's description", tag="admin", body=RoleUpdateBody,
            responses={200: RoleEnvelope, 403: E, 404: E})
@require_permission(ADMIN_PERMISSION)
def role_update(name: str):
    """Update a role."""
    body = read_json(RoleUpdateBody)
    role = admin_roles.update_role(db(), name=name, description=body.description, **_who())
    return _role(role, message="Role updated.")


@bp.delete("/roles/<name>")
@documented(summary="Delete a role and its subroles", tag="admin",
            responses={200: schemas.Message, 403: E, 404: E, 409: E},
            description="409 while any user (active or not) has it, or any policy rule names "
                        "it as its role or among its approvers.")
@require_permission(ADMIN_PERMISSION)
def role_delete(name: str):
    """Delete a role that nothing refers to."""
    admin_roles.delete_role(db(), name=name, **_who())
    return respond("Role deleted.")


@bp.post("/roles/<name>/subroles")
@documented(summary="Add a subrole to a role", tag="admin", body=SubroleCreateBody,
            responses={201: RoleEnvelope, 403: E, 404: E, 409: E})
@require_permission(ADMIN_PERMISSION)
def subrole_create(name: str):
    """Add a subrole."""
    body = read_json(SubroleCreateBody)
    role = admin_roles.add_subrole(db(), role=name, name=body.name, description=body.description,
                           **_who())
    return _role(role, status=201, message="Subrole added.")


@bp.delete("/roles/<name>/subroles/<subrole>")
@documented(summary="Delete a subrole", tag="admin",
            responses={200: RoleEnvelope, 403: E, 404: E, 409: E},
            description="409 while any user has it or any policy rule names it.")
@require_permission(ADMIN_PERMISSION)
def subrole_delete(name: str, subrole: str):
    """Delete a subrole that nothing refers to."""
    admin_roles.delete_subrole(db(), role=name, name=subrole, **_who())
    return _role(admin_roles.get_role(db(), name=name), message="Subrole deleted.")


# ---- permissions -------------------------------------------------------------------------------
@bp.get("/permissions")
@documented(summary="List every permission", tag="admin", responses={200: PermissionList, 403: E})
@require_permission(ADMIN_PERMISSION)
def permissions_list():
    """List every permission with its provisioner."""
    permissions = admin_permissions.list_permissions(db())
    return respond(None, permissions=[admin_permissions.render_permission(p) for p in permissions])


@bp.post("/permissions")
@documented(summary="Create a permission", tag="admin", body=PermissionCreateBody,
            responses={201: PermissionEnvelope, 403: E, 409: E},
            description="412 when the provisioner refuses its config.")
@require_permission(ADMIN_PERMISSION)
def permission_create():
    """Create a permission."""
    body = read_json(PermissionCreateBody)
    permission = admin_permissions.create_permission(
        db(), key=body.key, name=body.name, description=body.description,
        max_duration_minutes=body.max_duration_minutes, step_up=body.step_up,
        requires_justification=body.requires_justification, provisioner=body.provisioner,
        provisioner_config=body.provisioner_config, settings=services().settings, **_who())
    return _permission(permission, status=201, message="Permission created.")


@bp.get("/permissions/<key>")
@documented(summary="One permission", tag="admin",
            responses={200: PermissionEnvelope, 403: E, 404: E})
@require_permission(ADMIN_PERMISSION)
def permission_detail(key: str):
    """Show one permission."""
    return _permission(admin_permissions.get_permission(db(), key=key))


@bp.patch("/permissions/<key>")
@documented(summary="Change a permission", tag="admin", body=PermissionUpdateBody,
            responses={200: PermissionEnvelope, 403: E, 404: E},
            description="Requests already made keep their terms.")
@require_permission(ADMIN_PERMISSION)
def permission_update(key: str):
    """Update the fields sent."""
    changes = _changes(read_json(PermissionUpdateBody))
    permission = admin_permissions.update_permission(db(), key=key, changes=changes,
                                       settings=services().settings, **_who())
    return _permission(permission, message="Permission updated.")


@bp.delete("/permissions/<key>")
@documented(summary="Delete a permission", tag="admin",
            responses={200: schemas.Message, 403: E, 404: E, 409: E},
            description="409 for built-in permissions, while policy rules grant it, while "
                        "requests for it are pending, active or failed, and while past "
                        "requests refer to it (they stay for the record).")
@require_permission(ADMIN_PERMISSION)
def permission_delete(key: str):
    """Delete a permission nothing refers to."""
    admin_permissions.delete_permission(db(), key=key, **_who())
    return respond("Permission deleted.")


# ---- policy rules ------------------------------------------------------------------------------
@bp.get("/policies")
@documented(summary="List policy rules", tag="admin", responses={200: PolicyList, 403: E},
            query=PoliciesQuery)
@require_permission(ADMIN_PERMISSION)
def policies_list():
    """List policy rules, optionally filtered (an empty filter is no filter)."""
    query = read_query(PoliciesQuery)
    rules = admin_rules.list_rules(db(), permission=query.permission or None, role=query.role or None)
    return respond(None, policies=[admin_rules.render_rule(rule) for rule in rules])


@bp.post("/policies")
@documented(summary="Create a policy rule", tag="admin", body=PolicyCreateBody,
            responses={201: PolicyEnvelope, 403: E, 409: E},
            description="409 when a rule for the same permission, role and subrole exists; "
                        "409 `service_account_admin` when a rule for security-api.admin "
                        "would let a service account hold it (service accounts never "
                        "administer). 412 on `approvers` when they match only service "
                        "accounts, which never approve.")
@require_permission(ADMIN_PERMISSION)
def policy_create():
    """Create a policy rule."""
    body = read_json(PolicyCreateBody)
    rule = admin_rules.create_rule(
        db(), permission=body.permission, role=body.role, subrole=body.subrole,
        mode=PolicyMode(body.mode), max_duration_minutes=body.max_duration_minutes,
        approvers=body.approvers, approvals_required=body.approvals_required,
        pending_ttl_minutes=body.pending_ttl_minutes,
        review_within_minutes=body.review_within_minutes, **_who())
    return _policy(rule, status=201, message="Policy rule created.")


@bp.get("/policies/explain")
@documented(summary="Explain the decision for a user and a permission", tag="admin",
            responses={200: Explanation, 403: E, 404: E, 412: E},
            query=UserPermissionQuery,
            description="The decision, the most specific rule behind it, every rule "
                        "considered with its specificity, and the conflict sets that name the "
                        "permission with what of them the user holds or waits for now.")
@require_permission(ADMIN_PERMISSION)
def policy_explain():
    """Explain a decision."""
    query = read_query(UserPermissionQuery)
    return respond(None, **admin_rules.explain(db(), username=query.user, permission=query.permission,
                                               now=utcnow()))


@bp.get("/policies/<rule_id:rule_id>")
@documented(summary="One policy rule", tag="admin",
            responses={200: PolicyEnvelope, 403: E, 404: E})
@require_permission(ADMIN_PERMISSION)
def policy_detail(rule_id: str):
    """Show one policy rule."""
    return _policy(admin_rules.get_rule(db(), rule_id=rule_id))


@bp.patch("/policies/<rule_id:rule_id>")
@documented(summary="Change a policy rule's terms", tag="admin", body=PolicyUpdateBody,
            responses={200: PolicyEnvelope, 403: E, 404: E, 409: E},
            description="Requests already made keep their frozen approvers, but an approval "
                        "re-checks that the rules still let the requester ask (409 "
                        "`no_longer_eligible`). 409 `builtin_rule` for the security/admin "
                        "standing rule; "
                        "409 `service_account_admin` when a rule for security-api.admin "
                        "would let a service account hold it (service accounts never "
                        "administer).")
@require_permission(ADMIN_PERMISSION)
def policy_update(rule_id: str):
    """Update the terms sent."""
    changes = _changes(read_json(PolicyUpdateBody))
    rule = admin_rules.update_rule(db(), rule_id=rule_id, changes=changes, **_who())
    return _policy(rule, message="Policy rule updated.")


@bp.delete("/policies/<rule_id:rule_id>")
@documented(summary="Delete a policy rule", tag="admin",
            responses={200: schemas.Message, 403: E, 404: E, 409: E},
            description="409 `builtin_rule` for the security/admin standing rule; "
                        "409 `service_account_admin` when a broader security-api.admin rule "
                        "would then decide for a service account.")
@require_permission(ADMIN_PERMISSION)
def policy_delete(rule_id: str):
    """Delete a policy rule."""
    admin_rules.delete_rule(db(), rule_id=rule_id, **_who())
    return respond("Policy rule deleted.")
