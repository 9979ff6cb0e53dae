"""Create or upgrade the schema with Alembic, then the rows every installation needs."""
from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from security_api import audit
from security_api.access.catalog import ensure_builtin_permissions, ensure_rule
from security_api.accounts.users import create_role
from security_api.clock import utcnow
from security_api.db import without_query_timeout
from security_api.enums import PolicyMode

ROOT = Path(__file__).resolve().parent.parent
ADMIN_ROLE, ADMIN_SUBROLE = "security", "admin"
ADMIN_STANDING = ("security-api.admin", "security-api.audit")


def alembic_config() -> Config:
    """Return the Alembic configuration of this project."""
    return Config(str(ROOT / "alembic.ini"))


def migrate(engine: Engine) -> tuple[str | None, str | None]:
    """Bring the schema to the newest revision (idempotent); return (revision before, after).

    The revision before is None on an empty database.
    """
    cfg = alembic_config()
    with engine.begin() as connection, without_query_timeout(connection):
        before = MigrationContext.configure(connection).get_current_revision()
        cfg.attributes["connection"] = connection
        command.upgrade(cfg, "head")
        after = MigrationContext.configure(connection).get_current_revision()
    return before, after


def bootstrap(session: Session) -> None:
    """Create the built-in rows: the audit chain head and the security/admin role."""
    now = utcnow()
    audit.ensure_chain_head(session)
    create_role(session, name=ADMIN_ROLE, subroles=[ADMIN_SUBROLE],
                description="The security team", actor="system", origin=audit.Origin(),
                now=now)
    ensure_builtin_permissions(session, now=now)
    for permission in ADMIN_STANDING:
        ensure_rule(session, permission=permission, role=ADMIN_ROLE, subrole=ADMIN_SUBROLE,
                    mode=PolicyMode.STANDING, actor="system", origin=audit.Origin(), now=now)
    session.commit()


def init_database(engine: Engine, session_factory) -> tuple[str | None, str | None]:
    """Migrate, then bootstrap: what `flask init-db` does; return what `migrate` returns."""
    revisions = migrate(engine)
    with session_factory() as session:
        bootstrap(session)
    return revisions


def describe_migration(before: str | None, after: str | None) -> str:
    """Say what `init_database` did, for people: created, upgraded, or already current."""
    if before is None:
        return f"Database created at the newest schema (revision {after})."
    if before != after:
        return f"Database upgraded from schema revision {before} to {after} (the newest)."
    return f"Database already at the newest schema (revision {after}); nothing to do."
