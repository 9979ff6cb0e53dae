"""The interactions route refuses anything Slack did not sign just now, once: 401, nothing changes.

Signatures are made exactly as Slack documents (slack_signature.sign, pinned below to the
worked example of Slack's "Verifying requests from Slack" page).
"""
from __future__ import annotations

import threading
import time

import pytest
from sqlalchemy import func, select

from security_api.integrations import slack_signature
from security_api.models import Approval, AuditEvent, Permission, SlackInteraction
from tests.conftest import bearer
from tests.fake_slack import fake_slack
from tests.slack_kit import IDS, TOKEN, URL, headers_for, link, press, signed_body, slack_settings, world

# Slack's worked example ("Verifying requests from Slack"): a slash command's body, signed.
EXAMPLE_SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
EXAMPLE_TIMESTAMP = "1531420618"
EXAMPLE_BODY = (
    b"token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&"
    b"channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&"
    b"command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands"
    b"%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015."
    b"47445629121.803a0bc887a14d10d2c447fce8b6703c")
EXAMPLE_SIGNATURE = "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503"


def test_signature_reproduces_slacks_worked_example():
    assert slack_signature.sign(EXAMPLE_SECRET, EXAMPLE_TIMESTAMP, EXAMPLE_BODY) == EXAMPLE_SIGNATURE
    slack_signature.verify(EXAMPLE_SECRET, timestamp=EXAMPLE_TIMESTAMP,
                           signature=EXAMPLE_SIGNATURE, body=EXAMPLE_BODY,
                           now=int(EXAMPLE_TIMESTAMP) + 299)


@pytest.mark.parametrize(("timestamp", "signature", "body", "now", "why"), [
    (EXAMPLE_TIMESTAMP, EXAMPLE_SIGNATURE, EXAMPLE_BODY + b"&x=1", 1531420618, "does not match"),
    (EXAMPLE_TIMESTAMP, EXAMPLE_SIGNATURE, EXAMPLE_BODY, 1531420618 + 301, "window"),
    (EXAMPLE_TIMESTAMP, EXAMPLE_SIGNATURE, EXAMPLE_BODY, 1531420618 - 301, "window"),
    ("+1531420618", EXAMPLE_SIGNATURE, EXAMPLE_BODY, 1531420618, "not a Unix time"),
    ("1531420618.5", EXAMPLE_SIGNATURE, EXAMPLE_BODY, 1531420618, "not a Unix time"),
    (EXAMPLE_TIMESTAMP, EXAMPLE_SIGNATURE.upper(), EXAMPLE_BODY, 1531420618, "does not match"),
    (EXAMPLE_TIMESTAMP, "v0=é", EXAMPLE_BODY, 1531420618, "malformed"),
    (EXAMPLE_TIMESTAMP, None, EXAMPLE_BODY, 1531420618, "missing"),
])
def test_signature_refusals(timestamp, signature, body, now, why):
    with pytest.raises(slack_signature.SignatureRefused, match=why):
        slack_signature.verify(EXAMPLE_SECRET, timestamp=timestamp, signature=signature,
                               body=body, now=now)


@pytest.fixture
def fake():
    with fake_slack(TOKEN) as server:
        yield server


@pytest.fixture
def app(make_app, fake):
    return make_app(**slack_settings(fake))


@pytest.fixture
def pending(app, client, make_user, login_as) -> str:
    """A pending request of alice's for `db`, which lead (linked to Slack) may approve."""
    alice = make_user("alice")
    make_user("lead", role="security", subrole="lead")
    world(app)
    link(app, lead=IDS["lead"], alice=IDS["alice"])
    response = client.post("/v1/requests", headers=bearer(login_as(alice)["token"]),
                           json={"permission": "db", "justification": "x", "duration_minutes": 5})
    return response.json["request"]["id"]


def _unchanged(db_session, request_id) -> bool:
    db_session.expire_all()
    approvals = db_session.scalar(select(func.count()).select_from(Approval)
                                  .where(Approval.request_id == request_id))
    audited = db_session.scalar(select(func.count()).select_from(AuditEvent)
                                .where(AuditEvent.action == "slack.interaction"))
    return approvals == 0 and audited == 0


def _now() -> int:
    return int(time.time())


@pytest.mark.parametrize("attack", [
    "bad_signature", "other_secret", "old_timestamp", "future_timestamp", "no_signature",
    "no_timestamp", "no_headers", "body_changed",
])
def test_unsigned_or_stale_presses_are_401_and_change_nothing(client, pending, db_session, attack):
    body = signed_body(user=IDS["lead"], request_id=pending)
    headers = {
        "bad_signature": {**headers_for(body), "X-Slack-Signature": "v0=" + "0" * 64},
        "other_secret": headers_for(body, secret="another-secret-of-some-length-1234567"),
        "old_timestamp": headers_for(body, timestamp=_now() - 360),
        "future_timestamp": headers_for(body, timestamp=_now() + 360),  # a minute past the window
        "no_signature": {k: v for k, v in headers_for(body).items() if k != "X-Slack-Signature"},
        "no_timestamp": {k: v for k, v in headers_for(body).items()
                         if k != "X-Slack-Request-Timestamp"},
        "no_headers": {"Content-Type": "application/x-www-form-urlencoded"},
        "body_changed": headers_for(body),
    }[attack]
    sent = body.replace(b"approve", b"deny") if attack == "body_changed" else body
    response = client.post(URL, data=sent, headers=headers)
    assert response.status_code == 401
    assert response.json["error"] == "invalid_slack_signature"
    assert _unchanged(db_session, pending)


def test_a_replayed_payload_is_401_and_acts_once(client, pending, db_session):
    body = signed_body(user=IDS["lead"], request_id=pending, action="deny")
    headers = headers_for(body)
    assert client.post(URL, data=body, headers=headers).status_code == 200
    replay = client.post(URL, data=body, headers=headers)
    assert replay.status_code == 401 and replay.json["error"] == "invalid_slack_signature"
    db_session.expire_all()
    assert db_session.scalar(select(func.count()).select_from(AuditEvent)
                             .where(AuditEvent.action == "slack.interaction")) == 1


def test_a_replay_racing_in_two_threads_acts_once(app, pending, db_session):
    body = signed_body(user=IDS["lead"], request_id=pending)
    headers = headers_for(body)
    statuses, start = [], threading.Barrier(2)

    def send():
        with app.test_client() as own_client:
            start.wait()
            statuses.append(own_client.post(URL, data=body, headers=headers).status_code)

    threads = [threading.Thread(target=send) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(statuses) == [200, 401]
    db_session.expire_all()
    assert db_session.scalar(select(func.count()).select_from(SlackInteraction)) == 1
    assert db_session.scalar(select(func.count()).select_from(Approval)
                             .where(Approval.request_id == pending)) == 1


@pytest.mark.parametrize(("body", "problem"), [
    (b"payload=not-json", "not JSON"),
    (b"nothing=here", "exactly one"),
    (b"payload=%7B%7D&payload=%7B%7D", "exactly one"),
    (b"payload=%5B1%5D", "not a JSON object"),
    (b"payload=" + b"%5B" * 40 + b"%5D" * 40, "too deep"),
    (b"payload=%7B%22type%22%3A%22block_actions%22%7D", "user"),
    (b"\xff\xfe", "UTF-8"),
])
def test_a_signed_body_that_is_not_an_interaction_is_400(client, pending, db_session, body, problem):
    response = client.post(URL, data=body, headers=headers_for(body))
    assert response.status_code == 400, response.json
    assert response.json["error"] == "bad_payload" and problem in response.json["message"]
    assert _unchanged(db_session, pending)


def test_an_oversized_body_is_413_before_anything(client, pending, db_session):
    body = b"payload=" + b"a" * (64 * 1024)
    response = client.post(URL, data=body, headers=headers_for(body))
    assert response.status_code == 413
    assert _unchanged(db_session, pending)


def test_other_interactions_are_answered_and_ignored(client, pending, db_session):
    body = signed_body(user=IDS["lead"], request_id=pending, action="approve",
                       kind="view_submission")
    response = client.post(URL, data=body, headers=headers_for(body))
    assert response.status_code == 200 and "Nothing to do" in response.json["text"]
    assert db_session.scalar(select(func.count()).select_from(Approval)) == 0


def test_without_a_signing_secret_every_press_is_401(make_app, fake, make_user):
    app = make_app(**{**slack_settings(fake), "slack_signing_secret": ""})
    body = signed_body(user=IDS["lead"], request_id="0" * 36)
    response = app.test_client().post(URL, data=body, headers=headers_for(body))
    assert response.status_code == 401


@pytest.mark.skipif(not hasattr(Permission, "step_up"), reason="needs the stepup branch")
def test_a_step_up_permission_answers_with_the_portal_link(client, pending, db_session):
    db_session.query(Permission).filter(Permission.key == "db").update({"step_up": True})
    db_session.commit()
    response = press(client, user=IDS["lead"], request_id=pending)
    assert response.status_code == 200
    assert f"https://access.example.com/portal/requests/{pending}" in response.json["text"]
    db_session.expire_all()
    assert db_session.scalar(select(func.count()).select_from(Approval)) == 0
