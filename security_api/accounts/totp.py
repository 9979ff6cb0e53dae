"""TOTP (RFC 6238) with strict format, +-1 step drift, and the step it matched for replay checks."""
from __future__ import annotations

import hashlib
import hmac
import re

import pyotp

STEP_SECONDS = 30
DIGITS = 6
DRIFT_STEPS = 1
# pyotp would accept full-width and other Unicode digits: only ASCII is a code here.
CODE_PATTERN = re.compile(r"[0-9]{6}")


def new_secret() -> str:
    """Return a fresh base32 secret (160 bits, as Google Authenticator expects)."""
    return pyotp.random_base32(length=32)


def code_at(secret: str, unix_time: float, *, digits: int = DIGITS, digest: str = "sha1") -> str:
    """Return the code valid at a given time."""
    return pyotp.TOTP(secret, digits=digits, interval=STEP_SECONDS,
                      digest=getattr(hashlib, digest)).at(int(unix_time))


def is_well_formed(code: object) -> bool:
    """Tell whether a value is exactly six ASCII digits."""
    return isinstance(code, str) and CODE_PATTERN.fullmatch(code) is not None


def matching_step(secret: str, code: str, *, unix_time: float) -> int | None:
    """Return the time step whose code equals `code` within the drift window, else None."""
    if not is_well_formed(code):
        return None
    totp = pyotp.TOTP(secret, digits=DIGITS, interval=STEP_SECONDS)
    current = int(unix_time) // STEP_SECONDS
    matched = None
    # Check every step of the window without stopping early, so timing says nothing.
    for step in range(current - DRIFT_STEPS, current + DRIFT_STEPS + 1):
        if hmac.compare_digest(totp.generate_otp(step), code):
            matched = step
    return matched


def provisioning_uri(secret: str, *, account: str, issuer: str) -> str:
    """Return the otpauth:// URI that authenticator apps read."""
    return pyotp.TOTP(secret).provisioning_uri(name=account, issuer_name=issuer)
