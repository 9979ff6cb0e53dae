"""Check the deployment files, then start the service the way the Procfile does.

Static part (also run by tests/test_deploy.py): every .ebextensions/*.config is YAML with the
settings we rely on and no secret, the Procfile's web command, the Dockerfile (parsed: there
is no Docker engine in CI) and .dockerignore. Smoke part: `flask init-db` on a temporary
SQLite database, the Procfile's `web:` command on a free port, /v1/health must answer 200,
then SIGTERM must stop it cleanly. Exit status 1 with every problem listed otherwise.

Usage: .venv/bin/python scripts/check_deploy.py [--static-only]
"""
from __future__ import annotations

import json
import os
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import yaml
from cryptography.fernet import Fernet
from dockerfile_parse import DockerfileParser

ROOT = Path(__file__).resolve().parent.parent
WEB_COMMAND = "gunicorn -c gunicorn.conf.py flask_api:application"
WSGI_PATH = "flask_api:application"
HEALTH_PATH = "/v1/health"
BASE_IMAGE = "python:3.11-slim"
# Settings that are secrets: they come from the environment's own properties or secrets.
SECRET_SETTINGS = {"JWT_SECRET", "JWT_PRIVATE_KEY", "DATA_ENCRYPTION_KEYS", "AUDIT_CHAIN_KEY",
                   "DATABASE_URL", "REDIS_URL", "SMTP_PASSWORD", "WEBHOOK_SIGNING_SECRET",
                   "NOTIFY_WEBHOOK_URL"}
DOCKERIGNORED = {".git", ".venv", "node_modules", "instance", "tests", ".env"}
START_TIMEOUT_SECONDS = 60
STOP_TIMEOUT_SECONDS = 30


# ---- static checks ---------------------------------------------------------------------------
def static_problems(root: Path = ROOT) -> list[str]:
    """Return every problem of the deployment files under `root` (empty when all is well)."""
    return (_ebextensions_problems(root) + _procfile_problems(root) + _dockerfile_problems(root)
            + _dockerignore_problems(root))


def load_ebextensions(root: Path) -> dict[str, dict]:
    """Parse every .ebextensions/*.config; ValueError names a file that is not a YAML mapping."""
    documents = {}
    for path in sorted((root / ".ebextensions").glob("*.config")):
        try:
            document = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise ValueError(f"{path.name} is not valid YAML: {exc}") from None
        if not isinstance(document, dict):
            raise ValueError(f"{path.name} must be a YAML mapping")
        documents[path.name] = document
    return documents


def _ebextensions_problems(root: Path) -> list[str]:
    try:
        documents = load_ebextensions(root)
    except ValueError as exc:
        return [str(exc)]
    if not documents:
        return [".ebextensions has no *.config file"]
    options: dict[str, dict] = {}
    commands: dict[str, dict] = {}
    resources: dict[str, dict] = {}
    for document in documents.values():
        for namespace, values in (document.get("option_settings") or {}).items():
            options.setdefault(namespace, {}).update(values or {})
        commands.update(document.get("container_commands") or {})
        resources.update(document.get("Resources") or {})

    def option(namespace: str, name: str):
        return options.get(namespace, {}).get(name)

    problems = []
    expect = [
        ("aws:elasticbeanstalk:container:python", "WSGIPath", WSGI_PATH),
        ("aws:elasticbeanstalk:environment:process:default", "HealthCheckPath", HEALTH_PATH),
        ("aws:elasticbeanstalk:healthreporting:system", "SystemType", "enhanced"),
        ("aws:elasticbeanstalk:environment", "LoadBalancerType", "application"),
        ("aws:elbv2:listener:443", "Protocol", "HTTPS"),
        ("aws:elasticbeanstalk:application:environment", "SECURITY_API_ENV", "production"),
    ]
    for namespace, name, wanted in expect:
        if str(option(namespace, name)) != wanted:
            problems.append(f"{namespace} {name} must be {wanted!r}, not {option(namespace, name)!r}")
    if option("aws:elbv2:listener:443", "SSLCertificateArns"):
        problems.append("the certificate ARN belongs to the environment's settings, not the repository")
    environment = options.get("aws:elasticbeanstalk:application:environment", {})
    leaked = sorted(SECRET_SETTINGS & set(environment))
    if leaked:
        problems.append(f"secrets must not be committed as environment defaults: {leaked}")
    if str(environment.get("GUNICORN_BIND", "")).rpartition(":")[2] != "8000":
        problems.append("GUNICORN_BIND must use port 8000, the upstream of the platform's nginx")
    if str(environment.get("TRUSTED_PROXY_COUNT")) not in {str(n) for n in range(0, 6)}:
        problems.append("TRUSTED_PROXY_COUNT must be set to 0..5 (2 behind ALB + nginx)")
    migrations = [c for c in commands.values() if "init-db" in str((c or {}).get("command", ""))]
    if len(migrations) != 1 or migrations[0].get("leader_only") is not True:
        problems.append("exactly one container command must run `flask init-db` with leader_only: true")
    problems += _redirect_problems(resources.get("AWSEBV2LoadBalancerListener"))
    return problems


def _redirect_problems(listener: dict | None) -> list[str]:
    properties = (listener or {}).get("Properties") or {}
    actions = properties.get("DefaultActions") or [{}]
    redirect = actions[0].get("RedirectConfig") or {}
    if (properties.get("Port") != 80 or actions[0].get("Type") != "redirect"
            or redirect.get("Protocol") != "HTTPS" or redirect.get("StatusCode") != "HTTP_301"):
        return ["the port 80 listener (AWSEBV2LoadBalancerListener) must redirect to HTTPS with a 301"]
    return []


def procfile_web_command(root: Path) -> str | None:
    """Return the Procfile's `web:` command, or None."""
    path = root / "Procfile"
    if not path.exists():
        return None
    for line in path.read_text().splitlines():
        name, _, command = line.partition(":")
        if name.strip() == "web":
            return command.strip()
    return None


def _procfile_problems(root: Path) -> list[str]:
    command = procfile_web_command(root)
    if command != WEB_COMMAND:
        return [f"Procfile must say `web: {WEB_COMMAND}`, not {command!r}"]
    return []


def _dockerfile_problems(root: Path) -> list[str]:
    path = root / "Dockerfile"
    if not path.exists():
        return ["Dockerfile is missing"]
    parser = DockerfileParser(path=str(path))
    instructions = [(i["instruction"], i["value"]) for i in parser.structure]
    problems = []
    if parser.baseimage != BASE_IMAGE:
        problems.append(f"Dockerfile must build FROM {BASE_IMAGE}, not {parser.baseimage}")
    users = [value.split(":")[0].strip() for name, value in instructions if name == "USER"]
    if not users or users[-1] in ("root", "0"):
        problems.append("Dockerfile must end as a non-root USER")
    last_user = max((n for n, (name, _) in enumerate(instructions) if name == "USER"), default=None)
    cmd = [n for n, (name, _) in enumerate(instructions) if name == "CMD"]
    if last_user is None or not cmd or cmd[-1] < last_user:
        problems.append("Dockerfile must switch to the non-root USER before CMD")
    runs = " ".join(value for name, value in instructions if name == "RUN")
    if "-r requirements.txt" not in runs or "requirements-dev" in runs:
        problems.append("Dockerfile must install requirements.txt only (no dev dependencies)")
    healthchecks = [value for name, value in instructions if name == "HEALTHCHECK"]
    if not healthchecks or HEALTH_PATH not in healthchecks[-1]:
        problems.append(f"Dockerfile needs a HEALTHCHECK on {HEALTH_PATH}")
    try:
        command = json.loads(parser.cmd) if parser.cmd else None
    except ValueError:
        command = None
    if command != shlex.split(WEB_COMMAND):
        problems.append(f"Dockerfile CMD must be the Procfile's command in exec form: {WEB_COMMAND}")
    bind = parser.envs.get("GUNICORN_BIND", "")
    if not bind.startswith("0.0.0.0:"):
        problems.append("Dockerfile must set GUNICORN_BIND=0.0.0.0:PORT (reachable from outside)")
    return problems


def _dockerignore_problems(root: Path) -> list[str]:
    path = root / ".dockerignore"
    lines = path.read_text().splitlines() if path.exists() else []
    entries = {line.strip() for line in lines if line.strip() and not line.startswith("#")}
    missing = sorted(DOCKERIGNORED - entries)
    return [f".dockerignore must exclude {missing}"] if missing else []


# ---- smoke run -------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def smoke_run(root: Path = ROOT) -> None:
    """Start the Procfile's web command on a temp database; raise RuntimeError unless healthy."""
    bin_dir = str(Path(sys.executable).parent)
    port = _free_port()
    with tempfile.TemporaryDirectory(prefix="check-deploy-") as tmp:
        env = {key: value for key, value in os.environ.items()
               if key not in {"REDIS_URL", "STARTUP_TASKS", "TRUSTED_PROXY_COUNT", "DATABASE_URL"}}
        env.update(PATH=bin_dir + os.pathsep + env.get("PATH", ""), SECURITY_API_ENV="testing",
                   DATABASE_URL=f"sqlite:///{tmp}/deploy.sqlite3",
                   JWT_SECRET=secrets.token_urlsafe(48),
                   DATA_ENCRYPTION_KEYS=Fernet.generate_key().decode("ascii"),
                   AUDIT_CHAIN_KEY=secrets.token_urlsafe(48),
                   GUNICORN_BIND=f"127.0.0.1:{port}", WEB_CONCURRENCY="2",
                   REAPER_INTERVAL_SECONDS="0", GUNICORN_ACCESSLOG="-")
        subprocess.run([os.path.join(bin_dir, "flask"), "--app", "flask_api", "init-db"],  # noqa: S603
                       cwd=root, env=env, check=True, timeout=120)
        log_path = Path(tmp) / "gunicorn.log"
        with open(log_path, "wb") as log:
            process = subprocess.Popen(shlex.split(procfile_web_command(root)), cwd=root,  # noqa: S603
                                       env=env, stdout=log, stderr=subprocess.STDOUT)
            try:
                _wait_healthy(f"http://127.0.0.1:{port}{HEALTH_PATH}", process, log_path)
                process.send_signal(signal.SIGTERM)
                code = process.wait(timeout=STOP_TIMEOUT_SECONDS)
            finally:
                if process.poll() is None:
                    process.kill()
                    process.wait()
        if code != 0:
            raise RuntimeError(f"gunicorn exited with {code} on SIGTERM:\n{_tail(log_path)}")


def _wait_healthy(url: str, process: subprocess.Popen, log_path: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    last = "no answer"
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the web process exited with {process.returncode}:\n{_tail(log_path)}")
        try:
            with urllib.request.urlopen(url, timeout=2) as answer:  # noqa: S310 -- our own URL
                if answer.status == 200:
                    return
        except urllib.error.HTTPError as exc:
            last = f"HTTP {exc.code}"
        except OSError as exc:
            last = type(exc).__name__
        time.sleep(0.3)
    raise RuntimeError(f"{url} never answered 200 (last: {last}):\n{_tail(log_path)}")


def _tail(path: Path) -> str:
    return path.read_text(errors="replace")[-3000:]


def main(argv: list[str]) -> int:
    problems = static_problems()
    for problem in problems:
        print(f"check_deploy: {problem}", file=sys.stderr)
    if problems:
        return 1
    print("check_deploy: .ebextensions, Procfile, Dockerfile and .dockerignore are as expected")
    if "--static-only" in argv:
        return 0
    try:
        smoke_run()
    except (RuntimeError, subprocess.SubprocessError, OSError) as exc:
        print(f"check_deploy: the Procfile's web command failed: {exc}", file=sys.stderr)
        return 1
    print(f"check_deploy: `{WEB_COMMAND}` served {HEALTH_PATH} with 200 and stopped cleanly")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
