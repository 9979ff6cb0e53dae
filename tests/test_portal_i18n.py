"""The portal's Spanish catalog: complete, consistent with the English, compiled by the build."""
from __future__ import annotations

import re
from pathlib import Path

from babel.messages.extract import extract_from_dir
from babel.messages.frontend import parse_mapping_cfg
from babel.messages.pofile import read_po

ROOT = Path(__file__).resolve().parent.parent
CATALOG = ROOT / "translations" / "es" / "LC_MESSAGES" / "messages.po"
PLACEHOLDER = re.compile(r"%\((\w+)\)s")
KEYWORDS = {"_": None, "gettext": None, "ngettext": (1, 2), "lazy_gettext": None, "_l": None}


def _source_messages() -> set[str]:
    with open(ROOT / "babel.cfg") as config:
        method_map, options_map = parse_mapping_cfg(config)
    found = set()
    for _name, _line, message, _comments, _context in extract_from_dir(
            ROOT, method_map, options_map, keywords=KEYWORDS):
        found.update(message if isinstance(message, tuple) else (message,))
    return {message for message in found if message}


def _catalog():
    with open(CATALOG, "rb") as handle:
        return read_po(handle, locale="es")


def test_every_portal_text_has_a_spanish_translation():
    catalog = _catalog()
    translated = {message.id if isinstance(message.id, str) else message.id[0]: message
                  for message in catalog if message.id}
    plural_ids = {message.id[1] for message in catalog if isinstance(message.id, tuple)}
    missing = sorted(text for text in _source_messages()
                     if text not in translated and text not in plural_ids)
    assert not missing, f"not in {CATALOG.relative_to(ROOT)}: {missing}"
    untranslated = sorted(str(message.id) for message in catalog if message.id and (
        message.fuzzy or not all(message.string if isinstance(message.string, tuple)
                                 else (message.string,))))
    assert not untranslated, f"untranslated or fuzzy: {untranslated}"


def test_translations_keep_every_placeholder():
    for message in _catalog():
        if not message.id:
            continue
        ids = message.id if isinstance(message.id, tuple) else (message.id,)
        strings = message.string if isinstance(message.string, tuple) else (message.string,)
        wanted = set(PLACEHOLDER.findall(ids[-1]))
        for string in strings:
            assert set(PLACEHOLDER.findall(string)) == wanted, (message.id, string)


def test_the_build_compiled_the_catalog():
    compiled = CATALOG.with_suffix(".mo")
    assert compiled.exists(), "run `make translations` (make test and make run do it)"
    assert compiled.stat().st_mtime >= CATALOG.stat().st_mtime, "the .mo is older than the .po"
