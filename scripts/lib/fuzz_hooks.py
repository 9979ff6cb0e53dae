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
Bad input at the edge (issue 10): about one case in three gets, just before the call, a
value the service must refuse and never store (`poison`): a lone surrogate, a NUL, a bad key,
a non-BMP character next to them, or nesting deeper than the 32 levels a body may have, put
into the free-form fields (params, provisioner_config), a text field and an unknown field. The
unknown field keeps the case honestly negative for schemathesis (the document forbids
additional properties, and the body goes as raw bytes), so any answer but a documented 4xx,
and every 5xx, is a finding.
Cursors and audit time filters get out-of-range times and NULs the same way.
Settings come from the environment that scripts/fuzz.sh exports (FUZZ_*).
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import random
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


# ---- bad input at the edge ------------------------------------------------------------------
FREE_FORM = ("params", "provisioner_config")
TEXT_FIELDS = ("justification", "comment", "description", "name", "email")
OVER_DEPTH = 40  # the service allows 32; far deeper would overflow the client's own json
# Lists whose every case may be refused with 412 (positive_data_acceptance is off for them).
CURSOR_LISTS = {"/v1/requests", "/v1/admin/users", "/v1/audit"}


def _cursor(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode("utf-8")).decode("ascii").rstrip("=")


BAD_QUERY = {
    "cursor": [_cursor(json.dumps(["0001-01-01T00:00:00+14:00", "00000000-0000-4000-8000-000000000000"])),
               _cursor("a\x00b"), _cursor("seq:1\x00")],
    "since": ["0001-01-01T00:00:00+14:00", "2026-01-01T00:00:00\x00"],
    "until": ["9999-12-31T23:59:59-14:00"],
}


def _nested(depth: int, rng: random.Random) -> object:
    value: object = "\U0001f600"
    for _ in range(depth):
        value = [value] if rng.random() < 0.5 else {"k": value}
    return value


def _bad_value(rng: random.Random) -> object:
    return rng.choice([
        "\udc00", "a\ud800b", "x\x00y", "\U0001f600\udfff", {"k\udc00": "v"}, {"k\x00": 1},
        ["ok", {"deep": ["\ud83d"]}], _nested(OVER_DEPTH, rng),
        {"fine": "\U0001f600 \u00e9", "bad": "\x00"},
    ])


def _rng(case) -> random.Random:
    seed = repr((case.operation.label, case.body, case.query)).encode("utf-8", "backslashreplace")
    return random.Random(hashlib.sha256(seed).digest())  # noqa: S311 - test data, not secrets


def poison(case) -> None:
    """Put values the service must refuse into the body or the query of about 1 case in 3."""
    rng = _rng(case)
    if rng.random() >= 1 / 3:
        return
    if isinstance(case.body, dict):
        body = dict(case.body)
        for name in FREE_FORM:
            if name in body or rng.random() < 0.5:
                body[name] = {"a": {"b": [1, 2, _bad_value(rng)]}}
        for name in TEXT_FIELDS:
            if isinstance(body.get(name), str):
                body[name] = body[name] + rng.choice(["\udc00", "\x00"])
        body["fuzz_unknown\udc00"] = _bad_value(rng)
        # Sent as the bytes json.dumps makes (lone surrogates as \\udXXX escapes): the schema
        # validator schemathesis re-runs on edited cases cannot hold a lone surrogate itself.
        case.body = json.dumps(body).encode("ascii")
    negative = case.meta is not None and case.meta.generation.mode.is_negative
    if case.path in CURSOR_LISTS or negative:
        names = [name for name in BAD_QUERY if name in case.operation.query]
        if names:
            name = rng.choice(names)
            case.query = {**(case.query or {}), name: rng.choice(BAD_QUERY[name])}


@schemathesis.hook
def before_call(context, case, kwargs):
    """Keep admin operations off the fuzzing accounts and the admin's own rules; poison some."""
    for name, (protected, decoy) in PROTECTED.items():
        value = (case.path_parameters or {}).get(name)
        if isinstance(value, str) and value.strip().lower() in protected:
            case.path_parameters[name] = decoy
    poison(case)


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
