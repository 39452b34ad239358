"""The nonce memory never moves the acceptance floor past the present.

A request signed ahead of the node's clock (a client's clock may run ahead, within the
window), followed by a flood that fills the memory, must not make the node refuse
fresh requests; and no accepted nonce may ever be accepted again.
"""

from __future__ import annotations

import random

from django_raft.protocol.auth import NonceCache


def _nonce(n: int) -> str:
    return f"{n:032x}"


def test_a_request_signed_ahead_and_a_flood_never_lock_out_fresh_requests() -> None:
    cache = NonceCache(window=30, capacity=1000)
    now = 1000.0
    assert cache.admit(_nonce(0), now + 29, now) is None  # signed 29 s ahead
    for n in range(1, 5001):  # a flood of fresh requests, five times the memory
        now += 0.001
        assert cache.admit(_nonce(n), now, now) is None, n
    assert cache.floor <= now
    assert len(cache) <= 1000
    assert cache.admit(_nonce(10_000), now, now) is None  # fresh: accepted
    # The one signed ahead is still remembered: its replay is refused, now and later.
    assert cache.admit(_nonce(0), 1029.0, now) is not None
    assert cache.admit(_nonce(0), 1029.0, 1028.0) is not None


def test_requests_signed_ahead_take_a_bounded_share_then_only_they_are_refused() -> None:
    cache = NonceCache(window=30, capacity=100)
    now = 500.0
    ahead = [cache.admit(_nonce(n), now + 20, now) for n in range(50)]
    assert ahead.count(None) == cache.future_capacity == 10
    assert all("ahead" in str(refused) for refused in ahead[10:])
    for n in range(100, 400):  # fresh requests keep coming and are accepted
        now += 0.001
        assert cache.admit(_nonce(n), now, now) is None
    assert cache.floor <= now


def test_no_nonce_is_accepted_twice_and_the_floor_stays_behind_the_present() -> None:
    rng = random.Random(23)
    cache = NonceCache(window=30, capacity=50)
    accepted: dict[str, float] = {}
    now = 10_000.0
    for step in range(20_000):
        now += rng.choice((0.0, 0.001, 0.01, 0.5))
        if accepted and rng.random() < 0.3:
            nonce = rng.choice(list(accepted))  # a replay, at any time
            signed_at = accepted[nonce]
        else:
            nonce = _nonce(step)
            signed_at = now + rng.uniform(-31, 31)
        refused = cache.admit(nonce, signed_at, now)
        if refused is None:
            assert nonce not in accepted, f"replay of {nonce} accepted at step {step}"
            accepted[nonce] = signed_at
        assert cache.floor <= now
        if rng.random() < 0.01:  # a fresh request is never refused for the floor
            fresh = _nonce(10**9 + step)
            assert cache.admit(fresh, now, now) is None
            accepted[fresh] = now
