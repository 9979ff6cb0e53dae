"""Break-glass: granted at once with justification + step-up, told to the security team at once,
reviewed after the fact by an approver of the rule; overdue reviews notified once.

Through HTTP against real local receivers: the webhook provisioner's target (grant and revoke
calls are counted there) and an SMTP server for the notifications.
"""
from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from sqlalchemy import select, update

from security_api import audit
from security_api.access.break_glass import notify_overdue
from security_api.access.break_glass_models import BreakGlassReview
from security_api.access.catalog import ensure_permission, ensure_rule
from security_api.access.reaper import reap_once
from security_api.clock import parse_instant, utcnow
from security_api.enums import PolicyMode
from security_api.models import AccessRequest, AuditEvent, OutboxMessage
from tests import test_notify as kit
from tests.conftest import bearer
from tests.receivers import serving
from tests.test_announce import wait_for

inbox = kit.inbox
SIGNING_SECRET = "b" * 40
TEAM = "soc@example.com"
GOOD = {"permission": "bg", "justification": "prod is down, paging me"}


@pytest.fixture
def hook():
    with serving("/hook") as server:
        yield server


@pytest.fixture
def app(inbox, hook, make_app):
    # make_app last: its teardown (stopping the deliverer) runs before the receivers close.
    return make_app(webhook_signing_secret=SIGNING_SECRET, smtp_host="127.0.0.1",
                    smtp_port=inbox.port, smtp_starttls=False, security_team_emails=(TEAM,))


@pytest.fixture
def world(app, client, make_user, login_as, hook):
    """bg: break_glass for developers, reviewed by security/lead within 60 minutes."""
    people = {"alice": make_user("alice", email="alice@example.com"),
              "bob": make_user("bob"),
              "lead": make_user("lead", role="security", subrole="lead", email="lead@example.com"),
              "lead2": make_user("lead2", role="security", subrole="lead"),
              "admin": make_user("admin", role="security", subrole="admin",
                                 email="admin@example.com")}
    services = app.extensions["security_api"]
    kw = {"actor": "test", "origin": audit.Origin(), "now": utcnow()}
    with services.session_factory() as session:
        ensure_permission(session, key="bg", name="Prod DB (emergency)", max_duration_minutes=120,
                          provisioner="webhook", provisioner_config={"url": hook.url},
                          settings=services.settings, **kw)
        ensure_permission(session, key="vpn", name="VPN", max_duration_minutes=60,
                          settings=services.settings, **kw)
        ensure_rule(session, permission="bg", role="developer", subrole="*",
                    mode=PolicyMode.BREAK_GLASS, max_duration_minutes=60,
                    approvers=["security/lead"], review_within_minutes=60, **kw)
        ensure_rule(session, permission="vpn", role="*", subrole="*", mode=PolicyMode.AUTO, **kw)
        session.commit()
    tokens = {}

    def headers(name: str) -> dict:
        if name not in tokens:
            tokens[name] = bearer(login_as(people[name])["token"])
        return tokens[name]

    def use(**body) -> dict:
        signed_in = headers("alice")  # the login's code first: a step-up code must be newer
        payload = {**GOOD, "totp": people["alice"].next_code(), **body}
        response = client.post("/v1/requests", headers=signed_in, json=payload)
        assert response.status_code == 201, response.json
        return response.json["request"]

    def review(name: str, request_id: str, verdict: str, comment: str = ""):
        return client.post(f"/v1/requests/{request_id}/review", headers=headers(name),
                           json={"verdict": verdict, "comment": comment})

    return type("World", (), {"people": people, "h": staticmethod(headers), "use": staticmethod(use),
                              "review": staticmethod(review), "services": services})


def _rows(app, model, *where):
    with app.extensions["security_api"].session_factory() as session:
        return list(session.scalars(select(model).where(*where)))


def _actions(app, action: str) -> list[AuditEvent]:
    return _rows(app, AuditEvent, AuditEvent.action == action)


# ---- the use ------------------------------------------------------------------------------------
def test_break_glass_is_granted_at_once_and_the_team_told_at_once(app, world, hook, inbox):
    request = world.use(duration_minutes=45)
    assert request["status"] == "active" and request["mode"] == "break_glass"
    assert hook.count("grant", request["id"]) == 1
    review = request["review"]
    assert review["verdict"] is None and review["by"] is None and review["overdue"] is False
    due = parse_instant(review["due_at"], naive_is_utc=False) \
        - parse_instant(request["created_at"], naive_is_utc=False)
    assert due == timedelta(minutes=60)
    [notice] = _rows(app, OutboxMessage, OutboxMessage.kind == "request.break_glass")
    # The configured team address, the security role's people, the rule's reviewers.
    assert notice.payload["recipients"] == sorted(
        [TEAM, "admin@example.com", "lead@example.com"])
    mailed = wait_for(lambda: [r for r, m in inbox.messages() if TEAM in r], what="team mail")
    assert mailed
    [event] = _actions(app, "request.break_glass")
    assert event.actor == "alice" and event.target == request["id"]


def test_a_duration_above_the_rule_maximum_is_refused(client, world):
    response = client.post("/v1/requests", headers=world.h("alice"),
                           json={**GOOD, "duration_minutes": 61, "totp": "123456"})
    assert response.status_code == 412


def test_justification_is_always_required(app, client, world):
    signed_in = world.h("alice")
    response = client.post("/v1/requests", headers=signed_in,
                           json={"permission": "bg", "justification": "  ",
                                 "totp": world.people["alice"].next_code()})
    assert response.status_code == 412
    assert response.json["errors"][0]["field"] == "justification"
    assert _rows(app, AccessRequest) == []


@pytest.mark.parametrize("totp, code", [(None, "step_up_required"), ("１２３４５６", "invalid_step_up"),
                                        ("000000", "invalid_step_up")])
def test_step_up_is_always_required(app, client, world, hook, totp, code):
    body = GOOD if totp is None else {**GOOD, "totp": totp}
    response = client.post("/v1/requests", headers=world.h("alice"), json=body)
    assert response.status_code == 401
    assert response.json["error"] == code
    assert _rows(app, AccessRequest) == [] and hook.count("grant") == 0
    assert _rows(app, OutboxMessage, OutboxMessage.kind == "request.break_glass") == []


# ---- the review ---------------------------------------------------------------------------------
def test_who_may_review(app, world):
    request_id = world.use()["id"]
    own = world.review("alice", request_id, "justified")
    assert own.status_code == 403 and own.json["error"] == "separation_of_duties"
    # Not an approver of the rule: bob may not even see it; admin power alone does not review.
    assert world.review("bob", request_id, "justified").status_code == 404
    assert world.review("admin", request_id, "justified").status_code == 403
    assert _actions(app, "request.reviewed") == []


def test_justified_is_recorded_once_and_the_requester_told(app, world, hook):
    request_id = world.use()["id"]
    response = world.review("lead", request_id, "justified", "incident INC-42")
    assert response.status_code == 200, response.json
    request = response.json["request"]
    assert request["status"] == "active"
    review = request["review"]
    assert (review["verdict"], review["by"], review["comment"]) == (
        "justified", "lead", "incident INC-42")
    assert review["at"] is not None and review["overdue"] is False
    second = world.review("lead2", request_id, "unjustified")
    assert second.status_code == 409 and second.json["error"] == "already_reviewed"
    assert hook.count("revoke", request_id) == 0
    [told] = _rows(app, OutboxMessage, OutboxMessage.kind == "request.reviewed")
    assert told.payload["recipients"] == ["alice@example.com"]
    assert len(_actions(app, "request.reviewed")) == 1


def test_unjustified_revokes_at_once_through_the_provisioner(app, world, hook):
    request_id = world.use()["id"]
    response = world.review("lead", request_id, "unjustified", "no incident open")
    assert response.status_code == 200, response.json
    request = response.json["request"]
    assert request["status"] == "revoked" and request["review"]["verdict"] == "unjustified"
    assert hook.count("revoke", request_id) == 1
    assert "revoke" in request["provisioning"]
    [revoked] = _actions(app, "request.revoked")
    assert revoked.actor == "lead" and '"unjustified"' in revoked.details


def test_unjustified_after_the_grant_ended_keeps_its_end(app, client, world, hook):
    request_id = world.use()["id"]
    revoked = client.post(f"/v1/requests/{request_id}/revoke", headers=world.h("alice"), json={})
    assert revoked.status_code == 200
    response = world.review("lead", request_id, "unjustified")
    assert response.status_code == 200
    assert response.json["request"]["status"] == "revoked"
    assert hook.count("revoke", request_id) == 1  # the requester's revoke, not a second one


def test_only_break_glass_requests_are_reviewed(client, world):
    vpn = client.post("/v1/requests", headers=world.h("bob"), json={"permission": "vpn"})
    assert vpn.status_code == 201 and vpn.json["request"]["review"] is None
    path = f"/v1/requests/{vpn.json['request']['id']}/review"
    response = client.post(path, headers=world.h("admin"), json={"verdict": "justified"})
    assert response.status_code == 409 and response.json["error"] == "not_break_glass"
    # The lead is no approver of vpn (auto): the request is not even visible to them.
    assert client.post(path, headers=world.h("lead"), json={"verdict": "justified"}) \
        .status_code == 404


@pytest.mark.parametrize("body", [{"verdict": "maybe"}, {}, {"verdict": "justified", "x": 1},
                                  {"verdict": "justified", "comment": 5}])
def test_bad_review_bodies_are_412(client, world, body):
    request_id = world.use()["id"]
    response = client.post(f"/v1/requests/{request_id}/review", headers=world.h("lead"), json=body)
    assert response.status_code == 412


# ---- overdue and the unreviewed list -----------------------------------------------------------
def test_an_overdue_review_is_notified_once_however_often_the_reaper_runs(app, world):
    request_id = world.use()["id"]
    with world.services.session_factory() as session:
        session.execute(update(BreakGlassReview).where(BreakGlassReview.request_id == request_id)
                        .values(due_at=utcnow() - timedelta(minutes=1)))
        session.commit()
    reap_once(world.services)
    reap_once(world.services)
    [notice] = _rows(app, OutboxMessage, OutboxMessage.kind == "request.review_overdue")
    assert notice.payload["recipients"] == ["lead@example.com"]
    assert notice.payload["request"]["review"]["overdue"] is True
    assert len(_actions(app, "request.review_overdue")) == 1
    # A late review is still taken, and says it was late.
    late = world.review("lead", request_id, "justified")
    assert late.status_code == 200 and late.json["request"]["review"]["overdue"] is True


def _unreviewed(client, headers) -> list[str]:
    response = client.get("/v1/requests?scope=unreviewed", headers=headers)
    assert response.status_code == 200, response.json
    return [r["id"] for r in response.json["requests"]]


def test_scope_unreviewed_for_reviewers_admins_and_others(client, world):
    request_id = world.use()["id"]
    assert _unreviewed(client, world.h("lead")) == [request_id]
    assert _unreviewed(client, world.h("admin")) == [request_id]
    assert _unreviewed(client, world.h("bob")) == []
    assert _unreviewed(client, world.h("alice")) == []  # never one's own
    assert world.review("lead", request_id, "justified").status_code == 200
    assert _unreviewed(client, world.h("lead2")) == []
    assert _unreviewed(client, world.h("admin")) == []


def test_racing_reapers_notify_an_overdue_review_once(app, world):
    """Two workers (threads, each with its own session) find the same overdue review."""
    request_id = world.use()["id"]
    with world.services.session_factory() as session:
        session.execute(update(BreakGlassReview).where(BreakGlassReview.request_id == request_id)
                        .values(due_at=utcnow() - timedelta(minutes=1)))
        session.commit()
    barrier, told, errors = threading.Barrier(2), [], []

    def reaper():
        try:
            with world.services.session_factory() as session:
                barrier.wait(timeout=10)
                told.append(notify_overdue(session, origin=audit.Origin(ip="reaper"),
                                           now=utcnow()))
        except Exception as exc:  # noqa: BLE001 -- reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=reaper) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert errors == [] and sorted(told) == [0, 1]
    assert len(_rows(app, OutboxMessage, OutboxMessage.kind == "request.review_overdue")) == 1
