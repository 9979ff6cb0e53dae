"""State store in Redis, for deployments that already run one."""
from __future__ import annotations

import redis

from .base import LockState, StateStore, StoreUnavailable, key_digest

# Atomic "count a failure, lock at the threshold" so parallel failures never slip past it.
_RECORD_FAILURE = """
local failures = redis.call('INCR', KEYS[1])
redis.call('EXPIRE', KEYS[1], ARGV[2])
if failures >= tonumber(ARGV[1]) then
  redis.call('SET', KEYS[2], '1', 'EX', ARGV[2])
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
"""

# Atomic "accept only a later step" for TOTP replay prevention.
_CLAIM_STEP = """
local current = redis.call('GET', KEYS[1])
if current and tonumber(current) >= tonumber(ARGV[1]) then
  return 0
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return 1
"""
# Long past the drift window: an older step can never be valid again by then.
TOTP_MARK_SECONDS = 600


class RedisStore(StateStore):
    """Every operation is a single atomic command or script."""

    def __init__(self, client: redis.Redis, *, prefix: str):
        self._redis = client
        self._prefix = prefix
        self._record_failure = client.register_script(_RECORD_FAILURE)
        self._claim_step = client.register_script(_CLAIM_STEP)

    @classmethod
    def from_url(cls, url: str, *, prefix: str) -> RedisStore:
        """Connect with short timeouts so an outage fails fast instead of hanging workers."""
        client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2,
                                      health_check_interval=30)
        return cls(client, prefix=prefix)

    def _key(self, kind: str, value: str) -> str:
        return f"{self._prefix}{kind}:{key_digest(value)}"

    def _call(self, func, *args, **kwargs):
        try:
            return func(*args, **kwargs)
        except redis.RedisError as exc:
            raise StoreUnavailable() from exc

    def hit(self, key, *, limit, window, now):
        window_start = now - now % window
        name = f"{self._key('hit', key)}:{window_start}"

        def _count():
            pipe = self._redis.pipeline()
            pipe.incr(name)
            pipe.expire(name, window)
            return pipe.execute()[0]

        count = self._call(_count)
        return window_start + window - now if count > limit else 0

    def lock_state(self, key, *, now):
        ttl = self._call(self._redis.ttl, self._key("lock", key))
        if ttl and ttl > 0:
            return LockState(True, ttl)
        return LockState(False)

    def record_failure(self, key, *, threshold, lock_seconds, now):
        keys = [self._key("fail", key), self._key("lock", key)]
        return bool(self._call(self._record_failure, keys=keys, args=[threshold, lock_seconds]))

    def clear_failures(self, key):
        self._call(self._redis.delete, self._key("fail", key), self._key("lock", key))

    def deny_token(self, jti, *, expires_at):
        self._call(self._redis.set, self._key("deny", jti), "1", exat=max(expires_at, 1))

    def is_token_denied(self, jti, *, now):
        return bool(self._call(self._redis.exists, self._key("deny", jti)))

    def claim_totp_step(self, user_id, step):
        return bool(self._call(self._claim_step, keys=[self._key("totp", user_id)],
                               args=[step, TOTP_MARK_SECONDS]))

    def ping(self):
        self._call(self._redis.ping)
