"""Which of a few permissions a user holds now, in one statement: an actor's powers.

Why apart from `holdings.holding`: every decision on a request (approve, deny, cancel, revoke,
retry, extend, review) asks whether its caller holds security-api.admin and security-api.audit.
Asked one permission at a time that was six statements per call (the permission, its rules,
an active grant, twice). Here the permissions, the caller's candidate rules and whether an
unexpired grant exists come back together; the decision itself is the same policy engine's,
with the same rules as `holdings.holding` (a service account never administers, and never holds
anything by a grant).
"""
from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from sqlalchemy import and_, exists, select
from sqlalchemy.orm import Session

from security_api.access.grants import ADMIN_PERMISSION, Subject, as_rule
from security_api.access.policy import WILDCARD, decide
from security_api.enums import PolicyMode, RequestStatus, UserKind
from security_api.models import AccessRequest, Permission, PolicyRule


def held(session: Session, subject: Subject, keys: Iterable[str], *, now: datetime) -> set[str]:
    """Return which of `keys` the subject holds now: standing, or an active unexpired grant."""
    keys = sorted(set(keys))
    if not keys:
        return set()
    # Time decides, not the reaper: a grant past its end is not held (as holdings.holding).
    granted = exists().where(AccessRequest.requester_id == subject.id,
                             AccessRequest.permission_key == Permission.key,
                             AccessRequest.status == RequestStatus.ACTIVE,
                             AccessRequest.expires_at > now)
    rows = session.execute(
        select(Permission.key, Permission.max_duration_minutes, granted.label("granted"),
               PolicyRule)
        .outerjoin(PolicyRule, and_(PolicyRule.permission_key == Permission.key,
                                    PolicyRule.role.in_([subject.role, WILDCARD]),
                                    PolicyRule.subrole.in_([subject.subrole, WILDCARD])))
        .where(Permission.key.in_(keys))).all()
    found: dict[str, tuple[int, bool, list]] = {}
    for key, max_minutes, has_grant, rule in rows:
        entry = found.setdefault(key, (max_minutes, bool(has_grant), []))
        if rule is not None:
            entry[2].append(as_rule(rule))
    holds = set()
    for key, (max_minutes, has_grant, rules) in found.items():
        if subject.kind == UserKind.SERVICE and key == ADMIN_PERMISSION:
            continue  # a service account never administers, whatever the rules say
        standing = decide(role=subject.role, subrole=subject.subrole, permission=key,
                          permission_max_minutes=max_minutes,
                          candidates=rules).mode == PolicyMode.STANDING
        if standing or (has_grant and subject.kind != UserKind.SERVICE):
            holds.add(key)
    return holds
