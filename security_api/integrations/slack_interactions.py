"""A button pressed in Slack: check it is Slack speaking, once, then decide as the mapped account.

The order matters: the signature and timestamp over the raw body first (401, nothing read or
written otherwise); then the payload (400); then the replay store, a row per signed body under
a unique key committed before acting, so of two deliveries of one payload (two workers, two
instances) exactly one acts and the other gets 401. Then the Slack user is mapped to an
account by `slack_user_id`, and Approve and Deny call lifecycle.approve / deny, the very
operations of the API, with that account as the actor: eligibility, separation of duties,
quorum and conflicts hold as they do there, and their refusals become the answer's text.
A permission that needs step-up is never decided here: a second factor cannot be given from a
button, so the answer links to the portal. Every outcome is audited as `slack.interaction`.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from security_api import audit
from security_api.access import lifecycle
from security_api.access.grants import ADMIN_PERMISSION, Subject
from security_api.access.holdings import holding
from security_api.enums import AuditAction
from security_api.errors import ApiError, Unauthenticated
from security_api.integrations import slack_payload, slack_signature
from security_api.integrations.outbox import enqueue
from security_api.integrations.slack_messages import APPROVE, DENY, SLACK_ANSWER, portal_link
from security_api.models import AccessRequest, Permission, SlackInteraction, User
from security_api.services import Services
from security_api.unit_of_work import end_reads, unit_of_work

log = logging.getLogger(__name__)
AUDIT_PERMISSION = "security-api.audit"
# Beyond the 5-minute window either way: a payload older than this can no longer be replayed.
REPLAY_MEMORY = timedelta(seconds=2 * slack_signature.WINDOW_SECONDS + 60)
COMMENT = "via Slack"
UNMAPPED = ("Your Slack account is not linked to an active Security API account; ask an "
            "administrator to set your slack_user_id. Nothing was decided.")


@dataclass(frozen=True)
class Answer:
    """What the presser is told, and the outcome recorded in the audit log."""

    text: str
    outcome: str


def handle(session: Session, services: Services, *, raw_body: bytes, timestamp: str | None,
           signature: str | None, origin: audit.Origin, now: datetime) -> Answer:
    """Act on one signed interaction at most once; raise 401 for anything not from Slack now."""
    try:
        slack_signature.verify(services.settings.slack_signing_secret, timestamp=timestamp,
                               signature=signature, body=raw_body, now=now.timestamp())
    except slack_signature.SignatureRefused as exc:
        log.warning("Slack interaction refused: %s", exc)
        raise _refused() from None
    interaction = slack_payload.parse(raw_body)
    _remember_once(session, slack_signature.digest(timestamp, raw_body), now)
    answer, actor_name, request_id, action = _act(session, services, interaction, origin, now)
    with unit_of_work(session):
        audit.record(session, action=AuditAction.SLACK_INTERACTION, actor=actor_name,
                     target=request_id, origin=origin, now=now,
                     details={"origin": "slack", "outcome": answer.outcome, "action": action,
                              "slack_user_id": interaction.user.id})
        _tell_presser(session, services, interaction, answer)
    return answer


def _tell_presser(session: Session, services: Services, interaction: slack_payload.Interaction,
                  answer: Answer) -> None:
    """Owe the presser the answer in Slack: Slack shows nothing of a block_actions response."""
    if answer.outcome != "ignored" and interaction.channel is not None \
            and services.settings.slack_posting:
        enqueue(session, SLACK_ANSWER, {"channel": interaction.channel.id,
                                        "user": interaction.user.id, "text": answer.text})


def _refused() -> Unauthenticated:
    return Unauthenticated("The request is not signed by Slack, is not fresh, or was seen "
                           "before.", code="invalid_slack_signature")


def _remember_once(session: Session, key: str, now: datetime) -> None:
    """Claim the payload in its own commit; a second claim of the same payload is a 401."""
    try:
        with unit_of_work(session):
            session.execute(delete(SlackInteraction)
                            .where(SlackInteraction.seen_at < now - REPLAY_MEMORY))
            session.add(SlackInteraction(digest=key, seen_at=now))
            session.flush()
    except IntegrityError:
        log.warning("Slack interaction refused: payload replayed")
        raise _refused() from None


@dataclass(frozen=True)
class _Press:
    """What one button press is about, read in one go before anything is decided."""

    action: str
    request_id: str | None
    permission_key: str | None
    step_up: bool


def _act(session: Session, services: Services, interaction: slack_payload.Interaction,
         origin: audit.Origin, now: datetime) -> tuple[Answer, str | None, str | None, str | None]:
    """Return (answer, actor's username, request id, action) of the button pressed."""
    user = session.scalar(select(User).where(User.slack_user_id == interaction.user.id))
    actor = _actor(session, user, now) if user is not None and user.active else None
    press = _press(session, interaction)
    username = user.username if user is not None else None
    end_reads(session)  # reads only: the decision owns its own transaction
    if press is None:
        return Answer("Nothing to do for this interaction.", "ignored"), username, None, None
    if actor is None:
        return Answer(UNMAPPED, "unmapped"), username, press.request_id, press.action
    if press.request_id is None:
        return Answer("No such request.", "not_found"), username, None, press.action
    return _decide(session, services, actor, press, origin, now), username, press.request_id, \
        press.action


def _press(session: Session, interaction: slack_payload.Interaction) -> _Press | None:
    action = next((a for a in interaction.actions if a.action_id in (APPROVE, DENY)), None)
    if interaction.type != "block_actions" or action is None:
        return None
    request = session.get(AccessRequest, action.value) if _is_id(action.value) else None
    if request is None:
        return _Press(action.action_id, None, None, False)
    permission = session.get(Permission, request.permission_key)
    return _Press(action.action_id, request.id, request.permission_key,
                  bool(getattr(permission, "step_up", False)))


def _decide(session: Session, services: Services, actor: lifecycle.Actor, press: _Press,
            origin: audit.Origin, now: datetime) -> Answer:
    link = portal_link(services.settings.public_base_url, press.request_id)
    if press.step_up:
        return Answer(f"{press.permission_key} needs a fresh second factor: decide it in the "
                      f"portal: {link}", "step_up")
    operation = lifecycle.approve if press.action == APPROVE else lifecycle.deny
    try:
        decided = operation(session, services, request_id=press.request_id, actor=actor,
                            comment=COMMENT, origin=origin, now=now)
    except ApiError as exc:
        return Answer(f"Not done: {exc.message}", f"refused:{exc.code}")
    word = "approved" if press.action == APPROVE else "denied"
    return Answer(f"You {word} the request for {press.permission_key}; it is now "
                  f"{decided.status}. {link}", word)


def _actor(session: Session, user: User, now: datetime) -> lifecycle.Actor:
    subject = Subject(id=user.id, username=user.username, role=user.role, subrole=user.subrole,
                      kind=user.kind)
    is_admin = holding(session, subject, permission=ADMIN_PERMISSION, now=now).held
    is_auditor = holding(session, subject, permission=AUDIT_PERMISSION, now=now).held
    return lifecycle.Actor(subject, is_admin=is_admin, is_auditor=is_auditor)


def _is_id(value: str) -> bool:
    return len(value) == 36 and all(ch in "0123456789abcdef-" for ch in value)
