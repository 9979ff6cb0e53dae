"""JSONText: a Text column that holds JSON, so callers assign and read Python values.

Why: the service stores dicts and lists in plain Text columns (same type on disk on SQLite and
PostgreSQL, no migration). Before this type, ~25 call sites wrapped model attributes in
json.dumps/json.loads by hand, each with its own options. Each column now says once how its
text is written, and the text stays byte-identical to what those call sites wrote, so rows
written before and after compare equal.

Reading is tolerant exactly like `jsontext.loads_stored`: rows written before bodies were
checked may hold lone-surrogate escapes ("\\udc00"); they come back as U+FFFD.

Not for audit event details: the audit chain hashes their stored text as written, and a
tolerant read cannot give back the text of such old rows, so they stay text (see audit/).
"""
from __future__ import annotations

import json

from sqlalchemy import Text
from sqlalchemy.types import TypeDecorator

from security_api.jsontext import loads_stored


class JSONText(TypeDecorator):
    """Serialise on the way in with fixed options; parse tolerantly on the way out.

    `empty` is what a NULL or empty cell reads as ("{}" or "[]"). A str is refused on the way
    in: it would be stored as a JSON string, which is always a leftover json.dumps call.
    """

    impl = Text
    cache_ok = True

    def __init__(self, *, empty: str = "{}", sort_keys: bool = False):
        super().__init__()
        self.empty = empty
        self.sort_keys = sort_keys

    def serialise(self, value: object) -> str:
        """Return the exact text stored for `value` (json.dumps defaults, ASCII escapes)."""
        return json.dumps(value, sort_keys=self.sort_keys)

    def process_bind_param(self, value: object, dialect) -> str | None:
        if value is None:
            return None
        if isinstance(value, str | bytes):
            raise TypeError("JSONText takes the value itself, not JSON text: drop the json.dumps")
        return self.serialise(value)

    def process_result_value(self, value: str | None, dialect) -> object:
        return loads_stored(value, default=self.empty)

    def process_literal_param(self, value: object, dialect) -> str:
        return self.serialise(value)

    @property
    def python_type(self) -> type:
        return dict if self.empty == "{}" else list
