"""Calling provisioners outside any transaction, and recording what they answered.

A provisioner talks to the outside world and may take seconds. No database lock (the
request's row, the audit chain head, SQLite's write lock) is ever held while it runs: the
transition is committed first (a claim), the call happens, then the outcome is recorded
with a second conditional update. A crash in between leaves a claim the reaper finishes.

While a grant's outside call runs, a heartbeat thread of the worker refreshes the claim's
timestamp (`provisioning_started_at`) every HEARTBEAT_SECONDS. A claim whose heartbeat is
older than CLAIM_LEASE_SECONDS belongs to a worker that is gone: the reaper (or the
requester's next request for the same permission) fails it and has the provisioner undo it
(`cleanup`) within seconds, instead of waiting out the longest call a live worker might make.
A live worker heartbeats for at most `stuck_after` (4 x timeout + 60 s), so a call that hangs
past every timeout is also taken over, as before.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import and_, bindparam, or_, select, update
from sqlalchemy.orm import Session

from security_api import audit, metrics
from security_api.access import readback
from security_api.access.provisioning_heartbeat import heartbeat
from security_api.access.transitions import OWED, Event, transition
from security_api.clock import isoformat, utcnow
from security_api.enums import AuditAction, ProvisioningAction, ProvisioningState, RequestStatus
from security_api.integrations import outbox
from security_api.models import AccessRequest, Permission, User
from security_api.provisioners import GrantContext, ProvisioningError, get_provisioner
from security_api.services import Services
from security_api.unit_of_work import end_reads, unit_of_work

log = logging.getLogger(__name__)
GRANT, CLEANUP, REVOKE = ProvisioningAction.GRANT, ProvisioningAction.CLEANUP, ProvisioningAction.REVOKE
# A failed revoke is tried again this long after the last attempt.
REVOKE_RETRY_SECONDS = 300
# A worker running a grant refreshes its claim every HEARTBEAT_SECONDS (provisioning_heartbeat),
# and a grant claim not refreshed for this long was left by a worker that is gone.
CLAIM_LEASE_SECONDS = 12


def stuck_after(services: Services) -> timedelta:
    """Return the longest a live worker may hold a claim (beyond every provisioner timeout)."""
    return timedelta(seconds=services.settings.provisioner_timeout_seconds * 4 + 60)


def claim_lease() -> timedelta:
    """Return how long a grant claim lives without a heartbeat."""
    return timedelta(seconds=CLAIM_LEASE_SECONDS)


# The hot statements of a grant's and a revoke's second step, built once at import rather
# than per call (their building cost more CPU than their sending; see bench/write_cpu.py).
# One statement, read fresh: the request, its permission and its requester's name.
_CONTEXT = (select(AccessRequest, Permission, User.username)
            .join(Permission, Permission.key == AccessRequest.permission_key)
            .join(User, User.id == AccessRequest.requester_id)
            .where(AccessRequest.id == bindparam("request_id"))
            .execution_options(populate_existing=True))
# Read in the transaction that records an outcome: the provisioning record as it stands now
# (another step may have added to it while the outside call ran), and what decides the new
# columns. Columns, not the entity: nothing else of the row is needed.
_LANDING = select(AccessRequest.provisioning, AccessRequest.duration_minutes,
                  AccessRequest.mode).where(AccessRequest.id == bindparam("request_id"))


def _load(session: Session, services: Services, request_id: str):
    request, permission, requester = session.execute(
        _CONTEXT, {"request_id": request_id}).one()
    ctx = GrantContext(request_id=request.id, requester=requester,
                       requester_ip=request.requester_ip, permission=permission.key,
                       params=request.params,
                       config=permission.provisioner_config,
                       expires_at=request.expires_at)
    return request, permission, ctx


@dataclass(frozen=True)
class Claimed:
    """A claim its maker knows in full, so the outside call runs without reading the row back.

    The unit of work that inserted the request as `granting` (create_request) has every field
    of the context (`finish_grant(claimed=...)`); the one that made a revoke owed reads it in
    its own transaction (`owed_revoke`, then `finish_revoke(claimed=...)`).
    """

    provisioner: str
    ctx: GrantContext


def owed_revoke(session: Session, services: Services, request_id: str) -> Claimed:
    """In the unit of work that just made the request's revoke owed: the revoke's context.

    Read in that transaction rather than in one of its own after the commit: the same one
    statement, one transaction (pool checkout, BEGIN, ROLLBACK) less per revoke.
    """
    _, permission, ctx = _load(session, services, request_id)
    return Claimed(permission.provisioner, ctx)


def _landing(session: Session, request_id: str) -> tuple[dict, int, str]:
    return session.execute(_LANDING, {"request_id": request_id}).one()


def load_context(session: Session, services: Services, request_id: str):
    """Return (request, permission, GrantContext) read fresh: for the read-back's retries."""
    return _load(session, services, request_id)


def _call(services: Services, provisioner_name: str, ctx: GrantContext, *, action: str) -> dict:
    provisioner = get_provisioner(provisioner_name, services.settings)
    try:
        # A cleanup is a revoke to the provisioner; only the record tells them apart.
        result = provisioner.grant(ctx) if action == GRANT else provisioner.revoke(ctx)
        return {"ok": True, "result": result, "error": None, "at": isoformat(utcnow())}
    except ProvisioningError as exc:
        metrics.count_provisioning_failure(provisioner=provisioner_name, action=action)
        return {"ok": False, "result": None, "error": str(exc)[:500], "at": isoformat(utcnow())}


def _record(session: Session, request_id: str, provisioning: dict, provisioner_name: str,
            outcomes: dict[str, dict], *, origin: audit.Origin, now: datetime) -> dict:
    record = dict(provisioning or {})  # a copy: JSONText values are not change-tracked
    for action, outcome in outcomes.items():
        record[action] = outcome
        audit.record(session, action=AuditAction.PROVISIONING_SUCCEEDED if outcome["ok"]
                     else AuditAction.PROVISIONING_FAILED, actor="system", target=request_id,
                     origin=origin, now=now,
                     details={"action": action, "provisioner": provisioner_name,
                              "error": outcome["error"]})
    return record


def finish_grant(session: Session, services: Services, request_id: str, *,
                 origin: audit.Origin, now: datetime, claimed: Claimed | None = None) -> None:
    """Run the grant of a claimed request, then land it on active or failed (once).

    The second public step after a claim's commit: the outside call runs with no transaction
    open, and its outcome is recorded in a transaction of its own. `claimed`: the caller made
    the claim itself a moment ago and knows its context; otherwise the row is read. Either
    way the landing is one conditional move from granting: a claim the reaper took over
    meanwhile lands nothing (and its grant is undone once more, below).
    """
    if claimed is None:
        request, permission, ctx = _load(session, services, request_id)
        # Read before ending the reads: touching an expired attribute would open a transaction
        # again.
        provisioner_name, owed = permission.provisioner, request.status == RequestStatus.GRANTING
    else:
        provisioner_name, ctx, owed = claimed.provisioner, claimed.ctx, True
    end_reads(session)  # no transaction stays open during the outside call
    if not owed:
        return
    with heartbeat(services, request_id, until=utcnow() + stuck_after(services)):
        outcomes = {GRANT: _call(services, provisioner_name, ctx, action=GRANT)}
        check = (readback.read_back(services, provisioner_name, ctx, step=GRANT)
                 if outcomes[GRANT]["ok"] else None)
        if check is None or check["outcome"] == readback.Outcome.CONTRADICTED:
            # A webhook that timed out may still have granted, a grant the target does not
            # show may be half-made: ask it to undo.
            outcomes[CLEANUP] = _call(services, provisioner_name, ctx, action=CLEANUP)
    if _land_grant(session, request_id, provisioner_name, outcomes, check, origin=origin,
                   now=now):
        session.commit()
        return
    session.rollback()  # the reaper declared it abandoned meanwhile: nothing of this lands
    if outcomes[GRANT]["ok"]:
        # Its cleanup may have reached the target before this grant did: undo once more.
        _late_cleanup(session, services, request_id, provisioner_name, ctx,
                      origin=origin, now=now)


def _land_grant(session: Session, request_id: str, provisioner_name: str,
                outcomes: dict[str, dict], check: dict | None, *, origin: audit.Origin,
                now: datetime) -> bool:
    """Record the grant's outcome and its read-back, and move granting -> active | failed;
    False if it lost."""
    contradicted = check is not None and check["outcome"] == readback.Outcome.CONTRADICTED
    ok = outcomes[GRANT]["ok"] and not contradicted
    provisioning, duration_minutes, mode = _landing(session, request_id)
    expires_at = now + timedelta(minutes=duration_minutes) if ok else None
    record = _record(session, request_id, provisioning, provisioner_name, outcomes,
                     origin=origin, now=now)
    # A new grant (a retried request's too): what an earlier round verified does not hold.
    columns = {"grant_verified_at": None, "revoke_verified_at": None, "verify_due_at": None}
    if check is not None:
        record, more, check = readback.settle(record, check, step=GRANT, now=now, first=True)
        columns.update(more)
    if not transition(session, request_id,
                      event=Event.GRANT_FINISHED if ok else Event.GRANT_FAILED,
                      provisioning=record, provisioning_state=None, expires_at=expires_at,
                      **columns):
        return False
    if check is not None:
        readback.report(session, request_id, check, step=GRANT, provisioner=provisioner_name,
                        previous=None, origin=origin, now=now)
    audit.record(session, action=AuditAction.REQUEST_ACTIVATED if ok
                 else AuditAction.REQUEST_FAILED, actor="system", target=request_id,
                 origin=origin, now=now,
                 details={"expires_at": isoformat(expires_at)} if ok
                 else {"reason": readback.NOT_PRESENT} if contradicted else {})
    # The move above set the status (active or failed): told without reading the row again.
    outbox.grant_landed(session, request_id, active=ok, mode=mode)
    return True


def _late_cleanup(session: Session, services: Services, request_id: str,
                  provisioner_name: str, ctx: GrantContext, *, origin: audit.Origin,
                  now: datetime) -> None:
    # Only the provisioning record changes (no status moves): no transition of the table.
    outcome = _call(services, provisioner_name, ctx, action=CLEANUP)
    with unit_of_work(session):
        provisioning = _landing(session, request_id)[0]
        session.execute(update(AccessRequest).where(AccessRequest.id == request_id).values(
            provisioning=_record(session, request_id, provisioning, provisioner_name,
                                 {CLEANUP: outcome}, origin=origin, now=now)))


def finish_revoke(session: Session, services: Services, request_id: str, *,
                  origin: audit.Origin, now: datetime, claimed: Claimed | None = None) -> None:
    """Run the revoke of an ended grant (or the cleanup of a failed one) and record it;
    a failure is retried by the reaper.

    The second public step after the commit that made the revoke owed (see finish_grant).
    `claimed`: that commit moved an active grant to an ended status owing its revoke, and read
    the context before it (`owed_revoke`); otherwise the row is read here. Either way the
    landing is one conditional move from an owed state.
    """
    if claimed is None:
        request, permission, ctx = _load(session, services, request_id)
        owed = request.provisioning_state in OWED
        # A grant that never became active is undone (cleanup); one that was active is revoked.
        action = CLEANUP if request.status == RequestStatus.FAILED else REVOKE
        provisioner_name = permission.provisioner  # read before ending the reads (finish_grant)
        end_reads(session)
        if not owed:
            return
    else:
        provisioner_name, ctx, action = claimed.provisioner, claimed.ctx, REVOKE
    outcome = _call(services, provisioner_name, ctx, action=action)
    check = readback.read_back(services, provisioner_name, ctx, step=REVOKE) if outcome["ok"] else None
    with unit_of_work(session):
        provisioning = _landing(session, request_id)[0]
        record = _record(session, request_id, provisioning, provisioner_name, {action: outcome},
                         origin=origin, now=now)
        previous, columns = record.get(readback.record_key(REVOKE)), {"verify_due_at": None}
        if check is not None:
            record, more, check = readback.settle(record, check, step=REVOKE, now=now)
            columns.update(more)
        done = outcome["ok"] and readback.revoke_done(check)
        if transition(session, request_id,
                      event=Event.REVOKE_FINISHED if done else Event.REVOKE_FAILED,
                      provisioning=record, provisioning_started_at=now, **columns) and check:
            readback.report(session, request_id, check, step=REVOKE,
                            provisioner=provisioner_name, previous=previous,
                            origin=origin, now=now)


def recover(session: Session, services: Services, *, origin: audit.Origin, now: datetime,
            limit: int = 100) -> int:
    """Finish what crashed workers left: abandoned grants fail, unfinished revokes run again."""
    done = recover_abandoned_grants(session, services, origin=origin, now=now, limit=limit)
    return done + _retry_revokes(session, services, origin=origin, now=now, limit=limit)


def fail_abandoned(session: Session, request_id: str, *, origin: audit.Origin,
                   now: datetime) -> bool:
    """In the caller's transaction: fail a grant claim whose worker stopped heartbeating.

    Its cleanup is owed from the caller's commit on (run `finish_revoke` after it).
    """
    # The heartbeat moves provisioning_started_at; a claim it stopped moving is abandoned.
    lapsed = now - claim_lease()
    if not transition(session, request_id, event=Event.RECOVER,
                      extra_where=(AccessRequest.provisioning_started_at < lapsed,),
                      provisioning_started_at=now):
        return False
    audit.record(session, action=AuditAction.REQUEST_FAILED, actor="system",
                 target=request_id, origin=origin, now=now,
                 details={"reason": "provisioning interrupted; retry it"})
    return True


def recover_abandoned_grants(session: Session, services: Services, *, origin: audit.Origin,
                             now: datetime, limit: int = 100) -> int:
    """Fail and undo grant claims whose worker stopped heartbeating; return how many."""
    abandoned = list(session.scalars(
        select(AccessRequest.id).where(AccessRequest.status == RequestStatus.GRANTING,
                                       AccessRequest.provisioning_started_at < now - claim_lease())
        .limit(limit)))
    end_reads(session)
    # Whatever an interrupted grant did outside is undone (recorded as cleanup).
    return revoke_each_claimed(session, services, abandoned, claim=fail_abandoned,
                               origin=origin, now=now)


def revoke_each_claimed(session: Session, services: Services, request_ids: list[str], *,
                        claim, origin: audit.Origin, now: datetime) -> int:
    """For each id: `claim(session, id, origin=, now=)` in a unit of work of its own; if it
    claimed, run the owed revoke after that commit. Return how many were claimed.

    One unit of work per request, so one slow or failing revoke does not hold back the rest.
    """
    claimed = 0
    for request_id in request_ids:
        with unit_of_work(session):
            won = claim(session, request_id, origin=origin, now=now)
        if won:
            finish_revoke(session, services, request_id, origin=origin, now=now)
            claimed += 1
    return claimed


def _retry_revokes(session: Session, services: Services, *, origin: audit.Origin,
                   now: datetime, limit: int) -> int:
    stale = now - stuck_after(services)
    retry_before = now - timedelta(seconds=REVOKE_RETRY_SECONDS)
    due = list(session.execute(select(AccessRequest.id, AccessRequest.provisioning_started_at).where(or_(
        and_(AccessRequest.provisioning_state == ProvisioningState.REVOKING,
             AccessRequest.provisioning_started_at < stale),
        and_(AccessRequest.provisioning_state == ProvisioningState.REVOKE_FAILED,
             AccessRequest.provisioning_started_at < retry_before))).limit(limit)))
    end_reads(session)
    done = 0
    for request_id, started_at in due:
        # Claim the retry by moving the attempt time: a second reaper's update finds no row.
        with unit_of_work(session):
            claimed = transition(
                session, request_id, event=Event.RETRY_REVOKE, provisioning_started_at=now,
                extra_where=(AccessRequest.provisioning_started_at == started_at,))
        if claimed:
            finish_revoke(session, services, request_id, origin=origin, now=now)
            done += 1
    return done
