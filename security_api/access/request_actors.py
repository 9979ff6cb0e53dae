"""Who acts on an access request, and who may see or decide it."""
from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from security_api.access.grants import Subject
from security_api.access.policy import approver_matches
from security_api.enums import UserKind
from security_api.errors import NotFound
from security_api.models import AccessRequest, RequestApproverGroup


@dataclass(frozen=True)
class Actor:
    """Who acts, with the two powers that change what they may do."""

    subject: Subject
    is_admin: bool = False
    is_auditor: bool = False


def approver_groups(session: Session, request_id: str) -> list[str]:
    """Return the approver entries of a request (`role` or `role/subrole`)."""
    rows = session.execute(select(RequestApproverGroup.role, RequestApproverGroup.subrole)
                           .where(RequestApproverGroup.request_id == request_id))
    return [role if subrole == "*" else f"{role}/{subrole}" for role, subrole in rows]


def is_eligible_approver(session: Session, request: AccessRequest, actor: Actor) -> bool:
    """Tell whether the actor may decide this request (never its own requester)."""
    subject = actor.subject
    # Separation of duties: nobody decides their own request, whatever their powers.
    if subject.id == request.requester_id or subject.kind != UserKind.PERSON:
        return False
    if actor.is_admin:
        return True
    return any(approver_matches(entry, role=subject.role, subrole=subject.subrole)
               for entry in approver_groups(session, request.id))


def visible_request(session: Session, request_id: str, actor: Actor) -> AccessRequest:
    """Return a request the actor may see; 404 for one they may not (as if it did not exist)."""
    request = session.get(AccessRequest, request_id) if _is_id(request_id) else None
    if request is None:
        raise NotFound("No such request.")
    if request.requester_id == actor.subject.id or actor.is_admin or actor.is_auditor:
        return request
    if is_eligible_approver(session, request, actor):
        return request
    raise NotFound("No such request.")


def _is_id(value: str) -> bool:
    return len(value) == 36 and all(ch in "0123456789abcdef-" for ch in value)
