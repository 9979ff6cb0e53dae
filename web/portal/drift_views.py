"""Administration page for drift: the open findings after a scan, and a form that fixes them.

The page and the form call the same domain operations as GET /v1/admin/drift and
POST /v1/admin/drift/fix; the view only shows the answer.
"""
from __future__ import annotations

from flask import Response, flash, g, redirect, url_for
from flask_babel import gettext as _

from flask_api_functions import db, origin, services
from security_api.access import drift, drift_fix
from security_api.enums import DriftKind
from security_api.unit_of_work import end_reads

from .blueprint import admin_required, bp, render
from .formatting import when


def _actor() -> str:
    actor = g.principal.account.username
    end_reads(db())  # no transaction of this request stays open while the targets are read
    return actor


@bp.get("/admin/drift")
@admin_required
def admin_drift() -> Response:
    """Scan now and list what differs between the grants and the targets."""
    report = drift.scan(services(), actor=_actor(), origin=origin())
    return render("portal/admin_drift.html", missing=_rows(report, DriftKind.MISSING),
                  orphaned=_rows(report, DriftKind.ORPHANED), errors=report.errors,
                  scanned_at=when(report.scanned_at))


def _rows(report: drift.ScanReport, kind: str) -> list[dict]:
    return [{**finding.as_json(), "found": when(finding.found_at)}
            for finding in report.of_kind(kind)]


@bp.post("/admin/drift/fix")
@admin_required
def admin_drift_fix() -> Response:
    """Repair every open finding, say what happened, go back to the list.

    The blueprint checked the form's CSRF token before this runs (400 page, nothing changed).
    """
    report = drift_fix.fix(services(), actor=_actor(), origin=origin())
    failed = report.having("failed")
    flash(_("Fixed: %(fixed)s. Failed: %(failed)s. Skipped: %(skipped)s.",
            fixed=len(report.having("fixed")), failed=len(failed),
            skipped=len(report.having("skipped"))), "error" if failed else "info")
    for outcome in failed:
        flash(_("Not fixed: %(what)s (%(reason)s)", what=outcome.finding.description,
                reason=outcome.reason), "error")
    return redirect(url_for("portal.admin_drift"))
