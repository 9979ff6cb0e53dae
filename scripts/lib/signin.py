"""Sign in to the live service over HTTP, as a black-box client would (used by scripts/fuzz.sh).

    python scripts/lib/signin.py person BASE_URL USERNAME   (password on standard input)
        enrolls TOTP (a fresh user), confirms it, signs in and prints the access token.
"""
from __future__ import annotations

import sys
import time

import pyotp
import requests

TIMEOUT_SECONDS = 15
TOTP_STEP_SECONDS = 30


def _post(url: str, *, auth: tuple[str, str], body: dict | None = None) -> dict:
    response = requests.post(url, auth=auth, json=body or {}, timeout=TIMEOUT_SECONDS)
    if response.status_code != 200:
        raise SystemExit(f"signin: POST {url} answered {response.status_code}: {response.text}")
    return response.json()


def person_token(base_url: str, username: str, password: str) -> str:
    """Enroll and confirm TOTP for a new person, then sign in with the next step's code.

    A code works once per user and never an older step, so the sign-in uses the code of the
    following step (inside the ±1 step drift window) instead of waiting up to 30 s.
    """
    auth = (username, password)
    secret = _post(f"{base_url}/v1/totp/enroll", auth=auth)["secret"]
    totp = pyotp.TOTP(secret)
    now = time.time()
    _post(f"{base_url}/v1/totp/confirm", auth=auth, body={"totp": totp.at(now)})
    return _post(f"{base_url}/v1/login", auth=auth,
                 body={"totp": totp.at(now + TOTP_STEP_SECONDS)})["token"]


def service_token(base_url: str, username: str, secret: str) -> str:
    """Sign in a service account: Basic with its secret, no TOTP."""
    return _post(f"{base_url}/v1/login", auth=(username, secret))["token"]


if __name__ == "__main__":
    kind, base, user = sys.argv[1:4]
    secret_or_password = sys.stdin.readline().rstrip("\n")
    sign_in = person_token if kind == "person" else service_token
    print(sign_in(base, user, secret_or_password))
