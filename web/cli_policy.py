"""Command line for policy as code: `flask --app flask_api policy apply FILE [--dry-run]`, `export`."""
from __future__ import annotations

import sys
from pathlib import Path

import click
from flask import Flask, current_app
from flask.cli import AppGroup

from security_api import audit
from security_api.access import policyfile
from security_api.clock import utcnow
from security_api.errors import ApiError

policy_group = AppGroup("policy", help="Policy as code: apply or export a YAML policy file.")


def _services():
    return current_app.extensions["security_api"]


def _refuse(source: str, problems: list[str]) -> None:
    click.echo(f"{source} is refused; nothing was changed:", err=True)
    for problem in problems:
        click.echo(f"  {source}: {problem}", err=True)
    sys.exit(1)


@policy_group.command("apply")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--dry-run", is_flag=True, help="Print the changes without making them.")
def apply_command(file: Path, dry_run: bool):
    """Make roles, permissions and rules match FILE (the full desired state)."""
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise click.ClickException(f"Cannot read {file}: {exc}") from None
    services = _services()
    with services.session_factory() as session:
        try:
            desired = policyfile.parse(text, settings=services.settings)
            diff = policyfile.plan(session, desired)
        except policyfile.PolicyFileError as exc:
            _refuse(str(file), exc.problems)
        if diff.empty:
            click.echo(f"Nothing to change: the database already matches {file}.")
            return
        click.echo(f"{file}: {len(diff.changes)} change(s):")
        for line in diff.lines():
            click.echo(f"  {line}")
        if dry_run:
            click.echo("Dry run: nothing was changed.")
            return
        try:
            counts = policyfile.apply(session, diff, actor="cli", origin=audit.Origin(ip="cli"),
                                      now=utcnow(), source=file.name)
        except ApiError as exc:
            raise click.ClickException(exc.message) from None
    click.echo("Applied: {created} created, {updated} updated, {deleted} deleted.".format(**counts))


@policy_group.command("export")
@click.option("-o", "--output", type=click.Path(dir_okay=False, writable=True, path_type=Path),
              default=None, help="Write to this file instead of standard output.")
def export_command(output: Path | None):
    """Write the current roles, permissions and rules as a policy file."""
    with _services().session_factory() as session:
        text = policyfile.export(session)
    if output is None:
        click.echo(text, nl=False)
        return
    output.write_text(text, encoding="utf-8")
    click.echo(f"Wrote {output}.", err=True)


def init_app(app: Flask) -> None:
    """Register the `policy` command group on the app."""
    app.cli.add_command(policy_group)
