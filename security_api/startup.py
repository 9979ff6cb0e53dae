"""Start-up tasks: run once per instance when the service starts, never per worker or request.

STARTUP_TASKS names the tasks, comma-separated, in the order they run. A trailing `!` marks a
task required: when it fails the service does not start. Without `!` a failure is logged and
audited, and the service serves anyway. Example: ``allow_instance_address!,notify_started``.

gunicorn runs them in the master (`when_ready` in gunicorn.conf.py); other runners call
`flask --app flask_api run-startup-tasks` before starting the service.
"""
from __future__ import annotations

import ipaddress
import logging
import re
import socket
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

import requests

from security_api import audit
from security_api.clock import utcnow
from security_api.enums import AuditAction
from security_api.errors import InvalidParams
from security_api.integrations.notify import NotificationError
from security_api.integrations.notify_texts import clean
from security_api.provisioners import GrantContext, ProvisioningError, get_provisioner
from security_api.services import Services
from security_api.settings import Settings

log = logging.getLogger(__name__)

TASK_ENTRY = re.compile(r"(?P<name>[a-z][a-z0-9_]*)(?P<required>!?)")
IMDS_PREFIX = "imds:"
IMDS_KEYS = ("local-ipv4", "public-ipv4")
IMDS_TIMEOUT_SECONDS = 2
IMDS_TOKEN_TTL_SECONDS = 60
# The marker AWS rules of this task carry: "security-api request instance-startup for <address>".
RULE_MARKER = "instance-startup"
ORIGIN = audit.Origin(ip="startup")
PORT_ENTRY = re.compile(r"(\d{1,5})(?:-(\d{1,5}))?")


class TaskError(Exception):
    """A task could not do its job; the message is safe to log and audit."""


class RequiredTaskFailed(RuntimeError):
    """A task marked required failed: the service must not start."""


@dataclass(frozen=True)
class TaskSpec:
    """One entry of STARTUP_TASKS."""

    name: str
    required: bool


@dataclass(frozen=True)
class TaskResult:
    """What one task did: a JSON-able detail when it worked, an error message when not."""

    name: str
    required: bool
    ok: bool
    detail: dict | None = None
    error: str | None = None


@dataclass(frozen=True)
class Task:
    """A start-up task: `check` refuses unusable settings at start, `run` does the work."""

    check: Callable[[Settings], None]
    run: Callable[[Services], dict]


# ---- syntax ----------------------------------------------------------------------------------
def parse_tasks(entries: tuple[str, ...] | list[str], *,
                known: Mapping[str, Task] | None = None) -> list[TaskSpec]:
    """Parse STARTUP_TASKS entries; ValueError for a malformed, unknown or repeated task."""
    known = TASKS if known is None else known
    specs, seen = [], set()
    for entry in entries:
        match = TASK_ENTRY.fullmatch(entry.strip())
        if not match:
            raise ValueError(f"STARTUP_TASKS entry {entry.strip()[:40]!r} is malformed: "
                             "expected a task name, optionally followed by ! (required)")
        name = match["name"]
        if name not in known:
            raise ValueError(f"STARTUP_TASKS names an unknown task {name!r}; "
                             f"known tasks: {sorted(known)}")
        if name in seen:
            raise ValueError(f"STARTUP_TASKS names {name!r} twice")
        seen.add(name)
        specs.append(TaskSpec(name, bool(match["required"])))
    return specs


def check_startup_settings(settings: Settings) -> None:
    """Refuse, at start, the settings a listed task could not work with (ValueError)."""
    for spec in parse_tasks(settings.startup_tasks):
        TASKS[spec.name].check(settings)


# ---- runner ----------------------------------------------------------------------------------
def run_startup_tasks(services: Services, *,
                      registry: Mapping[str, Task] | None = None) -> list[TaskResult]:
    """Run every configured task in order, log and audit each result.

    Raises RequiredTaskFailed at the first required task that fails (later tasks do not run).
    """
    registry = TASKS if registry is None else registry
    results = []
    for spec in parse_tasks(services.settings.startup_tasks, known=registry):
        result = _run_one(services, spec, registry[spec.name])
        audited = _record(services, result)
        results.append(result)
        if spec.required and not (result.ok and audited):
            reason = result.error if not result.ok else "its result could not be audited"
            raise RequiredTaskFailed(f"required start-up task {spec.name} failed: {reason}")
    return results


def release(services: Services) -> None:
    """Close the connections the tasks opened, before this process forks (gunicorn's master):
    workers must never share a database or AWS connection with their parent."""
    services.engine.dispose()
    aws = sys.modules.get("security_api.provisioners.aws_security_group")
    if aws is not None:
        aws.close_clients()


def _run_one(services: Services, spec: TaskSpec, task: Task) -> TaskResult:
    try:
        detail = task.run(services)
    except (TaskError, ProvisioningError, NotificationError) as exc:
        error = str(exc)
    except Exception as exc:  # noqa: BLE001 -- an optional task must never stop the service
        # The class only: messages of unexpected errors may carry URLs or credentials.
        # The traceback goes to DEBUG, for whoever turns that on to investigate.
        log.debug("start-up task %s crashed", spec.name, exc_info=True)
        error = f"unexpected {type(exc).__name__}"
    else:
        log.info("start-up task %s succeeded: %s", spec.name, detail)
        return TaskResult(spec.name, spec.required, True, detail=detail)
    level = logging.ERROR if spec.required else logging.WARNING
    log.log(level, "start-up task %s%s failed: %s", spec.name, " (required)" if spec.required
            else "", error)
    return TaskResult(spec.name, spec.required, False, error=error)


def _record(services: Services, result: TaskResult) -> bool:
    """Write the result to the audit chain; False (logged) when the database refuses."""
    details = {"required": result.required, "instance": clean(socket.gethostname(), limit=128)}
    if result.ok:
        details["result"] = result.detail
    else:
        details["error"] = result.error
    action = AuditAction.STARTUP_TASK_SUCCEEDED if result.ok else AuditAction.STARTUP_TASK_FAILED
    try:
        with services.session_factory() as session:
            audit.record(session, action=action, actor="system", target=result.name,
                         origin=ORIGIN, now=utcnow(), details=details)
            session.commit()
    except Exception as exc:  # noqa: BLE001 -- reported to the caller, which decides
        log.error("could not audit start-up task %s: %s", result.name, type(exc).__name__)
        return False
    return True


# ---- allow_instance_address ------------------------------------------------------------------
def _check_allow_instance_address(settings: Settings) -> None:
    address = settings.instance_address.strip()
    if address.startswith(IMDS_PREFIX):
        if address[len(IMDS_PREFIX):] not in IMDS_KEYS:
            raise ValueError(f"INSTANCE_ADDRESS must be an IP address or one of "
                             f"{[IMDS_PREFIX + key for key in IMDS_KEYS]}")
        parts = urlsplit(settings.instance_metadata_url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError("INSTANCE_METADATA_URL must be an http URL with a host")
    else:
        _checked_ip(address, "INSTANCE_ADDRESS")
    _security_group_config(settings)


def _allow_instance_address(services: Services) -> dict:
    settings = services.settings
    address = instance_address(settings)
    ctx = GrantContext(request_id=RULE_MARKER, requester=address, requester_ip=address,
                       permission="startup:allow_instance_address",
                       config=_security_group_config(settings))
    result = get_provisioner("aws_security_group", settings).grant(ctx)
    return {"address": address, "group_id": result["group_id"], "cidr": result["cidr"],
            "ports": result["ports"], "already_open": result["already_open"]}


def instance_address(settings: Settings) -> str:
    """Return this instance's address: the setting, or EC2 instance metadata (IMDSv2)."""
    configured = settings.instance_address.strip()
    if not configured.startswith(IMDS_PREFIX):
        return configured
    key = configured[len(IMDS_PREFIX):]
    base = settings.instance_metadata_url.rstrip("/")
    try:
        # IMDSv2: a session token first (PUT), so a forwarded GET alone cannot read metadata.
        with requests.put(f"{base}/latest/api/token", timeout=IMDS_TIMEOUT_SECONDS,
                          headers={"X-aws-ec2-metadata-token-ttl-seconds":
                                   str(IMDS_TOKEN_TTL_SECONDS)}, allow_redirects=False) as answer:
            _expect_ok(answer, "token")
            token = answer.text.strip()
        with requests.get(f"{base}/latest/meta-data/{key}", timeout=IMDS_TIMEOUT_SECONDS,
                          headers={"X-aws-ec2-metadata-token": token},
                          allow_redirects=False) as answer:
            _expect_ok(answer, key)
            value = answer.text.strip()
    except requests.RequestException as exc:
        raise TaskError(f"instance metadata unreachable: {type(exc).__name__}") from None
    try:
        return _checked_ip(value, f"instance metadata {key}")
    except ValueError as exc:
        raise TaskError(str(exc)) from None


def _expect_ok(answer: requests.Response, what: str) -> None:
    if answer.status_code != 200:
        raise TaskError(f"instance metadata {what} answered HTTP {answer.status_code}")


def _checked_ip(value: str, label: str) -> str:
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise ValueError(f"{label} is not an IP address") from None


def _security_group_config(settings: Settings) -> dict:
    """Build and check the aws_security_group config from the STARTUP_SECURITY_GROUP_* settings."""
    config = {"group_id": settings.startup_security_group_id,
              "ports": _ports(settings.startup_security_group_ports)}
    try:
        return get_provisioner("aws_security_group", settings).validate_config(config)
    except InvalidParams as exc:
        problems = "; ".join(f"{e['field']}: {e['problem']}" for e in exc.errors or [])
        raise ValueError("STARTUP_SECURITY_GROUP_ID/STARTUP_SECURITY_GROUP_PORTS are not valid: "
                         f"{problems or exc.message}") from None


def _ports(value: str) -> list:
    """Parse "22,8000-8080" into the provisioner's port list."""
    ports = []
    for entry in (part.strip() for part in value.split(",") if part.strip()):
        match = PORT_ENTRY.fullmatch(entry)
        if not match:
            raise ValueError(f"STARTUP_SECURITY_GROUP_PORTS entry {entry[:20]!r} is not a port "
                             "or a range like 8000-8080")
        low = int(match[1])
        ports.append({"from": low, "to": int(match[2])} if match[2] else low)
    return ports


# ---- notify_started --------------------------------------------------------------------------
def _check_notify_started(settings: Settings) -> None:
    if not settings.notify_webhook_url and not (settings.smtp_host and settings.startup_notify_emails):
        raise ValueError("notify_started needs NOTIFY_WEBHOOK_URL, or SMTP_HOST and "
                         "STARTUP_NOTIFY_EMAILS")


def _notify_started(services: Services) -> dict:
    settings = services.settings
    host = clean(socket.gethostname(), limit=128)
    subject = f"Security API started on {host}"
    text = (f"Security API started on {host} ({settings.env}) at "
            f"{utcnow().strftime('%Y-%m-%dT%H:%M:%SZ')}.")
    return services.notifier.service_notice(subject=subject, text=text,
                                            recipients=list(settings.startup_notify_emails))


TASKS: dict[str, Task] = {
    "allow_instance_address": Task(_check_allow_instance_address, _allow_instance_address),
    "notify_started": Task(_check_notify_started, _notify_started),
}
