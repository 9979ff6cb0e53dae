"""Tell people about requests after the fact: approvers of new ones, requesters of decisions."""
from __future__ import annotations

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from .clock import utcnow
from .enums import PolicyMode, RequestStatus
from .lifecycle import approver_groups
from .models import AccessRequest, User
from .request_views import render
from .services import Services

DECIDED = {RequestStatus.ACTIVE, RequestStatus.DENIED, RequestStatus.FAILED}


def announce(session: Session, services: Services, request: AccessRequest, *,
             just_created: bool) -> None:
    """Send the notification the request's new state calls for; never raises."""
    if just_created and request.status == RequestStatus.PENDING:
        services.notifier.request_pending(_rendered(session, request),
                                          approver_emails=_approver_emails(session, request))
    elif request.status in DECIDED and (request.mode == PolicyMode.APPROVAL
                                        or request.status == RequestStatus.FAILED):
        # Auto grants need no news; decisions by people, and failures, do.
        requester = session.get(User, request.requester_id)
        services.notifier.request_decided(_rendered(session, request),
                                          requester_email=requester.email)


def _rendered(session: Session, request: AccessRequest) -> dict:
    # Rendered only when a notification goes out: most transitions send none.
    return render(session, [request], now=utcnow())[0]


def _approver_emails(session: Session, request: AccessRequest) -> list[str]:
    conditions = []
    for entry in approver_groups(session, request.id):
        role, _, subrole = entry.partition("/")
        conditions.append((User.role == role) & (User.subrole == subrole) if subrole
                          else User.role == role)
    if not conditions:
        return []
    rows = session.scalars(select(User.email).where(
        or_(*conditions), User.active.is_(True), User.email.is_not(None),
        User.id != request.requester_id))
    return sorted(set(rows))


def announce_ended(_caller_session: Session, services: Services, request_ids: list[str]) -> None:
    """Tell each requester that a request was cancelled or a grant revoked for them; never raises.

    Called after the caller committed, so it reads in a short session of its own: the caller's
    transaction is the caller's to end, and none is left open behind the notifications. (The
    first parameter is not used; it goes when lifecycle.settle_ended stops passing it.)
    """
    with services.session_factory() as session:
        for request_id in request_ids:
            request = session.get(AccessRequest, request_id)
            requester = session.get(User, request.requester_id)
            services.notifier.request_decided(_rendered(session, request),
                                              requester_email=requester.email)
