"""A demo organisation for local use: roles, people with TOTP ready, permissions in all modes."""
from __future__ import annotations

from datetime import datetime
from pathlib import Path

from sqlalchemy.orm import Session

from security_api import audit
from security_api.access import policyfile
from security_api.accounts import totp
from security_api.accounts.users import create_user
from security_api.enums import UserKind
from security_api.services import Services

DEMO_PEOPLE = [
    ("admin", "security", "admin"),
    ("lead", "security", "lead"),
    ("alice", "developer", "backend"),
    ("bob", "developer", "frontend"),
    ("carol", "finance", "analyst"),
]
DEMO_SERVICES = [("deploy-bot", "tools", "ci")]
# Roles, permissions and rules live in the policy file; people are created here.
DEMO_POLICY_FILE = Path(__file__).resolve().parent.parent / "policies" / "demo.yaml"


def seed_demo_organisation(session: Session, *, services: Services, now: datetime) -> list[str]:
    """Create the demo rows and return lines telling how to sign in as each user."""
    origin = audit.Origin(ip="cli")
    settings = services.settings
    desired = policyfile.parse(DEMO_POLICY_FILE.read_text(encoding="utf-8"), settings=settings)
    policyfile.stage(session, policyfile.plan(session, desired), actor="seed-demo", origin=origin,
                     now=now, source="policies/demo.yaml")
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
