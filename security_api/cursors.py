"""One cursor codec for every paginated list: opaque to clients, strictly decoded here.

A cursor is the unpadded base64url form of a short UTF-8 text; each list puts its own
position in that text (a username, "seq:<n>", or the JSON pair [created_at, id]). Decoding
accepts exactly what encoding produces and nothing else, so a cursor never brings a NUL,
an out-of-range time or a wrong type to a query: anything else is a 412 naming `cursor`.
"""
from __future__ import annotations

import base64
import binascii
import json
import re
from datetime import datetime

from security_api.clock import as_utc, parse_instant
from security_api.errors import InvalidParams

PARAMETER = "cursor"
PROBLEM = "is not a cursor this API returned"
MAX_LENGTH = 512
_ALPHABET = re.compile(rf"[A-Za-z0-9_-]{{1,{MAX_LENGTH}}}")
_PRINTABLE = re.compile(r"[^\x00-\x1f\x7f-\x9f]*")
SEQ_PREFIX = "seq:"
_SEQ = re.compile(r"seq:(0|[1-9][0-9]{0,17})")
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def invalid() -> InvalidParams:
    """Return the one error every malformed cursor gets."""
    return InvalidParams.one(PARAMETER, PROBLEM)


def encode(text: str) -> str:
    """Return the cursor of a position text."""
    return base64.urlsafe_b64encode(text.encode("utf-8")).decode("ascii").rstrip("=")


def decode(cursor: str) -> str:
    """Return the position text of a cursor; 412 unless `encode` could have made it."""
    if not _ALPHABET.fullmatch(cursor):
        raise invalid()
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("utf-8")
    except (binascii.Error, ValueError):
        raise invalid() from None
    # Only the canonical spelling (unused low bits zero), and no control character at all.
    if encode(text) != cursor or not _PRINTABLE.fullmatch(text):
        raise invalid()
    return text


def encode_key(key: str) -> str:
    """Return the cursor after a sort key (e.g. a username)."""
    return encode(key)


def decode_key(cursor: str, pattern: re.Pattern[str]) -> str:
    """Return the sort key of a cursor; it must match the key's own pattern."""
    key = decode(cursor)
    if not pattern.fullmatch(key):
        raise invalid()
    return key


def encode_seq(seq: int) -> str:
    """Return the cursor after a sequence number."""
    return encode(f"{SEQ_PREFIX}{seq}")


def decode_seq(cursor: str) -> int:
    """Return the sequence number of a cursor."""
    match = _SEQ.fullmatch(decode(cursor))
    if match is None:
        raise invalid()
    return int(match.group(1))


def encode_position(at: datetime, row_id: str) -> str:
    """Return the cursor after a (time, id) position."""
    return encode(json.dumps([as_utc(at).isoformat(), row_id]))


def decode_position(cursor: str) -> tuple[datetime, str]:
    """Return the aware-UTC time and the id of a (time, id) cursor."""
    try:
        value = json.loads(decode(cursor))
    except ValueError:
        raise invalid() from None
    if not (isinstance(value, list) and len(value) == 2
            and all(isinstance(part, str) for part in value) and _UUID.fullmatch(value[1])):
        raise invalid()
    try:
        at = parse_instant(value[0], naive_is_utc=False)
    except ValueError:
        raise invalid() from None
    return at, value[1]
