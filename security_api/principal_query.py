"""The token check's one query, built once: who the user is, whether the session lives, denials."""
from __future__ import annotations

from sqlalchemy import bindparam, select
from sqlalchemy.engine import Engine

from .db import ReadOnlyQuery
from .models import RefreshFamily, RevokedToken, User

# Who the token's user is, whether its session lives, whether its jti is denied.
PRINCIPAL_QUERY = (
    select(User.id, User.username, User.email, User.role, User.subrole, User.kind, User.active,
           User.totp_confirmed, User.created_at, User.tokens_valid_after,
           RefreshFamily.id.label("family_id"), RefreshFamily.revoked_at.label("family_revoked_at"),
           RevokedToken.jti.label("denied_jti"))
    .select_from(User)
    .outerjoin(RefreshFamily, (RefreshFamily.id == bindparam("sid"))
               & (RefreshFamily.user_id == User.id))
    .outerjoin(RevokedToken, RevokedToken.jti == bindparam("jti"))
    .where(User.id == bindparam("sub"))
)


def principal_reader(engine: Engine) -> ReadOnlyQuery:
    """Return the runner of PRINCIPAL_QUERY for this engine (compiled once, see db.ReadOnlyQuery)."""
    return ReadOnlyQuery(engine, PRINCIPAL_QUERY)
