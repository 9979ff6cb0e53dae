"""What every state store offers; callers never know which one they have."""
from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from dataclasses import dataclass

from security_api.errors import ServiceUnavailable


class StoreUnavailable(ServiceUnavailable):
    """The store cannot be reached: callers fail closed (503)."""


@dataclass(frozen=True)
class LockState:
    """Whether a key is locked out, and for how many more seconds."""

    locked: bool
    retry_after: int = 0


def key_digest(value: str) -> str:
    """Return a fixed-size key for attacker-chosen text (usernames, addresses)."""
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:40]


class StateStore(ABC):
    """Counters and markers that must hold across workers and instances."""

    @abstractmethod
    def hit(self, key: str, *, limit: int, window: int, now: int) -> int:
        """Count one request in the current window; return seconds to wait if over limit, else 0."""

    @abstractmethod
    def lock_state(self, key: str, *, now: int) -> LockState:
        """Tell whether the key is locked out."""

    @abstractmethod
    def reserve_attempt(self, key: str, *, threshold: int, lock_seconds: int,
                        now: int) -> LockState:
        """Count an attempt as a failure before any secret is checked, atomically.

        Refused (locked) once the key is locked or the failures in a row plus the attempts
        still running reach the threshold: however many run in parallel, at most `threshold`
        secrets are checked. The caller settles the attempt with `record_failure`,
        `release_attempt` or `clear_failures`.
        """

    @abstractmethod
    def record_failure(self, key: str, *, threshold: int, lock_seconds: int, now: int) -> bool:
        """Settle a reserved attempt as failed; lock at the threshold, True when locking now."""

    @abstractmethod
    def release_attempt(self, key: str) -> None:
        """Give back a reserved attempt that neither failed nor signed in."""

    @abstractmethod
    def clear_failures(self, key: str) -> None:
        """Forget failures and any lock after a success or an administrator's unlock."""

    @abstractmethod
    def ping(self) -> None:
        """Raise StoreUnavailable when the store cannot be reached."""
