"""Start-up tasks: the runner, each task against real servers, and once per instance under gunicorn."""
from __future__ import annotations

import json
import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from sqlalchemy import select

from config import ConfigError
from security_api.models import AuditEvent
from security_api.provisioners import aws_security_group
from security_api.startup import RequiredTaskFailed, Task, release, run_startup_tasks
from tests.receivers import serving
from tests.servers import GUNICORN, ROOT, call, free_port, ingress, server_env, start_gunicorn

CLOSED_URL = "http://127.0.0.1:{port}"


def _services(app):
    return app.extensions["security_api"]


def _events(app) -> list[tuple[str, str, dict]]:
    """(action, target, details) of every start-up event, oldest first."""
    with _services(app).session_factory() as session:
        rows = session.execute(select(AuditEvent.action, AuditEvent.target, AuditEvent.details,
                                      AuditEvent.actor, AuditEvent.ip)
                               .where(AuditEvent.action.like("startup.%"))
                               .order_by(AuditEvent.seq)).all()
    assert all(row.actor == "system" and row.ip == "startup" for row in rows)
    return [(row.action, row.target, json.loads(row.details)) for row in rows]


@pytest.fixture
def receiver():
    with serving() as server:
        yield server


def _unreachable_metadata() -> dict:
    """Settings under which allow_instance_address fails fast: nothing answers at the IMDS URL."""
    return {"instance_address": "imds:local-ipv4",
            "instance_metadata_url": CLOSED_URL.format(port=free_port()),
            "startup_security_group_id": "sg-0123abcd", "startup_security_group_ports": "22"}


# ---- runner --------------------------------------------------------------------------------------
def test_notify_started_is_sent_logged_and_audited(make_app, receiver, caplog):
    app = make_app(startup_tasks=("notify_started",), notify_webhook_url=receiver.url)
    caplog.set_level("INFO", logger="security_api.startup")
    [result] = run_startup_tasks(_services(app))

    assert result.ok and result.detail == {"webhook": 200}
    [call] = receiver.received
    assert call["json"]["text"].startswith("Security API started on ")
    [(action, target, details)] = _events(app)
    assert (action, target) == ("startup.task_succeeded", "notify_started")
    assert details["required"] is False and details["result"] == {"webhook": 200}
    assert "start-up task notify_started succeeded" in caplog.text


def test_a_failing_optional_task_is_audited_and_the_next_one_runs(make_app, receiver):
    app = make_app(startup_tasks=("allow_instance_address", "notify_started"),
                   notify_webhook_url=receiver.url, **_unreachable_metadata())
    failed, sent = run_startup_tasks(_services(app))

    assert not failed.ok and failed.error == "instance metadata unreachable: ConnectionError"
    assert sent.ok and len(receiver.received) == 1
    assert [(a, t) for a, t, _ in _events(app)] == [
        ("startup.task_failed", "allow_instance_address"),
        ("startup.task_succeeded", "notify_started")]
    assert _events(app)[0][2]["error"] == failed.error


def test_a_failing_required_task_stops_the_start(make_app, receiver):
    app = make_app(startup_tasks=("allow_instance_address!", "notify_started"),
                   notify_webhook_url=receiver.url, **_unreachable_metadata())
    with pytest.raises(RequiredTaskFailed, match="required start-up task allow_instance_address "
                                                 "failed: instance metadata unreachable"):
        run_startup_tasks(_services(app))

    # Nothing announces a start that did not happen.
    assert receiver.received == []
    [(action, target, details)] = _events(app)
    assert (action, target, details["required"]) == ("startup.task_failed",
                                                     "allow_instance_address", True)


def test_a_webhook_refusal_fails_the_notification(make_app, receiver):
    receiver.status = 500
    app = make_app(startup_tasks=("notify_started",), notify_webhook_url=receiver.url)
    [result] = run_startup_tasks(_services(app))
    assert not result.ok and result.error == "webhook answered HTTP 500"


def test_an_unexpected_error_is_reported_by_class_only(make_app, caplog):
    def crash(_services):
        raise RuntimeError("postgresql://user:hunter2@db/prod")

    registry = {"crash": Task(check=lambda settings: None, run=crash),
                "fine": Task(check=lambda settings: None, run=lambda services: {"done": True})}
    app = make_app()
    services = _services(app)
    services = replace(services, settings=replace(services.settings, startup_tasks=("crash", "fine")))
    caplog.set_level("INFO")
    crashed, fine = run_startup_tasks(services, registry=registry)
    assert crashed.error == "unexpected RuntimeError" and fine.ok
    assert "hunter2" not in json.dumps(_events(app)) and "hunter2" not in caplog.text


@pytest.mark.parametrize(("entries", "problem"), [
    (("notify_started", "reboot_everything"), "unknown task 'reboot_everything'"),
    (("notify_started!!",), "malformed"),
    (("!notify_started",), "malformed"),
    (("notify_started", "notify_started!"), "twice"),
])
def test_bad_task_lists_are_refused_at_start(make_app, receiver, entries, problem):
    with pytest.raises(ConfigError, match=problem):
        make_app(startup_tasks=entries, notify_webhook_url=receiver.url)


@pytest.mark.parametrize(("settings", "problem"), [
    ({"startup_tasks": ("notify_started",)}, "notify_started needs NOTIFY_WEBHOOK_URL"),
    ({"startup_tasks": ("allow_instance_address",), "startup_security_group_ports": "22"},
     "group_id"),
    ({"startup_tasks": ("allow_instance_address",), "startup_security_group_id": "sg-0123abcd",
      "startup_security_group_ports": "ssh"}, "not a port"),
    ({"startup_tasks": ("allow_instance_address",), "startup_security_group_id": "sg-0123abcd",
      "startup_security_group_ports": "22", "instance_address": "imds:hostname"},
     "INSTANCE_ADDRESS must be"),
    ({"startup_tasks": ("allow_instance_address",), "startup_security_group_id": "sg-0123abcd",
      "startup_security_group_ports": "22", "instance_address": "10.0.0.300"},
     "INSTANCE_ADDRESS is not an IP"),
])
def test_task_settings_are_checked_at_start(make_app, settings, problem):
    with pytest.raises(ConfigError, match=problem):
        make_app(**settings)


def test_cli_runs_the_tasks_and_fails_on_a_required_one(make_app, receiver):
    app = make_app(startup_tasks=("notify_started",), notify_webhook_url=receiver.url)
    result = app.test_cli_runner().invoke(args=["run-startup-tasks"])
    assert result.exit_code == 0 and "notify_started: ok" in result.output
    assert len(receiver.received) == 1

    app = make_app(startup_tasks=("allow_instance_address!",), **_unreachable_metadata())
    result = app.test_cli_runner().invoke(args=["run-startup-tasks"])
    assert result.exit_code == 1
    assert "required start-up task allow_instance_address failed" in result.output


# ---- allow_instance_address against moto's EC2 server and a fake metadata service ---------------
def test_allow_instance_address_opens_the_group(make_app, moto_endpoint, ec2, group_id):
    app = make_app(startup_tasks=("allow_instance_address!",), instance_address="198.51.100.7",
                   startup_security_group_id=group_id, startup_security_group_ports="5432,8000-8080",
                   aws_endpoint_url=moto_endpoint, aws_region="eu-west-1")
    [result] = run_startup_tasks(_services(app))

    assert result.ok, result.error
    description = "security-api request instance-startup for 198.51.100.7"
    assert ingress(ec2, group_id) == {("tcp", 5432, 5432, "198.51.100.7/32", description),
                                      ("tcp", 8000, 8080, "198.51.100.7/32", description)}
    # A restart finds its rules already there: no error, nothing added.
    [again] = run_startup_tasks(_services(app))
    assert again.ok and len(again.detail["already_open"]) == 2
    assert len(ingress(ec2, group_id)) == 2
    # Before gunicorn forks its workers, the AWS client the task used is closed and forgotten.
    assert aws_security_group._clients
    release(_services(app))
    assert not aws_security_group._clients


class _Metadata(ThreadingHTTPServer):
    """A fake IMDSv2: a token by PUT, then metadata by GET with that token only."""

    token = "imds-session-token-123"

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _MetadataHandler)
        self.requests: list[tuple[str, str]] = []


class _MetadataHandler(BaseHTTPRequestHandler):
    def do_PUT(self):  # noqa: N802
        self.server.requests.append(("PUT", self.path))
        ok = self.path == "/latest/api/token" and self.headers.get(
            "X-aws-ec2-metadata-token-ttl-seconds")
        self._answer(200 if ok else 400, self.server.token)

    def do_GET(self):  # noqa: N802
        self.server.requests.append(("GET", self.path))
        if self.headers.get("X-aws-ec2-metadata-token") != self.server.token:
            self._answer(401, "")
        elif self.path == "/latest/meta-data/local-ipv4":
            self._answer(200, "10.0.3.25")
        else:
            self._answer(404, "")

    def _answer(self, status, text):
        body = text.encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):  # noqa: A002
        pass


@pytest.fixture
def metadata():
    server = _Metadata()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join()


def test_the_address_comes_from_imdsv2(make_app, metadata, moto_endpoint, ec2, group_id):
    app = make_app(startup_tasks=("allow_instance_address",), instance_address="imds:local-ipv4",
                   instance_metadata_url=f"http://127.0.0.1:{metadata.server_address[1]}",
                   startup_security_group_id=group_id, startup_security_group_ports="22",
                   aws_endpoint_url=moto_endpoint, aws_region="eu-west-1")
    [result] = run_startup_tasks(_services(app))

    assert result.ok and result.detail["address"] == "10.0.3.25"
    assert metadata.requests == [("PUT", "/latest/api/token"), ("GET", "/latest/meta-data/local-ipv4")]
    assert {rule[3] for rule in ingress(ec2, group_id)} == {"10.0.3.25/32"}


def test_a_metadata_answer_that_is_not_an_address_fails(make_app, metadata):
    app = make_app(startup_tasks=("allow_instance_address",), instance_address="imds:public-ipv4",
                   instance_metadata_url=f"http://127.0.0.1:{metadata.server_address[1]}",
                   startup_security_group_id="sg-0123abcd", startup_security_group_ports="22")
    [result] = run_startup_tasks(_services(app))
    assert result.error == "instance metadata public-ipv4 answered HTTP 404"


# ---- once per instance under gunicorn ------------------------------------------------------------
def test_gunicorn_runs_the_tasks_once_not_per_worker(app, database_url, receiver, tmp_path):
    env = {"STARTUP_TASKS": "notify_started", "NOTIFY_WEBHOOK_URL": receiver.url}
    with start_gunicorn(database_url, log_dir=tmp_path, workers=2, env=env) as server:
        # Both workers are up and serving before the count is taken: concurrent requests
        # keep one worker busy, so the other answers too.
        def health(_):
            return call(server.base, "GET", "/v1/health")[2]

        with ThreadPoolExecutor(max_workers=8) as pool:
            request_ids = set()
            for _ in range(30):
                request_ids |= set(pool.map(health, range(16)))
                if len(server.workers_of(request_ids)) >= 2:
                    break
            else:
                pytest.fail("only one gunicorn worker ever answered")
    assert len(receiver.received) == 1
    assert [(a, t) for a, t, _ in _events(app)] == [("startup.task_succeeded", "notify_started")]


def test_gunicorn_refuses_to_start_when_a_required_task_fails(app, database_url, receiver):
    env = server_env(database_url, free_port(), STARTUP_TASKS="allow_instance_address!,notify_started",
                     NOTIFY_WEBHOOK_URL=receiver.url, INSTANCE_ADDRESS="imds:local-ipv4",
                     INSTANCE_METADATA_URL=CLOSED_URL.format(port=free_port()),
                     STARTUP_SECURITY_GROUP_ID="sg-0123abcd", STARTUP_SECURITY_GROUP_PORTS="22")
    finished = subprocess.run([str(GUNICORN), "-c", "gunicorn.conf.py", "flask_api:application"],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert finished.returncode == 1
    assert "required start-up task allow_instance_address failed" in finished.stderr
    assert "Booting worker" not in finished.stderr
    assert receiver.received == []
