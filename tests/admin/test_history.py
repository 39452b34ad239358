"""The node's recent history behind the dashboard's charts: a bounded ring of samples, the
rates derived from consecutive readings, and the sampler thread that reads a node."""

from __future__ import annotations

import dataclasses
import math
import threading
import time
from typing import Any

import pytest

from django_raft.node import history, metrics
from django_raft.node.history import History, Reading, Sampler, derive, quantile

BUCKETS = (0.001, 0.01, 0.1, math.inf)


def reading(
    at: float,
    commit: int = 0,
    applied: int | None = None,
    *,
    term: int = 1,
    leader: str = "n1",
    matches: dict[str, int] | None = None,
    calls: float = 0.0,
    seconds: float = 0.0,
    counts: tuple[float, ...] = (0.0, 0.0, 0.0, 0.0),
) -> Reading:
    """A reading at monotonic time ``at`` (and wall time 1000 + ``at``)."""
    return Reading(
        at=at,
        time=1000.0 + at,
        state="leader" if matches is not None else "follower",
        term=term,
        leader=leader,
        commit=commit,
        applied=commit if applied is None else applied,
        matches=matches or {},
        handler_calls=calls,
        handler_seconds=seconds,
        handler_buckets=tuple(zip(BUCKETS, counts, strict=True)),
    )


def test_the_ring_keeps_only_the_newest_samples_up_to_its_capacity() -> None:
    ring = History("n1", capacity=5)
    for second in range(12):
        ring.add(reading(float(second), commit=second * 10))
    assert len(ring) == 5
    samples = ring.since()
    assert [s["time"] for s in samples] == [1007.0, 1008.0, 1009.0, 1010.0, 1011.0]
    assert [s["commit"] for s in samples] == [70, 80, 90, 100, 110]


def test_a_ring_holds_at_least_one_sample() -> None:
    with pytest.raises(ValueError, match="at least one sample"):
        History("n1", capacity=0)


def test_since_answers_only_the_samples_taken_after_that_time() -> None:
    ring = History("n1")
    for second in range(4):
        ring.add(reading(float(second)))
    assert [s["time"] for s in ring.since(1001.0)] == [1002.0, 1003.0]
    assert ring.since(1003.0) == []
    assert len(ring.since(0)) == 4


def test_the_time_of_the_last_sample_answered_asks_for_the_ones_after_it() -> None:
    ring = History("n1")
    for at in (0.1234567, 1.2345678, 2.3456789):
        ring.add(reading(at))
    first, *rest = ring.since()
    assert ring.since(first["time"]) == rest
    assert ring.since(rest[-1]["time"]) == []


def test_the_commit_rate_is_entries_committed_per_second_of_the_interval() -> None:
    ring = History("n1")
    first = ring.add(reading(0.0, commit=100))
    assert first.commit_rate is None  # nothing to compare with yet
    assert ring.add(reading(2.0, commit=130)).commit_rate == pytest.approx(15.0)
    assert ring.add(reading(2.5, commit=130)).commit_rate == 0.0
    assert ring.add(reading(3.0, commit=180)).commit_rate == pytest.approx(100.0)


def test_a_commit_index_that_goes_back_counts_as_no_commits_not_a_negative_rate() -> None:
    # A node restarted in the same process starts from what it persisted.
    before = reading(0.0, commit=500)
    assert derive("n1", before, reading(1.0, commit=400)).commit_rate == 0.0


def test_lag_is_commit_minus_applied_here_and_minus_match_for_each_member_the_leader_sees() -> None:
    leading = reading(0.0, commit=100, applied=97, matches={"n2": 100, "n3": 60, "n4": 104})
    sample = derive("n1", None, leading)
    assert sample.lag == {"n1": 3, "n2": 0, "n3": 40, "n4": 0}
    following = derive("n2", None, reading(0.0, commit=50, applied=45))
    assert following.lag == {"n2": 5}


def test_handler_time_is_the_mean_and_p99_of_the_calls_in_the_interval() -> None:
    # 100 calls before; then 10 more: 9 under 1 ms and 1 between 10 and 100 ms.
    before = reading(0.0, calls=100, seconds=2.0, counts=(50, 100, 100, 100))
    now = reading(1.0, calls=110, seconds=2.0 + 0.009 + 0.05, counts=(59, 109, 110, 110))
    sample = derive("n1", before, now)
    assert sample.handler_calls == 10
    assert sample.handler_mean == pytest.approx(0.0059)
    # rank 9.9 of 10: inside the (0.01, 0.1] bucket, 0.9 of the way up.
    assert sample.handler_p99 == pytest.approx(0.01 + 0.09 * 0.9)


def test_the_first_handler_calls_count_though_the_histogram_had_no_buckets_before() -> None:
    # Before any handler ran, the histogram has no child, so no buckets at all.
    before = dataclasses.replace(reading(0.0), handler_buckets=())
    now = reading(1.0, calls=4, seconds=0.02, counts=(0, 4, 4, 4))
    sample = derive("n1", before, now)
    assert sample.handler_calls == 4
    assert sample.handler_mean == pytest.approx(0.005)
    assert sample.handler_p99 == pytest.approx(0.001 + 0.009 * 0.99)


def test_an_interval_without_handler_calls_has_no_handler_time() -> None:
    before = reading(0.0, calls=5, seconds=1.0, counts=(5, 5, 5, 5))
    sample = derive("n1", before, reading(1.0, calls=5, seconds=1.0, counts=(5, 5, 5, 5)))
    assert (sample.handler_calls, sample.handler_mean, sample.handler_p99) == (0, None, None)


def test_quantile_interpolates_inside_a_bucket_and_stops_at_the_highest_finite_bound() -> None:
    assert quantile(0.5, [(1.0, 10.0), (2.0, 20.0), (math.inf, 20.0)]) == pytest.approx(1.0)
    assert quantile(0.75, [(1.0, 10.0), (2.0, 20.0), (math.inf, 20.0)]) == pytest.approx(1.5)
    assert quantile(0.99, [(1.0, 0.0), (2.0, 0.0), (math.inf, 4.0)]) == 2.0
    assert quantile(0.99, [(1.0, 0.0), (math.inf, 0.0)]) is None
    assert quantile(0.99, []) is None


def test_samples_are_json_ready_and_carry_term_and_leader_for_the_leader_chart() -> None:
    ring = History("n1")
    ring.add(reading(0.0, term=2, leader="n2"))
    ring.add(reading(1.0, term=3, leader="n3"))
    samples = ring.since()
    assert [(s["term"], s["leader"]) for s in samples] == [(2, "n2"), (3, "n3")]
    assert set(samples[0]) == {
        "time",
        "state",
        "term",
        "leader",
        "commit",
        "applied",
        "commit_rate",
        "lag",
        "handler_calls",
        "handler_mean",
        "handler_p99",
    }


class FakeNode:
    """A node's published status, changed by the test."""

    node_id = "n1"

    def __init__(self) -> None:
        self.value: dict[str, Any] = {
            "state": "leader",
            "term": 4,
            "leader": "n1",
            "commit": 10,
            "applied": 9,
            "progress": {"n2": {"match": 7, "next": 8}, "n3": {"match": 10, "next": 11}},
        }
        self.broken = False

    def status(self) -> dict[str, Any]:
        if self.broken:
            raise RuntimeError("status unavailable")
        return dict(self.value)


def test_read_takes_the_published_status_and_the_handler_histogram() -> None:
    node = FakeNode()
    before = history.read(node)
    assert (before.state, before.term, before.leader) == ("leader", 4, "n1")
    assert (before.commit, before.applied) == (10, 9)
    assert before.matches == {"n2": 7, "n3": 10}
    metrics.observe_handler("test.history.a", 0.002)
    metrics.observe_handler("test.history.b", 0.004)
    after = history.read(node)
    assert after.handler_calls - before.handler_calls == 2
    assert after.handler_seconds - before.handler_seconds == pytest.approx(0.006)
    assert after.handler_buckets[-1][0] == math.inf
    sample = derive("n1", before, after)
    assert sample.handler_calls == 2
    assert sample.handler_mean == pytest.approx(0.003)


def test_the_histogram_is_read_again_only_once_the_applied_index_moved() -> None:
    node = FakeNode()
    first = history.read(node)
    metrics.observe_handler("test.history.c", 0.001)
    idle = history.read(node, first)  # nothing applied since: totals carried over
    assert (idle.handler_calls, idle.handler_buckets) == (
        first.handler_calls,
        first.handler_buckets,
    )
    node.value["applied"] = 10
    moved = history.read(node, idle)
    assert moved.handler_calls == first.handler_calls + 1


def test_a_follower_reports_no_match_indexes() -> None:
    node = FakeNode()
    node.value["state"] = "follower"
    assert history.read(node).matches == {}


def test_the_sampler_thread_samples_until_stopped_and_survives_a_failed_read() -> None:
    node = FakeNode()
    sampler = Sampler(node, interval=0.02, capacity=1000)
    sampler.start()
    try:
        deadline = time.monotonic() + 5
        while len(sampler.history) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(sampler.history) >= 3
        node.broken = True
        time.sleep(0.1)
        taken = len(sampler.history)
        node.broken = False
        node.value["commit"] = 50
        deadline = time.monotonic() + 5
        while len(sampler.history) <= taken and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(sampler.history) > taken  # it went on after the failures
        assert sampler.since()[-1]["commit"] == 50
    finally:
        sampler.stop()
    assert not any(t.name == "raft-history-n1" for t in threading.enumerate())
    stopped = len(sampler.history)
    time.sleep(0.1)
    assert len(sampler.history) == stopped
