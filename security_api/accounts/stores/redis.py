"""State store in Redis, for deployments that already run one."""
from __future__ import annotations

import redis

from security_api.accounts.stores.base import LockState, StateStore, StoreUnavailable, key_digest

# Atomic "count me unless locked or full": at most `threshold` attempts get past it.
# Returns the count, or minus the seconds to wait.
_RESERVE = """
local lock_ttl = redis.call('TTL', KEYS[2])
if lock_ttl > 0 then
  return -lock_ttl
end
local failures = tonumber(redis.call('GET', KEYS[1]) or '0')
if failures >= tonumber(ARGV[1]) then
  local ttl = redis.call('TTL', KEYS[1])
  if ttl < 1 then ttl = 1 end
  return -ttl
end
failures = redis.call('INCR', KEYS[1])
redis.call('EXPIRE', KEYS[1], ARGV[2])
return failures
"""

# Atomic "the reserved attempt failed: lock once the count reaches the threshold".
_RECORD_FAILURE = """
local failures = tonumber(redis.call('GET', KEYS[1]) or '0')
if failures >= tonumber(ARGV[1]) and redis.call('EXISTS', KEYS[2]) == 0 then
  redis.call('SET', KEYS[2], '1', 'EX', ARGV[2])
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
"""

# Atomic "give the reserved attempt back", never below zero and never into a lock.
_RELEASE = """
local failures = tonumber(redis.call('GET', KEYS[1]) or '0')
if failures > 0 and redis.call('EXISTS', KEYS[2]) == 0 then
  redis.call('DECR', KEYS[1])
end
return 0
"""


class RedisStore(StateStore):
    """Every operation is a single atomic command or script."""

    def __init__(self, client: redis.Redis, *, prefix: str):
        self._redis = client
        self._prefix = prefix
        self._reserve = client.register_script(_RESERVE)
        self._record_failure = client.register_script(_RECORD_FAILURE)
        self._release = client.register_script(_RELEASE)

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

    def _lock_keys(self, key):
        return [self._key("fail", key), self._key("lock", key)]

    def reserve_attempt(self, key, *, threshold, lock_seconds, now):
        result = int(self._call(self._reserve, keys=self._lock_keys(key),
                                args=[threshold, lock_seconds]))
        return LockState(True, -result) if result < 0 else LockState(False)

    def record_failure(self, key, *, threshold, lock_seconds, now):
        return bool(self._call(self._record_failure, keys=self._lock_keys(key),
                               args=[threshold, lock_seconds]))

    def release_attempt(self, key):
        self._call(self._release, keys=self._lock_keys(key))

    def clear_failures(self, key):
        self._call(self._redis.delete, self._key("fail", key), self._key("lock", key))

    def ping(self):
        self._call(self._redis.ping)
