"""A demo organisation for local use: roles, people with TOTP ready, one service account."""
from __future__ import annotations

from datetime import datetime

from sqlalchemy.orm import Session

from . import audit, totp
from .accounts import create_role, create_user
from .enums import UserKind
from .secretbox import SecretBox

DEMO_ROLES = {
    "security": ["admin", "lead"],
    "developer": ["backend", "frontend"],
    "finance": ["analyst"],
}
DEMO_PEOPLE = [
    ("admin", "security", "admin"),
    ("lead", "security", "lead"),
    ("alice", "developer", "backend"),
    ("bob", "developer", "frontend"),
    ("carol", "finance", "analyst"),
]
DEMO_SERVICES = [("deploy-bot", "developer", "backend")]


def seed_demo_organisation(session: Session, *, bcrypt_rounds: int, issuer: str,
                           secret_box: SecretBox, now: datetime) -> list[str]:
    """Create the demo rows and return lines telling how to sign in as each user."""
    origin = audit.Origin(ip="cli")
    for role, subroles in DEMO_ROLES.items():
        create_role(session, name=role, subroles=subroles, actor="seed-demo", origin=origin,
                    now=now)
    lines = ["Demo organisation created. Credentials are shown once:"]
    for username, role, subrole in DEMO_PEOPLE:
        created = create_user(session, username=username, role=role, subrole=subrole,
                              email=f"{username}@example.com", kind=UserKind.PERSON,
                              password=None, bcrypt_rounds=bcrypt_rounds, actor="seed-demo",
                              origin=origin, now=now)
        secret = totp.new_secret()
        created.user.totp_secret = secret_box.encrypt(secret)
        created.user.totp_confirmed = True
        uri = totp.provisioning_uri(secret, account=username, issuer=issuer)
        lines.append(f"  {username:<11} {role}/{subrole:<9} password {created.secret}  "
                     f"TOTP secret {secret}  ({uri})")
    for username, role, subrole in DEMO_SERVICES:
        created = create_user(session, username=username, role=role, subrole=subrole,
                              email=None, kind=UserKind.SERVICE, password=None,
                              bcrypt_rounds=bcrypt_rounds, actor="seed-demo", origin=origin,
                              now=now)
        lines.append(f"  {username:<11} {role}/{subrole:<9} service secret {created.secret}")
    session.commit()
    return lines
