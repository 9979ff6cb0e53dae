"""`flask --app flask_api slack-link USERNAME SLACK_USER_ID` (or `--unlink`): map a Slack member."""
from __future__ import annotations

import click
from flask import Flask, current_app
from flask.cli import with_appcontext

from security_api import audit
from security_api.accounts import admin_users
from security_api.accounts import users as accounts
from security_api.clock import utcnow
from security_api.errors import ApiError


@click.command("slack-link")
@with_appcontext
@click.argument("username")
@click.argument("slack_user_id", required=False)
@click.option("--unlink", is_flag=True, help="Remove the user's Slack link.")
def slack_link_command(username, slack_user_id, unlink):
    """Let the Slack member SLACK_USER_ID (U012AB3CD) decide as USERNAME from Slack buttons."""
    if unlink == bool(slack_user_id):
        raise click.UsageError("give either SLACK_USER_ID or --unlink")
    services = current_app.extensions["security_api"]
    with services.session_factory() as session:
        user = accounts.find_user(session, username)
        if user is None:
            raise click.ClickException(f"no user {username}")
        try:
            admin_users.update_user(session, services, user_id=user.id, actor="cli",
                                    origin=audit.Origin(ip="cli"), now=utcnow(),
                                    slack_user_id=None if unlink else slack_user_id)
        except ApiError as exc:
            detail = "; ".join(f"{e['field']}: {e['problem']}" for e in exc.errors or [])
            raise click.ClickException(detail or exc.message) from None
    linked = "no longer linked to Slack" if unlink else f"linked to Slack member {slack_user_id}"
    click.echo(f"{username} is {linked}.")


def init_app(app: Flask) -> None:
    """Register the command."""
    app.cli.add_command(slack_link_command)
