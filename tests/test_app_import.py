"""`flask_api:application` is built on first access, not as a side effect of importing.

Why: tests (and tools) import the factory from flask_api; an app built at import reads the
environment and may open its database before any fixture has chosen one.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from flask import Flask

ROOT = Path(__file__).resolve().parent.parent

# Counts every Flask app built and every database connection opened, then runs `body`.
PROBE = """
import json, sys
import flask
from sqlalchemy import event
from sqlalchemy.pool import Pool
built, connections = [], []
original_init = flask.Flask.__init__
def counting_init(self, *args, **kwargs):
    built.append(args[0] if args else "")
    original_init(self, *args, **kwargs)
flask.Flask.__init__ = counting_init
event.listen(Pool, "connect", lambda *args: connections.append(1))
{body}
print(json.dumps({{"apps": len(built), "connections": len(connections), "extra": extra}}))
"""


def _probe(body: str, tmp_path: Path) -> dict:
    env = {**os.environ, "SECURITY_API_ENV": "testing",
           "DATABASE_URL": f"sqlite:///{tmp_path / 'probe.sqlite3'}"}
    done = subprocess.run([sys.executable, "-c", PROBE.format(body=body)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_importing_flask_api_builds_no_app_and_opens_no_database(tmp_path):
    result = _probe("import flask_api\nextra = 'application' in vars(flask_api)", tmp_path)
    assert result == {"apps": 0, "connections": 0, "extra": False}


def test_collecting_the_tests_builds_no_app(tmp_path):
    body = ("import pytest\n"
            "extra = pytest.main(['--collect-only', '-q', '-p', 'no:cacheprovider', "
            "'tests/test_sessions.py', 'tests/test_stores.py', 'tests/test_app_import.py'])")
    result = _probe(body, tmp_path)
    assert result == {"apps": 0, "connections": 0, "extra": 0}


def test_application_is_built_once_on_first_access(tmp_path):
    body = ("import flask_api\n"
            "first = flask_api.application\n"
            "assert first is flask_api.application\n"
            "extra = first.test_client().get('/v1/ping').status_code")
    result = _probe(body, tmp_path)
    assert result["apps"] == 1
    assert result["extra"] == 200


def test_unknown_attributes_still_raise():
    import flask_api

    assert not hasattr(flask_api, "app")
    assert isinstance(flask_api.create_app({"database_url": "sqlite://"}), Flask)
