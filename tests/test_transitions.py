"""The request state machine's table and its one `transition()` (real database, no mocks)."""
from __future__ import annotations

import pytest

from security_api import audit
from security_api.access.catalog import ensure_permission, ensure_rule
from security_api.access.transitions import MOVES, SAME, Event, move_for, transition
from security_api.clock import utcnow
from security_api.enums import PolicyMode, ProvisioningState, RequestStatus
from security_api.errors import Conflict
from security_api.models import AccessRequest
from tests.conftest import bearer


@pytest.fixture
def active_id(app, client, make_user, login_as, db_session):
    """The id of an active grant (auto rule, provisioner `none`)."""
    services = app.extensions["security_api"]
    person = make_user("tr-person")  # first: it brings its role, which the rule names
    ensure_permission(db_session, key="tr-perm", name="tr-perm", max_duration_minutes=60,
                      settings=services.settings, actor="test", origin=audit.Origin(),
                      now=utcnow())
    ensure_rule(db_session, permission="tr-perm", role="developer", subrole="backend",
                mode=PolicyMode.AUTO, actor="test", origin=audit.Origin(), now=utcnow())
    db_session.commit()
    headers = bearer(login_as(person)["token"])
    response = client.post("/v1/requests", headers=headers,
                           json={"permission": "tr-perm", "justification": "table"})
    assert response.status_code == 201 and response.json["request"]["status"] == "active"
    return response.json["request"]["id"]


def _row(db_session, request_id: str) -> AccessRequest:
    return db_session.get(AccessRequest, request_id, populate_existing=True)


def test_an_illegal_move_raises_its_refusal_and_changes_nothing(db_session, active_id):
    with pytest.raises(Conflict) as refused:
        transition(db_session, active_id, event=Event.CANCEL, decided_at=utcnow())
    assert refused.value.code == "request_not_pending"
    db_session.rollback()
    assert _row(db_session, active_id).status == RequestStatus.ACTIVE


def test_of_two_racers_only_the_first_wins(db_session, active_id):
    now = utcnow()
    assert transition(db_session, active_id, event=Event.EXPIRE, ended_at=now,
                      provisioning_started_at=now) is True
    # The second finds the row no longer active: no refusal on this event, just "lost".
    assert transition(db_session, active_id, event=Event.EXPIRE, ended_at=now,
                      provisioning_started_at=now) is False
    db_session.commit()
    row = _row(db_session, active_id)
    assert row.status == RequestStatus.EXPIRED
    assert row.provisioning_state == ProvisioningState.REVOKING  # the move owes a revoke


def test_the_revoke_outcome_moves_the_provisioning_column(db_session, active_id):
    now = utcnow()
    transition(db_session, active_id, event=Event.REVOKE, ended_at=now,
               provisioning_started_at=now)
    assert transition(db_session, active_id, event=Event.REVOKE_FAILED) is True
    assert _row(db_session, active_id).provisioning_state == ProvisioningState.REVOKE_FAILED
    assert transition(db_session, active_id, event=Event.REVOKE_FINISHED) is True
    assert transition(db_session, active_id, event=Event.REVOKE_FINISHED) is False
    db_session.commit()
    row = _row(db_session, active_id)
    assert row.status == RequestStatus.REVOKED and row.provisioning_state is None


def test_an_event_leaving_several_statuses_needs_its_source():
    with pytest.raises(ValueError):
        move_for(Event.END_INELIGIBLE)
    assert move_for(Event.END_INELIGIBLE, RequestStatus.PENDING).target == RequestStatus.CANCELLED
    assert move_for(Event.END_INELIGIBLE, RequestStatus.ACTIVE).target == RequestStatus.REVOKED
    with pytest.raises(ValueError):
        move_for(Event.SUBMIT)  # a creation is an insert, drawn but never performed


def test_every_status_and_provisioning_state_is_in_the_table():
    named = {s for m in MOVES for s in m.sources} | {m.target for m in MOVES} - {SAME, None}
    assert set(RequestStatus) <= named
    assert set(ProvisioningState) <= named
