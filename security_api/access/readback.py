"""Read-back: after a grant or a revoke, ask the target whether it really happened.

Why: a provisioner answering "done" is not proof. A security group rule can vanish between the
call and the next minute (another tool, a human), a webhook receiver can accept an event and
drop it. So after each grant the provisioner's `is_present` must say True, after each revoke
(or cleanup) False. The outcomes:

- confirmed: `grant_verified_at` / `revoke_verified_at` is set; audited `provisioning.verified`.
- contradicted: after a grant, the grant fails and is undone (the caller cleans up); after a
  revoke, the revoke stays owed (`revoke_failed`), so the reaper retries it and reads back
  again. Audited `provisioning.verify_failed`, notified once per run of contradictions.
- unavailable (the target could not be read): proves nothing, never fails a good grant. The
  grant becomes active unverified and its read-back is owed (`verify_due_at`): the reaper
  tries again every VERIFY_RETRY_SECONDS; a revoke stays owed and is retried with its
  read-back. After MAX_ATTEMPTS read-backs of a step that could not be made, the service gives
  up: the step stays unverified (audited and notified), a revoke is considered done.
- unsupported (the provisioner cannot read back, e.g. `none`): nothing changes, as before.

This module decides and records; the calls and transitions are the callers' (provisioning.py
for the steps right after grant and revoke, readback_retry.py for the reaper's later tries).
"""
from __future__ import annotations

from datetime import datetime, timedelta
from enum import StrEnum

from sqlalchemy.orm import Session

from security_api import audit, metrics
from security_api.clock import isoformat, utcnow
from security_api.enums import AuditAction
from security_api.integrations import outbox
from security_api.provisioners import GrantContext, ProvisioningError, get_provisioner
from security_api.services import Services

GRANT, REVOKE = "grant", "revoke"
VERIFY_RETRY_SECONDS = 300
MAX_ATTEMPTS = 5
NOT_PRESENT = "read-back: the grant is not present at the target"


class Outcome(StrEnum):
    CONFIRMED = "confirmed"
    CONTRADICTED = "contradicted"
    UNAVAILABLE = "unavailable"
    UNSUPPORTED = "unsupported"


def record_key(step: str) -> str:
    """Where a step's last read-back is kept in the request's `provisioning` record."""
    return f"verify_{step}"


def read_back(services: Services, provisioner_name: str, ctx: GrantContext, *, step: str) -> dict:
    """Ask the target (outside any transaction); return {"outcome", "error", "at"}.

    A grant is confirmed by "present", a revoke by "absent".
    """
    provisioner = get_provisioner(provisioner_name, services.settings)
    error = None
    try:
        present = provisioner.is_present(ctx)
    except ProvisioningError as exc:
        present, error = "unknown", str(exc)[:500]
    if error is not None:
        outcome = Outcome.UNAVAILABLE
    elif present is None:
        outcome = Outcome.UNSUPPORTED
    else:
        outcome = Outcome.CONFIRMED if present == (step == GRANT) else Outcome.CONTRADICTED
    metrics.count_verification(provisioner=provisioner_name, step=step, outcome=outcome)
    return {"outcome": str(outcome), "error": error, "at": isoformat(utcnow())}


def gave_up(check: dict) -> bool:
    """Whether this was the last read-back the service makes of a step it could not read."""
    return check["outcome"] == Outcome.UNAVAILABLE and check["attempts"] >= MAX_ATTEMPTS


def settle(record: dict, check: dict, *, step: str, now: datetime,
           first: bool = False) -> tuple[dict, dict, dict]:
    """Return the provisioning record with the read-back in it, the columns to set, and the
    read-back as recorded (with its attempts).

    `first`: a fresh grant's read-back starts counting attempts again (a retried request).
    """
    previous = {} if first else (record.get(record_key(step)) or {})
    check = {**check, "attempts": int(previous.get("attempts", 0)) + 1}
    if check["outcome"] == Outcome.UNSUPPORTED:
        return record, {}, check
    columns: dict = {}
    if check["outcome"] == Outcome.CONFIRMED:
        columns[f"{step}_verified_at"] = now
    if step == GRANT:
        owed = check["outcome"] == Outcome.UNAVAILABLE and not gave_up(check)
        columns["verify_due_at"] = now + timedelta(seconds=VERIFY_RETRY_SECONDS) if owed else None
    return {**record, record_key(step): check}, columns, check


def revoke_done(check: dict | None) -> bool:
    """Whether a successful revoke call may end the owed revoke given its (settled) read-back."""
    if check is None:
        return True
    if check["outcome"] == Outcome.CONTRADICTED:
        return False
    return check["outcome"] != Outcome.UNAVAILABLE or gave_up(check)


def report(session: Session, request_id: str, check: dict, *, step: str, provisioner: str,
           previous: dict | None, origin: audit.Origin, now: datetime) -> None:
    """In the caller's transaction, after its transition: audit the (settled) read-back, and
    notify a contradiction (once per run of them) or a read-back given up."""
    if check["outcome"] == Outcome.UNSUPPORTED:
        return
    confirmed = check["outcome"] == Outcome.CONFIRMED
    audit.record(session, action=AuditAction.PROVISIONING_VERIFIED if confirmed
                 else AuditAction.PROVISIONING_VERIFY_FAILED, actor="system", target=request_id,
                 origin=origin, now=now,
                 details={"action": step, "provisioner": provisioner, "outcome": check["outcome"],
                          "error": check["error"], "attempts": check["attempts"],
                          "gave_up": gave_up(check)})
    # A revoke the target keeps contradicting is retried every few minutes: tell it once.
    repeated = check["outcome"] == (previous or {}).get("outcome")
    if (check["outcome"] == Outcome.CONTRADICTED and not repeated) or gave_up(check):
        outbox.readback_failed(session, request_id, step=step, outcome=check["outcome"])
