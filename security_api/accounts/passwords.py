"""Password hashing (bcrypt over every byte) and the password policy."""
from __future__ import annotations

import base64
import hashlib
import secrets
import unicodedata

import bcrypt
from zxcvbn import zxcvbn

MIN_LENGTH = 12
MAX_LENGTH = 1024
# zxcvbn refuses more than 72 characters (and is quadratic in length); the first 72 carry the
# weakness signal, and longer passwords are hashed in full anyway.
STRENGTH_CHECK_CHARS = 72
MIN_STRENGTH_SCORE = 3


def _prehash(password: str) -> bytes:
    """Digest every byte so bcrypt's 72-byte cut never drops any of them."""
    normalised = unicodedata.normalize("NFC", password).encode("utf-8")
    return base64.b64encode(hashlib.sha256(normalised).digest())


def hash_password(password: str, *, rounds: int) -> str:
    """Return the bcrypt hash of a password of any length."""
    return bcrypt.hashpw(_prehash(password), bcrypt.gensalt(rounds)).decode("ascii")


def verify_password(password: str, password_hash: str) -> bool:
    """Check a password against its hash in constant time."""
    try:
        return bcrypt.checkpw(_prehash(password), password_hash.encode("ascii"))
    except ValueError:
        return False


def dummy_hash(*, rounds: int) -> str:
    """Return a hash to check against when the user does not exist (equal timing)."""
    return hash_password(secrets.token_urlsafe(32), rounds=rounds)


def policy_problems(password: str, *, user_inputs: tuple[str, ...] = ()) -> list[str]:
    """List why a new password is refused; empty when it is acceptable."""
    length = len(password)
    if length < MIN_LENGTH:
        return [f"must be at least {MIN_LENGTH} characters"]
    if length > MAX_LENGTH:
        return [f"must be at most {MAX_LENGTH} characters"]
    if any(unicodedata.category(ch) == "Cc" for ch in password):
        return ["must not contain control characters"]
    lowered = password.lower()
    if any(value and len(value) >= 3 and value.lower() in lowered for value in user_inputs):
        return ["must not contain the username or email"]
    result = zxcvbn(password[:STRENGTH_CHECK_CHARS], user_inputs=[v for v in user_inputs if v])
    if result["score"] < MIN_STRENGTH_SCORE:
        hint = result["feedback"].get("warning") or "too common or too easy to guess"
        return [f"is too weak: {hint}".rstrip(".")]
    return []


def generate_password() -> str:
    """Return a random password for accounts created by an administrator."""
    return secrets.token_urlsafe(18)
