"""Run the README's walk-through as written: the service as README says, then its blocks.

    .venv/bin/python scripts/readme_walkthrough.py

`MAKE_ARGS` adds arguments to `make run`, e.g. `MAKE_ARGS="-o .venv/.installed"` where .venv
is shared with another checkout and must not be rebuilt from this one.

Every ```sh block in README.md right after a `<!-- walkthrough -->` line is taken, in order,
and run in one bash with `set -euo pipefail` from the repository root, against `make run`
started the way README says, on a free port and a temporary SQLite database of its own (the
same environment goes to the blocks, so their `flask` commands reach that database). Fails
when a command fails, when an `expect` in the blocks sees another value, when `make run`
does not say it created the database, or when there are no marked blocks. A CI step
(.ci/run); it takes about a minute, most of it waiting for TOTP steps (two waits).
"""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MARKER = "<!-- walkthrough -->"
START_SECONDS = 90
RUN_SECONDS = 240


def walkthrough_blocks(readme: str) -> list[str]:
    """Return the ```sh blocks that directly follow a walk-through marker, in order."""
    pattern = re.compile(re.escape(MARKER) + r"\s*\n```sh\n(.*?)\n```", re.S)
    return pattern.findall(readme)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main() -> int:
    blocks = walkthrough_blocks((ROOT / "README.md").read_text(encoding="utf-8"))
    if len(blocks) < 2:
        print(f"readme_walkthrough: expected the marked blocks ({MARKER}), found {len(blocks)}",
              file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="security-api-readme-") as workdir:
        port = free_port()
        env = {**os.environ, "DATABASE_URL": f"sqlite:///{workdir}/readme.sqlite3",
               "GUNICORN_BIND": f"127.0.0.1:{port}", "WEB_CONCURRENCY": "2",
               # Speed only (development allows it): a cost-12 hash takes a second on a
               # busy 2-core CI machine, and the walk-through hashes and checks a dozen.
               "BCRYPT_ROUNDS": "4"}
        for name in ("REDIS_URL", "SECURITY_API_ENV", "METRICS_ENABLED", "JWT_SECRET",
                     "DATA_ENCRYPTION_KEYS", "B", "TOKEN"):
            env.pop(name, None)
        log_path = Path(workdir) / "make-run.log"
        started = time.monotonic()
        with open(log_path, "wb") as log:
            command = ["make", *os.environ.get("MAKE_ARGS", "").split(), "run"]
            service = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log,  # noqa: S603
                                       stderr=subprocess.STDOUT, start_new_session=True)
        try:
            if not _wait_for_ping(port, service):
                print("readme_walkthrough: `make run` did not serve:\n" + log_path.read_text(),
                      file=sys.stderr)
                return 1
            made = log_path.read_text()
            if "Database created at the newest schema" not in made:
                print("readme_walkthrough: `make run` did not say it created the database:\n"
                      + made, file=sys.stderr)
                return 1
            print(f"readme_walkthrough: make run serves 127.0.0.1:{port} "
                  f"({time.monotonic() - started:.0f} s); running {len(blocks)} blocks", flush=True)
            script = "set -euo pipefail\nset -x\n" + "\n".join(blocks) + "\n"
            done = subprocess.run(["bash", "-c", script], cwd=ROOT, env=env,  # noqa: S603, S607
                                  timeout=RUN_SECONDS, check=False)
            if done.returncode != 0:
                print(f"readme_walkthrough: the walk-through failed (exit {done.returncode}); "
                      "end of make run's log:\n" + log_path.read_text()[-3000:], file=sys.stderr)
                return 1
        finally:
            _stop(service)
    print(f"readme_walkthrough: all blocks ran ({time.monotonic() - started:.0f} s)")
    return 0


def _wait_for_ping(port: int, service: subprocess.Popen) -> bool:
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline:
        if service.poll() is not None:
            return False
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/ping", timeout=2):
                return True
        except OSError:
            time.sleep(0.3)
    return False


def _stop(service: subprocess.Popen) -> None:
    """Stop make and the gunicorn it started: the process group this script made for them."""
    if service.poll() is None:
        os.killpg(service.pid, signal.SIGTERM)
        try:
            service.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(service.pid, signal.SIGKILL)
            service.wait(timeout=10)


if __name__ == "__main__":
    sys.exit(main())
