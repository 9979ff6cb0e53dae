"""Slack's request signing (v0): who may speak for Slack on the interactions route.

Slack signs `v0:<X-Slack-Request-Timestamp>:<raw body>` with HMAC-SHA256 under the app's signing
secret and sends `v0=<hex>` as X-Slack-Signature. Checked over the raw bytes, before any form
parsing (a re-encoded body would not match), in constant time; a timestamp more than five
minutes away from now, either way, is refused so a captured request cannot be sent later.
"""
from __future__ import annotations

import hashlib
import hmac

VERSION = "v0"
WINDOW_SECONDS = 5 * 60
MAX_SIGNATURE_CHARS = 128  # v0= and 64 hex digits; anything longer is not Slack's


class SignatureRefused(Exception):
    """The request is not provably from Slack, or not from now; the text says why (for logs)."""


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """Return the X-Slack-Signature Slack would send for this timestamp and raw body."""
    base = f"{VERSION}:{timestamp}:".encode() + body
    return f"{VERSION}=" + hmac.new(secret.encode("utf-8"), base, hashlib.sha256).hexdigest()


def verify(secret: str, *, timestamp: str | None, signature: str | None, body: bytes,
           now: float) -> None:
    """Raise SignatureRefused unless the signature is right and the timestamp within 5 minutes."""
    if not secret:
        raise SignatureRefused("no signing secret is configured")
    if not timestamp or not signature:
        raise SignatureRefused("signature or timestamp header missing")
    # Digits only: int() would also take "+12", " 12" or "1_2", which Slack never sends.
    if not (timestamp.isascii() and timestamp.isdigit()) or len(timestamp) > 12:
        raise SignatureRefused("timestamp is not a Unix time")
    if abs(now - int(timestamp)) > WINDOW_SECONDS:
        raise SignatureRefused("timestamp outside the 5-minute window")
    if len(signature) > MAX_SIGNATURE_CHARS or not signature.isascii():
        raise SignatureRefused("signature malformed")
    expected = sign(secret, timestamp, body)
    if not hmac.compare_digest(expected.encode("ascii"), signature.encode("ascii")):
        raise SignatureRefused("signature does not match")


def digest(timestamp: str, body: bytes) -> str:
    """Return the key of a signed request in the replay store: one per signed payload."""
    return hashlib.sha256(f"{VERSION}:{timestamp}:".encode() + body).hexdigest()
