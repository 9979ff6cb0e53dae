"""The principal cache and its auth versions in Redis (security_api/accounts/principal_cache).

The reader's cases run against a real Redis (TEST_REDIS_URL) and count the principal reads
that reach the database (the service's reader runs on the raw DBAPI cursor, which the
engine's cursor events do not see, so the count is taken at the reader). The outage cases
start a private redis-server on a free port: the shared one must never be stopped.
"""
from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest
import redis
from sqlalchemy import delete, event, select, update

from security_api.accounts.principal_cache import (
    AUTH_VERSIONS_INFO,
    PENDING,
    AuthVersions,
    PrincipalSource,
    UnregisteredPrincipalChange,
    changed,
)
from security_api.accounts.stores import StoreUnavailable
from security_api.clock import utcnow
from security_api.enums import AuditAction
from security_api.models import AuditEvent, RefreshFamily, User
from tests.conftest import TEST_REDIS_URL, bearer
from tests.servers import free_port

needs_redis = pytest.mark.skipif(not TEST_REDIS_URL, reason="needs Redis (TEST_REDIS_URL)")
REDIS_SERVER = shutil.which("redis-server")


class CountingReader:
    """The service's own principal reader, counting the reads that reach the database."""

    def __init__(self, reader, during_read=None):
        self.reader, self.reads, self.during_read = reader, 0, during_read

    def first(self, params):
        self.reads += 1
        if self.during_read is not None:
            self.during_read()
        return self.reader.first(params)


def _services(app):
    return app.extensions["security_api"]


def _session_of(app, login_as, make_user):
    """Sign in for real; return (user id, session id, token)."""
    body = login_as(make_user())
    claims = _services(app).token_verifier.verify(body["token"], now=time.time())
    return claims["sub"], claims["sid"], body["token"]


@pytest.fixture
def versions():
    return AuthVersions.from_url(TEST_REDIS_URL) if TEST_REDIS_URL else None


# ---- the reader's cases ------------------------------------------------------------------------
@needs_redis
def test_a_cached_principal_costs_no_database_read(app, login_as, make_user, versions):
    user_id, sid, _ = _session_of(app, login_as, make_user)
    reader = CountingReader(_services(app).principal_reader)
    source = PrincipalSource(reader, versions)
    versions._redis.delete(versions.key(user_id))
    first = source.row(user_id, sid)
    assert reader.reads == 1 and first["id"] == user_id and first["family_id"] == sid
    assert versions.current(user_id) and not versions.current(user_id).startswith(PENDING)
    assert source.row(user_id, sid) == first
    assert reader.reads == 1  # the version is unchanged: no database round trip


@needs_redis
def test_another_version_reads_the_database_once_then_caches_under_it(app, login_as, make_user,
                                                                      versions):
    user_id, sid, _ = _session_of(app, login_as, make_user)
    reader = CountingReader(_services(app).principal_reader)
    source = PrincipalSource(reader, versions)
    source.row(user_id, sid)
    reads = reader.reads
    versions._redis.set(versions.key(user_id), "a-version-written-elsewhere")
    source.row(user_id, sid)
    assert reader.reads == reads + 1
    source.row(user_id, sid)
    assert reader.reads == reads + 1


@needs_redis
def test_a_pending_marker_sends_every_read_to_the_database(app, login_as, make_user, versions):
    user_id, sid, _ = _session_of(app, login_as, make_user)
    reader = CountingReader(_services(app).principal_reader)
    source = PrincipalSource(reader, versions)
    source.row(user_id, sid)
    versions._redis.set(versions.key(user_id), PENDING + "in-flight")
    reads = reader.reads
    source.row(user_id, sid)
    source.row(user_id, sid)
    assert reader.reads == reads + 2
    assert versions.current(user_id) == PENDING + "in-flight"  # a reader never clears it


@needs_redis
def test_a_writer_between_the_get_and_the_claim_leaves_nothing_cached(app, login_as, make_user,
                                                                      versions):
    user_id, sid, _ = _session_of(app, login_as, make_user)
    key = versions.key(user_id)
    versions._redis.delete(key)
    # The key is missing at the reader's GET; a writer marks it while the database is read.
    reader = CountingReader(_services(app).principal_reader,
                            during_read=lambda: versions._redis.set(key, PENDING + "writer"))
    source = PrincipalSource(reader, versions)
    source.row(user_id, sid)
    assert versions.current(user_id) == PENDING + "writer"  # the reader's SET NX lost
    reader.during_read = None
    versions._redis.set(key, "published-by-the-writer")
    source.row(user_id, sid)
    assert reader.reads == 2  # nothing was cached under a version the writer changed


@needs_redis
def test_the_version_moves_before_a_logout_answers(app, client, login_as, make_user, versions):
    user_id, _, token = _session_of(app, login_as, make_user)
    assert client.get("/v1/profile", headers=bearer(token)).status_code == 200
    before = versions.current(user_id)
    assert client.post("/v1/logout", headers=bearer(token)).status_code == 200
    after = versions.current(user_id)
    assert after and after != before and not after.startswith(PENDING)
    response = client.get("/v1/profile", headers=bearer(token))
    assert response.status_code == 401 and response.json["error"] == "token_revoked"


@needs_redis
def test_an_orm_change_of_a_principal_column_moves_the_version(app, make_user, db_session,
                                                              versions):
    user = db_session.get(User, make_user().id)
    versions._redis.set(versions.key(user.id), "before")
    user.email = "renamed@example.com"  # a column the principal query reads, set on the object
    db_session.flush()
    assert versions.current(user.id).startswith(PENDING)  # marked before the commit
    db_session.commit()
    published = versions.current(user.id)
    assert published not in {"before", None} and not published.startswith(PENDING)
    user.last_totp_step = 7  # not read by the principal query: nothing to register
    db_session.commit()
    assert versions.current(user.id) == published


def test_redis_unreachable_sends_every_read_to_the_database(app, login_as, make_user):
    user_id, sid, _ = _session_of(app, login_as, make_user)
    reader = CountingReader(_services(app).principal_reader)
    source = PrincipalSource(reader, AuthVersions.from_url(f"redis://127.0.0.1:{free_port()}/0"))
    assert source.row(user_id, sid)["family_id"] == sid
    assert source.row(user_id, sid)["family_id"] == sid
    assert reader.reads == 2


def test_a_change_that_cannot_reach_redis_is_refused(app, make_user, db_session):
    db_session.info[AUTH_VERSIONS_INFO] = AuthVersions.from_url(f"redis://127.0.0.1:{free_port()}/0")
    user = db_session.get(User, make_user().id)
    with pytest.raises(StoreUnavailable):
        changed(db_session, user.id)
    user.active = False
    with pytest.raises(StoreUnavailable):
        db_session.flush()


# ---- the safety net ----------------------------------------------------------------------------
@pytest.mark.parametrize("statement", [
    lambda user_id: update(User).where(User.id == user_id).values(role="security"),
    lambda user_id: update(User).where(User.id == user_id).values(tokens_valid_after=1),
    lambda user_id: update(RefreshFamily).where(RefreshFamily.user_id == user_id)
    .values(revoked_at=utcnow()),
    lambda user_id: delete(RefreshFamily).where(RefreshFamily.user_id == user_id),
    lambda user_id: delete(User).where(User.id == user_id),
], ids=["role", "tokens_valid_after", "revoke_families", "delete_families", "delete_user"])
def test_a_bulk_change_without_registration_raises(app, make_user, db_session, statement):
    user_id = make_user().id
    with pytest.raises(UnregisteredPrincipalChange):
        db_session.execute(statement(user_id))


def test_bulk_updates_that_change_no_principal_pass_the_safety_net(app, make_user, db_session):
    user_id = make_user().id
    # The TOTP replay mark, the requester's row lock (SET id = id) and a family's start
    # change no principal.
    db_session.execute(update(User).where(User.id == user_id).values(last_totp_step=5))
    db_session.execute(update(User).where(User.id == user_id).values(id=User.id)
                       .execution_options(synchronize_session=False))
    db_session.execute(update(RefreshFamily).where(RefreshFamily.user_id == user_id)
                       .values(created_at=utcnow()))
    db_session.info[AUTH_VERSIONS_INFO] = None  # registered without Redis: the net is satisfied
    changed(db_session, user_id)
    db_session.execute(update(User).where(User.id == user_id).values(role="developer"))
    db_session.rollback()


# ---- outages of a private Redis ----------------------------------------------------------------
class PrivateRedis:
    """A redis-server of this test's own on a free port (never the shared one)."""

    def __init__(self, directory: Path):
        self.directory, self.port, self.process = directory, free_port(), None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--dir",
             str(self.directory), "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis.from_url(self.url)
        for _ in range(100):
            try:
                client.ping()
                return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError("private redis-server did not start")

    def stop(self, *, keep_data: bool = False) -> None:
        """Shut down; with keep_data the next start has every key back (SHUTDOWN SAVE)."""
        if self.process is None:
            return
        try:
            redis.Redis.from_url(self.url).shutdown(save=keep_data, nosave=not keep_data)
        except redis.RedisError:
            self.process.terminate()
        self.process.wait(timeout=10)
        self.process = None
        if not keep_data:
            (self.directory / "dump.rdb").unlink(missing_ok=True)

    def value(self, key: str) -> str | None:
        raw = redis.Redis.from_url(self.url).get(key)
        return raw.decode() if raw is not None else None


@pytest.fixture
def private_redis(tmp_path):
    if REDIS_SERVER is None:
        pytest.skip("redis-server is not installed")
    server = PrivateRedis(tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def outage_app(make_app, private_redis):
    return make_app(redis_url=private_redis.url)


def _two_sessions(outage_app, make_user):
    """Sign one user in twice on the outage app; return (user, token one, token two)."""
    client = outage_app.test_client()
    user = make_user()
    tokens = []
    for _ in range(2):
        response = client.post("/v1/login", headers=_basic(user), json={"totp": user.next_code()})
        assert response.status_code == 200, response.json
        tokens.append(response.json["token"])
    return user, client, tokens


def _basic(user):
    from tests.conftest import basic
    return basic(user.username, user.password)


def _profile(client, token):
    return client.get("/v1/profile", headers=bearer(token))


def test_with_redis_down_tokens_are_checked_in_the_database(outage_app, make_user, private_redis):
    _, client, (one, two) = _two_sessions(outage_app, make_user)
    assert _profile(client, one).status_code == 200  # cached in this process
    assert client.post("/v1/logout", headers=bearer(one)).status_code == 200
    private_redis.stop()
    response = _profile(client, one)
    assert response.status_code == 401 and response.json["error"] == "token_revoked"
    assert _profile(client, two).status_code == 200  # served from the database


def test_a_logout_while_redis_is_down_is_refused_and_changes_nothing(outage_app, make_user,
                                                                    private_redis):
    user, client, (one, _) = _two_sessions(outage_app, make_user)
    sid = _services(outage_app).token_verifier.verify(one, now=time.time())["sid"]
    private_redis.stop()
    response = client.post("/v1/logout", headers=bearer(one))
    assert response.status_code == 503, response.json
    response = client.post("/v1/password", headers=bearer(one), json={
        "current_password": user.password, "new_password": "Quiet-lantern-orbit-7731"})
    assert response.status_code == 503, response.json
    with _services(outage_app).session_factory() as session:
        assert session.get(RefreshFamily, sid).revoked_at is None
        assert session.get(User, user.id).tokens_valid_after == 0
        assert not session.scalars(select(AuditEvent).where(
            AuditEvent.action == AuditAction.LOGOUT, AuditEvent.target == user.id)).all()
    private_redis.start()
    assert _profile(client, one).status_code == 200


def test_a_version_not_published_after_the_commit_keeps_the_user_on_the_database(
        outage_app, make_user, private_redis):
    user, client, (one, two) = _two_sessions(outage_app, make_user)
    assert _profile(client, one).status_code == 200 and _profile(client, two).status_code == 200
    stopped = []

    def stop_after_commit(_session):
        if not stopped:  # Redis goes away between the commit and the version's publication
            stopped.append(True)
            private_redis.stop(keep_data=True)

    factory = _services(outage_app).session_factory
    event.listen(factory, "after_commit", stop_after_commit)
    try:
        assert client.post("/v1/logout", headers=bearer(one)).status_code == 200
    finally:
        event.remove(factory, "after_commit", stop_after_commit)
    assert stopped
    private_redis.start()  # back with its data: the pending marker is still there
    key = AuthVersions.key(user.id)
    assert private_redis.value(key).startswith(PENDING)
    response = _profile(client, one)
    assert response.status_code == 401 and response.json["error"] == "token_revoked"
    assert _profile(client, two).status_code == 200
    assert private_redis.value(key).startswith(PENDING)  # readers cache nothing meanwhile


def test_redis_restarted_empty_is_still_correct(outage_app, make_user, private_redis):
    _, client, (one, two) = _two_sessions(outage_app, make_user)
    assert _profile(client, one).status_code == 200 and _profile(client, two).status_code == 200
    private_redis.stop()
    private_redis.start()  # empty: every version is gone
    assert _profile(client, one).status_code == 200
    assert client.post("/v1/logout", headers=bearer(one)).status_code == 200
    response = _profile(client, one)
    assert response.status_code == 401 and response.json["error"] == "token_revoked"
    assert _profile(client, two).status_code == 200
