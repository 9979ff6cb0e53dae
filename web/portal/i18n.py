"""The portal's languages: a switch on every page (cookie `lang`), else Accept-Language."""
from __future__ import annotations

from flask import request

LANGUAGES = {"en": "English", "es": "Español"}
LANG_COOKIE = "lang"


def select_locale() -> str:
    """Pick the page's language: the person's choice first, then the browser's."""
    chosen = request.cookies.get(LANG_COOKIE)
    if chosen in LANGUAGES:
        return chosen
    return request.accept_languages.best_match(list(LANGUAGES)) or "en"
