"""Whether a requester may still have what they asked for, and ending what they may not.

A deactivation or a role change takes access back: pending requests are cancelled, active
grants revoked (`end_ineligible`), and approvals and retries re-check before granting.
"""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session

from security_api import audit
from security_api.access.grant_chain import end_with_grant, running
from security_api.access.grants import Subject, decision_for
from security_api.access.provisioning import Claimed, finish_grant, finish_revoke
from security_api.access.transitions import Event, transition
from security_api.enums import AuditAction, RequestStatus, UserKind
from security_api.errors import Conflict
from security_api.integrations import outbox
from security_api.models import AccessRequest, Permission, User
from security_api.services import Services
from security_api.unit_of_work import unit_of_work


def ineligibility(session: Session, *, user: User, permission_key: str) -> str | None:
    """Say why the user could not make this request now (`deactivated`, `role_changed`), or None.

    Re-decided by the policy engine for the user's current role and subrole, exactly as
    create_request decides: only a rule that makes it requestable (auto or approval) keeps it.
    """
    if not user.active:
        return "deactivated"
    permission = session.get(Permission, permission_key)
    subject = Subject(id=user.id, username=user.username, role=user.role, subrole=user.subrole,
                      kind=user.kind)
    if user.kind != UserKind.PERSON or permission is None \
            or not decision_for(session, subject, permission).requestable:
        return "role_changed"
    return None


def require_eligible_requester(session: Session, request: AccessRequest) -> None:
    """Refuse (409 no_longer_eligible) to grant to a requester who could not ask for it now."""
    # Approving for someone who has left, or has moved to a role without this permission,
    # would hand the access straight to them: decided again now, not when they asked.
    user = session.get(User, request.requester_id, populate_existing=True)
    reason = ineligibility(session, user=user, permission_key=request.permission_key)
    if reason is not None:
        what = "deactivated" if reason == "deactivated" else \
            "no longer allowed this permission by their role's policy"
        raise Conflict(f"The requester is {what}; the request cannot be granted.",
                       code="no_longer_eligible")


def end_ineligible(session: Session, *, user: User, reason: str, actor: str,
                   origin: audit.Origin, now: datetime) -> tuple[list[str], list[str]]:
    """Inside the caller's transaction (user already changed): cancel the pending requests and
    end the active grants the user could not make now; return (cancelled, revoked) ids.

    The caller commits, then runs `settle_ended` for the revokes owed and the notifications.
    """
    cancelled, revoked = [], []
    rows = session.execute(select(AccessRequest.id, AccessRequest.status,
                                  AccessRequest.permission_key).where(
        AccessRequest.requester_id == user.id,
        AccessRequest.status.in_([RequestStatus.PENDING, RequestStatus.ACTIVE]))).all()
    # Grants before requests: a grant's row is locked before its waiting extension's, the
    # order approve and revoke take them in.
    for request_id, status, permission_key in sorted(
            rows, key=lambda row: row[1] != RequestStatus.ACTIVE):
        if ineligibility(session, user=user, permission_key=permission_key) is None:
            continue
        if _end_one(session, request_id, status, reason=reason, actor=actor, origin=origin,
                    now=now):
            (cancelled if status == RequestStatus.PENDING else revoked).append(request_id)
    return cancelled, revoked


def _end_one(session: Session, request_id: str, status: str, *, reason: str, actor: str,
             origin: audit.Origin, now: datetime) -> bool:
    """Cancel a pending request or revoke a grant still running; False if it moved meanwhile."""
    if status == RequestStatus.PENDING:
        ended = transition(session, request_id, event=Event.END_INELIGIBLE, source=status,
                           decided_at=now)
        action = AuditAction.REQUEST_CANCELLED
    else:
        # An extension continuing a grant is not ended here: it ends with its grant, below.
        ended = transition(session, request_id, event=Event.END_INELIGIBLE, source=status,
                           extra_where=running(now), ended_at=now,
                           provisioning_started_at=now)
        action = AuditAction.REQUEST_REVOKED
    if ended:
        audit.record(session, action=action, actor=actor, target=request_id, origin=origin,
                     now=now, details={"reason": reason})
        outbox.requests_ended(session, [request_id])
        if status != RequestStatus.PENDING:
            end_with_grant(session, request_id, expired=False, actor=actor, origin=origin,
                           now=now)
    return ended


def settle_ended(session: Session, services: Services, *, cancelled: list[str],
                 revoked: list[str], origin: audit.Origin, now: datetime) -> None:
    """After the commit: run each owed revoke (no transaction open). The requesters' notices
    were written with the change (`_end_one`), so they go out even if this never runs."""
    for request_id in revoked:
        finish_revoke(session, services, request_id, origin=origin, now=now)


def grant_and_recheck(session: Session, services: Services, request_id: str, *,
                      origin: audit.Origin, now: datetime,
                      claimed: Claimed | None = None) -> None:
    """Provision a claimed grant; if the requester stopped being eligible meanwhile, end it.

    A deactivation or role change that commits while the provisioner runs finds the request
    `granting` and cannot end it; this second look, after the grant landed, does. The requester's
    row is read with a share lock, so a deactivation still in flight is waited for.
    `claimed`: see finish_grant. Afterwards the session's copy of the request is the row as
    this second look read it, or expired when it wrote anything (read again on first use): a
    caller may answer with `session.get` and need not read it again.
    """
    finish_grant(session, services, request_id, origin=origin, now=now, claimed=claimed)
    with unit_of_work(session):
        reason = _reason_to_end(session, request_id, origin=origin, now=now)
    if reason is not None:
        settle_ended(session, services, cancelled=[], revoked=[request_id], origin=origin,
                     now=now)


# Built once at import, not per grant (see bench/write_cpu.py).
_REQUEST_AND_SHARED_REQUESTER = (
    select(AccessRequest, User).join(User, User.id == AccessRequest.requester_id)
    .where(AccessRequest.id == bindparam("request_id"))
    .with_for_update(read=True, of=User)
    .execution_options(populate_existing=True))


def _reason_to_end(session: Session, request_id: str, *, origin: audit.Origin,
                   now: datetime) -> str | None:
    """In the caller's transaction: revoke a just-landed grant whose requester is no longer
    eligible and return why; None (nothing written) if it stays."""
    # One statement: the request read fresh, and its requester under a share lock (FOR SHARE
    # OF users: only the user's row is locked; SQLite has no row locks and needs none).
    request, user = session.execute(_REQUEST_AND_SHARED_REQUESTER,
                                    {"request_id": request_id}).one()
    if request.status != RequestStatus.ACTIVE:
        return None
    reason = ineligibility(session, user=user, permission_key=request.permission_key)
    if reason is None:
        return None
    ended = _end_one(session, request_id, RequestStatus.ACTIVE, reason=reason, actor="system",
                     origin=origin, now=now)
    session.expire(request)  # moved (by this or by a racer): the copy is read again when used
    return reason if ended else None
