"""Drift for holders of security-api.admin: scan the provisioners' targets, and fix what differs."""
from __future__ import annotations

from typing import Literal

from flask import Blueprint
from pydantic import BaseModel, Field

from flask_api_functions import (
    ADMIN_PERMISSION,
    current_principal,
    db,
    origin,
    require_permission,
    respond,
    services,
)
from security_api.access import drift, drift_fix
from security_api.access.drift_findings import Finding
from security_api.clock import isoformat
from security_api.enums import DriftKind
from security_api.unit_of_work import end_reads
from web.api import schemas
from web.api.inputs import read_json
from web.api.openapi import documented

bp = Blueprint("admin_drift", __name__, url_prefix="/v1/admin")
E = schemas.Error
TAG = "admin"


class DriftItemOut(BaseModel):
    id: str = Field(description="The finding's id (stable while it stays open).")
    kind: Literal["missing", "orphaned"] = Field(
        description="missing: an active grant whose entry is not at the target; orphaned: an "
                    "entry this service made (its marker) that no active grant explains.")
    provisioner: str
    permission: str | None = Field(description="The permission of the grant it is about, "
                                               "when known.")
    request_id: str | None = Field(description="The request the grant or entry belongs to.")
    target: str = Field(description="Where, e.g. `eu-west-1/sg-0123abcd`.")
    description: str = Field(description="What it is, for a person.")
    found_at: str = Field(description="When a scan first saw it.")


class DriftOutcomeOut(DriftItemOut):
    reason: str | None = Field(description="Why it failed or was skipped.")


class DriftErrorOut(BaseModel):
    target: str
    provisioner: str
    error: str


class DriftOut(BaseModel):
    message: str | None
    missing: list[DriftItemOut]
    orphaned: list[DriftItemOut]
    errors: list[DriftErrorOut] = Field(description="Targets that could not be read: their "
                                                    "findings stay as the last scan left them.")
    scanned_at: str


class DriftFixOut(DriftOut):
    fixed: list[DriftItemOut] = Field(description="Re-granted (missing) or removed (orphaned).")
    failed: list[DriftOutcomeOut] = Field(description="The provisioner refused; still open.")
    skipped: list[DriftOutcomeOut] = Field(
        description="No longer drift when the fix came to it (the grant ended, or a grant "
                    "now explains the entry); the next scan resolves it.")


def _actor() -> str:
    actor = current_principal().account.username
    end_reads(db())  # no transaction of this request stays open while the targets are read
    return actor


def _items(findings: list[Finding]) -> list[dict]:
    return [finding.as_json() for finding in findings]


def _lists(report: drift.ScanReport) -> dict:
    return {"missing": _items(report.of_kind(DriftKind.MISSING)),
            "orphaned": _items(report.of_kind(DriftKind.ORPHANED)),
            "errors": report.errors, "scanned_at": isoformat(report.scanned_at)}


@bp.get("/drift")
@documented(summary="Scan for drift: grants missing at their target, entries no grant explains",
            tag=TAG, responses={200: DriftOut, 403: E},
            description="Reads every inspectable provisioner's target now (aws_security_group; "
                        "`none` and `webhook` have nothing to compare) and lists the open "
                        "findings. A new finding is recorded, audited (`drift.found`) and "
                        "notified once; one no longer seen is resolved (`drift.resolved`). "
                        "Rules made by hand (without the service's marker) and the start-up "
                        "task's rules are never drift.")
@require_permission(ADMIN_PERMISSION)
def get_drift():
    """Scan and list the open drift findings."""
    report = drift.scan(services(), actor=_actor(), origin=origin())
    return respond(None, **_lists(report))


@bp.post("/drift/fix")
@documented(summary="Fix drift: re-grant what is missing, remove what is orphaned", tag=TAG,
            body=schemas.EmptyBody, responses={200: DriftFixOut, 403: E},
            description="Scans first, then repairs each finding through the provisioner "
                        "(`grant` with the request's own context; removal of exactly the "
                        "orphaned entry). Each repair is audited (`drift.fixed`, or "
                        "`drift.fix_failed` with the provisioner's error). `missing` and "
                        "`orphaned` list what the scan found before the fix.")
@require_permission(ADMIN_PERMISSION)
def fix_drift():
    """Repair every open finding the provisioner can reach."""
    read_json(schemas.EmptyBody)
    report = drift_fix.fix(services(), actor=_actor(), origin=origin())
    outcome = {result: [{**o.finding.as_json(), "reason": o.reason} for o in report.having(result)]
               for result in ("failed", "skipped")}
    fixed = _items([o.finding for o in report.having("fixed")])
    message = f"Fixed {len(fixed)}, failed {len(outcome['failed'])}."
    return respond(message, fixed=fixed, **outcome, **_lists(report.scan))
