"""The shared state stores, each against its real backend (database; Redis when given)."""
import threading
import time
import uuid

import pytest

from security_api.stores import DatabaseStore, RedisStore
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


def test_lockout_at_threshold_and_clear(store):
    now = _now()
    assert [store.record_failure("u", threshold=3, lock_seconds=900, now=now)
            for _ in range(3)] == [False, False, True]
    state = store.lock_state("u", now=now)
    assert state.locked and 890 <= state.retry_after <= 900
    assert not store.lock_state("other", now=now).locked
    store.clear_failures("u")
    assert not store.lock_state("u", now=now).locked


def test_parallel_failures_never_slip_past_the_threshold(store):
    now = _now()
    barrier = threading.Barrier(12)

    def fail():
        barrier.wait()
        store.record_failure("race", threshold=5, lock_seconds=900, now=now)

    threads = [threading.Thread(target=fail) for _ in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert store.lock_state("race", now=now).locked


def test_old_failures_do_not_count_in_a_row(app):
    store = DatabaseStore(app.extensions["security_api"].session_factory)
    store.record_failure("slow", threshold=2, lock_seconds=60, now=1000)
    assert store.record_failure("slow", threshold=2, lock_seconds=60, now=1100) is False
    assert store.record_failure("slow", threshold=2, lock_seconds=60, now=1101) is True


def test_deny_list(store):
    store.deny_token("jti-1", expires_at=_now() + 60)
    assert store.is_token_denied("jti-1", now=_now())
    assert not store.is_token_denied("jti-2", now=_now())
    store.deny_token("jti-1", expires_at=_now() + 60)  # idempotent


def test_totp_steps_are_accepted_once_and_only_forward(store, make_user):
    user_id = make_user().id
    assert store.claim_totp_step(user_id, 100) is True
    assert store.claim_totp_step(user_id, 100) is False
    assert store.claim_totp_step(user_id, 99) is False
    assert store.claim_totp_step(user_id, 101) is True


def test_parallel_claims_of_one_step_accept_exactly_one(store, make_user):
    user_id = make_user().id
    barrier = threading.Barrier(10)
    results = []

    def claim():
        barrier.wait()
        results.append(store.claim_totp_step(user_id, 500))

    threads = [threading.Thread(target=claim) for _ in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results.count(True) == 1
