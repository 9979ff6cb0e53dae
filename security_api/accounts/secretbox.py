"""Encryption at rest for secrets the service must read back (TOTP seeds)."""
from __future__ import annotations

import base64

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF


class SecretUnreadable(Exception):
    """A stored secret cannot be decrypted with any configured key."""


class SecretBox:
    """Fernet (AES-128-CBC + HMAC-SHA256); the first key encrypts, every key decrypts."""

    def __init__(self, keys: list[str]):
        if not keys:
            raise ValueError("at least one key is needed")
        self._fernet = MultiFernet([Fernet(key.encode("ascii")) for key in keys])

    def encrypt(self, plaintext: str) -> str:
        """Return the ciphertext of a secret, as text."""
        return self._fernet.encrypt(plaintext.encode("utf-8")).decode("ascii")

    def decrypt(self, ciphertext: str) -> str:
        """Return the secret; raise SecretUnreadable when no key fits or it was altered."""
        try:
            return self._fernet.decrypt(ciphertext.encode("ascii")).decode("utf-8")
        except (InvalidToken, ValueError) as exc:
            raise SecretUnreadable() from exc


def derived_key(material: str) -> str:
    """Derive a Fernet key from other key material (development and testing only)."""
    raw = HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
               info=b"security-api data encryption").derive(material.encode("utf-8"))
    return base64.urlsafe_b64encode(raw).decode("ascii")


def is_valid_key(key: str) -> bool:
    """Tell whether a string is a usable Fernet key."""
    try:
        Fernet(key.encode("ascii"))
        return True
    except (ValueError, UnicodeEncodeError):
        return False
