"""Shared sign-in state (throttling, lockout) across workers.

The TOTP replay mark is not here: it lives on the user row (see signin.check_totp), because
it must survive whatever happens to a cache."""
from security_api.accounts.stores.base import LockState, StateStore, StoreUnavailable
from security_api.accounts.stores.database import DatabaseStore
from security_api.accounts.stores.redis import RedisStore

__all__ = ["DatabaseStore", "LockState", "RedisStore", "StateStore", "StoreUnavailable", "make_store"]


def make_store(*, session_factory, redis_url: str | None, redis_prefix: str) -> StateStore:
    """Choose Redis when configured, else the database every instance already shares."""
    if redis_url:
        return RedisStore.from_url(redis_url, prefix=redis_prefix)
    return DatabaseStore(session_factory)
