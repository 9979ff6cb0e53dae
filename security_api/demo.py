"""A demo organisation for local use: roles, people with TOTP ready, permissions in all modes."""
from __future__ import annotations

from datetime import datetime

from sqlalchemy.orm import Session

from . import audit, totp
from .accounts import create_role, create_user
from .catalog import ensure_permission, ensure_rule
from .enums import PolicyMode, UserKind
from .services import Services

DEMO_ROLES = {
    "security": ["admin", "lead"],
    "developer": ["backend", "frontend"],
    "finance": ["analyst"],
    "tools": ["ci"],
}
DEMO_PEOPLE = [
    ("admin", "security", "admin"),
    ("lead", "security", "lead"),
    ("alice", "developer", "backend"),
    ("bob", "developer", "frontend"),
    ("carol", "finance", "analyst"),
]
DEMO_SERVICES = [("deploy-bot", "tools", "ci")]
DEMO_PERMISSIONS = [
    {"key": "vpn", "name": "VPN access", "max_duration_minutes": 720,
     "description": "Connect to the corporate VPN."},
    {"key": "prod-db-readonly", "name": "Production database, read-only",
     "max_duration_minutes": 240, "requires_justification": True,
     "description": "Read-only credentials for the production database."},
    {"key": "aws-sg-ssh", "name": "SSH through the bastion security group",
     "max_duration_minutes": 120, "provisioner": "aws_security_group",
     "provisioner_config": {"group_id": "sg-0123456789abcdef0", "ports": [22]},
     "description": "Allow your address (or a cidr param) into the bastion's security group."},
]
DEMO_RULES = [
    {"permission": "vpn", "role": "*", "subrole": "*", "mode": PolicyMode.AUTO},
    {"permission": "prod-db-readonly", "role": "developer", "subrole": "*",
     "mode": PolicyMode.APPROVAL, "approvers": ["security/lead"]},
    {"permission": "prod-db-readonly", "role": "finance", "subrole": "analyst",
     "mode": PolicyMode.APPROVAL, "approvers": ["security/lead", "security/admin"],
     "approvals_required": 2, "max_duration_minutes": 60},
    {"permission": "aws-sg-ssh", "role": "developer", "subrole": "backend",
     "mode": PolicyMode.AUTO},
    {"permission": "security-api.audit", "role": "security", "subrole": "lead",
     "mode": PolicyMode.STANDING},
    {"permission": "security-api.check", "role": "tools", "subrole": "ci",
     "mode": PolicyMode.STANDING},
]


def seed_demo_organisation(session: Session, *, services: Services, now: datetime) -> list[str]:
    """Create the demo rows and return lines telling how to sign in as each user."""
    origin = audit.Origin(ip="cli")
    settings = services.settings
    for role, subroles in DEMO_ROLES.items():
        create_role(session, name=role, subroles=subroles, actor="seed-demo", origin=origin,
                    now=now)
    for permission in DEMO_PERMISSIONS:
        ensure_permission(session, **permission, settings=settings, actor="seed-demo",
                          origin=origin, now=now)
    for rule in DEMO_RULES:
        ensure_rule(session, **rule, actor="seed-demo", origin=origin, now=now)
    lines = ["Demo organisation created. Credentials are shown once:"]
    for username, role, subrole in DEMO_PEOPLE:
        created = create_user(session, username=username, role=role, subrole=subrole,
                              email=f"{username}@example.com", kind=UserKind.PERSON,
                              password=None, bcrypt_rounds=settings.bcrypt_rounds,
                              actor="seed-demo", origin=origin, now=now)
        secret = totp.new_secret()
        created.user.totp_secret = services.secret_box.encrypt(secret)
        created.user.totp_confirmed = True
        uri = totp.provisioning_uri(secret, account=username, issuer=settings.totp_issuer)
        lines.append(f"  {username:<11} {role}/{subrole:<9} password {created.secret}  "
                     f"TOTP secret {secret}  ({uri})")
    for username, role, subrole in DEMO_SERVICES:
        created = create_user(session, username=username, role=role, subrole=subrole,
                              email=None, kind=UserKind.SERVICE, password=None,
                              bcrypt_rounds=settings.bcrypt_rounds, actor="seed-demo",
                              origin=origin, now=now)
        lines.append(f"  {username:<11} {role}/{subrole:<9} service secret {created.secret}")
    lines.append("Permissions: vpn (auto for everyone), prod-db-readonly (approval by "
                 "security/lead), aws-sg-ssh (auto for developer/backend; needs AWS).")
    session.commit()
    return lines
