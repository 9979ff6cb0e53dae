"""Calling provisioners outside any transaction, and recording what they answered.

A provisioner talks to the outside world and may take seconds. No database lock (the
request's row, the audit chain head, SQLite's write lock) is ever held while it runs: the
transition is committed first (a claim), the call happens, then the outcome is recorded
with a second conditional update. A crash in between leaves a claim the reaper finishes.
"""
from __future__ import annotations

import json
import logging
from datetime import datetime, timedelta

from sqlalchemy import and_, or_, select, update
from sqlalchemy.orm import Session

from . import audit, metrics
from .clock import isoformat, utcnow
from .enums import AuditAction, ProvisioningState, RequestStatus
from .jsontext import loads_stored
from .models import AccessRequest, Permission, User
from .provisioners import GrantContext, ProvisioningError, get_provisioner
from .services import Services

log = logging.getLogger(__name__)
# A failed revoke is tried again this long after the last attempt.
REVOKE_RETRY_SECONDS = 300


def stuck_after(services: Services) -> timedelta:
    """Return how old a claim must be before it counts as abandoned by a crashed worker."""
    return timedelta(seconds=services.settings.provisioner_timeout_seconds * 4 + 60)


def _load(session: Session, services: Services, request_id: str):
    # One statement, read fresh: the request, its permission and its requester's name.
    request, permission, requester = session.execute(
        select(AccessRequest, Permission, User.username)
        .join(Permission, Permission.key == AccessRequest.permission_key)
        .join(User, User.id == AccessRequest.requester_id)
        .where(AccessRequest.id == request_id)
        .execution_options(populate_existing=True)).one()
    ctx = GrantContext(request_id=request.id, requester=requester,
                       requester_ip=request.requester_ip, permission=permission.key,
                       params=loads_stored(request.params),
                       config=loads_stored(permission.provisioner_config),
                       expires_at=request.expires_at)
    return request, permission, ctx


def _call(services: Services, provisioner_name: str, ctx: GrantContext, *, action: str) -> dict:
    provisioner = get_provisioner(provisioner_name, services.settings)
    try:
        result = provisioner.grant(ctx) if action == "grant" else provisioner.revoke(ctx)
        return {"ok": True, "result": result, "error": None, "at": isoformat(utcnow())}
    except ProvisioningError as exc:
        metrics.count_provisioning_failure(provisioner=provisioner_name, action=action)
        return {"ok": False, "result": None, "error": str(exc)[:500], "at": isoformat(utcnow())}


def _record(session: Session, request: AccessRequest, permission: Permission,
            outcomes: dict[str, dict], *, origin: audit.Origin, now: datetime) -> str:
    record = loads_stored(request.provisioning)
    for action, outcome in outcomes.items():
        record[action] = outcome
        audit.record(session, action=AuditAction.PROVISIONING_SUCCEEDED if outcome["ok"]
                     else AuditAction.PROVISIONING_FAILED, actor="system", target=request.id,
                     origin=origin, now=now,
                     details={"action": action, "provisioner": permission.provisioner,
                              "error": outcome["error"]})
    return json.dumps(record, sort_keys=True)


def finish_grant(session: Session, services: Services, request_id: str, *,
                 origin: audit.Origin, now: datetime) -> None:
    """Run the grant of a claimed request, then land it on active or failed (once)."""
    request, permission, ctx = _load(session, services, request_id)
    if request.status != RequestStatus.GRANTING:
        session.rollback()
        return
    # Read before the rollback: touching an expired attribute would open a transaction again.
    provisioner_name = permission.provisioner
    session.rollback()  # no transaction stays open during the outside call
    outcomes = {"grant": _call(services, provisioner_name, ctx, action="grant")}
    if not outcomes["grant"]["ok"]:
        # A webhook that timed out may still have granted: ask it to undo.
        outcomes["cleanup"] = _call(services, provisioner_name, ctx, action="cleanup")
    ok = outcomes["grant"]["ok"]
    request, permission, _ = _load(session, services, request_id)
    values = {"status": RequestStatus.ACTIVE, "expires_at": now + timedelta(
        minutes=request.duration_minutes)} if ok else {"status": RequestStatus.FAILED,
                                                       "expires_at": None}
    claimed = session.execute(
        update(AccessRequest)
        .where(AccessRequest.id == request_id, AccessRequest.status == RequestStatus.GRANTING)
        .values(provisioning=_record(session, request, permission, outcomes, origin=origin, now=now),
                provisioning_state=None, **values))
    if claimed.rowcount != 1:
        session.rollback()  # the reaper declared it abandoned meanwhile
        return
    metrics.stage_request_status(session, values["status"])
    audit.record(session, action=AuditAction.REQUEST_ACTIVATED if ok
                 else AuditAction.REQUEST_FAILED, actor="system", target=request_id,
                 origin=origin, now=now,
                 details={"expires_at": isoformat(values["expires_at"])} if ok else {})
    session.commit()


def finish_revoke(session: Session, services: Services, request_id: str, *,
                  origin: audit.Origin, now: datetime) -> None:
    """Run the revoke of an ended grant and record it; a failure is retried by the reaper."""
    request, permission, ctx = _load(session, services, request_id)
    if request.provisioning_state not in (ProvisioningState.REVOKING,
                                          ProvisioningState.REVOKE_FAILED):
        session.rollback()
        return
    provisioner_name = permission.provisioner  # read before the rollback, as in finish_grant
    session.rollback()
    outcome = _call(services, provisioner_name, ctx, action="revoke")
    request, permission, _ = _load(session, services, request_id)
    state = None if outcome["ok"] else ProvisioningState.REVOKE_FAILED
    session.execute(
        update(AccessRequest).where(AccessRequest.id == request_id)
        .values(provisioning=_record(session, request, permission, {"revoke": outcome},
                                     origin=origin, now=now),
                provisioning_state=state, provisioning_started_at=now))
    session.commit()


def recover(session: Session, services: Services, *, origin: audit.Origin, now: datetime,
            limit: int = 100) -> int:
    """Finish what crashed workers left: abandoned grants fail, unfinished revokes run again."""
    stale = now - stuck_after(services)
    done = 0
    abandoned = list(session.scalars(select(AccessRequest.id).where(
        AccessRequest.status == RequestStatus.GRANTING,
        AccessRequest.provisioning_started_at < stale).limit(limit)))
    session.rollback()
    for request_id in abandoned:
        failed = session.execute(
            update(AccessRequest)
            .where(AccessRequest.id == request_id, AccessRequest.status == RequestStatus.GRANTING,
                   AccessRequest.provisioning_started_at < stale)
            .values(status=RequestStatus.FAILED, provisioning_state=ProvisioningState.REVOKING,
                    provisioning_started_at=now))
        if failed.rowcount == 1:
            metrics.stage_request_status(session, RequestStatus.FAILED)
            audit.record(session, action=AuditAction.REQUEST_FAILED, actor="system",
                         target=request_id, origin=origin, now=now,
                         details={"reason": "provisioning interrupted; retry it"})
            session.commit()
            # Whatever the interrupted grant did outside is undone by a revoke.
            finish_revoke(session, services, request_id, origin=origin, now=now)
            done += 1
        else:
            session.rollback()
    retry_before = now - timedelta(seconds=REVOKE_RETRY_SECONDS)
    due = list(session.execute(select(AccessRequest.id, AccessRequest.provisioning_started_at).where(or_(
        and_(AccessRequest.provisioning_state == ProvisioningState.REVOKING,
             AccessRequest.provisioning_started_at < stale),
        and_(AccessRequest.provisioning_state == ProvisioningState.REVOKE_FAILED,
             AccessRequest.provisioning_started_at < retry_before))).limit(limit)))
    session.rollback()
    for request_id, started_at in due:
        # Claim the retry by moving the attempt time: a second reaper's update finds no row.
        claimed = session.execute(
            update(AccessRequest)
            .where(AccessRequest.id == request_id,
                   AccessRequest.provisioning_started_at == started_at)
            .values(provisioning_started_at=now))
        session.commit()
        if claimed.rowcount == 1:
            finish_revoke(session, services, request_id, origin=origin, now=now)
            done += 1
    return done
