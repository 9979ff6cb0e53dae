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


def parse_instant(text: str, *, naive_is_utc: bool) -> datetime:
    """Parse an ISO 8601 date-time into aware UTC; ValueError for anything else.

    A time without a zone is UTC only when `naive_is_utc`; otherwise it is refused. The
    instant must exist in UTC too: 0001-01-01T00:00:00+14:00 is before datetime.min, and
    converting it would overflow deep inside a query instead of failing here.
    """
    if not (isinstance(text, str) and text.isascii() and text.isprintable()):
        raise ValueError("not an ISO 8601 date-time")
    value = datetime.fromisoformat(text)
    if value.tzinfo is None or value.utcoffset() is None:
        if not naive_is_utc:
            raise ValueError("no time zone")
        return value.replace(tzinfo=UTC)
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise ValueError("outside the range of UTC date-times") from None
