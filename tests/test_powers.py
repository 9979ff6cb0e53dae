"""An actor's powers in one statement (access/powers.py) decide as holdings.holding does."""
from __future__ import annotations

from datetime import timedelta

import pytest

from security_api import audit
from security_api.access import holdings, powers
from security_api.access.catalog import ensure_permission, ensure_rule
from security_api.access.grants import ADMIN_PERMISSION, Subject
from security_api.clock import utcnow
from security_api.enums import PolicyMode, RequestStatus
from security_api.models import AccessRequest, User

AUDIT = "security-api.audit"
GRANTED = "pw-granted"  # held by an active, unexpired grant
LAPSED = "pw-lapsed"  # an active grant past its end: not held, reaped or not
STANDING = "pw-standing"
UNKNOWN = "pw-no-such-permission"
KEYS = (ADMIN_PERMISSION, AUDIT, GRANTED, LAPSED, STANDING, UNKNOWN)


def _subject(session, username: str) -> Subject:
    user = session.query(User).filter_by(username=username).one()
    return Subject(user.id, user.username, user.role, user.subrole, user.kind)


def _grant(session, subject: Subject, key: str, *, expires_in: timedelta) -> None:
    now = utcnow()
    session.add(AccessRequest(requester_id=subject.id, permission_key=key, duration_minutes=60,
                              status=RequestStatus.ACTIVE, mode=PolicyMode.AUTO,
                              created_at=now, decided_at=now, expires_at=now + expires_in,
                              provisioning={}))


@pytest.fixture
def world(app, db_session, make_user):
    """A person and a service account in one role: standing rules on admin, audit and one more,
    an auto rule on two others (one granted and running, one granted and past its end)."""
    settings = app.extensions["security_api"].settings
    make_user("pw-person", role="pwrole", subrole="one")
    make_user("pw-robot", role="pwrole", subrole="one", kind="service")
    for key in (GRANTED, LAPSED, STANDING):
        ensure_permission(db_session, key=key, name=key, max_duration_minutes=60,
                          settings=settings, actor="test", origin=audit.Origin(), now=utcnow())
    for key, mode in ((ADMIN_PERMISSION, PolicyMode.STANDING), (AUDIT, PolicyMode.STANDING),
                      (STANDING, PolicyMode.STANDING), (GRANTED, PolicyMode.AUTO),
                      (LAPSED, PolicyMode.AUTO)):
        ensure_rule(db_session, permission=key, role="pwrole", subrole="*", mode=mode,
                    actor="test", origin=audit.Origin(), now=utcnow())
    db_session.commit()
    for name in ("pw-person", "pw-robot"):
        subject = _subject(db_session, name)
        _grant(db_session, subject, GRANTED, expires_in=timedelta(minutes=30))
        _grant(db_session, subject, LAPSED, expires_in=-timedelta(seconds=1))
    db_session.commit()
    return db_session


@pytest.mark.parametrize(("username", "expected"), [
    ("pw-person", {ADMIN_PERMISSION, AUDIT, GRANTED, STANDING}),
    # A service account never administers and holds nothing by a grant.
    ("pw-robot", {AUDIT, STANDING}),
])
def test_powers_are_what_holding_says_one_at_a_time(world, username, expected):
    subject = _subject(world, username)
    now = utcnow()
    found = powers.held(world, subject, KEYS, now=now)
    assert found == expected
    assert found == {key for key in KEYS
                     if holdings.holding(world, subject, permission=key, now=now).held}


def test_a_more_specific_rule_decides_as_in_the_policy_engine(world, make_user):
    # pwrole/two is named by its own rule: auto, not the role-wide standing one.
    make_user("pw-other", role="pwrole", subrole="two")
    ensure_rule(world, permission=STANDING, role="pwrole", subrole="two", mode=PolicyMode.AUTO,
                actor="test", origin=audit.Origin(), now=utcnow())
    world.commit()
    subject = _subject(world, "pw-other")
    assert powers.held(world, subject, (STANDING, AUDIT), now=utcnow()) == {AUDIT}
    assert powers.held(world, subject, (), now=utcnow()) == set()
