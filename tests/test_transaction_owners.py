"""One owner per transaction: what a failed operation leaves behind, driven through the domain.

A failed sign-in is counted and audited in a unit of work of its own (record_failed_attempt),
after the operation that failed has ended its own transaction: the caller's uncommitted work
is dropped, the failure's record is not. Refused refreshes are committed by rotate alone.
"""
from __future__ import annotations

import json

import pytest
from sqlalchemy import select

from security_api import audit
from security_api.accounts import sessions, signin, signin_attempts
from security_api.clock import utcnow
from security_api.enums import AuditAction, FailureReason
from security_api.errors import Unauthenticated
from security_api.models import AuditEvent, RefreshFamily, User

ORIGIN = audit.Origin(ip="192.0.2.7", request_id="owners-test")


@pytest.fixture
def services(app):
    return app.extensions["security_api"]


def _actions(services, actor: str) -> list[str]:
    with services.session_factory() as session:
        return list(session.scalars(select(AuditEvent.action).where(AuditEvent.actor == actor)
                                    .order_by(AuditEvent.seq)))


def _wrong_password_sign_in(session, services, username: str) -> None:
    signin.sign_in(session, services, username=username, password="not the password",
                   totp_code=None, recovery_code=None, origin=ORIGIN, now=utcnow())


def test_failed_sign_in_is_recorded_apart_from_the_callers_dropped_work(services, make_user):
    alice = make_user("alice")
    with services.session_factory() as session:
        audit.record(session, action="test.uncommitted", actor="alice", target=None,
                     origin=ORIGIN, now=utcnow())
        with pytest.raises(Unauthenticated):
            _wrong_password_sign_in(session, services, alice.username)
        assert not session.in_transaction()
    assert _actions(services, "alice")[-1:] == [AuditAction.LOGIN_FAILED]
    assert "test.uncommitted" not in _actions(services, "alice")
    with services.session_factory() as session:
        assert audit.verify_chain(session).ok


def test_fail_writes_nothing_until_the_attempt_is_settled(services, make_user):
    make_user("bob")
    attempt = signin_attempts.Attempt(services, username="bob", purpose="login", origin=ORIGIN,
                             now=utcnow())
    error = attempt.fail(user=None, reason=FailureReason.UNKNOWN_USER)
    assert isinstance(error, Unauthenticated)
    assert AuditAction.LOGIN_FAILED not in _actions(services, "bob")
    attempt.settle()
    attempt.settle()  # settling twice counts once
    assert _actions(services, "bob").count(AuditAction.LOGIN_FAILED) == 1


def test_failures_lock_through_the_separate_unit_of_work(services, make_user):
    carol = make_user("carol")
    threshold = services.settings.lockout_threshold
    for _ in range(threshold):
        with services.session_factory() as session, pytest.raises(Unauthenticated):
            _wrong_password_sign_in(session, services, carol.username)
    actions = _actions(services, "carol")
    assert actions.count(AuditAction.LOGIN_FAILED) == threshold
    assert actions.count(AuditAction.LOGIN_LOCKED) == 1
    locked = [json.loads(d) for d in _details(services, AuditAction.LOGIN_LOCKED, "carol")]
    assert locked == [{"seconds": services.settings.lockout_seconds, "purpose": "login"}]


def _details(services, action: str, actor: str) -> list[str]:
    with services.session_factory() as session:
        return list(session.scalars(select(AuditEvent.details).where(
            AuditEvent.action == action, AuditEvent.actor == actor)))


def test_reused_refresh_token_commits_revocation_and_refusal(services, make_user):
    dave = make_user("dave", totp=False, kind="service")
    with services.session_factory() as session:
        user = session.get(User, dave.id)
        issued = sessions.start_session(session, services, user=user, now=utcnow())
        session.commit()
        sessions.rotate(session, services, refresh_token=issued.refresh_token, origin=ORIGIN,
                        now=utcnow())
        with pytest.raises(Unauthenticated) as refused:
            sessions.rotate(session, services, refresh_token=issued.refresh_token,
                            origin=ORIGIN, now=utcnow())
        assert refused.value.code == "refresh_token_reused"
        assert not session.in_transaction()
    with services.session_factory() as session:
        family = session.get(RefreshFamily, issued.claims["sid"])
        assert family.revoked_reason == "refresh_reuse"
    assert _actions(services, "dave")[-2:] == [AuditAction.REFRESH_REUSE_DETECTED,
                                               AuditAction.TOKEN_REFRESH_REFUSED]
