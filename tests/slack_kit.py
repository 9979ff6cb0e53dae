"""What the Slack tests share: the fake's settings, a signed button press, a small world."""
from __future__ import annotations

import json
import time
import uuid
from urllib.parse import urlencode

from security_api import audit
from security_api.access.catalog import ensure_permission, ensure_rule
from security_api.clock import utcnow
from security_api.enums import PolicyMode
from security_api.integrations.slack_signature import sign
from security_api.models import User

TOKEN = "xoxb-test-" + "7" * 24  # a made-up bot token, only ever sent to the local fake
SECRET = "test-signing-secret-" + uuid.uuid4().hex  # per run
URL = "/v1/integrations/slack/interactions"
CHANNEL = "C0TESTCHAN"
IDS = {"alice": "UALICE01", "lead": "ULEAD001", "lead2": "ULEAD002", "bob": "UBOB0001",
       "root": "UROOT001"}


def slack_settings(fake) -> dict:
    return {"slack_bot_token": TOKEN, "slack_channel": CHANNEL, "slack_signing_secret": SECRET,
            "slack_api_url": fake.url, "public_base_url": "https://access.example.com"}


def signed_body(*, user: str, request_id: str, action: str = "approve",
                kind: str = "block_actions") -> bytes:
    """A form body like Slack's: `payload` holds the block_actions JSON (unique per press)."""
    payload = {"type": kind, "user": {"id": user, "username": "someone"},
               "team": {"id": "T0TEAM01"}, "channel": {"id": "C0TESTCHAN", "name": "access"},
               "trigger_id": uuid.uuid4().hex,
               "actions": [{"action_id": action, "block_id": "security_api_decision",
                            "value": request_id, "action_ts": f"{time.time():.6f}"}]}
    return urlencode({"payload": json.dumps(payload)}).encode()


def headers_for(body: bytes, *, timestamp: int | None = None, secret: str = SECRET) -> dict:
    ts = str(int(time.time()) if timestamp is None else timestamp)
    return {"X-Slack-Request-Timestamp": ts, "X-Slack-Signature": sign(secret, ts, body),
            "Content-Type": "application/x-www-form-urlencoded"}


def press(client, *, user: str, request_id: str, action: str = "approve"):
    body = signed_body(user=user, request_id=request_id, action=action)
    return client.post(URL, data=body, headers=headers_for(body))


def world(app, *, approvals_required: int = 1) -> None:
    """Permission `db`: developers ask, security/lead approves."""
    services = app.extensions["security_api"]
    with services.session_factory() as session:
        kw = {"actor": "test", "origin": audit.Origin(), "now": utcnow()}
        ensure_permission(session, key="db", name="DB", max_duration_minutes=60,
                          settings=services.settings, **kw)
        ensure_rule(session, permission="db", role="developer", subrole="*",
                    mode=PolicyMode.APPROVAL, approvers=["security/lead"],
                    approvals_required=approvals_required, **kw)
        session.commit()


def link(app, **names: str) -> None:
    """Give users their Slack member ids straight in the database (the API is tested apart)."""
    with app.extensions["security_api"].session_factory() as session:
        for username, slack_id in names.items():
            session.query(User).filter(User.username == username).update(
                {"slack_user_id": slack_id})
        session.commit()
