"""Approvals from Slack, end to end: posted on pending, decided by a signed button, updated.

Against a local fake Slack Web API (tests/fake_slack.py); interaction bodies are signed as
Slack signs them (tests/slack_kit.py). The background deliverer sends the outbox after each
commit: the tests wait for the fake to record what they expect.
"""
from __future__ import annotations

import json

import pytest
from sqlalchemy import select

from security_api.models import Approval, AuditEvent, SlackMessage, User
from tests.conftest import bearer
from tests.fake_slack import fake_slack
from tests.slack_kit import CHANNEL, IDS, TOKEN, link, press, slack_settings, world
from tests.test_announce import wait_for


@pytest.fixture
def fake():
    with fake_slack(TOKEN) as server:
        yield server


@pytest.fixture
def app(make_app, fake):
    return make_app(**slack_settings(fake))


@pytest.fixture
def people(app, make_user, login_as):
    alice = make_user("alice")
    lead = make_user("lead", role="security", subrole="lead")
    make_user("bob", role="developer", subrole="frontend")
    world(app)
    link(app, alice=IDS["alice"], lead=IDS["lead"], bob=IDS["bob"])
    return {"alice": bearer(login_as(alice)["token"]), "lead": bearer(login_as(lead)["token"])}


def _ask(client, headers, justification="read the orders table") -> str:
    response = client.post("/v1/requests", headers=headers, json={
        "permission": "db", "justification": justification, "duration_minutes": 30})
    assert response.status_code == 201, response.json
    return response.json["request"]["id"]


def _status(client, headers, request_id) -> str:
    return client.get(f"/v1/requests/{request_id}", headers=headers).json["request"]["status"]


def _buttons(body: dict) -> list[dict]:
    return [e for b in body["blocks"] if b["type"] == "actions" for e in b["elements"]]


def _posted_ts(db_session, request_id) -> str | None:
    db_session.expire_all()
    return db_session.scalar(select(SlackMessage.ts).where(SlackMessage.request_id == request_id))


def _slack_audit(db_session) -> list[dict]:
    db_session.expire_all()
    rows = db_session.scalars(select(AuditEvent).where(AuditEvent.action == "slack.interaction")
                              .order_by(AuditEvent.seq))
    return [{"actor": r.actor, "target": r.target, **json.loads(r.details)} for r in rows]


def test_pending_request_is_posted_with_buttons_then_approved_from_slack(
        app, client, people, fake, db_session):
    request_id = _ask(client, people["alice"], justification="<!channel> & <http://x|y>")
    posted = wait_for(lambda: fake.done("chat.postMessage"), what="chat.postMessage")
    assert len(posted) == 1 and posted[0]["channel"] == CHANNEL
    assert {c["authorization"] for c in fake.calls} == {f"Bearer {TOKEN}"}
    assert [(b["action_id"], b["value"]) for b in _buttons(posted[0])] == [
        ("approve", request_id), ("deny", request_id)]
    section = posted[0]["blocks"][0]["text"]["text"]
    assert "&lt;!channel&gt; &amp; &lt;http://x|y&gt;" in section and "<!channel>" not in section
    ts = wait_for(lambda: _posted_ts(db_session, request_id), what="the recorded ts")
    assert ts in fake.messages

    answer = press(client, user=IDS["lead"], request_id=request_id)
    assert answer.status_code == 200, answer.json
    assert answer.json["response_type"] == "ephemeral" and "approved" in answer.json["text"]
    assert _status(client, people["alice"], request_id) == "active"
    approval = db_session.scalar(select(Approval).where(Approval.request_id == request_id))
    assert approval.comment == "via Slack"
    assert _slack_audit(db_session) == [{"actor": "lead", "target": request_id,
                                         "origin": "slack", "outcome": "approved",
                                         "action": "approve", "slack_user_id": IDS["lead"]}]
    final = wait_for(lambda: [u for u in fake.done("chat.update") if "approved*" in
                              u["blocks"][0]["text"]["text"]], what="the final chat.update")
    assert final[-1]["ts"] == ts and final[-1]["channel"] == CHANNEL
    assert _buttons(final[-1]) == []  # decided: no buttons left
    assert len(fake.done("chat.postMessage")) == 1


def test_deny_from_slack_and_cancel_update_the_message(app, client, people, fake):
    denied_id = _ask(client, people["alice"])
    wait_for(lambda: fake.done("chat.postMessage"))
    answer = press(client, user=IDS["lead"], request_id=denied_id, action="deny")
    assert answer.status_code == 200 and "denied" in answer.json["text"]
    assert _status(client, people["alice"], denied_id) == "denied"
    wait_for(lambda: any("denied*" in u["blocks"][0]["text"]["text"]
                         for u in fake.done("chat.update")), what="the denied update")

    cancelled_id = _ask(client, people["alice"])
    wait_for(lambda: len(fake.done("chat.postMessage")) == 2)
    assert client.post(f"/v1/requests/{cancelled_id}/cancel", headers=people["alice"],
                       json={}).status_code == 200
    wait_for(lambda: any("cancelled*" in u["blocks"][0]["text"]["text"]
                         for u in fake.done("chat.update")), what="the cancelled update")


def test_quorum_of_two_keeps_the_buttons_after_the_first_approval(
        app, client, make_user, login_as, fake):
    alice = make_user("alice")
    make_user("lead", role="security", subrole="lead")
    make_user("lead2", role="security", subrole="lead")
    world(app, approvals_required=2)
    link(app, lead=IDS["lead"], lead2=IDS["lead2"])
    headers = bearer(login_as(alice)["token"])
    request_id = _ask(client, headers)
    wait_for(lambda: fake.done("chat.postMessage"))
    assert press(client, user=IDS["lead"], request_id=request_id).status_code == 200
    assert _status(client, headers, request_id) == "pending"
    update = wait_for(lambda: [u for u in fake.done("chat.update")
                               if "Approvals: 1 of 2" in u["blocks"][0]["text"]["text"]])
    assert len(_buttons(update[-1])) == 2
    # The same approver again: one decision per person, refused, still pending.
    again = press(client, user=IDS["lead"], request_id=request_id)
    assert "already decided" in again.json["text"]
    assert press(client, user=IDS["lead2"], request_id=request_id).status_code == 200
    assert _status(client, headers, request_id) == "active"


@pytest.mark.parametrize(("presser", "expected"), [
    ("alice", "You cannot decide your own request."),  # separation of duties
    ("bob", "Not done: No such request."),  # not an approver: the API's 404, as text
    ("UNOBODY01", "not linked"),  # a Slack member mapped to no account
])
def test_refused_presses_change_nothing(app, client, people, fake, db_session, presser, expected):
    request_id = _ask(client, people["alice"])
    answer = press(client, user=IDS.get(presser, presser), request_id=request_id)
    assert answer.status_code == 200
    assert expected in answer.json["text"]
    assert _status(client, people["alice"], request_id) == "pending"
    assert db_session.scalar(select(Approval).where(Approval.request_id == request_id)) is None
    outcome = _slack_audit(db_session)[-1]["outcome"]
    assert outcome == "unmapped" if presser.startswith("UNOBODY") else outcome.startswith("refused:")
    # Slack shows nothing of the HTTP answer: the presser alone is told in the channel.
    told = wait_for(lambda: fake.done("chat.postEphemeral"), what="chat.postEphemeral")
    assert told == [{"channel": CHANNEL, "user": IDS.get(presser, presser),
                     "text": answer.json["text"]}]


def test_an_inactive_account_is_not_mapped(app, client, people, db_session):
    request_id = _ask(client, people["alice"])
    lead = db_session.scalar(select(User).where(User.username == "lead"))
    lead.active = False  # through the ORM: the principal cache's hooks register the change
    db_session.commit()
    answer = press(client, user=IDS["lead"], request_id=request_id)
    assert "not linked" in answer.json["text"]
    assert _status(client, people["alice"], request_id) == "pending"
