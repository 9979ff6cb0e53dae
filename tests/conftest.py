"""Fixtures: a real database (SQLite, or PostgreSQL via TEST_DATABASE_URL), real Redis if given."""
from __future__ import annotations

import base64
import os
import secrets
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pyotp
import pytest
from cryptography.fernet import Fernet
from sqlalchemy import create_engine, make_url, text

os.environ.setdefault("SECURITY_API_ENV", "testing")

from flask_api import create_app  # noqa: E402
from security_api import audit
from security_api.accounts import users as accounts  # noqa: E402
from security_api.clock import utcnow  # noqa: E402
from security_api.db import Base  # noqa: E402
from security_api.enums import UserKind  # noqa: E402
from security_api.installation import bootstrap, migrate  # noqa: E402
from security_api.models import Subrole, User  # noqa: E402

# Fixtures of real servers (moto's EC2) shared by several test modules.
pytest_plugins = ["tests.servers"]

TEST_DATABASE_URL = os.environ.get("TEST_DATABASE_URL")
TEST_REDIS_URL = os.environ.get("TEST_REDIS_URL")
DEFAULT_PASSWORD = "violet-harbour-kettle-42"
# One data key for the whole run, so a gunicorn started by a test reads what fixtures wrote.
TEST_DATA_KEY = Fernet.generate_key().decode("ascii")
# Likewise one audit chain key, so the chain a gunicorn writes verifies in the test process.
TEST_AUDIT_KEY = secrets.token_urlsafe(48)


@contextmanager
def private_database(directory: Path, *, name: str) -> Iterator[str]:
    """Yield the URL of an empty database of its own, removed afterwards.

    On PostgreSQL a fresh schema (so parallel runs never see each other's rows), else a SQLite
    file in `directory`.
    """
    if not TEST_DATABASE_URL:
        yield f"sqlite:///{directory / f'{name}.sqlite3'}"
        return
    schema = f"{name}_{uuid.uuid4().hex[:12]}"
    admin = create_engine(TEST_DATABASE_URL)
    with admin.begin() as connection:
        connection.execute(text(f"CREATE SCHEMA {schema}"))
    try:
        yield make_url(TEST_DATABASE_URL).update_query_dict(
            {"options": f"-csearch_path={schema}"}).render_as_string(hide_password=False)
    finally:
        with admin.begin() as connection:
            connection.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


@contextmanager
def migrated_database(directory: Path, *, name: str) -> Iterator[str]:
    """A private database (see above) brought to the head of the project's Alembic migrations."""
    with private_database(directory, name=name) as url:
        engine = create_engine(url)
        migrate(engine)
        engine.dispose()
        yield url


@pytest.fixture(scope="session")
def database_url(tmp_path_factory):
    """Migrate a fresh database once per run with the project's own Alembic migrations."""
    with migrated_database(tmp_path_factory.mktemp("db"), name="test") as url:
        yield url


def _empty_tables(app) -> None:
    services = app.extensions["security_api"]
    engine = services.session_factory.kw["bind"]
    with engine.begin() as connection:
        for table in reversed(Base.metadata.sorted_tables):
            connection.execute(table.delete())
    with services.session_factory() as session:
        bootstrap(session)


@pytest.fixture
def make_app(database_url):
    """Build apps on the shared database with empty tables and a private Redis namespace."""
    built = []

    def _make(**overrides):
        settings = {"database_url": database_url, "bcrypt_rounds": 4,
                    "redis_url": TEST_REDIS_URL, "redis_prefix": f"test:{uuid.uuid4().hex}:",
                    "auth_rate_limit": 10_000, "data_encryption_keys": (TEST_DATA_KEY,),
                    "audit_chain_keys": (TEST_AUDIT_KEY,)}
        settings.update(overrides)
        app = create_app(settings)
        if not built and "database_url" not in overrides:
            _empty_tables(app)
        built.append(app)
        return app

    yield _make
    for app in built:
        app.extensions["outbox_deliverer"].stop()  # its thread must not outlive the engine
        app.extensions["security_api"].session_factory.kw["bind"].dispose()


@pytest.fixture
def app(make_app):
    return make_app()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def runner(app):
    return app.test_cli_runner()


@pytest.fixture
def db_session(app):
    """A session on the app's database, for looking behind the API."""
    with app.extensions["security_api"].session_factory() as session:
        yield session


def basic(username: str, password: str) -> dict:
    """Return an Authorization header for Basic credentials."""
    raw = f"{username}:{password}".encode()
    return {"Authorization": "Basic " + base64.b64encode(raw).decode("ascii")}


def bearer(token: str) -> dict:
    """Return an Authorization header for a Bearer token."""
    return {"Authorization": f"Bearer {token}"}


@dataclass
class TestUser:
    id: str
    username: str
    password: str
    totp_secret: str | None
    kind: str = "person"
    last_step: int = field(default=0)

    def next_code(self) -> str:
        """Return a code for a step not used yet, waiting if the drift window is used up."""
        current = int(time.time()) // 30
        step = max(current, self.last_step + 1)
        while step > int(time.time()) // 30 + 1:
            time.sleep(0.5)
        self.last_step = step
        return pyotp.TOTP(self.totp_secret).at(step * 30)


@pytest.fixture
def make_user(app):
    """Create a user straight in the domain: confirmed TOTP unless told otherwise."""
    services = app.extensions["security_api"]

    def _make(username: str = "alice", *, role: str = "developer", subrole: str = "backend",
              kind: str = "person", password: str = DEFAULT_PASSWORD, totp: bool = True,
              active: bool = True, email: str | None = None) -> TestUser:
        with services.session_factory() as session:
            if session.get(Subrole, (role, subrole)) is None:
                accounts.create_role(session, name=role, subroles=[subrole], actor="test",
                                     origin=audit.Origin(), now=utcnow())
            created = accounts.create_user(
                session, username=username, role=role, subrole=subrole, email=email,
                kind=UserKind(kind), password=password, bcrypt_rounds=4, actor="test",
                origin=audit.Origin(), now=utcnow())
            user: User = created.user
            secret = None
            if totp and kind == "person":
                secret = pyotp.random_base32(32)
                user.totp_secret = services.secret_box.encrypt(secret)
                user.totp_confirmed = True
            user.active = active
            session.commit()
            return TestUser(user.id, user.username, password, secret, kind)

    return _make


@pytest.fixture
def login_as(client):
    """Sign in for real (Basic + TOTP) and return the token response body."""
    def _login(user: TestUser) -> dict:
        body = {} if user.kind == "service" else {"totp": user.next_code()}
        response = client.post("/v1/login", headers=basic(user.username, user.password), json=body)
        assert response.status_code == 200, response.json
        return response.json

    return _login
