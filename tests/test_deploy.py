"""The deployment files, checked as CI checks them (the static part of scripts/check_deploy.py)."""
from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("check_deploy", ROOT / "scripts" / "check_deploy.py")
check_deploy = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(check_deploy)


def test_the_deployment_files_are_as_expected():
    assert check_deploy.static_problems(ROOT) == []


@pytest.fixture
def copy(tmp_path) -> Path:
    """The deployment files in a scratch directory, to break one at a time."""
    for name in ("Procfile", "Dockerfile", ".dockerignore"):
        shutil.copy(ROOT / name, tmp_path / name)
    shutil.copytree(ROOT / ".ebextensions", tmp_path / ".ebextensions")
    assert check_deploy.static_problems(tmp_path) == []
    return tmp_path


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))


@pytest.mark.parametrize(("file", "old", "new", "problem"), [
    (".ebextensions/03-migrate.config", "leader_only: true", "leader_only: false", "leader_only"),
    (".ebextensions/02-load-balancer.config", "HealthCheckPath: /v1/health",
     "HealthCheckPath: /", "HealthCheckPath"),
    (".ebextensions/02-load-balancer.config", "Type: redirect", "Type: forward", "redirect to HTTPS"),
    (".ebextensions/01-service.config", "    LOG_LEVEL: INFO",
     "    LOG_LEVEL: INFO\n    JWT_SECRET: oops", "must not be committed"),
    (".ebextensions/01-service.config", "WSGIPath: flask_api:application", "WSGIPath: app:app",
     "WSGIPath"),
    (".ebextensions/01-service.config", "SECURITY_API_ENV: production", "SECURITY_API_ENV: [",
     "not valid YAML"),
    ("Dockerfile", "USER 10001:10001", "USER root", "non-root USER"),
    ("Dockerfile", "-r requirements.txt", "-r requirements-dev.txt", "no dev dependencies"),
    ("Dockerfile", "/v1/health", "/v1/ping", "HEALTHCHECK"),
    ("Procfile", "gunicorn.conf.py", "other.conf.py", "Procfile must say"),
    (".dockerignore", "\ntests\n", "\n", "must exclude ['tests']"),
])
def test_a_broken_file_is_reported(copy, file, old, new, problem):
    _edit(copy / file, old, new)
    problems = check_deploy.static_problems(copy)
    assert any(problem in p for p in problems), problems


def test_a_committed_certificate_is_refused(copy):
    _edit(copy / ".ebextensions/02-load-balancer.config", "    DefaultProcess: default",
          "    DefaultProcess: default\n    SSLCertificateArns: arn:aws:acm:eu-west-1:1:certificate/x")
    assert any("certificate ARN" in p for p in check_deploy.static_problems(copy))
