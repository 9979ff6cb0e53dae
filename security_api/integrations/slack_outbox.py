"""Owing Slack a message: outbox rows written in the transaction of the change they show.

A new pending request owes a `slack.post` (and gets a `slack_messages` row, ts still empty);
every later move of that request (an approval, the decision, cancel, grant, expiry, revoke)
owes one `slack.update`. The rows carry the request id only: `slack_delivery` renders the
request as it is when it sends, so updates delivered late or out of order still end showing
the last state. Nothing is written unless the process posts to Slack (`POSTING_INFO`, set on
every session by build_services from SLACK_BOT_TOKEN and SLACK_CHANNEL).
"""
from __future__ import annotations

from sqlalchemy import event, select
from sqlalchemy.orm import Session

from security_api.integrations.outbox import enqueue
from security_api.integrations.slack_messages import SLACK_POST, SLACK_UPDATE
from security_api.models import SlackMessage

POSTING_INFO = "slack_posting"
_QUEUED_INFO = "slack_updates_queued"  # request ids owing an update in this transaction


def request_created(session: Session, request_id: str, *, pending: bool) -> None:
    """A new request: post it to the channel when it waits for approvers."""
    if not pending or not session.info.get(POSTING_INFO):
        return
    session.add(SlackMessage(request_id=request_id))
    enqueue(session, SLACK_POST, {"request_id": request_id})
    session.info.setdefault(_QUEUED_INFO, set()).add(request_id)


def request_moved(session: Session, request_id: str) -> None:
    """A request changed: update its Slack message, if it has one (once per transaction)."""
    if not session.info.get(POSTING_INFO):
        return
    queued = session.info.setdefault(_QUEUED_INFO, set())
    if request_id in queued:
        return
    posted = session.scalar(select(SlackMessage.request_id)
                            .where(SlackMessage.request_id == request_id))
    if posted is None:
        return
    queued.add(request_id)
    enqueue(session, SLACK_UPDATE, {"request_id": request_id})


@event.listens_for(Session, "after_transaction_end")
def _forget_queued(session: Session, transaction) -> None:
    # The next transaction's moves owe their own update (a rollback dropped this one's rows).
    if transaction.parent is None:
        session.info.pop(_QUEUED_INFO, None)
