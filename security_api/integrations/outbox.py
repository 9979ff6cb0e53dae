"""The outbox: every notification is a row written in the transaction of the change it tells of.

Why a table and not a call after the commit: a call after the commit is lost when the process
dies in between, when the receiver is down, or when the change was made by a path that forgot
to call (the reaper, the CLI). A row committed with the change cannot be forgotten; it is sent
after the commit by `outbox_delivery`, retried until it goes through.

What is said is decided and rendered here, at enqueue time, from the state the transaction
sees: who the approvers are, what the request looks like. A later delivery sends exactly that.
"""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import event, or_, select
from sqlalchemy.orm import Session

from security_api.clock import utcnow
from security_api.enums import PolicyMode, RequestStatus
from security_api.integrations.notify_texts import (
    BREAK_GLASS,
    DECIDED,
    DRIFT,
    EXPIRY_WARNING,
    PENDING,
    REVIEW_OVERDUE,
    REVIEWED,
    VERIFY_FAILED,
)
from security_api.integrations.slack_messages import SLACK_KINDS
from security_api.models import AccessRequest, OutboxMessage, RequestApproverGroup, User, new_id

# PENDING: approvers, a request waits for them. DECIDED: the requester, approved, denied,
# failed, cancelled, revoked or expired. VERIFY_FAILED: the requester (and the channel), a
# read-back contradicted a grant or a revoke. DRIFT: administrators, a new drift finding
# (access/drift_findings.py). EXPIRY_WARNING: the holder of a grant that ends soon.
# BREAK_GLASS: the security team, at once, of a self-granted use; REVIEW_OVERDUE: its
# reviewers, once, when the review is late; REVIEWED: the requester, of the verdict.
# SLACK_KINDS: the Slack message of a request, posted and updated (slack_outbox,
# slack_delivery). The kinds are the notifier's: it renders each.
KINDS = (PENDING, DECIDED, VERIFY_FAILED, DRIFT, EXPIRY_WARNING, BREAK_GLASS, REVIEW_OVERDUE,
         REVIEWED, *SLACK_KINDS)
DECIDED_STATUSES = {RequestStatus.ACTIVE, RequestStatus.DENIED, RequestStatus.FAILED}
# Set on a session that wrote rows; its commit wakes the background deliverer.
WROTE_INFO = "outbox_wrote"


def enqueue(session: Session, kind: str, payload: dict, *, now: datetime | None = None) -> str:
    """Add a notification to the caller's transaction; it exists only if that commits."""
    if kind not in KINDS:
        raise ValueError(f"unknown notification kind {kind!r}")
    now = now or utcnow()
    message_id = new_id()
    session.add(OutboxMessage(id=message_id, kind=kind, payload=payload,
                              created_at=now, next_attempt_at=now, attempts=0,
                              sent_channels=[]))
    session.info[WROTE_INFO] = True
    return message_id


def request_created(session: Session, request_id: str, *,
                    inserted: AccessRequest | None = None) -> None:
    """A new request waiting for approval: tell its approvers (an auto grant needs no news).

    `inserted`: the row the caller has just flushed (nothing moved it since): not read again.
    """
    request = inserted if inserted is not None else _fresh(session, request_id)
    if request.status == RequestStatus.PENDING:
        enqueue(session, PENDING, {"request": _rendered(session, request),
                                   "recipients": _approver_emails(session, request)})


def request_decided(session: Session, request_id: str) -> None:
    """A decision or a provisioning outcome: tell the requester when people decided it, or it failed."""
    request = _fresh(session, request_id)
    if request.status in DECIDED_STATUSES and (request.mode == PolicyMode.APPROVAL
                                               or request.status == RequestStatus.FAILED):
        _tell_requester(session, request)


def grant_landed(session: Session, request_id: str, *, active: bool, mode: str) -> None:
    """A grant's outcome landed by the caller's own move (granting -> active | failed): as
    `request_decided`, without reading back the status the caller has just set."""
    if not active or mode == PolicyMode.APPROVAL:
        request_decided(session, request_id)


def requests_ended(session: Session, request_ids: list[str]) -> None:
    """Requests the system ended (expired, or cancelled/revoked for ineligibility): tell each requester."""
    for request_id in request_ids:
        _tell_requester(session, _fresh(session, request_id))


def readback_failed(session: Session, request_id: str, *, step: str, outcome: str) -> None:
    """A read-back contradicted the grant or revoke (or could not be made): tell the requester."""
    request = _fresh(session, request_id)
    email = session.scalar(select(User.email).where(User.id == request.requester_id))
    rendered = {**_rendered(session, request), "readback": {"step": step, "outcome": outcome}}
    enqueue(session, VERIFY_FAILED, {"request": rendered, "recipients": [email] if email else []})


def expiry_warning(session: Session, request_id: str) -> None:
    """A grant ends soon: tell its holder, with a link to extend it."""
    _tell_requester(session, _fresh(session, request_id), kind=EXPIRY_WARNING)


def break_glass_used(session: Session, request_id: str, *, team_emails: tuple[str, ...],
                     team_role: str) -> None:
    """A break-glass use: tell the security team (the configured addresses, the people of the
    security role) and the rule's reviewers, at once."""
    request = _fresh(session, request_id)
    team = session.scalars(select(User.email).where(
        User.role == team_role, User.active.is_(True), User.email.is_not(None),
        User.id != request.requester_id))
    recipients = set(team_emails) | set(team) | set(_approver_emails(session, request))
    enqueue(session, BREAK_GLASS, {"request": _rendered(session, request),
                                   "recipients": sorted(recipients)})


def review_overdue(session: Session, request_id: str) -> None:
    """A break-glass review is late: tell the reviewers again."""
    request = _fresh(session, request_id)
    enqueue(session, REVIEW_OVERDUE, {"request": _rendered(session, request),
                                      "recipients": _approver_emails(session, request)})


def review_recorded(session: Session, request_id: str) -> None:
    """A break-glass use was reviewed: tell the requester the verdict."""
    _tell_requester(session, _fresh(session, request_id), kind=REVIEWED)


def _tell_requester(session: Session, request: AccessRequest, *, kind: str = DECIDED) -> None:
    email = session.scalar(select(User.email).where(User.id == request.requester_id))
    enqueue(session, kind, {"request": _rendered(session, request),
                            "recipients": [email] if email else []})


def _fresh(session: Session, request_id: str) -> AccessRequest:
    # The transition was a bulk UPDATE: read the row as this transaction now sees it.
    return session.get(AccessRequest, request_id, populate_existing=True)


def _rendered(session: Session, request: AccessRequest) -> dict:
    # Imported here: rendering imports lifecycle, which imports this module.
    from security_api.access.request_views import render
    return render(session, [request], now=utcnow())[0]


def _approver_emails(session: Session, request: AccessRequest) -> list[str]:
    groups = session.execute(select(RequestApproverGroup.role, RequestApproverGroup.subrole)
                             .where(RequestApproverGroup.request_id == request.id))
    conditions = [(User.role == role) & (User.subrole == subrole) if subrole != "*"
                  else User.role == role for role, subrole in groups]
    if not conditions:
        return []
    rows = session.scalars(select(User.email).where(
        or_(*conditions), User.active.is_(True), User.email.is_not(None),
        User.id != request.requester_id))
    return sorted(set(rows))


@event.listens_for(Session, "after_transaction_end")
def _forget_unwritten(session: Session, transaction) -> None:
    # A commit's after_commit (outbox_delivery) has already taken the mark; a rollback drops it.
    if transaction.parent is None:
        session.info.pop(WROTE_INFO, None)
