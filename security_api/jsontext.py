"""JSON at the edges: what a body may nest and hold, and reading back stored JSON text.

PostgreSQL refuses NUL in text and lone UTF-16 surrogates anywhere, and a response holding a
lone surrogate cannot be encoded as UTF-8 at all; SQLite would store either. So nothing that
holds one is accepted (`unstorable`), and JSON text stored before that rule is read back with
any lone surrogate replaced (`loads_stored`). Python's json recurses once per nesting level,
so the depth of a body is bounded before it is parsed (`too_deep`).
"""
from __future__ import annotations

import json
import re
from collections.abc import Iterator

# A body nests at most this many arrays and objects, its own top-level object counting as one.
MAX_DEPTH = 32
# At most this many bad strings are named in one answer: a 64 KiB body could hold thousands.
MAX_REPORTED = 10
NUL = "\x00"
NUL_PROBLEM = "must not contain NUL characters"
SURROGATE_PROBLEM = "must not contain lone surrogates (unpaired \\ud800-\\udfff)"

_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
# A JSON string, escapes included; an unterminated one runs to the end (the parser refuses it).
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"?', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_OPENING = frozenset(b"[{")


def too_deep(raw: bytes, max_depth: int = MAX_DEPTH) -> bool:
    """Tell whether a JSON text nests arrays and objects deeper than `max_depth`.

    Linear and cheap: strings are cut out first (so brackets inside them do not count), then
    only the brackets are walked. On text that is not JSON the count may be off only after
    the point where the parser fails anyway.
    """
    brackets = _STRING.sub(b"", raw).translate(None, _NOT_BRACKETS)
    depth = 0
    for byte in brackets:
        if byte in _OPENING:
            depth += 1
            if depth > max_depth:
                return True
        else:
            depth -= 1
    return False


def _visible(text: str) -> str:
    """Escape what cannot travel in a response, so a field name can quote a bad key."""
    return _UNSTORABLE.sub(lambda m: m.group().encode("unicode_escape", "backslashreplace")
                           .decode("ascii"), text)


def _problem(text: str) -> str:
    return NUL_PROBLEM if NUL in text else SURROGATE_PROBLEM


def _join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{_visible(key)}" if path else _visible(key)


def unstorable(value: object, path: str = "") -> Iterator[dict]:
    """Yield {"field", "problem"} for each key or string holding NUL or a lone surrogate.

    Field names follow the body: `params.a.b[2]`; a bad key is named with its bad
    characters escaped. Walks iteratively, so depth never matters here.
    """
    stack: list[tuple[str, object]] = [(path, value)]
    while stack:
        where, item = stack.pop()
        if isinstance(item, str):
            if _UNSTORABLE.search(item):
                yield {"field": where or "(body)", "problem": _problem(item)}
        elif isinstance(item, dict):
            children = []
            for key, child in item.items():
                field = _join(where, key)
                if _UNSTORABLE.search(key):
                    yield {"field": field, "problem": "a key " + _problem(key)}
                children.append((field, child))
            stack.extend(reversed(children))
        elif isinstance(item, list):
            stack.extend(reversed([(_join(where, index), child)
                                   for index, child in enumerate(item)]))


# In stored JSON text: an escaped backslash, a valid surrogate pair, or a lone surrogate escape.
_ESCAPE = re.compile(r"\\\\|\\u[dD][89abAB][0-9a-fA-F]{2}\\u[dD][c-fC-F][0-9a-fA-F]{2}"
                     r"|(\\u[dD][89a-fA-F][0-9a-fA-F]{2})")


def loads_stored(text: str | None, default: str = "{}") -> object:
    """Parse JSON text the service stored; a lone surrogate in it comes back as U+FFFD.

    Rows written before bodies were checked hold such strings as ASCII escapes
    ("\\udc00"), which both databases keep; only the parsed value could not be sent. The
    escapes are replaced in the text, before parsing, so nesting costs nothing here.
    """
    text = text or default
    if "\\u" in text:
        text = _ESCAPE.sub(lambda m: "\\ufffd" if m.group(1) else m.group(), text)
    return json.loads(text)
