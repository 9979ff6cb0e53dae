"""The token check's one query, built once: who the user is and whether the session lives."""
from __future__ import annotations

from sqlalchemy import bindparam, select
from sqlalchemy.engine import Engine

from security_api.db import ReadOnlyQuery
from security_api.models import RefreshFamily, User

# Who the token's user is and whether its session (refresh family) lives. Logout revokes the
# family, so this one row answers "was this access token logged out" on every worker at once.
PRINCIPAL_QUERY = (
    select(User.id, User.username, User.email, User.role, User.subrole, User.kind, User.active,
           User.totp_confirmed, User.created_at, User.tokens_valid_after,
           RefreshFamily.id.label("family_id"), RefreshFamily.revoked_at.label("family_revoked_at"))
    .select_from(User)
    .outerjoin(RefreshFamily, (RefreshFamily.id == bindparam("sid"))
               & (RefreshFamily.user_id == User.id))
    .where(User.id == bindparam("sub"))
)


def principal_reader(engine: Engine) -> ReadOnlyQuery:
    """Return the runner of PRINCIPAL_QUERY for this engine (compiled once, see db.ReadOnlyQuery)."""
    return ReadOnlyQuery(engine, PRINCIPAL_QUERY)
