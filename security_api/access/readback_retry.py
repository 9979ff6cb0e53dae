"""The reaper's later read-backs of active grants whose first read-back could not be made.

A grant whose target could not be read right after the call is active but unverified, with
`verify_due_at` set (see readback.py). Each reaper run claims the due ones (one conditional
UPDATE of `verify_due_at`: of two reapers, one wins), reads back with no transaction open and
records the outcome. A grant found missing now fails (`verify_absent`, which owes its cleanup)
and is undone right after that commit, as an abandoned grant is.
"""
from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from security_api import audit
from security_api.access import readback
from security_api.access.provisioning import finish_revoke, load_context
from security_api.access.transitions import Event, transition
from security_api.enums import AuditAction, RequestStatus
from security_api.integrations import outbox
from security_api.models import AccessRequest
from security_api.services import Services
from security_api.unit_of_work import end_reads, unit_of_work


def retry_grant_readbacks(session: Session, services: Services, *, origin: audit.Origin,
                          now: datetime, limit: int = 100) -> int:
    """Read back every active grant whose read-back is owed and due; return how many."""
    due = list(session.execute(
        select(AccessRequest.id, AccessRequest.verify_due_at)
        .where(AccessRequest.status == RequestStatus.ACTIVE, AccessRequest.verify_due_at <= now)
        .limit(limit)))
    end_reads(session)
    done = 0
    for request_id, due_at in due:
        if _claim(session, request_id, due_at, now=now):
            _read_back_one(session, services, request_id, origin=origin, now=now)
            done += 1
    return done


def _claim(session: Session, request_id: str, due_at: datetime, *, now: datetime) -> bool:
    # Moving the due time is the claim: a second reaper's UPDATE finds no row. If this worker
    # dies before recording, the read-back is simply due again later.
    with unit_of_work(session):
        return session.execute(
            update(AccessRequest)
            .where(AccessRequest.id == request_id, AccessRequest.verify_due_at == due_at,
                   AccessRequest.status == RequestStatus.ACTIVE)
            .values(verify_due_at=now + timedelta(seconds=readback.VERIFY_RETRY_SECONDS))
        ).rowcount == 1


def _read_back_one(session: Session, services: Services, request_id: str, *,
                   origin: audit.Origin, now: datetime) -> None:
    _, permission, ctx = load_context(session, services, request_id)
    provisioner_name = permission.provisioner  # read before ending the reads
    end_reads(session)
    check = readback.read_back(services, provisioner_name, ctx, step=readback.GRANT)
    with unit_of_work(session):
        request, _, _ = load_context(session, services, request_id)
        previous = (request.provisioning or {}).get(readback.record_key(readback.GRANT))
        record, columns, check = readback.settle(dict(request.provisioning), check,
                                          step=readback.GRANT, now=now)
        failed = check["outcome"] == readback.Outcome.CONTRADICTED
        if failed:
            landed = transition(session, request_id, event=Event.VERIFY_ABSENT, provisioning=record,
                                provisioning_started_at=now, ended_at=now, **columns)
        else:
            landed = session.execute(
                update(AccessRequest)
                .where(AccessRequest.id == request_id, AccessRequest.status == RequestStatus.ACTIVE)
                .values(provisioning=record, **columns)).rowcount == 1
        if landed:
            readback.report(session, request_id, check, step=readback.GRANT,
                            provisioner=provisioner_name, previous=previous, origin=origin, now=now)
        if landed and failed:
            audit.record(session, action=AuditAction.REQUEST_FAILED, actor="system",
                         target=request_id, origin=origin, now=now,
                         details={"reason": readback.NOT_PRESENT})
            outbox.request_decided(session, request_id)
    if landed and failed:
        finish_revoke(session, services, request_id, origin=origin, now=now)  # the cleanup
