"""Start the service under gunicorn with 2 workers on the test database, for tests across workers."""
import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.conftest import TEST_DATA_KEY, TEST_REDIS_URL

ROOT = Path(__file__).resolve().parent.parent
GUNICORN = Path(sys.executable).parent / "gunicorn"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def gunicorn_server(database_url: str, tmp_path: Path, **extra_env: str):
    """Yield (base URL, access log path, error log path) of a running gunicorn; stop it after.

    gunicorn's access log names the worker (pid) that answered each request id. Its stderr
    (the application's logs too) goes to a file: a pipe nobody reads would fill and block it.
    """
    port = free_port()
    access_log = tmp_path / "access.log"
    error_log = tmp_path / "gunicorn.log"
    env = {**os.environ, "SECURITY_API_ENV": "testing", "DATABASE_URL": database_url,
           "JWT_SECRET": "gunicorn-test-" + uuid.uuid4().hex + uuid.uuid4().hex,
           "DATA_ENCRYPTION_KEYS": TEST_DATA_KEY,
           "BCRYPT_ROUNDS": "4", "AUTH_RATE_LIMIT": "100000", "WEB_CONCURRENCY": "2",
           "GUNICORN_BIND": f"127.0.0.1:{port}", "GUNICORN_ACCESSLOG": str(access_log),
           "GUNICORN_CMD_ARGS": "--access-logformat='%({x-request-id}i)s %(p)s %(s)s'",
           **extra_env}
    if TEST_REDIS_URL:
        env.update(REDIS_URL=TEST_REDIS_URL, REDIS_PREFIX=f"test:{uuid.uuid4().hex}:")
    with error_log.open("wb") as stderr:
        process = subprocess.Popen(
            [str(GUNICORN), "-c", "gunicorn.conf.py", "flask_api:application"],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=stderr)
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 30
    try:
        while True:
            try:
                urllib.request.urlopen(base + "/v1/ping", timeout=1).close()  # noqa: S310
                break
            except OSError:
                if time.time() > deadline or process.poll() is not None:
                    pytest.fail("gunicorn did not start: " + error_log.read_text()[-2000:])
                time.sleep(0.2)
        yield base, access_log, error_log
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
