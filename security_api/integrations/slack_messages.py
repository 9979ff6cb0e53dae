"""What the Slack message of a request says: text and blocks, with buttons while it is pending.

Rendered from the request as it is when the message is sent, so the last update shows the
last state whatever order the updates went out in. Every value from the request passes
notify_texts.clean() and slack_escape(): a justification cannot mention @channel, forge a
link, or break the layout. The buttons' `value` is the request id, nothing else.
"""
from __future__ import annotations

from urllib.parse import quote

from security_api.integrations.notify_texts import (
    MAX_JUSTIFICATION,
    STATUS_WORDS,
    clean,
    slack_escape,
)

APPROVE, DENY = "approve", "deny"
# Outbox kinds: post the message of a new pending request; show a request's new state in it;
# tell the person who pressed a button what came of it (only they see it: chat.postEphemeral).
SLACK_POST, SLACK_UPDATE, SLACK_ANSWER = "slack.post", "slack.update", "slack.answer"
SLACK_KINDS = (SLACK_POST, SLACK_UPDATE, SLACK_ANSWER)
ACTIONS_BLOCK = "security_api_decision"
PENDING_LIKE = ("pending", "granting")  # granting: approved, being provisioned


def portal_link(base_url: str, request_id: str) -> str:
    """Return the portal page of a request (where step-up decisions are made)."""
    return f"{base_url.rstrip('/')}/portal/requests/{quote(request_id, safe='')}"


def message(request: dict, *, link: str) -> tuple[str, list[dict]]:
    """Return (fallback text, blocks) for the request's current state."""
    pending = request.get("status") == "pending"
    text = _headline(request)
    lines = [text,
             f"Justification: {_e(clean(request.get('justification'), limit=MAX_JUSTIFICATION)) or '(none)'}"]
    decisions = _decisions(request)
    if decisions:
        lines.append(f"Decisions: {decisions}")
    if pending and (request.get("approvals_required") or 1) > 1:
        approved = sum(1 for a in request.get("approvals") or [] if a.get("decision") == APPROVE)
        lines.append(f"Approvals: {approved} of {request['approvals_required']}")
    lines.append(f"<{link}|Open in the portal>")
    blocks: list[dict] = [{"type": "section", "text": {"type": "mrkdwn", "text": "\n".join(lines)}}]
    if pending:
        blocks.append(_buttons(str(request.get("id", ""))))
    return text, blocks


def _headline(request: dict) -> str:
    who = _e(clean(request.get("requester")) or "someone")
    what = _e(clean(request.get("permission")))
    minutes = _e(clean(request.get("duration_minutes")))
    status = clean(request.get("status"))
    if status in PENDING_LIKE:
        state = "pending" if status == "pending" else "approved, being granted"
    else:
        state = STATUS_WORDS.get(status, status)
    return f"*Access request {_e(state)}*: {who} requests `{what}` for {minutes} minutes"


def _decisions(request: dict) -> str:
    return ", ".join(f"{_e(clean(a.get('approver')) or 'someone')} ({_e(clean(a.get('decision')))})"
                     for a in request.get("approvals") or [] if isinstance(a, dict))


def _buttons(request_id: str) -> dict:
    return {"type": "actions", "block_id": ACTIONS_BLOCK, "elements": [
        {"type": "button", "action_id": APPROVE, "style": "primary", "value": request_id,
         "text": {"type": "plain_text", "text": "Approve"}},
        {"type": "button", "action_id": DENY, "style": "danger", "value": request_id,
         "text": {"type": "plain_text", "text": "Deny"}},
    ]}


def _e(text: str) -> str:
    return slack_escape(text)
