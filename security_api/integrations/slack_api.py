"""Calls to Slack's Web API (chat.postMessage, chat.update) with the bot token.

What a failure means for the outbox: `SlackUnavailable` is tried again with back-off (Slack
down, rate limited, or a setting an operator can fix: a revoked token, a bot not invited to
the channel); `SlackRefusedForGood` ends the attempt as done, since sending the same call again
cannot succeed (the message was deleted, or Slack refuses its content). Errors name Slack's
error code or an exception class, never the token.
"""
from __future__ import annotations

import json

import requests

from security_api.settings import Settings

# Slack's `error` codes after which the very same call can never succeed.
UNRECOVERABLE = frozenset({
    "message_not_found", "cant_update_message", "edit_window_closed", "msg_too_long",
    "invalid_blocks", "invalid_blocks_format", "no_text", "invalid_arguments",
    "too_many_attachments", "is_archived", "user_not_in_channel",
})
MAX_ANSWER_BYTES = 64 * 1024


class SlackUnavailable(Exception):
    """The call did not go through this time; the outbox tries again later."""


class SlackRefusedForGood(Exception):
    """Slack refused the call in a way no retry can change."""


def call(settings: Settings, method: str, body: dict) -> dict:
    """POST one Web API method as JSON; return Slack's answer when it says `ok: true`."""
    url = f"{settings.slack_api_url.rstrip('/')}/{method}"
    headers = {"Authorization": f"Bearer {settings.slack_bot_token}",
               "Content-Type": "application/json; charset=utf-8"}
    try:
        with requests.post(url, json=body, headers=headers, allow_redirects=False,
                           timeout=settings.provisioner_timeout_seconds, stream=True) as response:
            status = response.status_code
            raw = response.raw.read(MAX_ANSWER_BYTES + 1, decode_content=True) \
                if 200 <= status < 300 else b""
    except requests.RequestException as exc:
        raise SlackUnavailable(f"{method}: {type(exc).__name__}") from None
    if not 200 <= status < 300:
        raise SlackUnavailable(f"{method}: HTTP {status}")
    answer = _parsed(raw)
    if answer.get("ok") is True:
        return answer
    error = str(answer.get("error") or "no_error_code")[:80]
    if error in UNRECOVERABLE:
        raise SlackRefusedForGood(f"{method}: {error}")
    raise SlackUnavailable(f"{method}: {error}")


def post_message(settings: Settings, *, text: str, blocks: list[dict]) -> tuple[str, str]:
    """Post to SLACK_CHANNEL; return (channel id, message ts) to update the message later."""
    answer = call(settings, "chat.postMessage",
                  {"channel": settings.slack_channel, "text": text, "blocks": blocks})
    channel, ts = answer.get("channel"), answer.get("ts")
    if not isinstance(channel, str) or not isinstance(ts, str) or not channel or not ts:
        raise SlackUnavailable("chat.postMessage: answer without channel or ts")
    return channel[:64], ts[:64]


def update_message(settings: Settings, *, channel: str, ts: str, text: str,
                   blocks: list[dict]) -> None:
    """Replace the text and blocks of a message the bot posted."""
    call(settings, "chat.update", {"channel": channel, "ts": ts, "text": text, "blocks": blocks})


def post_ephemeral(settings: Settings, *, channel: str, user: str, text: str) -> None:
    """Show `text` to one member in a channel, and to nobody else."""
    call(settings, "chat.postEphemeral", {"channel": channel, "user": user, "text": text})


def _parsed(raw: bytes) -> dict:
    if len(raw) > MAX_ANSWER_BYTES:
        raise SlackUnavailable("answer too large")
    try:
        answer = json.loads(raw)
    except ValueError:
        raise SlackUnavailable("answer is not JSON") from None
    if not isinstance(answer, dict):
        raise SlackUnavailable("answer is not a JSON object")
    return answer
