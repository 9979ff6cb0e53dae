"""Whether someone holds a permission now, answered by one SELECT.

Why one statement: `GET /v1/check` (internal tools asking about a user) and every
`require_permission` guard ask this on the hot path. Loaded piece by piece (the permission, its
rules, the user, the grant) it cost up to six round trips; here the database finds the most
specific rule and the latest unexpired grant in one statement, and `holding_from` applies the
same decision the policy engine (access/policy.py) would: the most specific rule of
role/subrole, role/* and */* wins; `standing` holds; otherwise an active grant whose end is
still ahead (time decides, not the reaper); a service account never holds a grant, nor
security-api.admin whatever the rules say.

`HoldingReader` runs the shapes (a subject from a token, a user by username, and both at once
for `GET /v1/check`: its caller's guard and its answer) on the raw driver (db.ReadOnlyQuery:
compiled once, one round trip, no transaction), for reads made before a view touched its
session; `holding` runs the same statement inside a session.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import DateTime, String, and_, bindparam, exists, func, or_, select, true
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from security_api.access.grants import ADMIN_PERMISSION, Subject
from security_api.access.policy import WILDCARD
from security_api.db import ReadOnlyQuery, UTCDateTime
from security_api.enums import PolicyMode, RequestStatus, UserKind
from security_api.models import AccessRequest, Permission, PolicyRule, User


@dataclass(frozen=True)
class Holding:
    """Whether a permission is held now, how, and until when."""

    held: bool
    source: str | None = None
    expires_at: datetime | None = None


NOT_HELD = Holding(False)


def holding_columns(*, user_id, role, subrole, permission, now) -> list:
    """The three facts a holding is decided from, as columns of one SELECT.

    The arguments are SQL expressions (bind parameters, or columns of `users` to correlate
    with) or plain values. `known`: the permission exists; `rule_mode`: the mode of the most
    specific rule naming role/subrole (the unique (permission, role, subrole) index makes it a
    look-up of at most three rows); `grant_ends`: the latest end of an active grant still ahead.
    """
    # Of the matching rules, role/subrole sorts before role/* before */* (false before true).
    # The order names no outer column: SQLite refuses one in a subquery's ORDER BY.
    rule_mode = (select(PolicyRule.mode)
                 .where(PolicyRule.permission_key == permission,
                        or_(and_(PolicyRule.role == role, PolicyRule.subrole == subrole),
                            and_(PolicyRule.role == role, PolicyRule.subrole == WILDCARD),
                            and_(PolicyRule.role == WILDCARD, PolicyRule.subrole == WILDCARD)))
                 .order_by(PolicyRule.role == WILDCARD, PolicyRule.subrole == WILDCARD)
                 .limit(1).scalar_subquery())
    grant_ends = (select(func.max(AccessRequest.expires_at))
                  .where(AccessRequest.requester_id == user_id,
                         AccessRequest.permission_key == permission,
                         AccessRequest.status == RequestStatus.ACTIVE.value,
                         AccessRequest.expires_at > now)
                  .scalar_subquery())
    return [exists().where(Permission.key == permission).label("known"),
            rule_mode.label("rule_mode"), grant_ends.label("grant_ends")]


def holding_from(*, kind: str, permission: str, known: bool, rule_mode: str | None,
                 grant_ends: datetime | None) -> Holding:
    """Decide from the facts `holding_columns` read (the same order of checks as ever)."""
    if not known:
        return NOT_HELD
    # Defence in depth: whatever the rules say (even rules written before this was refused),
    # a service account never administers: its secret alone would be a 2FA-free admin.
    if kind == UserKind.SERVICE and permission == ADMIN_PERMISSION:
        return NOT_HELD
    if rule_mode == PolicyMode.STANDING:
        return Holding(True, "standing")
    if kind == UserKind.SERVICE or grant_ends is None:
        return NOT_HELD
    return Holding(True, "grant", grant_ends)


def holding(session: Session, subject: Subject, *, permission: str, now: datetime) -> Holding:
    """Tell whether the subject holds a permission now, in the session's transaction."""
    row = session.execute(select(*holding_columns(
        user_id=subject.id, role=subject.role, subrole=subject.subrole, permission=permission,
        now=now))).one()
    return holding_from(kind=subject.kind, permission=permission, known=row.known,
                        rule_mode=row.rule_mode, grant_ends=row.grant_ends)


# ReadOnlyQuery passes parameters to the driver as given, so `now` arrives already converted
# by UTCDateTime's own bind conversion (HoldingReader): naive UTC, which SQLite stores as text.
# The parameter's type says so, and converts nothing: a timestamp on PostgreSQL, text on SQLite.
_DRIVER_TIMESTAMP = DateTime().with_variant(String(), "sqlite")
_PARAMS = {"permission": bindparam("permission"),
           "now": bindparam("now", type_=_DRIVER_TIMESTAMP)}
SUBJECT_QUERY = select(*holding_columns(user_id=bindparam("user_id"), role=bindparam("role"),
                                        subrole=bindparam("subrole"), **_PARAMS))
USERNAME_QUERY = (select(User.active, User.kind,
                         *holding_columns(user_id=User.id, role=User.role, subrole=User.subrole,
                                          **_PARAMS))
                  .where(User.username == bindparam("username")))


def _guard_and_username_query():
    """The subject's holding of a guard permission and a named user's holding, in one SELECT.

    Why: `GET /v1/check` asked them one after the other, two round trips where the answer
    needs both anyway. The guard's row always exists and the user's is left-joined to it, so
    an unknown user comes back as a NULL `active` (users.active is NOT NULL) instead of no row.
    The guard's columns are named `guard_*`, the user's as in USERNAME_QUERY (the user row's
    active and kind, then the three facts).
    """
    guard = select(*holding_columns(user_id=bindparam("user_id"), role=bindparam("role"),
                                    subrole=bindparam("subrole"),
                                    permission=bindparam("guard_permission"),
                                    now=_PARAMS["now"])).subquery("guard")
    asked = USERNAME_QUERY.subquery("asked")
    return (select(*[column.label(f"guard_{column.key}") for column in guard.c], *asked.c)
            .select_from(guard.outerjoin(asked, true())))


GUARD_AND_USERNAME_QUERY = _guard_and_username_query()


class HoldingReader:
    """The holding queries for one engine, compiled once and run on the raw driver.

    For reads made before anything else in the request used the database (the permission
    guard, the read-only `GET /v1/check`): each answer is one round trip, without the
    session's BEGIN, ROLLBACK and pool pre-ping. Built once per process (Services).
    """

    def __init__(self, engine: Engine):
        dialect = engine.dialect
        self._now = UTCDateTime().dialect_impl(dialect).bind_processor(dialect)
        self._subject = ReadOnlyQuery(engine, SUBJECT_QUERY)
        self._guard_and_username = ReadOnlyQuery(engine, GUARD_AND_USERNAME_QUERY)

    def of_subject(self, subject: Subject, *, permission: str, now: datetime) -> Holding:
        """Tell whether the subject (a token's user) holds a permission now."""
        row = self._subject.first({"user_id": subject.id, "role": subject.role,
                                   "subrole": subject.subrole, "permission": permission,
                                   "now": self._now(now)})
        return holding_from(kind=subject.kind, permission=permission, **row)

    def of_subject_and_username(self, subject: Subject, *, guard: str, username: str,
                                permission: str, now: datetime) -> tuple[Holding, Holding | None]:
        """Tell, in one round trip, whether the subject holds `guard` and whether the user named
        so holds `permission` (None when there is no such user), both as of `now`.

        `username` as stored (accounts.users.normalise_username). A deactivated user holds
        nothing, whatever rules and grants remain. The caller decides what the guard's answer
        forbids before it looks at the user's.
        """
        row = self._guard_and_username.first({
            "user_id": subject.id, "role": subject.role, "subrole": subject.subrole,
            "guard_permission": guard, "username": username, "permission": permission,
            "now": self._now(now)})
        guard_holding = holding_from(kind=subject.kind, permission=guard,
                                     known=row.pop("guard_known"),
                                     rule_mode=row.pop("guard_rule_mode"),
                                     grant_ends=row.pop("guard_grant_ends"))
        if row["active"] is None:  # no user of that name: the left join found no row
            return guard_holding, None
        return guard_holding, _user_holding(row, permission=permission)


def _user_holding(row: dict, *, permission: str) -> Holding:
    """Decide a user's holding from a row of USERNAME_QUERY's columns (active, kind, facts)."""
    if not row.pop("active"):
        return NOT_HELD
    return holding_from(permission=permission, **row)
