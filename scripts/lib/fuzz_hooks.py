"""Schemathesis hooks for scripts/fuzz.sh: which credentials each operation gets.

- Bearer operations get the admin's token (security/admin holds security-api.admin and
  .audit, so the fuzzer reaches every handler instead of stopping at 403).
- POST /v1/logout gets a fresh service-account token for every test case: a successful
  logout revokes the token it was called with, and sharing one would turn the rest of the run
  into 401s.
- POST /v1/requests/{request_id}/cancel gets the requester's token: only the requester may
  withdraw a request (scripts/lib/fuzz_requests.py made the one it is aimed at).
- POST /v1/password gets a token of its own account: wrong current passwords lock that
  account (429, documented) and never touch the admin's session.
- Basic operations (login, TOTP enroll and confirm) get a person without 2FA, so enrollment
  really answers 200 and login really answers 403 `totp_enrollment_required`.
The fuzzer learns ids from responses and reuses them, so admin operations would also reach
the fuzzing accounts and the built-in rules that make the admin an admin (a reset password or a
changed rule revokes the admin's power and the rest of the run sees only 401/403). Before each
call, such a target is swapped for a decoy of the same kind that scripts/fuzz.sh created.
Settings come from the environment that scripts/fuzz.sh exports (FUZZ_*).
"""
from __future__ import annotations

import os
import sys

import schemathesis

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from signin import service_token  # noqa: E402

LOGOUT = "/v1/logout"
PASSWORD = "/v1/password"  # noqa: S105 - a path, not a secret
METRICS = "/metrics"  # its bearer token is the scraper's METRICS_TOKEN, not a user's
CANCEL = "/v1/requests/{request_id}/cancel"
BEARER_BY_PATH = {PASSWORD: "FUZZ_PASSWORD_TOKEN", METRICS: "FUZZ_METRICS_TOKEN",
                  CANCEL: "FUZZ_REQUESTER_TOKEN"}


def _ids(variable: str) -> set[str]:
    return set(os.environ.get(variable, "").split())


# path parameter -> (values to protect, decoy used instead)
PROTECTED = {
    "user_id": (_ids("FUZZ_PROTECTED_USER_IDS"), os.environ.get("FUZZ_DECOY_USER_ID", "")),
    "rule_id": (_ids("FUZZ_PROTECTED_RULE_IDS"), os.environ.get("FUZZ_DECOY_RULE_ID", "")),
    "key": (_ids("FUZZ_PROTECTED_PERMISSIONS"), os.environ.get("FUZZ_DECOY_PERMISSION", "")),
}


@schemathesis.hook
def before_call(context, case, kwargs):
    """Keep admin operations off the fuzzing accounts and the admin's own rules."""
    for name, (protected, decoy) in PROTECTED.items():
        value = (case.path_parameters or {}).get(name)
        if isinstance(value, str) and value.strip().lower() in protected:
            case.path_parameters[name] = decoy


def _schemes(case) -> set[str]:
    return {name for requirement in case.operation.definition.raw.get("security", [])
            for name in requirement}


@schemathesis.auth(refresh_interval=None).apply_to(path=LOGOUT)
class FreshSessionToken:
    """A new session for each logout case."""

    def get(self, case, ctx):
        return service_token(os.environ["FUZZ_BASE_URL"], os.environ["FUZZ_LOGOUT_USERNAME"],
                             os.environ["FUZZ_LOGOUT_SECRET"])

    def set(self, case, data, ctx):
        case.headers = {**(case.headers or {}), "Authorization": f"Bearer {data}"}


@schemathesis.auth(refresh_interval=None).skip_for(path=LOGOUT)
class StandingCredentials:
    """Fixed credentials by security scheme (and the password-change account's token)."""

    def get(self, case, ctx):
        schemes = _schemes(case)
        if "basicAuth" in schemes:
            return ("basic", (os.environ["FUZZ_BASIC_USERNAME"], os.environ["FUZZ_BASIC_PASSWORD"]))
        if "bearerAuth" in schemes:
            variable = BEARER_BY_PATH.get(case.path, "FUZZ_ADMIN_TOKEN")
            return ("bearer", os.environ[variable])
        return None  # public operation: no credentials

    def set(self, case, data, ctx):
        kind, value = data
        if kind == "basic":
            schemathesis.auths.apply_basic_auth(case, *value)
        else:
            case.headers = {**(case.headers or {}), "Authorization": f"Bearer {value}"}
