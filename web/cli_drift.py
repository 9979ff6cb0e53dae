"""Command line for drift: `flask --app flask_api drift [--fix]` (for cron and monitoring).

Exit codes: 0 no drift (after --fix: everything fixed or no longer drift), 1 drift found
(after --fix: a repair failed), 2 a target could not be read (so the answer is incomplete).
"""
from __future__ import annotations

import sys

import click
from flask import Flask, current_app
from flask.cli import with_appcontext

from security_api import audit
from security_api.access import drift, drift_fix
from security_api.access.drift_findings import Finding

CLEAN, DRIFT_FOUND, UNREADABLE = 0, 1, 2


def _line(finding: Finding) -> str:
    return (f"{finding.kind}: {finding.description} [provisioner {finding.provisioner}, "
            f"permission {finding.permission or '-'}, request {finding.request_id or '-'}]")


def _report_errors(report: drift.ScanReport) -> None:
    for error in report.errors:
        click.echo(f"unreadable: {error['target']} ({error['provisioner']}): {error['error']}",
                   err=True)


@click.command("drift")
@with_appcontext
@click.option("--fix", "repair", is_flag=True,
              help="Re-grant missing grants and remove orphaned entries.")
def drift_command(repair: bool):
    """List drift between the grants and the provisioners' targets; --fix repairs it."""
    services = current_app.extensions["security_api"]
    origin = audit.Origin(ip="cli", request_id=None)
    if repair:
        sys.exit(_fix(services, origin))
    report = drift.scan(services, actor="cli", origin=origin)
    for finding in report.findings:
        click.echo(_line(finding))
    _report_errors(report)
    if not report.findings:
        click.echo("No drift.")
    sys.exit(UNREADABLE if report.errors else DRIFT_FOUND if report.findings else CLEAN)


def _fix(services, origin: audit.Origin) -> int:
    report = drift_fix.fix(services, actor="cli", origin=origin)
    for outcome in report.outcomes:
        reason = f" ({outcome.reason})" if outcome.reason else ""
        click.echo(f"{outcome.result}: {_line(outcome.finding)}{reason}")
    _report_errors(report.scan)
    if not report.outcomes:
        click.echo("No drift.")
    failed = report.having("failed")
    return UNREADABLE if report.scan.errors else DRIFT_FOUND if failed else CLEAN


def init_app(app: Flask) -> None:
    """Register the command on the app."""
    app.cli.add_command(drift_command)
