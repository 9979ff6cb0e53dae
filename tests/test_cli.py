"""The flask commands: init-db, create-role, create-user, seed-demo, audit verify."""
import re

from sqlalchemy import select

from security_api.models import Subrole, User
from tests.conftest import basic


def test_init_db_is_idempotent_and_creates_the_admin_role(runner, db_session):
    for _ in range(2):
        result = runner.invoke(args=["init-db"])
        assert result.exit_code == 0, result.output
    assert db_session.get(Subrole, ("security", "admin")) is not None


def test_create_user_prints_a_generated_password_once(runner, client):
    result = runner.invoke(args=["create-user", "Eve", "--role", "security", "--subrole", "admin",
                                 "--email", "eve@example.com"])
    assert result.exit_code == 0, result.output
    password = re.search(r"Password \(shown once\): (\S+)", result.output).group(1)
    response = client.post("/v1/login", headers=basic("eve", password), json={})
    assert response.status_code == 403  # right password, TOTP not enrolled yet


def test_create_user_reads_the_password_from_stdin(runner, db_session):
    result = runner.invoke(args=["create-user", "frank", "--role", "security", "--subrole",
                                 "admin", "--password-stdin"], input="marble-otter-sings-at-dawn\n")
    assert result.exit_code == 0, result.output
    assert "shown once" not in result.output
    assert db_session.scalar(select(User).where(User.username == "frank")).kind == "person"


def test_create_service_account(runner, client):
    # Not in security/admin: a service account never holds security-api.admin
    # (tests/test_service_admin.py).
    assert runner.invoke(args=["create-role", "tools", "--subrole", "ci"]).exit_code == 0
    result = runner.invoke(args=["create-user", "ci-bot", "--role", "tools", "--subrole",
                                 "ci", "--service"])
    assert result.exit_code == 0, result.output
    secret = re.search(r"Service secret \(shown once\): (\S+)", result.output).group(1)
    assert client.post("/v1/login", headers=basic("ci-bot", secret), json={}).status_code == 200


def test_create_user_refuses_bad_input(runner):
    cases = [
        (["create-user", "x", "--role", "security", "--subrole", "admin"], "username"),
        (["create-user", "gina", "--role", "nope", "--subrole", "admin"], "does not exist"),
        (["create-user", "gina", "--role", "security", "--subrole", "admin", "--password-stdin"],
         "at least 12"),
    ]
    for args, message in cases:
        result = runner.invoke(args=args, input="short\n")
        assert result.exit_code != 0
        assert message in result.output


def test_create_user_twice_is_refused(runner):
    args = ["create-user", "hank", "--role", "security", "--subrole", "admin"]
    assert runner.invoke(args=args).exit_code == 0
    result = runner.invoke(args=args)
    assert result.exit_code != 0 and "already exists" in result.output


def test_create_role(runner, db_session):
    result = runner.invoke(args=["create-role", "developer", "--subrole", "backend",
                                 "--subrole", "frontend"])
    assert result.exit_code == 0, result.output
    assert db_session.get(Subrole, ("developer", "frontend")) is not None


def test_seed_demo_prints_working_credentials(runner, client):
    import pyotp

    result = runner.invoke(args=["seed-demo"])
    assert result.exit_code == 0, result.output
    line = next(line for line in result.output.splitlines() if line.strip().startswith("alice"))
    password = re.search(r"password (\S+)", line).group(1)
    secret = re.search(r"TOTP secret (\S+)", line).group(1)
    response = client.post("/v1/login", headers=basic("alice", password),
                           json={"totp": pyotp.TOTP(secret).now()})
    assert response.status_code == 200
    assert "deploy-bot" in result.output
    again = runner.invoke(args=["seed-demo"])
    assert again.exit_code != 0


def test_seed_demo_is_refused_in_production(make_app, database_url):
    app = make_app()
    prod = make_app(env="production", jwt_secret="k" * 20 + "abcdefghijklmnopqrstuvwxyz",
                    bcrypt_rounds=12, database_url=database_url)
    assert prod.extensions["security_api"].settings.is_production
    assert app is not prod
    result = prod.test_cli_runner().invoke(args=["seed-demo"])
    assert result.exit_code != 0 and "production" in result.output


def test_audit_verify_command(runner, client):
    client.post("/v1/login", headers=basic("nobody", "whatever-password"), json={})
    result = runner.invoke(args=["audit", "verify"])
    assert result.exit_code == 0 and "intact" in result.output


def test_has_users(runner):
    assert runner.invoke(args=["has-users"]).exit_code == 1
    runner.invoke(args=["create-user", "ivy", "--role", "security", "--subrole", "admin"])
    assert runner.invoke(args=["has-users"]).exit_code == 0


def test_init_db_says_what_it_did(tmp_path):
    """Created on an empty database, upgraded from an older revision, else already current."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from alembic import command
    from sqlalchemy import create_engine

    from security_api.installation import alembic_config

    root = Path(__file__).resolve().parent.parent
    url = f"sqlite:///{tmp_path / 'fresh.sqlite3'}"
    env = {**os.environ, "DATABASE_URL": url, "SECURITY_API_ENV": "testing"}

    def init_db() -> str:
        done = subprocess.run([str(Path(sys.executable).parent / "flask"), "--app", "flask_api",
                               "init-db"], cwd=root, env=env, capture_output=True, text=True,
                              check=True, timeout=60)
        return done.stdout

    assert re.search(r"^Database created at the newest schema \(revision \w+\)\.$",
                     init_db(), re.M)
    assert "already at the newest schema" in init_db()
    cfg = alembic_config()
    engine = create_engine(url)
    with engine.begin() as connection:
        cfg.attributes["connection"] = connection
        command.downgrade(cfg, "0001")
    engine.dispose()
    assert re.search(r"^Database upgraded from schema revision 0001 to \w+", init_db(), re.M)
