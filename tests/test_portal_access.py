"""The portal's request pages through HTTP: catalog, create, my requests, one request, approvals,
actions, and the password change; every rule is the domain's, so these check the wiring.
"""
from __future__ import annotations

import html
import re
import socket
from dataclasses import dataclass

import pytest
from sqlalchemy import func, select

from security_api import audit
from security_api.access import lifecycle
from security_api.access.catalog import ensure_permission, ensure_rule
from security_api.access.grants import Subject
from security_api.accounts.passwords import verify_password
from security_api.clock import utcnow
from security_api.enums import PolicyMode, RequestStatus
from security_api.models import AccessRequest, Approval, User
from tests.portal_support import portal_client, post_form, signed_in_client
from tests.test_announce import undelivered, wait_for

SIGNING_SECRET = "x" * 40
NEW_PASSWORD = "copper-lantern-meadow-77"
AUTO, APPROVAL, STANDING = PolicyMode.AUTO, PolicyMode.APPROVAL, PolicyMode.STANDING
USERS = {  # name: (role, subrole)
    "alice": ("developer", "backend"),
    "fred": ("developer", "frontend"),
    "lead": ("security", "lead"),
    "lead2": ("security", "lead"),
    "admin": ("security", "admin"),
}
ALERT = re.compile(r'<div class="flash flash-error" role="alert">(.*?)</div>', re.S)
STATUS = re.compile(r'<div class="flash" role="status">(.*?)</div>', re.S)
REQUEST_PATH = re.compile(r"^/portal/requests/([0-9a-f-]{36})$")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _kw():
    return {"actor": "test", "origin": audit.Origin(), "now": utcnow()}


def build_catalog(app) -> None:
    services = app.extensions["security_api"]
    hook_url = f"http://127.0.0.1:{_free_port()}/hook"  # nothing listens: provisioning fails
    with services.session_factory() as session:
        for key, name, max_minutes, extra in [
            ("vpn", "VPN access", 60, {}),
            ("db", "Production database", 120, {"requires_justification": True}),
            ("prod", "Production servers", 240, {}),
            ("ops", "Ops console", 60, {}),
            ("badge", "Door badge", 60, {}),
            ("secret", "Secret store", 60, {}),
            ("hook", "Webhook thing", 60,
             {"provisioner": "webhook", "provisioner_config": {"url": hook_url}}),
        ]:
            ensure_permission(session, key=key, name=name, max_duration_minutes=max_minutes,
                              settings=services.settings, **extra, **_kw())
        for permission, role, subrole, mode, extra in [
            ("vpn", "developer", "*", AUTO, {}),
            ("db", "developer", "*", APPROVAL, {"approvers": ["security/lead"]}),
            ("prod", "developer", "backend", APPROVAL,
             {"approvers": ["security"], "approvals_required": 2}),
            ("ops", "*", "*", APPROVAL, {"approvers": ["security"]}),
            ("badge", "developer", "backend", STANDING, {}),
            ("secret", "security", "*", AUTO, {}),
            ("hook", "developer", "backend", AUTO, {}),
        ]:
            ensure_rule(session, permission=permission, role=role, subrole=subrole, mode=mode,
                        **extra, **_kw())
        session.commit()


@dataclass
class World:
    app: object
    users: dict
    recorded: list
    clients: dict

    @property
    def sent(self) -> list:
        """What the notifier was asked to send, once the outbox (a background thread) is empty."""
        wait_for(lambda: undelivered(self.app) == 0, what="the notifications")
        return self.recorded

    def client(self, name: str):
        """One signed-in portal client per user (a sign-in spends a TOTP step)."""
        if name not in self.clients:
            self.clients[name] = signed_in_client(self.app, self.users[name])
        return self.clients[name]

    def request(self, name: str, permission: str, **fields):
        data = {"permission": permission, "justification": "", "duration_minutes": "30"}
        data.update(fields)
        return post_form(self.client(name), "/portal/requests", data, token_from="/portal/catalog")

    def open(self, name: str, permission: str, **fields) -> str:
        response = self.request(name, permission, **fields)
        assert response.status_code == 302, text(response)[:2000]
        match = REQUEST_PATH.match(response.headers["Location"])
        assert match, response.headers["Location"]
        return match.group(1)

    def act(self, name: str, request_id: str, action: str, **fields):
        return post_form(self.client(name), f"/portal/requests/{request_id}/{action}", fields,
                         token_from=f"/portal/requests/{request_id}")

    def row(self, request_id: str) -> AccessRequest:
        with self.app.extensions["security_api"].session_factory() as session:
            row = session.get(AccessRequest, request_id)
            session.expunge(row)
            return row

    def count(self, model) -> int:
        with self.app.extensions["security_api"].session_factory() as session:
            return session.scalar(select(func.count()).select_from(model))


@pytest.fixture
def app(make_app):
    return make_app(webhook_signing_secret=SIGNING_SECRET)


@pytest.fixture
def world(app, make_user, monkeypatch) -> World:
    users = {name: make_user(name, role=role, subrole=subrole, email=f"{name}@example.com")
             for name, (role, subrole) in USERS.items()}
    build_catalog(app)
    sent = []
    notifier = app.extensions["security_api"].notifier

    def send(kind, request, *, recipients, delivery_id=None, done=frozenset()):
        what = recipients if kind == "request.pending" else request["status"]
        sent.append((kind.removeprefix("request."), request["id"], what))
        return set()

    monkeypatch.setattr(notifier, "send", send)
    return World(app, users, sent, {})


def text(response) -> str:
    return response.get_data(as_text=True)


def alerts(page: str) -> list[str]:
    return [html.unescape(m.strip()) for m in ALERT.findall(page)]


def statuses(page: str) -> list[str]:
    return [html.unescape(m.strip()) for m in STATUS.findall(page)]


def cards(page: str) -> dict[str, str]:
    """The catalog's cards by permission key."""
    found = {}
    for chunk in page.split('<section class="card" aria-labelledby="perm-')[1:]:
        key = chunk.split('"', 1)[0]
        found[key] = html.unescape(chunk.split("</section>", 1)[0])
    return found


def timeline(page: str) -> str:
    match = re.search(r'<ol class="timeline">(.*?)</ol>', page, re.S)
    assert match, page[:3000]
    return html.unescape(match.group(1))


def follow(client, response):
    assert response.status_code == 302, text(response)[:2000]
    return client.get(response.headers["Location"])


# ---- catalog -----------------------------------------------------------------------------------
def test_catalog_says_what_will_happen_before_asking(world):
    page = world.client("alice").get("/portal/catalog")
    assert page.status_code == 200
    found = cards(text(page))
    # Standing (badge) and other roles' permissions (secret) are not offered.
    assert sorted(found) == ["db", "hook", "ops", "prod", "vpn"]
    assert "Granted at once for up to 60 minutes" in found["vpn"]
    assert "Justification optional" in found["vpn"]
    assert 'name="duration_minutes" type="number" min="1" max="60"' in found["vpn"]
    assert "Needs approval by security/lead (1 approval)" in found["db"]
    assert "Justification required" in found["db"]
    assert re.search(r'<textarea[^>]*name="justification"[^>]*required', found["db"])
    assert 'max="120"' in found["db"] and "2 hours" in found["db"]
    assert "Needs approval by security (2 approvals)" in found["prod"]
    for key, card in found.items():
        assert f'<input type="hidden" name="permission" value="{key}">' in card
        assert 'name="csrf_token"' in card and ">Request</button>" in card
    fred = cards(text(world.client("fred").get("/portal/catalog")))
    assert sorted(fred) == ["db", "ops", "vpn"]


def test_signed_out_pages_send_to_sign_in(world):
    client = portal_client(world.app)
    for path in ("/portal/catalog", "/portal/requests", "/portal/approvals", "/portal/password"):
        response = client.get(path)
        assert response.status_code == 302
        assert response.headers["Location"] == f"/portal/sign-in?next={path.replace('/', '%2F')}" \
            or response.headers["Location"] == f"/portal/sign-in?next={path}"
    response = client.post("/portal/requests", data={"permission": "vpn"})
    assert response.status_code == 400  # no CSRF token either way; nothing is created
    assert world.count(AccessRequest) == 0


# ---- creating ----------------------------------------------------------------------------------
def test_auto_request_is_active_at_once_and_shows_on_my_access(world):
    client = world.client("alice")
    response = world.request("alice", "vpn", duration_minutes="45")
    request_id = REQUEST_PATH.match(response.headers["Location"]).group(1)
    page = text(follow(client, response))
    assert any(message.startswith("Granted: you hold VPN access until") for message in statuses(page))
    assert '<span class="badge badge-active">Active</span>' in page
    assert re.search(r"4[45] min left", page)
    assert "Granted until" in timeline(page) and "Requested by alice" in timeline(page)
    row = world.row(request_id)
    assert row.status == RequestStatus.ACTIVE and row.duration_minutes == 45
    assert world.sent == []  # auto grants send no news, as through the API

    home = text(client.get("/portal/"))
    active = home.split('id="active-heading"', 1)[1].split("</section>", 1)[0]
    assert "VPN access" in active and re.search(r"4[45] min left", active)
    assert f"/portal/requests/{request_id}/revoke" in active


def test_approval_request_is_pending_and_an_approver_approves_it(world):
    client = world.client("alice")
    response = world.request("alice", "db", justification="incident 4711", duration_minutes="90")
    request_id = REQUEST_PATH.match(response.headers["Location"]).group(1)
    page = text(follow(client, response))
    assert "Sent for approval to security/lead." in statuses(page)
    assert '<span class="badge badge-pending">Pending</span>' in page
    assert "Waiting for 1 more approval by security/lead" in timeline(page)
    assert world.row(request_id).status == RequestStatus.PENDING
    assert world.sent == [("pending", request_id, ["lead2@example.com", "lead@example.com"])]
    # The requester is offered Cancel, never Approve.
    assert f"/portal/requests/{request_id}/cancel" in page
    assert f"/portal/requests/{request_id}/approve" not in page
    mine = text(client.get("/portal/requests"))
    assert f'href="/portal/requests/{request_id}"' in mine and "badge badge-pending" in mine

    lead = world.client("lead")
    approvals = text(lead.get("/portal/approvals"))
    assert f'action="/portal/requests/{request_id}/approve"' in approvals
    assert f'action="/portal/requests/{request_id}/deny"' in approvals
    assert "incident 4711" in approvals and "alice" in approvals and "1 h 30 min" in approvals
    response = post_form(lead, f"/portal/requests/{request_id}/approve",
                         {"comment": "ok for the incident", "next": "/portal/approvals"},
                         token_from="/portal/approvals")
    assert response.status_code == 302 and response.headers["Location"] == "/portal/approvals"
    after = text(lead.get(response.headers["Location"]))
    assert any(m.startswith("Approved: the access is granted until") for m in statuses(after))
    assert f"/portal/requests/{request_id}/approve" not in after

    assert world.row(request_id).status == RequestStatus.ACTIVE
    assert world.sent[-1] == ("decided", request_id, "active")
    page = text(client.get(f"/portal/requests/{request_id}"))
    assert '<span class="badge badge-active">Active</span>' in page
    story = timeline(page)
    assert "Approved by lead" in story and "ok for the incident" in story
    assert "Granted until" in story
    assert "Production database" in text(client.get("/portal/")).split(
        'id="active-heading"', 1)[1].split("</section>", 1)[0]


def test_two_approvals_needed_the_first_leaves_it_pending(world):
    request_id = world.open("alice", "prod")
    response = world.act("lead", request_id, "approve", comment="one")
    page = text(follow(world.client("lead"), response))
    assert "Your approval is recorded; more approvals are needed." in statuses(page)
    assert "Waiting for 1 more approval by security" in timeline(page)
    # Decided already: no second approval is offered, and a second POST is refused.
    assert f"/portal/requests/{request_id}/approve" not in page
    again = text(follow(world.client("lead"), world.act("lead", request_id, "approve")))
    assert alerts(again) == ["You have already decided this request."]
    assert world.row(request_id).status == RequestStatus.PENDING
    world.act("admin", request_id, "approve", comment="two")
    assert world.row(request_id).status == RequestStatus.ACTIVE


def test_deny_with_a_comment_shows_in_the_timeline(world):
    request_id = world.open("alice", "db", justification="want it")
    response = world.act("lead", request_id, "deny", comment="not during the freeze")
    assert response.headers["Location"] == f"/portal/requests/{request_id}"
    page = text(follow(world.client("lead"), response))
    assert "The request is denied." in statuses(page)
    assert world.row(request_id).status == RequestStatus.DENIED
    assert world.sent[-1] == ("decided", request_id, "denied")
    page = text(world.client("alice").get(f"/portal/requests/{request_id}"))
    assert '<span class="badge badge-denied">Denied</span>' in page
    story = timeline(page)
    assert "Denied by lead" in story and "not during the freeze" in story
    assert "/cancel" not in page and "/approve" not in page


def test_requester_cancels_a_pending_request(world):
    request_id = world.open("alice", "db", justification="want it")
    response = world.act("alice", request_id, "cancel")
    page = text(follow(world.client("alice"), response))
    assert "The request is cancelled." in statuses(page)
    assert '<span class="badge badge-cancelled">Cancelled</span>' in page
    assert "Cancelled by alice" in timeline(page)
    assert world.row(request_id).status == RequestStatus.CANCELLED
    # Not pending any more: the domain refuses, the page says so, nothing changes.
    page = text(follow(world.client("alice"), world.act("alice", request_id, "cancel")))
    assert alerts(page) == ["The request is not pending."]
    assert world.row(request_id).status == RequestStatus.CANCELLED
    # The approver can no longer decide it either.
    page = text(follow(world.client("lead"), world.act("lead", request_id, "approve")))
    assert alerts(page) == ["The request is not pending."]
    assert world.count(Approval) == 0


def test_revoke_an_active_grant(world):
    request_id = world.open("alice", "vpn")
    response = world.act("alice", request_id, "revoke")
    page = text(follow(world.client("alice"), response))
    assert "The access is revoked." in statuses(page)
    assert '<span class="badge badge-revoked">Revoked</span>' in page
    assert "Revoked" in timeline(page)
    assert "/revoke" not in page
    assert world.row(request_id).status == RequestStatus.REVOKED
    assert "VPN access" not in text(world.client("alice").get("/portal/")).split(
        'id="active-heading"', 1)[1].split("</section>", 1)[0]


def test_revoke_from_my_access_goes_back_to_the_request(world):
    request_id = world.open("alice", "vpn")
    response = post_form(world.client("alice"), f"/portal/requests/{request_id}/revoke",
                         token_from="/portal/")
    assert response.headers["Location"] == f"/portal/requests/{request_id}"
    assert world.row(request_id).status == RequestStatus.REVOKED


def test_an_admin_may_revoke_someone_elses_grant_an_approver_may_not(world):
    request_id = world.open("alice", "vpn")
    # An auto grant has no approvers: to anyone but its requester and admins it does not exist.
    assert world.client("lead").get(f"/portal/requests/{request_id}").status_code == 404
    assert world.act("lead", request_id, "revoke").status_code == 404
    page = text(world.client("admin").get(f"/portal/requests/{request_id}"))
    assert f"/portal/requests/{request_id}/revoke" in page
    world.act("admin", request_id, "revoke")
    assert world.row(request_id).status == RequestStatus.REVOKED


def test_failed_provisioning_is_said_on_the_page(world):
    response = world.request("alice", "hook")
    request_id = REQUEST_PATH.match(response.headers["Location"]).group(1)
    page = text(follow(world.client("alice"), response))
    assert world.row(request_id).status == RequestStatus.FAILED
    [message] = alerts(page)
    assert message.startswith("Your request was accepted, but setting up the access failed:")
    assert '<span class="badge badge-failed">Failed</span>' in page
    assert "Setting up the access failed:" in timeline(page)
    assert world.sent[-1] == ("decided", request_id, "failed")


def test_a_failed_request_is_retried_by_an_admin_not_by_its_requester(world):
    response = world.request("alice", "hook")
    request_id = REQUEST_PATH.match(response.headers["Location"]).group(1)
    retry_path = f"/portal/requests/{request_id}/retry"
    assert retry_path not in text(world.client("alice").get(f"/portal/requests/{request_id}"))
    refused = world.act("alice", request_id, "retry")
    assert refused.status_code == 302
    assert "Only an approver or an administrator" in " ".join(
        alerts(text(follow(world.client("alice"), refused))))
    assert retry_path in text(world.client("admin").get(f"/portal/requests/{request_id}"))
    retried = world.act("admin", request_id, "retry")
    [message] = alerts(text(follow(world.client("admin"), retried)))
    assert message.startswith("Setting up the access failed again:")  # nothing listens yet
    assert world.row(request_id).status == RequestStatus.FAILED


# ---- refusals ----------------------------------------------------------------------------------
@pytest.mark.parametrize(("permission", "fields", "status", "message"), [
    ("vpn", {"duration_minutes": "61"}, 412, "Duration (minutes): must be at most 60"),
    ("vpn", {"duration_minutes": "0"}, 412, "Duration (minutes): Input should be greater than or equal to 1"),
    ("vpn", {"duration_minutes": "ten"}, 412, "Duration (minutes): must be a whole number of minutes"),
    ("db", {"justification": "   "}, 412, "Justification: is required for this permission"),
    ("db", {"justification": "x\x00y"}, 412, "Justification: must not contain NUL characters"),
    ("secret", {}, 403, "This permission is not requestable for your role."),
    ("badge", {}, 409, "You hold this permission already (standing)."),
    ("no such thing", {}, 412, None),
])
def test_a_refused_request_shows_the_catalog_again_with_the_reason(world, permission, fields,
                                                                   status, message):
    response = world.request("alice", permission, **fields)
    assert response.status_code == status
    page = text(response)
    found = alerts(page)
    assert found, page[:2000]
    if message:
        assert found == [message]
    assert "Granted at once for up to 60 minutes" in page  # the catalog, to try again
    assert world.count(AccessRequest) == 0


def test_asking_twice_is_a_conflict_and_the_typed_text_is_kept(world):
    world.open("alice", "db", justification="first")
    response = world.request("alice", "db", justification="second try", duration_minutes="77")
    assert response.status_code == 409
    page = text(response)
    assert alerts(page) == ["You already have a pending request for this permission."]
    db_card = cards(page)["db"]
    assert "second try</textarea>" in db_card and 'value="77"' in db_card
    assert "Your request is waiting for approval." in db_card
    assert world.count(AccessRequest) == 1


def test_requester_cannot_approve_their_own_request(world):
    # lead is in the approver group (security) of ops, but not for their own request.
    request_id = world.open("lead", "ops")
    page = text(world.client("lead").get(f"/portal/requests/{request_id}"))
    assert f"/portal/requests/{request_id}/approve" not in page
    assert f"/portal/requests/{request_id}/approve" not in text(
        world.client("lead").get("/portal/approvals"))
    for action in ("approve", "deny"):
        response = world.act("lead", request_id, action, comment="me, myself")
        assert response.headers["Location"] == f"/portal/requests/{request_id}"
        page = text(world.client("lead").get(response.headers["Location"]))
        assert alerts(page) == ["You cannot decide your own request."]
    assert world.row(request_id).status == RequestStatus.PENDING
    assert world.count(Approval) == 0
    # Another approver of the group sees it and may decide it.
    assert f"/portal/requests/{request_id}/approve" in text(
        world.client("lead2").get("/portal/approvals"))


def test_a_post_without_its_csrf_token_changes_nothing(world):
    client = world.client("alice")
    form = {"permission": "vpn", "justification": "no token", "duration_minutes": "30"}
    assert client.post("/portal/requests", data=form).status_code == 400
    answer = client.post("/portal/requests", data={**form, "csrf_token": "forged"})
    assert answer.status_code == 400 and "security token" in text(answer)
    assert world.count(AccessRequest) == 0

    request_id = world.open("alice", "db", justification="pending")
    for who, action in (("lead", "approve"), ("lead", "deny"), ("alice", "cancel")):
        answer = world.client(who).post(f"/portal/requests/{request_id}/{action}",
                                        data={"comment": "no token"})
        assert answer.status_code == 400
    assert world.row(request_id).status == RequestStatus.PENDING
    assert world.count(Approval) == 0
    answer = client.post("/portal/password", data={
        "current_password": world.users["alice"].password, "new_password": NEW_PASSWORD,
        "confirm_password": NEW_PASSWORD})
    assert answer.status_code == 400
    assert client.get("/portal/").status_code == 200  # still signed in, password unchanged


def test_someone_elses_request_is_404(world):
    request_id = world.open("alice", "db", justification="mine")
    active_id = world.open("alice", "vpn")
    fred = world.client("fred")
    for target in (request_id, active_id):
        response = fred.get(f"/portal/requests/{target}")
        assert response.status_code == 404
        assert "No such request." in text(response)
        for action in ("cancel", "revoke", "approve", "deny"):
            answer = post_form(fred, f"/portal/requests/{target}/{action}", {"comment": "x"},
                               token_from="/portal/catalog")
            assert answer.status_code == 404, action
    assert world.row(request_id).status == RequestStatus.PENDING
    assert world.row(active_id).status == RequestStatus.ACTIVE
    assert fred.get("/portal/requests/not-an-id").status_code == 404
    assert fred.get("/portal/requests/00000000-0000-0000-0000-000000000000").status_code == 404
    assert request_id not in text(fred.get("/portal/requests"))


# ---- my requests -------------------------------------------------------------------------------
def test_my_requests_newest_first_a_page_at_a_time(world):
    services = world.app.extensions["security_api"]
    user = world.users["alice"]
    subject = Subject(user.id, user.username, "developer", "backend", "person")
    ids = []
    with services.session_factory() as session:
        for _ in range(26):
            created = lifecycle.create_request(
                session, services, requester=subject, permission_key="ops", justification="",
                duration_minutes=None, params={}, origin=audit.Origin(), now=utcnow())
            ids.append(created.id)
            lifecycle.cancel(session, services, request_id=created.id,
                             actor=lifecycle.Actor(subject), origin=audit.Origin(), now=utcnow())
    client = world.client("alice")
    first = text(client.get("/portal/requests"))
    listed = re.findall(r'href="/portal/requests/([0-9a-f-]{36})"', first)
    assert listed == list(reversed(ids))[:25]
    assert first.count('<span class="badge badge-cancelled">Cancelled</span>') == 25
    more = re.search(r'<a class="button secondary" href="([^"]+)" rel="next">More</a>', first)
    assert more, first[-3000:]
    second = text(client.get(html.unescape(more.group(1))))
    assert re.findall(r'href="/portal/requests/([0-9a-f-]{36})"', second) == [ids[0]]
    assert 'rel="next"' not in second
    bad = client.get("/portal/requests?cursor=nonsense")
    assert bad.status_code == 412


# ---- password ----------------------------------------------------------------------------------
def _password_form(user, new: str = NEW_PASSWORD, confirm: str | None = None,
                   current: str | None = None) -> dict:
    return {"current_password": user.password if current is None else current,
            "new_password": new, "confirm_password": new if confirm is None else confirm}


def _password_hash(world, name: str) -> str:
    with world.app.extensions["security_api"].session_factory() as session:
        return session.get(User, world.users[name].id).password_hash


def test_password_page_has_the_three_fields(world):
    page = text(world.client("alice").get("/portal/password"))
    for name in ("current_password", "new_password", "confirm_password"):
        assert f'name="{name}" type="password"' in page
        assert f'<label for="{name}">' in page


def test_password_mismatch_is_refused_and_nothing_changes(world):
    client = world.client("alice")
    before = _password_hash(world, "alice")
    response = post_form(client, "/portal/password",
                         _password_form(world.users["alice"], confirm=NEW_PASSWORD + "x"))
    assert response.status_code == 412
    assert alerts(text(response)) == [
        "The new password and its confirmation differ. Nothing was changed."]
    assert _password_hash(world, "alice") == before
    assert client.get("/portal/").status_code == 200  # still signed in


def test_password_policy_and_wrong_current_password_are_refused(world):
    client = world.client("alice")
    before = _password_hash(world, "alice")
    response = post_form(client, "/portal/password", _password_form(world.users["alice"], new="short"))
    assert response.status_code == 412
    assert alerts(text(response))[0].startswith("New password: ")
    response = post_form(client, "/portal/password",
                         _password_form(world.users["alice"], current="not-my-password"))
    assert response.status_code == 403
    assert alerts(text(response)) == ["The current password is wrong."]
    assert _password_hash(world, "alice") == before
    assert client.get("/portal/").status_code == 200


def test_wrong_current_passwords_count_toward_the_lockout(world):
    client = world.client("alice")
    for _ in range(5):
        response = post_form(client, "/portal/password",
                             _password_form(world.users["alice"], current="not-my-password"))
        assert response.status_code == 403
    response = post_form(client, "/portal/password", _password_form(world.users["alice"]))
    assert response.status_code == 429
    assert "locked" in alerts(text(response))[0]
    assert int(response.headers["Retry-After"]) > 0


def test_password_change_signs_out_every_session(world):
    user = world.users["alice"]
    first = world.client("alice")
    second = signed_in_client(world.app, user)  # the same person in another browser
    old_cookie = first.get_cookie("__Host-session").value
    assert second.get("/portal/").status_code == 200

    response = post_form(first, "/portal/password", _password_form(user))
    assert response.status_code == 302 and response.headers["Location"] == "/portal/sign-in"
    page = text(first.get("/portal/sign-in"))
    assert "Password changed. Sign in again." in statuses(page)
    assert verify_password(NEW_PASSWORD, _password_hash(world, "alice"))

    for client in (first, second):
        answer = client.get("/portal/catalog")
        assert answer.status_code == 302
        assert answer.headers["Location"].startswith("/portal/sign-in")
    replay = portal_client(world.app)
    replay.set_cookie("__Host-session", old_cookie, domain="localhost")
    answer = replay.get("/portal/")
    assert answer.status_code == 302 and answer.headers["Location"].startswith("/portal/sign-in")


def test_password_change_is_rate_limited_per_address(make_app, make_user):
    app = make_app(auth_rate_limit=3)
    user = make_user("alice")
    client = signed_in_client(app, user)  # the sign-in spends one of the three
    for _ in range(2):
        response = post_form(client, "/portal/password", _password_form(user, confirm="nope"))
        assert response.status_code == 412
    response = post_form(client, "/portal/password", _password_form(user))
    assert response.status_code == 429
    assert "wait" in alerts(text(response))[0]
    with app.extensions["security_api"].session_factory() as session:
        assert verify_password(user.password, session.get(User, user.id).password_hash)


def test_the_pages_speak_spanish(world):
    """Every page of this module renders in Spanish (the placeholders fit the translations)."""
    request_id = world.open("alice", "prod", justification="deploy")
    world.act("lead", request_id, "approve", comment="uno")
    alice, lead2 = world.client("alice"), world.client("lead2")
    for client in (alice, lead2):
        client.set_cookie("lang", "es", domain="localhost")
    for client, path in ((alice, "/portal/catalog"), (alice, "/portal/requests"),
                         (alice, f"/portal/requests/{request_id}"), (alice, "/portal/password"),
                         (lead2, "/portal/approvals"), (lead2, f"/portal/requests/{request_id}")):
        response = client.get(path)
        assert response.status_code == 200, path
        page = text(response)
        assert '<html lang="es">' in page, path
        assert "Request access</h1>" not in page and ">Approve</button>" not in page, path
    refused = world.request("alice", "vpn", duration_minutes="61")
    assert refused.status_code == 412 and alerts(text(refused))


def test_refusals_are_said_in_the_pages_language(world):
    world.open("alice", "vpn")
    client = world.client("alice")
    client.set_cookie("lang", "es", domain="localhost", secure=True, path="/")
    again = world.request("alice", "vpn")
    assert again.status_code == 409
    assert alerts(text(again)) == ["Ya tienes un acceso activo a este permiso."]
