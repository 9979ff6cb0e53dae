"""The shared state stores, each against its real backend (database; Redis when given)."""
import threading
import time
import uuid

import pytest

from security_api.accounts.stores import DatabaseStore, RedisStore
from tests.conftest import TEST_REDIS_URL

BACKENDS = ["database", pytest.param("redis", marks=pytest.mark.skipif(
    not TEST_REDIS_URL, reason="TEST_REDIS_URL not set"))]


@pytest.fixture(params=BACKENDS)
def store(request, app):
    if request.param == "redis":
        return RedisStore.from_url(TEST_REDIS_URL, prefix=f"test:{uuid.uuid4().hex}:")
    return DatabaseStore(app.extensions["security_api"].session_factory)


def _now() -> int:
    return int(time.time())


def test_hit_counts_per_window(store):
    now = _now()
    results = [store.hit("ip:1", limit=3, window=60, now=now) for _ in range(4)]
    assert results[:3] == [0, 0, 0]
    assert 0 < results[3] <= 60
    assert store.hit("ip:2", limit=3, window=60, now=now) == 0


def _fail(store, key, *, threshold, lock_seconds=900, now=None):
    """One attempt that checks a secret and fails: reserve its place, then settle it."""
    now = _now() if now is None else now
    assert not store.reserve_attempt(key, threshold=threshold, lock_seconds=lock_seconds,
                                     now=now).locked
    return store.record_failure(key, threshold=threshold, lock_seconds=lock_seconds, now=now)


def test_lockout_at_threshold_and_clear(store):
    now = _now()
    assert [_fail(store, "u", threshold=3, now=now) for _ in range(3)] == [False, False, True]
    state = store.lock_state("u", now=now)
    assert state.locked and 890 <= state.retry_after <= 900
    refused = store.reserve_attempt("u", threshold=3, lock_seconds=900, now=now)
    assert refused.locked and 890 <= refused.retry_after <= 900
    assert not store.lock_state("other", now=now).locked
    store.clear_failures("u")
    assert not store.lock_state("u", now=now).locked


def test_parallel_reservations_never_slip_past_the_threshold(store):
    now = _now()
    barrier = threading.Barrier(12)
    granted = []

    def reserve():
        barrier.wait()
        state = store.reserve_attempt("race", threshold=5, lock_seconds=900, now=now)
        granted.append(not state.locked)

    threads = [threading.Thread(target=reserve) for _ in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert granted.count(True) == 5
    assert [store.record_failure("race", threshold=5, lock_seconds=900, now=now)
            for _ in range(5)].count(True) == 1
    assert store.lock_state("race", now=now).locked


def test_a_released_attempt_gives_its_place_back(store):
    now = _now()
    limits = {"threshold": 2, "lock_seconds": 900, "now": now}
    assert not store.reserve_attempt("r", **limits).locked
    assert not store.reserve_attempt("r", **limits).locked
    # Two attempts still running fill a threshold of 2: a third waits for them.
    assert store.reserve_attempt("r", **limits).locked
    store.release_attempt("r")
    assert not store.reserve_attempt("r", **limits).locked
    assert not store.lock_state("r", now=now).locked


def test_old_failures_do_not_count_in_a_row(app):
    store = DatabaseStore(app.extensions["security_api"].session_factory)
    _fail(store, "slow", threshold=2, lock_seconds=60, now=1000)
    assert _fail(store, "slow", threshold=2, lock_seconds=60, now=1100) is False
    assert _fail(store, "slow", threshold=2, lock_seconds=60, now=1101) is True

