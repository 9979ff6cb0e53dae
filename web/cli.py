"""Command line: `flask --app flask_api <command>`."""
from __future__ import annotations

import json
import sys

import click
from flask import Flask, current_app
from flask.cli import AppGroup, with_appcontext
from sqlalchemy import func, select

from security_api import audit
from security_api.access import catalog, grants
from security_api.access.reaper import reap_once
from security_api.accounts import users as accounts
from security_api.clock import utcnow
from security_api.demo import seed_demo_organisation
from security_api.enums import PolicyMode, UserKind
from security_api.errors import ApiError
from security_api.installation import describe_migration, init_database
from security_api.models import User
from security_api.startup import RequiredTaskFailed, run_startup_tasks
from web import cli_drift, cli_policy, cli_slack


def _services():
    return current_app.extensions["security_api"]


def _origin() -> audit.Origin:
    return audit.Origin(ip="cli", request_id=None)


def _fail(exc: ApiError) -> None:
    detail = "; ".join(f"{e['field']}: {e['problem']}" for e in exc.errors or [])
    raise click.ClickException(detail or exc.message)


@click.command("init-db")
@with_appcontext
def init_db_command():
    """Create or upgrade the schema and the built-in rows (idempotent)."""
    services = _services()
    revisions = init_database(services.session_factory.kw["bind"], services.session_factory)
    click.echo(describe_migration(*revisions))


@click.command("create-role")
@with_appcontext
@click.argument("role")
@click.option("--subrole", "subroles", multiple=True, required=True, help="Repeat for several.")
@click.option("--description", default="")
def create_role_command(role, subroles, description):
    """Create a role with its subroles (or add subroles to it)."""
    with _services().session_factory() as session:
        try:
            accounts.create_role(session, name=role, subroles=list(subroles),
                                 description=description, actor="cli", origin=_origin(),
                                 now=utcnow())
        except ApiError as exc:
            _fail(exc)
        session.commit()
    click.echo(f"Role {role} has subroles {', '.join(subroles)}.")


@click.command("create-user")
@with_appcontext
@click.argument("username")
@click.option("--role", required=True)
@click.option("--subrole", required=True)
@click.option("--email", default=None)
@click.option("--service", is_flag=True, help="A service account (secret, no TOTP).")
@click.option("--password-stdin", is_flag=True, help="Read the password or secret from stdin.")
def create_user_command(username, role, subrole, email, service, password_stdin):
    """Create a user; print the generated password or service secret once."""
    password = sys.stdin.readline().rstrip("\r\n") if password_stdin else None
    services = _services()
    with services.session_factory() as session:
        try:
            created = accounts.create_user(
                session, username=username, role=role, subrole=subrole, email=email,
                kind=UserKind.SERVICE if service else UserKind.PERSON, password=password,
                bcrypt_rounds=services.settings.bcrypt_rounds, actor="cli", origin=_origin(),
                now=utcnow())
        except ApiError as exc:
            _fail(exc)
        session.commit()
        user = created.user
        click.echo(f"Created {user.kind} {user.username} ({user.role}/{user.subrole}), id {user.id}.")
        if password is None:
            label = "Service secret" if service else "Password"
            click.echo(f"{label} (shown once): {created.secret}")


@click.command("create-permission")
@with_appcontext
@click.argument("key")
@click.option("--name", required=True)
@click.option("--description", default="")
@click.option("--max-duration-minutes", type=int, required=True)
@click.option("--requires-justification", is_flag=True)
@click.option("--step-up", is_flag=True, help="Requests and decisions need a fresh TOTP code.")
@click.option("--provisioner", default="none", show_default=True)
@click.option("--config", "config_json", default="{}", help="Provisioner config as JSON.")
def create_permission_command(key, name, description, max_duration_minutes,
                              requires_justification, step_up, provisioner, config_json):
    """Create a permission (until policy files arrive, the way to add one)."""
    try:
        config = json.loads(config_json)
    except ValueError as exc:
        raise click.ClickException(f"--config is not JSON: {exc}") from None
    services = _services()
    with services.session_factory() as session:
        try:
            catalog.ensure_permission(
                session, key=key, name=name, description=description,
                max_duration_minutes=max_duration_minutes,
                requires_justification=requires_justification, provisioner=provisioner,
                provisioner_config=config, settings=services.settings, actor="cli",
                origin=_origin(), now=utcnow(), step_up=step_up)
        except ApiError as exc:
            _fail(exc)
        session.commit()
    click.echo(f"Permission {key} exists.")


@click.command("create-rule")
@with_appcontext
@click.argument("permission")
@click.option("--role", required=True, help="A role or *.")
@click.option("--subrole", required=True, help="A subrole of the role, or *.")
@click.option("--mode", type=click.Choice([m.value for m in PolicyMode]), required=True)
@click.option("--max-duration-minutes", type=int, default=None)
@click.option("--approver", "approvers", multiple=True, help="role or role/subrole; repeat.")
@click.option("--approvals-required", type=int, default=1, show_default=True)
@click.option("--review-within-minutes", type=int, default=1440, show_default=True,
              help="break_glass: minutes the approvers have to review a use.")
@click.option("--pending-ttl-minutes", type=int, default=1440, show_default=True,
              help="Minutes a request may wait for a decision before it expires.")
def create_rule_command(permission, role, subrole, mode, max_duration_minutes, approvers,
                        approvals_required, review_within_minutes, pending_ttl_minutes):
    """Create a policy rule tying a role/subrole to a permission."""
    with _services().session_factory() as session:
        try:
            rule = catalog.ensure_rule(
                session, permission=permission, role=role, subrole=subrole,
                mode=PolicyMode(mode), max_duration_minutes=max_duration_minutes,
                approvers=list(approvers), approvals_required=approvals_required,
                review_within_minutes=review_within_minutes,
                pending_ttl_minutes=pending_ttl_minutes, actor="cli", origin=_origin(), now=utcnow())
            if rule.permission_key == grants.ADMIN_PERMISSION:
                grants.refuse_admin_for_service_accounts(session, role=role, subrole=subrole)
        except ApiError as exc:
            _fail(exc)
        session.commit()
        click.echo(f"Rule {rule.id}: {role}/{subrole} -> {permission} ({rule.mode}).")


@click.command("seed-demo")
@with_appcontext
def seed_demo_command():
    """Create a demo organisation for local use (refused in production)."""
    services = _services()
    if services.settings.is_production:
        raise click.ClickException("seed-demo is refused in production.")
    with services.session_factory() as session:
        if session.scalar(select(func.count()).select_from(User)):
            raise click.ClickException("The database already has users; seed-demo only fills an empty one.")
        try:
            lines = seed_demo_organisation(session, services=services, now=utcnow())
        except ApiError as exc:
            _fail(exc)
    for line in lines:
        click.echo(line)


@click.command("reap")
@with_appcontext
def reap_command():
    """Expire due grants and undecided requests once, run the grants' revokes (for cron)."""
    count = reap_once(_services())
    click.echo(f"Expired {count} request(s): grants past their end and requests not decided "
               "in time.")


@click.command("run-startup-tasks")
@with_appcontext
def run_startup_tasks_command():
    """Run the STARTUP_TASKS once (for runners without gunicorn's master hook)."""
    try:
        results = run_startup_tasks(_services())
    except RequiredTaskFailed as exc:
        raise click.ClickException(str(exc)) from None
    for result in results:
        click.echo(f"{result.name}: {'ok' if result.ok else 'failed: ' + str(result.error)}")
    if not results:
        click.echo("No start-up tasks configured (STARTUP_TASKS is empty).")


@click.command("has-users")
@with_appcontext
def has_users_command():
    """Exit 0 when the database has users, 1 when it is empty (for scripts)."""
    with _services().session_factory() as session:
        count = session.scalar(select(func.count()).select_from(User))
    sys.exit(0 if count else 1)


audit_group = AppGroup("audit", help="Audit log tools.")


@audit_group.command("verify")
def audit_verify_command():
    """Walk the hash chain; exit 1 at the first changed, removed or inserted event."""
    with _services().session_factory() as session:
        _report_chain(audit.verify_chain(session))


def _report_chain(report) -> None:
    """Say whether the chain verified; exit 1 at its first broken event."""
    if report.ok:
        click.echo(f"Audit chain intact: {report.events} events.")
        return
    click.echo(f"Audit chain broken at event {report.first_broken_seq}: {report.problem}.", err=True)
    sys.exit(1)


@audit_group.command("rekey")
def audit_rekey_command():
    """Seal the events written before the chain was keyed; exit 1 if they do not verify."""
    with _services().session_factory() as session:
        sealed = audit.seal_legacy_events(session)
        if not sealed.ok:
            click.echo(f"Refused: {sealed.message}", err=True)
            sys.exit(1)
        click.echo(sealed.message)
        if not sealed.wrote:
            return  # idempotent: a deploy step may run it every time
        report = audit.verify_chain(session)
    _report_chain(report)


def init_app(app: Flask) -> None:
    """Register every command on the app."""
    cli_policy.init_app(app)
    cli_drift.init_app(app)
    cli_slack.init_app(app)
    for command in (init_db_command, create_role_command, create_user_command,
                    create_permission_command, create_rule_command, seed_demo_command,
                    has_users_command, reap_command, run_startup_tasks_command, audit_group):
        app.cli.add_command(command)
