"""Permission names (and which need step-up) for the pages that list requests, which carry only
permission keys."""
from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import select

from flask_api_functions import db
from security_api.models import Permission


def permission_names(keys: Iterable[str]) -> dict[str, str]:
    """Permission names by key, for the keys on a page (one query, not one per row)."""
    keys = set(keys)
    if not keys:
        return {}
    return dict(db().execute(select(Permission.key, Permission.name)
                             .where(Permission.key.in_(keys))).all())


def step_up_keys(keys: Iterable[str]) -> set[str]:
    """The keys on a page whose requests need step-up to decide (one query), for the code field."""
    keys = set(keys)
    if not keys:
        return set()
    return set(db().scalars(select(Permission.key).where(Permission.key.in_(keys),
                                                         Permission.step_up.is_(True))))
