"""Break-glass: a self-granted emergency grant, told to the security team at once and reviewed
after the fact by an approver of the rule.

Why a review and not an approval: in an emergency nobody waits for a quorum. The grant is made
at once (like `auto`, but with justification and step-up always required), and the people the
rule names as approvers judge it afterwards, within the rule's `review_within_minutes`:
`justified` closes it, `unjustified` revokes it at once if it still runs. A review not made in
time is notified again, once, by the reaper.

Who reviews: an eligible approver OF THE RULE (matching the rule's `approvers`, frozen on the
request), never the requester. Administrator power alone does not make a reviewer: the rule
names who judges its emergencies; an administrator can still revoke any grant at once.
"""
from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from security_api import audit, metrics
from security_api.access.break_glass_models import BreakGlassReview
from security_api.access.policy import Rule, approver_matches
from security_api.access.provisioning import finish_revoke
from security_api.access.request_actors import Actor, approver_groups, visible_request
from security_api.access.transitions import Event, transition
from security_api.clock import as_utc, isoformat
from security_api.enums import AuditAction, RequestStatus, ReviewVerdict, UserKind
from security_api.errors import Conflict, Forbidden
from security_api.installation import ADMIN_ROLE
from security_api.integrations import outbox
from security_api.models import AccessRequest
from security_api.services import Services
from security_api.unit_of_work import unit_of_work

OVERDUE_BATCH = 100


def record_use(session: Session, services: Services, *, request: AccessRequest, rule: Rule,
               requester: str, origin: audit.Origin, now: datetime) -> None:
    """In the creation's transaction: owe a review, audit the use, tell the security team."""
    due_at = now + timedelta(minutes=rule.review_within_minutes)
    session.add(BreakGlassReview(request_id=request.id, due_at=due_at, comment=""))
    session.flush()
    audit.record(session, action=AuditAction.REQUEST_BREAK_GLASS, actor=requester,
                 target=request.id, origin=origin, now=now,
                 details={"permission": request.permission_key, "rule": rule.id,
                          "duration_minutes": request.duration_minutes,
                          "review_due_at": isoformat(due_at)})
    outbox.break_glass_used(session, request.id, team_emails=services.settings.security_team_emails,
                            team_role=ADMIN_ROLE)


def is_reviewer(session: Session, request: AccessRequest, actor: Actor) -> bool:
    """Tell whether the actor may review this request: a person the rule names, not its requester."""
    subject = actor.subject
    if subject.id == request.requester_id or subject.kind != UserKind.PERSON:
        return False
    return any(approver_matches(entry, role=subject.role, subrole=subject.subrole)
               for entry in approver_groups(session, request.id))


def review(session: Session, services: Services, *, request_id: str, actor: Actor, verdict: str,
           comment: str, origin: audit.Origin, now: datetime) -> AccessRequest:
    """Record the one review of a break-glass use; `unjustified` revokes a grant still running.

    409 `not_break_glass` for any other request (said before asking who reviews),
    `already_reviewed` for a second review (of two racing reviewers exactly one wins: a
    conditional UPDATE on the review row), and `request_not_settled` while the grant is still
    being provisioned.
    """
    with unit_of_work(session):
        request = visible_request(session, request_id, actor)
        if session.get(BreakGlassReview, request.id) is None:
            raise Conflict("Only break-glass grants are reviewed.", code="not_break_glass")
        _require_reviewer(session, request, actor)
        status = _locked_status(session, request.id)
        if status == RequestStatus.GRANTING:
            # Reviewed now, an unjustified verdict could not stop the grant still landing.
            raise Conflict("The grant is still being provisioned; review it in a moment.",
                           code="request_not_settled")
        due_at = _claim_review(session, request.id, actor=actor, verdict=verdict,
                               comment=comment, now=now)
        audit.record(session, action=AuditAction.REQUEST_REVIEWED, actor=actor.subject.username,
                     target=request.id, origin=origin, now=now,
                     details={"verdict": verdict, "comment": comment,
                              "late": as_utc(due_at) < now})
        revoked = verdict == ReviewVerdict.UNJUSTIFIED and _revoke_unjustified(
            session, request.id, actor=actor, origin=origin, now=now)
        outbox.review_recorded(session, request.id)
    metrics.count_break_glass_review(verdict)
    if revoked:
        finish_revoke(session, services, request.id, origin=origin, now=now)
    return session.get(AccessRequest, request.id, populate_existing=True)


def _require_reviewer(session: Session, request: AccessRequest, actor: Actor) -> None:
    if request.requester_id == actor.subject.id:
        raise Forbidden("You cannot review your own break-glass use.", code="separation_of_duties")
    if not is_reviewer(session, request, actor):
        raise Forbidden("Only an approver of the rule can review this break-glass use.")


def _locked_status(session: Session, request_id: str) -> str:
    # The row's lock keeps a grant from landing between this read and the verdict's revoke.
    return session.scalar(select(AccessRequest.status).where(AccessRequest.id == request_id)
                          .with_for_update())


def _claim_review(session: Session, request_id: str, *, actor: Actor, verdict: str,
                  comment: str, now: datetime) -> datetime:
    """Write the verdict if none is written yet; 409 otherwise. Return the review's due time."""
    won = session.execute(
        update(BreakGlassReview)
        .where(BreakGlassReview.request_id == request_id, BreakGlassReview.verdict.is_(None))
        .values(verdict=verdict, reviewer_id=actor.subject.id, reviewed_at=now,
                comment=comment)).rowcount == 1
    if not won:
        raise Conflict("This break-glass use has been reviewed already.", code="already_reviewed")
    return session.scalar(select(BreakGlassReview.due_at)
                          .where(BreakGlassReview.request_id == request_id))


def _revoke_unjustified(session: Session, request_id: str, *, actor: Actor,
                        origin: audit.Origin, now: datetime) -> bool:
    """End the grant if it still runs (the revoke is owed from this commit on); else False."""
    revoked = transition(session, request_id, event=Event.REVIEWED_UNJUSTIFIED,
                         extra_where=(AccessRequest.expires_at > now,), ended_at=now,
                         provisioning_started_at=now)
    if revoked:
        audit.record(session, action=AuditAction.REQUEST_REVOKED, actor=actor.subject.username,
                     target=request_id, origin=origin, now=now, details={"reason": "unjustified"})
    return revoked


def notify_overdue(session: Session, *, origin: audit.Origin, now: datetime,
                   limit: int = OVERDUE_BATCH) -> int:
    """Tell the reviewers, once per review, of each break-glass review past due; return how many.

    Each notice is claimed with a conditional UPDATE (`overdue_notified_at IS NULL`) in the
    transaction that writes it: several workers and instances running this send one notice.
    """
    due = list(session.scalars(select(BreakGlassReview.request_id).where(
        BreakGlassReview.verdict.is_(None), BreakGlassReview.overdue_notified_at.is_(None),
        BreakGlassReview.due_at <= now).limit(limit)))
    session.rollback()  # end the read before the writes, each in its own transaction
    told = 0
    for request_id in due:
        with unit_of_work(session):
            claimed = session.execute(update(BreakGlassReview).where(
                BreakGlassReview.request_id == request_id, BreakGlassReview.verdict.is_(None),
                BreakGlassReview.overdue_notified_at.is_(None))
                .values(overdue_notified_at=now)).rowcount == 1
            if claimed:
                audit.record(session, action=AuditAction.REQUEST_REVIEW_OVERDUE, actor="system",
                             target=request_id, origin=origin, now=now)
                outbox.review_overdue(session, request_id)
        if claimed:
            metrics.count_break_glass_overdue()
            told += 1
    return told
