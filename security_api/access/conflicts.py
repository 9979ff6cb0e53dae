"""Separation of duties: of the permissions of one conflict set, a person may hold or wait for
at most one at a time (standing, active or pending).

One rule, enforced in one place (`refuse_conflicts`), called wherever a permission is about to
be asked for or granted: creating a request, approving one (a request that became conflicting
while it waited is never granted), retrying a failed grant, and extending. Shown, not only
enforced: the catalog's `blocked_by` and the policy explanation come from the same look-ups.

Races: two requests for the two sides of one set, made at once, must not both succeed. The check
and the insert run in one transaction after a write lock on the requester's row, so a second
request of the same person waits for the first to commit and then sees it. The lock is taken
only when the permission is in some set: the common path pays one indexed look-up, no lock.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime

from sqlalchemy import and_, bindparam, or_, select, update
from sqlalchemy.orm import Session, aliased

from security_api import audit, metrics
from security_api.access.grants import Subject, as_rule, candidate_rules
from security_api.access.policy import WILDCARD, Rule, decide
from security_api.enums import AuditAction, PolicyMode, RequestStatus
from security_api.errors import Conflict
from security_api.models import AccessRequest, ConflictSetMember, Permission, PolicyRule, User
from security_api.unit_of_work import unit_of_work

CODE = "conflicting_permission"
# Waiting (pending), being granted, or held: each keeps the other side of a set closed.
OPEN_STATUSES = (RequestStatus.PENDING, RequestStatus.GRANTING, RequestStatus.ACTIVE)


class ConflictingPermission(Conflict):
    """409: the permission shares a conflict set with one the person holds or waits for."""

    def __init__(self, permission: str, conflicts_with: Iterable[str]):
        keys = sorted(set(conflicts_with))
        super().__init__(f"{permission} conflicts with {', '.join(keys)}, which you hold or "
                         "have asked for (separation of duties); give that up first.",
                         code=CODE, fields={"conflicts_with": keys})
        self.permission, self.conflicts_with = permission, keys


def rivals(session: Session, keys: Iterable[str]) -> dict[str, dict[str, set[str]]]:
    """Return, per key, the other permissions of its sets by set name (one indexed query)."""
    keys = list(set(keys))
    if not keys:
        return {}
    mine, other = aliased(ConflictSetMember), aliased(ConflictSetMember)
    rows = session.execute(
        select(mine.permission_key, other.set_name, other.permission_key)
        .join(other, and_(other.set_name == mine.set_name,
                          other.permission_key != mine.permission_key))
        .where(mine.permission_key.in_(keys)))
    found: dict[str, dict[str, set[str]]] = {}
    for key, set_name, rival in rows:
        found.setdefault(key, {}).setdefault(set_name, set()).add(rival)
    return found


def held_or_waiting(session: Session, subject: Subject, keys: Iterable[str], *, now: datetime,
                    ignore_request_id: str | None = None) -> set[str]:
    """Return which of `keys` the subject holds (standing or an unexpired grant) or waits for."""
    keys = set(keys)
    if not keys:
        return set()
    rules = [rule for rule in candidate_rules(session, subject) if rule.permission in keys]
    found = {key for key in keys
             if decide(role=subject.role, subrole=subject.subrole, permission=key,
                       permission_max_minutes=1, candidates=rules).mode == PolicyMode.STANDING}
    query = select(AccessRequest.permission_key).where(
        AccessRequest.requester_id == subject.id, AccessRequest.permission_key.in_(keys),
        AccessRequest.status.in_(OPEN_STATUSES),
        # A grant past its end is no longer held, even before the reaper ends it.
        or_(AccessRequest.status != RequestStatus.ACTIVE, AccessRequest.expires_at > now))
    if ignore_request_id is not None:
        query = query.where(AccessRequest.id != ignore_request_id)
    return found | set(session.scalars(query))


def _permission_rules_and_rivals_query():
    mine, other = aliased(ConflictSetMember), aliased(ConflictSetMember)
    return (select(Permission, PolicyRule, other.permission_key)
            .where(Permission.key == bindparam("key"))
            .outerjoin(PolicyRule, and_(PolicyRule.permission_key == Permission.key,
                                        PolicyRule.role.in_(bindparam("roles", expanding=True)),
                                        PolicyRule.subrole.in_(bindparam("subroles",
                                                                         expanding=True))))
            .outerjoin(mine, mine.permission_key == Permission.key)
            .outerjoin(other, and_(other.set_name == mine.set_name,
                                   other.permission_key != Permission.key)))


# Built once: building it (two aliases, three joins) and its cache key cost ~2 ms of CPU per
# request, more than sending it (bench/write_cpu.py).
PERMISSION_RULES_AND_RIVALS = _permission_rules_and_rivals_query()


def permission_and_rivals(session: Session, key: str, subject: Subject,
                          ) -> tuple[Permission | None, list[Rule], set[str]]:
    """Load a permission, the subject's candidate rules of it and the other permissions of its
    sets in one query.

    Why one: creating a request has a pinned statement count (tests/test_query_counts.py), and
    it loads the permission anyway; the rules (the index look-up of `candidate_rules`) and the
    rivals ride along as outer joins (a few rows: rules x rivals, each kept once).
    """
    rows = session.execute(PERMISSION_RULES_AND_RIVALS, {
        "key": key, "roles": [subject.role, WILDCARD],
        "subroles": [subject.subrole, WILDCARD]}).all()
    if not rows:
        return None, [], set()
    rules = {row.id: as_rule(row) for _, row, _ in rows if row is not None}
    return rows[0][0], list(rules.values()), {rival for _, _, rival in rows if rival is not None}


def refuse_conflicts(session: Session, *, requester_id: str, permission_key: str, now: datetime,
                     ignore_request_id: str | None = None,
                     known_rivals: Iterable[str] | None = None) -> None:
    """Raise ConflictingPermission (409) if the requester holds or waits for a rival permission.

    Call it inside the unit of work that then inserts or grants: for a permission in some set
    it write-locks the requester's row, which serialises that person's conflicting requests
    until the commit. `ignore_request_id` is the request being decided (approve, retry, extend);
    `known_rivals`, from `permission_and_rivals`, saves the look-up.
    """
    others = set(known_rivals) if known_rivals is not None else \
        set().union(*rivals(session, [permission_key]).get(permission_key, {}).values())
    if not others:
        return
    subject = lock_requester(session, requester_id)
    found = held_or_waiting(session, subject, others, now=now, ignore_request_id=ignore_request_id)
    if found:
        raise ConflictingPermission(permission_key, found)


def lock_requester(session: Session, requester_id: str) -> Subject:
    """Write-lock the requester's row until the commit and return them as a Subject.

    A no-op UPDATE rather than SELECT ... FOR UPDATE: on SQLite only a write takes the
    database's write lock (FOR UPDATE is ignored there), on PostgreSQL it locks the one row.
    """
    session.execute(update(User).where(User.id == requester_id).values(id=User.id)
                    .execution_options(synchronize_session=False))
    user = session.execute(select(User.id, User.username, User.role, User.subrole, User.kind)
                           .where(User.id == requester_id)).one()
    return Subject(*user)


def blocked_by(session: Session, subject: Subject, keys: Iterable[str], *,
               now: datetime) -> dict[str, list[str]]:
    """Return, per key, the rival permissions the subject holds or waits for (or [])."""
    keys = list(keys)
    sets = rivals(session, keys)
    others = {key: set().union(*by_set.values()) for key, by_set in sets.items()}
    mine = held_or_waiting(session, subject, set().union(*others.values()), now=now)
    return {key: sorted(others.get(key, set()) & mine) for key in keys}


def explain_conflicts(session: Session, subject: Subject, permission: str, *,
                      now: datetime) -> list[dict]:
    """Name each set the permission is in, its other permissions and which of them block it."""
    sets = rivals(session, [permission]).get(permission, {})
    mine = held_or_waiting(session, subject, set().union(*sets.values()), now=now)
    return [{"name": name, "permissions": sorted(others | {permission}),
             "blocked_by": sorted(others & mine)} for name, others in sorted(sets.items())]


@contextmanager
def refusals_audited(session: Session, *, stage: str, actor: str, target: str | None,
                     origin: audit.Origin, now: datetime) -> Iterator[None]:
    """Wrap a unit of work: a conflict refusal raised inside is audited and counted, then re-raised.

    The refused unit of work has rolled back by then, so the event gets a transaction of its own.
    """
    try:
        yield
    except ConflictingPermission as refusal:
        with unit_of_work(session):
            audit.record(session, action=AuditAction.REQUEST_REFUSED_CONFLICT, actor=actor,
                         target=target, origin=origin, now=now,
                         details={"permission": refusal.permission, "stage": stage,
                                  "conflicts_with": refusal.conflicts_with})
        metrics.count_conflict_refusal(stage)
        raise
