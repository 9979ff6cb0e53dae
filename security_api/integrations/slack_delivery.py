"""Sending the Slack rows of the outbox: chat.postMessage once, then chat.update.

Called by outbox_delivery for the kinds `slack.post` and `slack.update`. A failure that may
pass (Slack down, rate limited, a revoked token or a bot not in the channel, or an update
whose message is not posted yet) raises DeliveryFailed: the outbox tries again with back-off.
An answer no retry can change (SlackRefusedForGood: the message was deleted, Slack refuses the
content) is logged as an error and the row counts as done.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy import update
from sqlalchemy.orm import Session

from security_api.access.request_views import render
from security_api.clock import utcnow
from security_api.integrations import slack_api
from security_api.integrations.notify import DeliveryFailed
from security_api.integrations.notify_texts import slack_escape
from security_api.integrations.slack_messages import SLACK_ANSWER, SLACK_POST, message, portal_link
from security_api.models import AccessRequest, SlackMessage
from security_api.services import Services
from security_api.unit_of_work import end_reads

log = logging.getLogger(__name__)
CHANNEL = "slack"


def deliver(services: Services, kind: str, payload: dict) -> set[str]:
    """Post or update the request's message as it is now; return the channels reached."""
    settings = services.settings
    if kind == SLACK_ANSWER and settings.slack_posting:
        return _answer(settings, payload)
    if not settings.slack_posting:
        log.warning("a Slack notification is owed but SLACK_BOT_TOKEN/SLACK_CHANNEL are unset; "
                    "dropped")
        return {CHANNEL}
    with services.session_factory() as session:
        found = _current(session, str(payload.get("request_id", "")))
    if found is None:
        return {CHANNEL}  # no message belongs to this request: nothing to show
    posted, request = found
    text, blocks = message(request, link=portal_link(settings.public_base_url, request["id"]))
    try:
        if kind == SLACK_POST:
            _post(services, posted, text, blocks)
        elif posted.ts is None:
            raise slack_api.SlackUnavailable("the message is not posted yet")
        else:
            slack_api.update_message(settings, channel=posted.channel, ts=posted.ts, text=text,
                                     blocks=blocks)
    except slack_api.SlackUnavailable as exc:
        raise DeliveryFailed(f"slack: {exc}", reached=set()) from None
    except slack_api.SlackRefusedForGood as exc:
        log.error("Slack refused a %s for request %s for good: %s", kind, request["id"], exc)
    return {CHANNEL}


def _answer(settings, payload: dict) -> set[str]:
    try:
        slack_api.post_ephemeral(settings, channel=str(payload.get("channel", "")),
                                 user=str(payload.get("user", "")),
                                 text=slack_escape(str(payload.get("text", ""))))
    except slack_api.SlackUnavailable as exc:
        raise DeliveryFailed(f"slack: {exc}", reached=set()) from None
    except slack_api.SlackRefusedForGood as exc:
        log.error("Slack refused an answer to a button press for good: %s", exc)
    return {CHANNEL}


@dataclass(frozen=True)
class _Posted:
    request_id: str
    channel: str | None
    ts: str | None


def _current(session: Session, request_id: str) -> tuple[_Posted, dict] | None:
    row = session.get(SlackMessage, request_id)
    request = session.get(AccessRequest, request_id) if row is not None else None
    if request is None:
        end_reads(session)
        return None
    posted = _Posted(row.request_id, row.channel, row.ts)
    rendered = render(session, [request], now=utcnow())[0]
    end_reads(session)  # no transaction stays open while Slack is called
    return posted, rendered


def _post(services: Services, posted: _Posted, text: str, blocks: list[dict]) -> None:
    if posted.ts is not None:
        return  # posted by an earlier attempt whose outcome was not recorded
    channel, ts = slack_api.post_message(services.settings, text=text, blocks=blocks)
    with services.session_factory() as session:
        session.execute(update(SlackMessage)
                        .where(SlackMessage.request_id == posted.request_id,
                               SlackMessage.ts.is_(None))
                        .values(channel=channel, ts=ts, posted_at=utcnow()))
        session.commit()
