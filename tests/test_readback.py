"""Read-back: after each grant and revoke the target is asked whether it really happened.

Through HTTP against real targets: moto's EC2 server (rules deleted or kept behind the
service's back by a provisioner subclass swapped into the registry for one test) and a local
webhook receiver that serves `status_url`. Time moves by setting the due columns into the past,
as tests/test_recovery.py does.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import threading
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest
from prometheus_client import REGISTRY as PROMETHEUS
from sqlalchemy import select, update

from security_api import audit
from security_api.access import readback, reaper
from security_api.access.catalog import ensure_permission, ensure_rule
from security_api.access.provisioning import REVOKE_RETRY_SECONDS
from security_api.clock import utcnow
from security_api.enums import PolicyMode
from security_api.models import AccessRequest, AuditEvent, OutboxMessage
from security_api.provisioners.aws_security_group import AwsSecurityGroupProvisioner
from security_api.provisioners.base import REGISTRY
from tests.conftest import bearer
from tests.servers import free_port, ingress

SIGNING_SECRET = "readback-signing-secret-Kd3Hs6Bw1Qm7Xr2L"
CIDR = "203.0.113.7/32"


# ---- a webhook receiver that also answers status_url -------------------------------------------
class StatusReceiver(ThreadingHTTPServer):
    """Records events (POST) and answers read-backs (GET) as `mode` says.

    truthful: present after a grant event for the id, absent after a revoke; present/absent:
    always that; garbage: not JSON; error: HTTP 503.
    """

    daemon_threads = False

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.mode = "truthful"
        self.granted: set[str] = set()
        self.events: list[tuple[str, str]] = []
        self.reads: list[dict] = []
        self.lock = threading.Lock()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}{path}"


class _Handler(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 -- the name http.server dispatches to
        event = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with self.server.lock:
            self.server.events.append((event["event"], event["request_id"]))
            (self.server.granted.add if event["event"] == "grant"
             else self.server.granted.discard)(event["request_id"])
        self._answer(200, b"{}")

    def do_GET(self):  # noqa: N802
        query = urlsplit(self.path).query
        ours = query.split("&", 1)[1] if query.startswith("token=") else query
        expected = "sha256=" + hmac.new(SIGNING_SECRET.encode(), ours.encode(),
                                        hashlib.sha256).hexdigest()
        request_id = parse_qs(ours)["request_id"][0]
        with self.server.lock:
            self.server.reads.append({
                "request_id": request_id, "token": parse_qs(query).get("token"),
                "signed": hmac.compare_digest(expected, self.headers["X-Security-API-Signature"]),
                "header": self.headers.get("X-Receiver-Token")})
            present = {"truthful": request_id in self.server.granted, "present": True,
                       "absent": False}.get(self.server.mode)
        if self.server.mode == "garbage":
            self._answer(200, b"<html>not json</html>")
        elif self.server.mode == "error":
            self._answer(503, b"{}")
        else:
            self._answer(200, json.dumps({"present": present}).encode())

    def _answer(self, status: int, body: bytes):
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def target():
    server = StatusReceiver()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join()


# ---- helpers ------------------------------------------------------------------------------------
def _kw():
    return {"actor": "test", "origin": audit.Origin(), "now": utcnow()}


def add_permission(app, key: str, *, provisioner: str, config: dict | None = None) -> None:
    """An auto-granted permission for every developer."""
    services = app.extensions["security_api"]
    with services.session_factory() as session:
        ensure_permission(session, key=key, name=key, max_duration_minutes=60,
                          provisioner=provisioner, provisioner_config=config,
                          settings=services.settings, **_kw())
        ensure_rule(session, permission=key, role="developer", subrole="*", mode=PolicyMode.AUTO,
                    **_kw())
        session.commit()


class Caller:
    """alice, signed in once, calling the API."""

    def __init__(self, client, token: str):
        self.client, self.headers = client, bearer(token)

    def request(self, permission: str, **body) -> dict:
        response = self.client.post("/v1/requests", headers=self.headers,
                                    json={"permission": permission, **body})
        assert response.status_code == 201, response.json
        return response.json["request"]

    def revoke(self, request_id: str) -> dict:
        response = self.client.post(f"/v1/requests/{request_id}/revoke", headers=self.headers)
        assert response.status_code == 200, response.json
        return response.json["request"]

    def get(self, request_id: str) -> dict:
        response = self.client.get(f"/v1/requests/{request_id}", headers=self.headers)
        assert response.status_code == 200, response.json
        return response.json["request"]


@pytest.fixture
def alice(client, make_user, login_as) -> Caller:
    return Caller(client, login_as(make_user("alice", email="alice@example.com"))["token"])


def row(app, request_id: str) -> AccessRequest:
    with app.extensions["security_api"].session_factory() as session:
        found = session.get(AccessRequest, request_id)
        session.expunge(found)
        return found


def set_columns(app, request_id: str, **values) -> None:
    with app.extensions["security_api"].session_factory() as session:
        session.execute(update(AccessRequest).where(AccessRequest.id == request_id).values(**values))
        session.commit()


def verify_audits(app, request_id: str) -> list[tuple[str, str, str]]:
    """(action, step, outcome) of every read-back audit event of one request, in order."""
    with app.extensions["security_api"].session_factory() as session:
        rows = session.execute(select(AuditEvent.action, AuditEvent.details)
                               .where(AuditEvent.target == request_id,
                                      AuditEvent.action.like("provisioning.verif%"))
                               .order_by(AuditEvent.seq))
        return [(action, json.loads(d)["action"], json.loads(d)["outcome"]) for action, d in rows]


def notices(app, request_id: str) -> list[dict]:
    """The read-back notifications written to the outbox for one request."""
    with app.extensions["security_api"].session_factory() as session:
        payloads = session.scalars(select(OutboxMessage.payload)
                                   .where(OutboxMessage.kind == "provisioning.verify_failed"))
        return [p for p in payloads if p["request"]["id"] == request_id]


def verifications(provisioner: str, step: str, outcome: str) -> float:
    return PROMETHEUS.get_sample_value("security_api_provisioning_verifications_total", {
        "provisioner": provisioner, "step": step, "outcome": outcome}) or 0.0


def due_now(app, request_id: str, **extra) -> None:
    """Time passes: the owed read-back (and any owed revoke retry) is due now."""
    past = utcnow() - timedelta(seconds=max(readback.VERIFY_RETRY_SECONDS, REVOKE_RETRY_SECONDS) + 1)
    values = {"provisioning_started_at": past, **extra}
    if row(app, request_id).verify_due_at is not None:
        values["verify_due_at"] = past
    set_columns(app, request_id, **values)


@pytest.fixture
def app(make_app, moto_endpoint, aws_env):
    return make_app(webhook_signing_secret=SIGNING_SECRET, aws_endpoint_url=moto_endpoint,
                    aws_region="eu-west-1")


# ---- aws_security_group against moto's EC2 server -----------------------------------------------
@pytest.fixture
def sg(app, ec2, group_id) -> str:
    add_permission(app, "bastion", provisioner="aws_security_group",
                   config={"group_id": group_id, "ports": [22, {"from": 5432, "to": 5433}]})
    return group_id


def ours(ec2, group_id: str, request_id: str) -> set[tuple]:
    return {rule for rule in ingress(ec2, group_id) if request_id in (rule[4] or "")}


def delete_behind_the_back(ec2, group_id: str, request_id: str) -> None:
    """Someone removes the request's rules straight in EC2, not through the service."""
    for protocol, low, high, cidr, _ in ours(ec2, group_id, request_id):
        ec2.revoke_security_group_ingress(GroupId=group_id, IpPermissions=[{
            "IpProtocol": protocol, "FromPort": low, "ToPort": high,
            "IpRanges": [{"CidrIp": cidr}]}])


def swap(monkeypatch, **methods) -> None:
    """Serve `aws_security_group` with a subclass for this test (it does not register itself)."""
    monkeypatch.setitem(REGISTRY, "aws_security_group",
                        type("Swapped", (AwsSecurityGroupProvisioner,), methods))


def test_aws_grant_and_revoke_are_read_back(app, alice, ec2, sg):
    before = verifications("aws_security_group", "grant", "confirmed")
    made = alice.request("bastion", params={"cidr": CIDR})
    assert made["status"] == "active"
    assert made["verified_at"]["grant"] is not None and made["verified_at"]["revoke"] is None
    assert made["provisioning"]["verify_grant"]["outcome"] == "confirmed"
    assert len(ours(ec2, sg, made["id"])) == 2
    assert verifications("aws_security_group", "grant", "confirmed") == before + 1
    ended = alice.revoke(made["id"])
    assert ended["verified_at"]["grant"] == made["verified_at"]["grant"]
    assert ended["verified_at"]["revoke"] is not None
    assert ours(ec2, sg, made["id"]) == set()
    assert row(app, made["id"]).provisioning_state is None
    assert verify_audits(app, made["id"]) == [("provisioning.verified", "grant", "confirmed"),
                                              ("provisioning.verified", "revoke", "confirmed")]
    assert notices(app, made["id"]) == []


def test_aws_grant_whose_rule_vanished_before_the_read_back_fails(app, alice, ec2, sg, monkeypatch):
    def grant(self, ctx):
        result = AwsSecurityGroupProvisioner.grant(self, ctx)
        delete_behind_the_back(ec2, sg, ctx.request_id)
        return result

    swap(monkeypatch, grant=grant)
    made = alice.request("bastion", params={"cidr": CIDR})
    assert (made["status"], made["expires_at"]) == ("failed", None)
    assert made["verified_at"] == {"grant": None, "revoke": None}
    assert made["provisioning"]["grant"]["ok"] is True
    assert made["provisioning"]["verify_grant"]["outcome"] == "contradicted"
    assert made["provisioning"]["cleanup"]["ok"] is True
    assert ours(ec2, sg, made["id"]) == set()
    assert verify_audits(app, made["id"]) == [("provisioning.verify_failed", "grant", "contradicted")]
    [notice] = notices(app, made["id"])
    assert notice["request"]["readback"] == {"step": "grant", "outcome": "contradicted"}
    assert notice["recipients"] == ["alice@example.com"]


def test_aws_revoke_that_leaves_the_rule_stays_owed_until_it_is_gone(app, alice, ec2, sg,
                                                                    monkeypatch):
    made = alice.request("bastion", params={"cidr": CIDR})
    swap(monkeypatch, revoke=lambda self, ctx: {"provisioner": "aws_security_group", "removed": []})
    ended = alice.revoke(made["id"])
    assert ended["status"] == "revoked" and ended["verified_at"]["revoke"] is None
    assert ended["provisioning"]["verify_revoke"]["outcome"] == "contradicted"
    assert row(app, made["id"]).provisioning_state == "revoke_failed"
    assert len(ours(ec2, sg, made["id"])) == 2
    services = app.extensions["security_api"]
    due_now(app, made["id"])
    reaper.reap_once(services)  # retried; the target still disagrees: owed, told only once
    assert row(app, made["id"]).provisioning_state == "revoke_failed"
    assert len(notices(app, made["id"])) == 1
    monkeypatch.setitem(REGISTRY, "aws_security_group", AwsSecurityGroupProvisioner)
    due_now(app, made["id"])
    reaper.reap_once(services)
    done = row(app, made["id"])
    assert done.provisioning_state is None and done.revoke_verified_at is not None
    assert ours(ec2, sg, made["id"]) == set()
    assert verify_audits(app, made["id"]) == [
        ("provisioning.verified", "grant", "confirmed"),
        ("provisioning.verify_failed", "revoke", "contradicted"),
        ("provisioning.verify_failed", "revoke", "contradicted"),
        ("provisioning.verified", "revoke", "confirmed")]
    [notice] = notices(app, made["id"])
    assert notice["request"]["readback"] == {"step": "revoke", "outcome": "contradicted"}


def test_aws_read_back_ignores_someone_elses_rule_for_the_same_address(app, alice, ec2, sg):
    ec2.authorize_security_group_ingress(GroupId=sg, IpPermissions=[{
        "IpProtocol": "tcp", "FromPort": 22, "ToPort": 22,
        "IpRanges": [{"CidrIp": CIDR, "Description": "office"}]}])
    made = alice.request("bastion", params={"cidr": CIDR})
    ended = alice.revoke(made["id"])
    # The office rule still opens port 22 to the address: not ours, so the revoke is confirmed.
    assert ended["verified_at"]["revoke"] is not None
    assert (("tcp", 22, 22, CIDR, "office")) in ingress(ec2, sg)


# ---- none -------------------------------------------------------------------------------------
def test_none_provisioner_is_not_read_back(app, alice):
    add_permission(app, "vpn", provisioner="none")
    before = verifications("none", "grant", "unsupported")
    made = alice.request("vpn")
    assert made["status"] == "active" and made["verified_at"] == {"grant": None, "revoke": None}
    assert "verify_grant" not in made["provisioning"]
    ended = alice.revoke(made["id"])
    assert ended["verified_at"] == {"grant": None, "revoke": None}
    assert "verify_revoke" not in ended["provisioning"]
    assert row(app, made["id"]).provisioning_state is None
    assert row(app, made["id"]).verify_due_at is None
    assert verify_audits(app, made["id"]) == []
    assert verifications("none", "grant", "unsupported") == before + 1


# ---- webhook with status_url --------------------------------------------------------------------
def add_hook(app, target: StatusReceiver, *, status_url: str | None = "live") -> None:
    config = {"url": target.url("/hook"), "headers": {"X-Receiver-Token": "r-token"}}
    if status_url == "live":
        config["status_url"] = target.url("/status?token=abc")
    elif status_url:
        config["status_url"] = status_url
    add_permission(app, "hook", provisioner="webhook", config=config)


def use_live_status_url(app, target: StatusReceiver) -> None:
    from security_api.models import Permission
    with app.extensions["security_api"].session_factory() as session:
        permission = session.get(Permission, "hook")
        permission.provisioner_config = {**permission.provisioner_config,
                                         "status_url": target.url("/status?token=abc")}
        session.commit()


def test_webhook_grant_and_revoke_are_read_back_with_a_signed_get(app, alice, target):
    add_hook(app, target)
    made = alice.request("hook")
    assert made["status"] == "active" and made["verified_at"]["grant"] is not None
    ended = alice.revoke(made["id"])
    assert ended["verified_at"]["revoke"] is not None
    assert target.events == [("grant", made["id"]), ("revoke", made["id"])]
    assert [(r["request_id"], r["signed"], r["token"], r["header"]) for r in target.reads] == \
        [(made["id"], True, ["abc"], "r-token")] * 2


def test_webhook_answering_absent_fails_the_grant_and_undoes_it(app, alice, target):
    add_hook(app, target)
    target.mode = "absent"
    made = alice.request("hook")
    assert made["status"] == "failed" and made["verified_at"]["grant"] is None
    assert target.events == [("grant", made["id"]), ("revoke", made["id"])]  # the cleanup
    assert verify_audits(app, made["id"]) == [("provisioning.verify_failed", "grant", "contradicted")]
    assert len(notices(app, made["id"])) == 1


def test_webhook_without_status_url_is_not_read_back(app, alice, target):
    add_hook(app, target, status_url=None)
    made = alice.request("hook")
    assert made["status"] == "active" and made["verified_at"] == {"grant": None, "revoke": None}
    assert target.reads == [] and verify_audits(app, made["id"]) == []


@pytest.mark.parametrize("trouble", ["garbage", "error", "down"])
def test_an_unreadable_target_leaves_the_grant_active_and_the_reaper_reads_back_later(
        app, alice, target, trouble):
    add_hook(app, target, status_url=f"http://127.0.0.1:{free_port()}/status"
             if trouble == "down" else "live")
    target.mode = trouble
    before = verifications("webhook", "grant", "unavailable")
    made = alice.request("hook")
    assert made["status"] == "active" and made["verified_at"]["grant"] is None
    assert made["provisioning"]["verify_grant"]["outcome"] == "unavailable"
    assert row(app, made["id"]).verify_due_at is not None
    assert verifications("webhook", "grant", "unavailable") == before + 1
    reaper.reap_once(app.extensions["security_api"])  # not due yet: nothing read
    assert row(app, made["id"]).provisioning["verify_grant"]["attempts"] == 1
    target.mode = "truthful"
    use_live_status_url(app, target)
    due_now(app, made["id"])
    reaper.reap_once(app.extensions["security_api"])
    later = alice.get(made["id"])
    assert later["status"] == "active" and later["verified_at"]["grant"] is not None
    assert row(app, made["id"]).verify_due_at is None
    assert verify_audits(app, made["id"]) == [("provisioning.verify_failed", "grant", "unavailable"),
                                              ("provisioning.verified", "grant", "confirmed")]
    assert notices(app, made["id"]) == []


def test_a_later_read_back_that_finds_the_grant_missing_fails_and_undoes_it(app, alice, target):
    add_hook(app, target)
    target.mode = "error"
    made = alice.request("hook")
    target.mode = "absent"
    due_now(app, made["id"])
    reaper.reap_once(app.extensions["security_api"])
    later = alice.get(made["id"])
    assert later["status"] == "failed"
    assert target.events == [("grant", made["id"]), ("revoke", made["id"])]
    stored = row(app, made["id"])
    assert (stored.provisioning_state, stored.verify_due_at) == (None, None)
    assert later["provisioning"]["cleanup"]["ok"] is True
    # The cleanup is read back like any revoke: the target says absent, which confirms it.
    assert later["verified_at"]["revoke"] is not None
    assert [n["request"]["readback"]["outcome"] for n in notices(app, made["id"])] == ["contradicted"]


def test_the_reaper_gives_up_reading_back_after_max_attempts(app, alice, target):
    add_hook(app, target)
    target.mode = "error"
    made = alice.request("hook")
    for _ in range(readback.MAX_ATTEMPTS - 1):
        due_now(app, made["id"])
        reaper.reap_once(app.extensions["security_api"])
    stored = row(app, made["id"])
    assert stored.status == "active" and stored.verify_due_at is None
    assert stored.provisioning["verify_grant"]["attempts"] == readback.MAX_ATTEMPTS
    assert verify_audits(app, made["id"]) == \
        [("provisioning.verify_failed", "grant", "unavailable")] * readback.MAX_ATTEMPTS
    [notice] = notices(app, made["id"])
    assert notice["request"]["readback"] == {"step": "grant", "outcome": "unavailable"}
    due_now(app, made["id"])
    reaper.reap_once(app.extensions["security_api"])
    assert len(target.reads) == readback.MAX_ATTEMPTS  # given up: not read again


def test_a_revoke_that_cannot_be_read_back_stays_owed_until_it_can(app, alice, target):
    add_hook(app, target)
    made = alice.request("hook")
    target.mode = "error"
    ended = alice.revoke(made["id"])
    assert ended["verified_at"]["revoke"] is None
    assert row(app, made["id"]).provisioning_state == "revoke_failed"
    target.mode = "truthful"
    due_now(app, made["id"])
    reaper.reap_once(app.extensions["security_api"])
    stored = row(app, made["id"])
    assert stored.provisioning_state is None and stored.revoke_verified_at is not None
    assert target.events == [("grant", made["id"]), ("revoke", made["id"]), ("revoke", made["id"])]



def test_a_revoke_that_can_never_be_read_back_is_done_after_max_attempts(app, alice, target):
    add_hook(app, target)
    made = alice.request("hook")
    target.mode = "error"
    alice.revoke(made["id"])
    for _ in range(readback.MAX_ATTEMPTS - 1):
        assert row(app, made["id"]).provisioning_state == "revoke_failed"
        due_now(app, made["id"])
        reaper.reap_once(app.extensions["security_api"])
    stored = row(app, made["id"])
    assert (stored.provisioning_state, stored.revoke_verified_at) == (None, None)
    assert stored.provisioning["verify_revoke"]["attempts"] == readback.MAX_ATTEMPTS
    [notice] = notices(app, made["id"])
    assert notice["request"]["readback"] == {"step": "revoke", "outcome": "unavailable"}

# ---- the portal shows what the target confirmed ------------------------------------------------
def test_the_portal_timeline_shows_the_read_backs(app, make_user, target):
    from tests.portal_support import post_form, signed_in_client
    from tests.test_concurrency import create_pending
    user = make_user("alice")
    add_hook(app, target)
    request_id = create_pending(app, user, "hook")
    browser = signed_in_client(app, user)
    page = f"/portal/requests/{request_id}"
    assert "Verified at the target: the access is in place" in browser.get(page).get_data(as_text=True)
    assert post_form(browser, f"{page}/revoke", token_from=page).status_code == 302
    text = browser.get(page).get_data(as_text=True)
    assert "Verified at the target: the access is removed" in text
    spanish = browser.get(page, headers={"Accept-Language": "es"}).get_data(as_text=True)
    assert "Verificado en el destino: el acceso se ha retirado" in spanish


# ---- the parts on their own ---------------------------------------------------------------------
@pytest.mark.parametrize("status_url", ["ftp://x.example.com/status", "", "http://", 5,
                                        "https://x.example.com:99999/s"])
def test_a_bad_status_url_is_refused_by_field(status_url):
    from security_api.errors import InvalidParams
    from security_api.provisioners.webhook import WebhookProvisioner
    from tests.test_provisioners import make_settings
    with pytest.raises(InvalidParams) as caught:
        WebhookProvisioner(make_settings()).validate_config(
            {"url": "https://x.example.com/hook", "status_url": status_url})
    assert caught.value.errors[0]["field"] == "config.status_url"


@pytest.mark.parametrize(("body", "present"), [(b'{"present": true}', True),
                                               (b'{"present": false, "since": "x"}', False)])
def test_a_status_answer_is_read(body, present):
    from security_api.provisioners._webhook_status import _present
    assert _present(body) is present


@pytest.mark.parametrize("body", [b"", b"[]", b'{"present": "yes"}', b'{"present": 1}', b"{}",
                                  b'{"present": null}', b"\xff", b'{"present": true}' + b" " * 1024])
def test_a_bad_status_answer_proves_nothing(body):
    from security_api.provisioners._webhook_status import _present
    from security_api.provisioners.base import ProvisioningError
    with pytest.raises(ProvisioningError):
        _present(body)


@pytest.mark.parametrize(("step", "outcome", "words"), [
    ("grant", "contradicted", "was not found at the target after the grant"),
    ("revoke", "contradicted", "is still present at the target after the revoke"),
    ("grant", "unavailable", "could not be read back after the grant")])
def test_the_notification_says_what_the_target_contradicted(step, outcome, words):
    from security_api.integrations.notify_texts import VERIFY_FAILED, texts
    request = {"requester": "alice", "permission": "bastion<!here>",
               "readback": {"step": step, "outcome": outcome}}
    subject, body, chat = texts(VERIFY_FAILED, request, link="https://x/r/1")
    assert subject == "[Security API] read-back failed: alice's access to bastion<!here>"
    assert words in body and words in chat
    assert "<!here>" not in chat and "&lt;!here&gt;" in chat


def test_the_read_back_outcome_depends_on_the_step():
    settled = {}
    for step, outcome in [("grant", "confirmed"), ("revoke", "confirmed")]:
        record, columns, check = readback.settle({}, {"outcome": outcome, "error": None, "at": "t"},
                                                 step=step, now=utcnow())
        settled[step] = (sorted(columns), check["attempts"], list(record))
    assert settled == {"grant": (["grant_verified_at", "verify_due_at"], 1, ["verify_grant"]),
                       "revoke": (["revoke_verified_at"], 1, ["verify_revoke"])}
    assert readback.revoke_done(None) is True
    assert readback.revoke_done({"outcome": "contradicted", "attempts": 9}) is False
    assert readback.revoke_done({"outcome": "unavailable", "attempts": 1}) is False
    assert readback.revoke_done({"outcome": "unavailable", "attempts": readback.MAX_ATTEMPTS})


def test_the_openapi_document_describes_verified_at(client):
    document = client.get("/v1/openapi.json").json
    text = json.dumps(document)
    assert '"verified_at"' in text
    schemas = document["components"]["schemas"]
    verified = next(schema for name, schema in schemas.items() if name.startswith("VerifiedAtOut"))
    assert set(verified["properties"]) == {"grant", "revoke"}
