"""User administration through the HTTP API: /v1/admin/users and its actions."""
from __future__ import annotations

import uuid

import pytest
from sqlalchemy import select

from security_api import audit
from security_api.accounts import users as accounts
from security_api.clock import utcnow
from security_api.models import AuditEvent, RecoveryCode, User
from tests.conftest import DEFAULT_PASSWORD, basic, bearer
from web.api import admin_users

USERS = "/v1/admin/users"
MASS_ASSIGNMENT_FIELDS = {"kind": "service", "password_hash": "x", "totp_secret": "x",
                          "id": str(uuid.uuid4()), "username": "other", "password": "p",
                          "totp_confirmed": True, "tokens_valid_after": 0,
                          "created_at": "2020-01-01T00:00:00Z"}


@pytest.fixture
def app(make_app):
    """The app, with this blueprint registered if flask_api does not register it yet."""
    built = make_app()
    if "admin_users" not in built.blueprints:
        built.register_blueprint(admin_users.bp)
    return built


@pytest.fixture
def root(make_user):
    return make_user("root", role="security", subrole="admin")


@pytest.fixture
def admin(root, login_as):
    """Headers of a signed-in administrator."""
    return bearer(login_as(root)["token"])


@pytest.fixture
def ensure_role(app):
    def _ensure(role: str, subrole: str) -> None:
        with app.extensions["security_api"].session_factory() as session:
            accounts.create_role(session, name=role, subroles=[subrole], actor="test",
                                 origin=audit.Origin(), now=utcnow())
            session.commit()
    return _ensure


def events(db_session, action: str, target: str) -> list[AuditEvent]:
    db_session.expire_all()
    return list(db_session.scalars(select(AuditEvent).where(
        AuditEvent.action == action, AuditEvent.target == target)))


def profile_status(client, token: str) -> int:
    return client.get("/v1/profile", headers=bearer(token)).status_code


def login(client, username: str, password: str, body: dict | None = None):
    return client.post("/v1/login", headers=basic(username, password), json=body or {})


# ---- who may call ------------------------------------------------------------------------------
ROUTES = [("get", USERS), ("post", USERS), ("get", USERS + "/{id}"), ("patch", USERS + "/{id}"),
          ("post", USERS + "/{id}/reset-totp"), ("post", USERS + "/{id}/reset-password"),
          ("post", USERS + "/{id}/unlock")]


@pytest.mark.parametrize(("method", "path"), ROUTES)
@pytest.mark.parametrize(("actor", "expected"), [("anonymous", 401), ("developer", 403),
                                                 ("service", 403)])
def test_only_admins_may_call(client, make_user, login_as, db_session, method, path, actor,
                              expected):
    target = make_user("bob")
    headers = {}
    if actor == "developer":
        headers = bearer(login_as(make_user("dev"))["token"])
    elif actor == "service":
        headers = bearer(login_as(make_user("ci-bot", role="tools", subrole="ci",
                                            kind="service"))["token"])
    before = db_session.scalar(select(User).where(User.id == target.id))
    snapshot = (before.role, before.active, before.password_hash, before.totp_confirmed)
    body = {"role": "security", "subrole": "admin"} if method == "patch" else {}
    response = getattr(client, method)(path.format(id=target.id), headers=headers, json=body)
    assert response.status_code == expected
    db_session.expire_all()
    after = db_session.scalar(select(User).where(User.id == target.id))
    assert (after.role, after.active, after.password_hash, after.totp_confirmed) == snapshot


def test_routes_are_documented(client):
    from openapi_spec_validator import validate

    document = client.get("/v1/openapi.json").json
    validate(document)
    paths = document["paths"]
    for method, path in ROUTES:
        operation = paths[path.replace("{id}", "{user_id}")][method]
        assert operation["security"] == [{"bearerAuth": []}]
        assert "403" in operation["responses"]


def test_no_deletion(client, admin, make_user):
    response = client.delete(f"{USERS}/{make_user('bob').id}", headers=admin)
    assert response.status_code == 405
    assert "DELETE" not in response.headers["Allow"]


# ---- create --------------------------------------------------------------------------------------
def test_create_person_returns_a_password_once(client, admin, db_session):
    response = client.post(USERS, headers=admin, json={
        "username": "New.Person", "email": "np@example.com", "role": "security",
        "subrole": "admin"})
    assert response.status_code == 201, response.json
    body = response.json
    assert "secret" not in body
    user = body["user"]
    assert user["username"] == "new.person" and user["kind"] == "person"
    assert user["active"] is True and user["totp_enabled"] is False
    # The password works; the person must enroll TOTP before getting tokens.
    first = login(client, "new.person", body["password"])
    assert first.status_code == 403 and first.json["error"] == "totp_enrollment_required"
    assert client.get(f"{USERS}/{user['id']}", headers=admin).json["user"] == user
    [event] = events(db_session, "user.created", user["id"])
    assert event.actor == "root"
    assert body["password"] not in event.details


def test_create_service_returns_a_secret(client, admin, ensure_role):
    ensure_role("tools", "ci")
    response = client.post(USERS, headers=admin, json={
        "username": "deploy-bot", "role": "tools", "subrole": "ci", "kind": "service"})
    assert response.status_code == 201, response.json
    assert "password" not in response.json and response.json["user"]["kind"] == "service"
    assert response.json["user"]["email"] is None
    assert login(client, "deploy-bot", response.json["secret"]).status_code == 200


@pytest.mark.parametrize(("body", "field", "code"), [
    ({"username": "x1", "role": "nope", "subrole": "admin"}, "role", "invalid_params"),
    ({"username": "x1", "role": "security", "subrole": "nope"}, "subrole", "invalid_params"),
    ({"username": "x1", "role": "security", "subrole": "admin", "password": "chosen-by-admin-1"},
     "password", "invalid_params"),
    ({"username": "x1", "role": "security", "subrole": "admin", "active": False},
     "active", "invalid_params"),
    ({"username": "x1", "role": "security", "subrole": "admin", "kind": "robot"},
     "kind", "invalid_params"),
    ({"username": 7, "role": "security", "subrole": "admin"}, "username", "invalid_params"),
    ({"username": "x1", "role": ["security"], "subrole": "admin"}, "role", "invalid_params"),
    ({"username": "x1", "role": "security", "subrole": "admin", "email": "nope"},
     "email", "invalid_params"),
    ({"username": "-bad name", "role": "security", "subrole": "admin"}, "username",
     "invalid_params"),
    ({"role": "security", "subrole": "admin"}, "username", "missing_params"),
])
def test_create_refuses_bad_bodies(client, admin, db_session, body, field, code):
    response = client.post(USERS, headers=admin, json=body)
    assert response.status_code == 412, response.json
    assert response.json["error"] == code
    assert field in {item["field"] for item in response.json["errors"]}
    assert db_session.scalar(select(User).where(User.username == "x1")) is None


def test_create_refuses_a_taken_username(client, admin, make_user):
    make_user("bob")
    response = client.post(USERS, headers=admin, json={
        "username": "BOB", "role": "security", "subrole": "admin"})
    assert response.status_code == 409 and response.json["error"] == "user_exists"


# ---- list and read ---------------------------------------------------------------------------------
def test_pagination_walks_every_user_once(client, admin, make_user):
    for name in ("carol", "bob", "dave", "erin", "frank"):
        make_user(name, totp=False)
    seen, cursor, pages = [], None, 0
    while True:
        query = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        response = client.get(USERS, headers=admin, query_string=query)
        assert response.status_code == 200
        seen += [user["username"] for user in response.json["users"]]
        cursor, pages = response.json["next_cursor"], pages + 1
        if cursor is None:
            break
    assert seen == ["bob", "carol", "dave", "erin", "frank", "root"]
    assert pages == 3


def test_list_filters(client, admin, make_user):
    make_user("bob")
    make_user("bobby", role="finance", subrole="analyst", active=False)
    make_user("ci-bot", role="tools", subrole="ci", kind="service")

    def names(**query):
        response = client.get(USERS, headers=admin, query_string=query)
        assert response.status_code == 200, response.json
        return [user["username"] for user in response.json["users"]]

    assert names() == ["bob", "bobby", "ci-bot", "root"]
    assert names(q="BOB") == ["bob", "bobby"]
    assert names(q="%") == [] and names(q="_") == []
    assert names(role="finance") == ["bobby"]
    assert names(role="security", subrole="admin") == ["root"]
    assert names(kind="service") == ["ci-bot"]
    assert names(active="false") == ["bobby"]
    assert names(active="true", kind="person") == ["bob", "root"]


@pytest.mark.parametrize(("query", "field"), [
    ({"limit": "0"}, "limit"), ({"limit": "201"}, "limit"), ({"limit": "two"}, "limit"),
    ({"kind": "robot"}, "kind"), ({"active": "yes"}, "active"),
    ({"cursor": "%%%not-base64"}, "cursor"), ({"cursor": "_w"}, "cursor"),
])
def test_list_refuses_bad_parameters(client, admin, query, field):
    response = client.get(USERS, headers=admin, query_string=query)
    assert response.status_code == 412
    assert response.json["errors"][0]["field"] == field


@pytest.mark.parametrize("user_id", [str(uuid.uuid4()), "not-a-uuid", "1", "x" * 300, "%00"])
def test_unknown_or_malformed_ids_are_404(client, admin, user_id):
    for method, path in ROUTES[2:]:
        response = getattr(client, method)(path.format(id=user_id), headers=admin,
                                           json={"email": None} if method == "patch" else {})
        assert response.status_code == 404, (method, path, response.json)
        assert response.json["error"] == "not_found"


def test_a_non_canonical_id_is_404(client, admin, root):
    assert client.get(f"{USERS}/{root.id.upper()}", headers=admin).status_code == 404
    assert client.get(f"{USERS}/{root.id}", headers=admin).json["user"]["username"] == "root"


# ---- update ----------------------------------------------------------------------------------------
def test_role_change_kills_tokens_and_is_audited(client, admin, make_user, login_as, db_session,
                                                 ensure_role):
    ensure_role("finance", "analyst")
    bob = make_user("bob")
    token = login_as(bob)["token"]
    assert profile_status(client, token) == 200
    response = client.patch(f"{USERS}/{bob.id}", headers=admin,
                            json={"role": "finance", "subrole": "analyst"})
    assert response.status_code == 200, response.json
    assert response.json["user"]["role"] == "finance"
    assert profile_status(client, token) == 401
    fresh = login_as(bob)
    assert client.get("/v1/profile", headers=bearer(fresh["token"])).json["user"]["role"] == "finance"
    [event] = events(db_session, "user.updated", bob.id)
    assert event.actor == "root"
    assert '"role":{"from":"developer","to":"finance"}' in event.details


def test_subrole_alone_must_exist_in_the_current_role(client, admin, make_user, ensure_role):
    ensure_role("finance", "analyst")
    bob = make_user("bob")
    response = client.patch(f"{USERS}/{bob.id}", headers=admin, json={"subrole": "analyst"})
    assert response.status_code == 412
    assert response.json["errors"] == [{"field": "subrole",
                                        "problem": "developer/analyst does not exist"}]


def test_deactivation_kills_tokens_and_reactivation_restores_sign_in(client, admin, make_user,
                                                                     login_as):
    bob = make_user("bob")
    token = login_as(bob)["token"]
    response = client.patch(f"{USERS}/{bob.id}", headers=admin, json={"active": False})
    assert response.status_code == 200 and response.json["user"]["active"] is False
    assert profile_status(client, token) == 401
    assert login(client, "bob", bob.password, {"totp": "000000"}).status_code == 401
    response = client.patch(f"{USERS}/{bob.id}", headers=admin, json={"active": True})
    assert response.json["user"]["active"] is True
    assert profile_status(client, login_as(bob)["token"]) == 200


def test_email_change_keeps_tokens(client, admin, make_user, login_as, db_session):
    bob = make_user("bob", email="bob@example.com")
    token = login_as(bob)["token"]
    response = client.patch(f"{USERS}/{bob.id}", headers=admin, json={"email": "b@example.org"})
    assert response.json["user"]["email"] == "b@example.org"
    response = client.patch(f"{USERS}/{bob.id}", headers=admin, json={"email": None})
    assert response.status_code == 200 and response.json["user"]["email"] is None
    assert profile_status(client, token) == 200
    assert len(events(db_session, "user.updated", bob.id)) == 2


def test_an_unchanged_value_changes_nothing(client, admin, make_user, login_as, db_session):
    bob = make_user("bob")
    token = login_as(bob)["token"]
    response = client.patch(f"{USERS}/{bob.id}", headers=admin,
                            json={"role": "developer", "active": True})
    assert response.status_code == 200
    assert profile_status(client, token) == 200
    assert events(db_session, "user.updated", bob.id) == []


@pytest.mark.parametrize("field", sorted(MASS_ASSIGNMENT_FIELDS))
def test_update_refuses_every_other_field(client, admin, make_user, db_session, field):
    bob = make_user("bob")
    response = client.patch(f"{USERS}/{bob.id}", headers=admin,
                            json={"email": "b@example.org", field: MASS_ASSIGNMENT_FIELDS[field]})
    assert response.status_code == 412
    assert response.json["errors"] == [{"field": field, "problem": "unknown field"}]
    db_session.expire_all()
    assert db_session.get(User, bob.id).email is None


@pytest.mark.parametrize(("body", "field"), [
    ({"active": "false"}, "active"), ({"active": 0}, "active"), ({"role": 5}, "role"),
    ({"role": None}, "role"), ({"active": None}, "active"), ({"subrole": None}, "subrole"),
    ({"role": "nope"}, "role"), ({"role": "Bad Name"}, "role"), ({"email": "nope"}, "email"),
    ({"email": ["a@b.cd"]}, "email"), ({}, "(body)"),
])
def test_update_refuses_bad_values(client, admin, make_user, body, field):
    bob = make_user("bob")
    response = client.patch(f"{USERS}/{bob.id}", headers=admin, json=body)
    assert response.status_code == 412, response.json
    assert field in {item["field"] for item in response.json["errors"]}


@pytest.mark.parametrize("body", [{"active": False}, {"role": "developer"},
                                  {"subrole": "lead"}, {"role": "developer", "subrole": "backend"}])
def test_admins_cannot_demote_or_deactivate_themselves(client, admin, root, ensure_role,
                                                      db_session, body):
    ensure_role("developer", "admin")
    ensure_role("developer", "backend")
    ensure_role("security", "lead")
    response = client.patch(f"{USERS}/{root.id}", headers=admin, json=body)
    assert response.status_code == 409 and response.json["error"] == "self_change_refused"
    assert profile_status(client, admin["Authorization"].split()[1]) == 200
    assert events(db_session, "user.updated", root.id) == []


@pytest.mark.parametrize("action", ["reset-password", "reset-totp"])
def test_admins_cannot_reset_their_own_credentials(client, admin, root, db_session, action):
    response = client.post(f"{USERS}/{root.id}/{action}", headers=admin, json={})
    assert response.status_code == 409 and response.json["error"] == "self_change_refused"
    assert "password" not in response.json
    assert profile_status(client, admin["Authorization"].split()[1]) == 200
    assert events(db_session, f"user.{action.replace('-', '_')}", root.id) == []


def test_admins_may_change_their_own_email(client, admin, root):
    response = client.patch(f"{USERS}/{root.id}", headers=admin, json={"email": "r@example.com"})
    assert response.status_code == 200 and response.json["user"]["email"] == "r@example.com"


def test_users_can_never_change_their_own_role_kind_or_active(client, make_user, login_as,
                                                              db_session):
    bob = make_user("bob")
    headers = bearer(login_as(bob)["token"])
    patched = client.patch(f"{USERS}/{bob.id}", headers=headers,
                           json={"role": "security", "subrole": "admin"})
    assert patched.status_code == 403
    for extra in ({"role": "security"}, {"kind": "service"}, {"active": True},
                  {"subrole": "admin"}):
        response = client.post("/v1/password", headers=headers, json={
            "current_password": DEFAULT_PASSWORD, "new_password": "another-long-phrase-77",
            **extra})
        assert response.status_code == 412
        assert response.json["errors"][0]["problem"] == "unknown field"
    for path in ("/v1/totp/confirm", "/v1/logout", "/v1/token/refresh"):
        assert client.post(path, headers=headers, json={"role": "security"}).status_code in (
            401, 409, 412)
    db_session.expire_all()
    user = db_session.get(User, bob.id)
    assert (user.role, user.subrole, user.kind, user.active) == ("developer", "backend",
                                                                 "person", True)
    assert profile_status(client, headers["Authorization"].split()[1]) == 200


# ---- resets and unlock -----------------------------------------------------------------------------
def test_reset_totp_forces_enrollment(client, admin, make_user, login_as, db_session):
    bob = make_user("bob")
    token = login_as(bob)["token"]
    with client.application.extensions["security_api"].session_factory() as session:
        codes = accounts._replace_recovery_codes(session, user_id=bob.id, now=utcnow())
        session.commit()
    response = client.post(f"{USERS}/{bob.id}/reset-totp", headers=admin)
    assert response.status_code == 200, response.json
    assert response.json["user"]["totp_enabled"] is False
    assert profile_status(client, token) == 401
    answer = login(client, "bob", bob.password, {"totp": bob.next_code()})
    assert answer.status_code == 403 and answer.json["error"] == "totp_enrollment_required"
    db_session.expire_all()
    assert db_session.get(User, bob.id).totp_secret is None
    assert all(code.used_at is not None for code in db_session.scalars(
        select(RecoveryCode).where(RecoveryCode.user_id == bob.id)))
    assert codes  # none of them is usable any more: the login above never got that far
    [event] = events(db_session, "user.totp_reset", bob.id)
    assert event.actor == "root"


def test_reset_totp_of_a_service_account_is_409(client, admin, make_user):
    bot = make_user("ci-bot", role="tools", subrole="ci", kind="service")
    response = client.post(f"{USERS}/{bot.id}/reset-totp", headers=admin)
    assert response.status_code == 409 and response.json["error"] == "totp_not_applicable"


def test_reset_totp_refuses_a_body(client, admin, make_user):
    bob = make_user("bob")
    response = client.post(f"{USERS}/{bob.id}/reset-totp", headers=admin, json={"force": True})
    assert response.status_code == 412


def test_reset_password_returns_a_working_password(client, admin, make_user, login_as,
                                                   db_session):
    bob = make_user("bob")
    token = login_as(bob)["token"]
    response = client.post(f"{USERS}/{bob.id}/reset-password", headers=admin)
    assert response.status_code == 200, response.json
    new_password = response.json["password"]
    assert "secret" not in response.json and new_password != bob.password
    assert profile_status(client, token) == 401
    assert login(client, "bob", bob.password, {"totp": "000000"}).status_code == 401
    bob.password = new_password
    assert profile_status(client, login_as(bob)["token"]) == 200
    [event] = events(db_session, "user.password_reset", bob.id)
    assert event.actor == "root" and new_password not in event.details


def test_reset_password_of_a_service_account_returns_a_secret(client, admin, make_user):
    bot = make_user("ci-bot", role="tools", subrole="ci", kind="service")
    response = client.post(f"{USERS}/{bot.id}/reset-password", headers=admin)
    assert "password" not in response.json
    assert login(client, "ci-bot", bot.password).status_code == 401
    assert login(client, "ci-bot", response.json["secret"]).status_code == 200


def test_unlock_lets_a_locked_out_user_sign_in(client, admin, make_user, login_as, db_session):
    bob = make_user("bob")
    for _ in range(5):
        assert login(client, "bob", "wrong-password", {"totp": "000000"}).status_code == 401
    locked = login(client, "bob", bob.password, {"totp": bob.next_code()})
    assert locked.status_code == 429 and locked.json["error"] == "locked"
    response = client.post(f"{USERS}/{bob.id}/unlock", headers=admin)
    assert response.status_code == 200 and response.json["user"]["username"] == "bob"
    assert profile_status(client, login_as(bob)["token"]) == 200
    [event] = events(db_session, "user.unlocked", bob.id)
    assert event.actor == "root"
