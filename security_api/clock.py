"""One clock for the whole domain: aware UTC, passed in rather than read deep inside."""
from __future__ import annotations

from datetime import UTC, datetime


def utcnow() -> datetime:
    """Return the current time as an aware UTC datetime."""
    return datetime.now(UTC)


def as_utc(value: datetime | None) -> datetime | None:
    """Make a datetime aware UTC (SQLite hands back naive ones)."""
    if value is None:
        return None
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def isoformat(value: datetime | None) -> str | None:
    """Format as the contract's ISO 8601 UTC form, e.g. 2026-11-28T12:00:00Z."""
    if value is None:
        return None
    return as_utc(value).strftime("%Y-%m-%dT%H:%M:%SZ")


def epoch(value: datetime) -> int:
    """Return whole seconds since the epoch."""
    return int(as_utc(value).timestamp())
