"""A node's recent history, for the admin dashboard's charts: one sample a second, bounded.

A sampler thread reads, once per ``INTERVAL``, what the node already publishes: its
status (the dict the loop replaces every turn: term, leader, commit and applied index,
and on the leader each member's match index) and the handler-time histogram of
``metrics``. The loop does no work for it. Each sample stores what the charts draw,
computed from the reading before it: entries committed per second, each member's lag
behind the commit index, the leader and term, and how long the handlers took in the
interval (mean, and p99 from the histogram's buckets). ``History`` keeps the last
``CAPACITY`` samples (ten minutes); older ones drop off.

The handler histogram belongs to the process, so the handler times are those of every
node the process runs (``raftnode`` runs one).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from . import metrics

logger = logging.getLogger(__name__)

INTERVAL = 1.0
"""Seconds between samples."""
CAPACITY = 600
"""Samples kept: ten minutes at one a second."""


class Source(Protocol):
    """What the sampler reads: a node's id and its last published status."""

    node_id: str

    def status(self) -> dict[str, Any]: ...


@dataclass(frozen=True, slots=True)
class Reading:
    """Counters read from a node at one instant."""

    at: float
    """``time.monotonic()``, for the interval's length."""
    time: float
    """``time.time()``, for the chart's axis."""
    state: str
    term: int
    leader: str
    commit: int
    applied: int
    matches: dict[str, int] = field(default_factory=dict)
    """Each other member's match index, as this node sees it while it leads."""
    handler_calls: float = 0.0
    handler_seconds: float = 0.0
    handler_buckets: tuple[tuple[float, float], ...] = ()
    """(upper bound, cumulative count) of the handler-time histogram, +inf last."""


@dataclass(frozen=True, slots=True)
class Sample:
    """One point of every chart: a reading, and what changed since the one before."""

    time: float
    state: str
    term: int
    leader: str
    commit: int
    applied: int
    commit_rate: float | None
    """Entries committed per second over the interval (None for the first sample)."""
    lag: dict[str, int]
    """Entries each member is behind the commit index: this node's applied index, and
    while it leads every other member's match index."""
    handler_calls: int
    handler_mean: float | None
    """Mean seconds of the handler calls in the interval (None when there were none)."""
    handler_p99: float | None
    """The interval's 99th percentile, interpolated in the histogram's buckets."""

    def as_dict(self) -> dict[str, Any]:
        """The sample as JSON-ready data (times in seconds, rates per second)."""
        return {
            "time": self.time,
            "state": self.state,
            "term": self.term,
            "leader": self.leader,
            "commit": self.commit,
            "applied": self.applied,
            "commit_rate": _rounded(self.commit_rate, 3),
            "lag": dict(self.lag),
            "handler_calls": self.handler_calls,
            "handler_mean": _rounded(self.handler_mean, 7),
            "handler_p99": _rounded(self.handler_p99, 7),
        }


def _rounded(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def quantile(q: float, buckets: Iterable[tuple[float, float]]) -> float | None:
    """The ``q`` quantile of a histogram's (upper bound, cumulative count) buckets.

    Interpolated linearly inside the bucket it falls in, from the bound below it (0 for
    the first), as Prometheus' ``histogram_quantile`` does; a value in the +inf bucket
    is the highest finite bound. None for an empty histogram.
    """
    pairs = list(buckets)
    total = pairs[-1][1] if pairs else 0.0
    if total <= 0:
        return None
    rank = q * total
    lower, below = 0.0, 0.0
    for bound, count in pairs:
        if count >= rank:
            if math.isinf(bound):
                return lower
            inside = count - below
            return lower + (bound - lower) * ((rank - below) / inside if inside else 1.0)
        lower, below = bound, count
    return lower


def lags(reading: Reading, node_id: str) -> dict[str, int]:
    """Each member's lag behind ``reading``'s commit index that this node can see."""
    found = {peer: max(0, reading.commit - match) for peer, match in reading.matches.items()}
    found[node_id] = max(0, reading.commit - reading.applied)
    return found


def derive(node_id: str, before: Reading | None, now: Reading) -> Sample:
    """The sample of ``now``, with the rates of the interval since ``before``."""
    rate = mean = p99 = None
    calls = 0
    if before is not None and now.at > before.at:
        rate = max(0, now.commit - before.commit) / (now.at - before.at)
        delta = now.handler_calls - before.handler_calls
        if delta > 0:
            calls = round(delta)
            mean = max(0.0, now.handler_seconds - before.handler_seconds) / delta
            earlier = dict(before.handler_buckets)  # empty before the first handler ran
            p99 = quantile(
                0.99,
                ((bound, count - earlier.get(bound, 0.0)) for bound, count in now.handler_buckets),
            )
    return Sample(
        time=now.time,
        state=now.state,
        term=now.term,
        leader=now.leader,
        commit=now.commit,
        applied=now.applied,
        commit_rate=rate,
        lag=lags(now, node_id),
        handler_calls=calls,
        handler_mean=mean,
        handler_p99=p99,
    )


class History:
    """The last ``capacity`` samples of one node; safe to read from any thread."""

    def __init__(self, node_id: str, capacity: int = CAPACITY) -> None:
        if capacity < 1:
            raise ValueError(f"a history holds at least one sample, not {capacity}")
        self.node_id = node_id
        self.capacity = capacity
        self._samples: deque[Sample] = deque(maxlen=capacity)
        self._last: Reading | None = None
        self._lock = threading.Lock()

    def add(self, reading: Reading) -> Sample:
        """Record a reading as a sample (rates since the previous reading); return it."""
        with self._lock:
            sample = derive(self.node_id, self._last, reading)
            self._last = reading
            self._samples.append(sample)
        return sample

    @property
    def last(self) -> Reading | None:
        """The reading of the newest sample (None before the first)."""
        return self._last

    def __len__(self) -> int:
        return len(self._samples)

    def since(self, after: float = 0.0) -> list[dict[str, Any]]:
        """The samples taken after the wall-clock time ``after``, oldest first, as JSON."""
        with self._lock:
            newer = [s for s in self._samples if s.time > after]
        return [s.as_dict() for s in newer]


def handler_totals() -> tuple[float, float, tuple[tuple[float, float], ...]]:
    """Calls, seconds and cumulative buckets of the handler histogram, every command summed."""
    calls = seconds = 0.0
    buckets: dict[float, float] = {}
    for family in metrics.handler_duration.collect():
        for sample in family.samples:
            if sample.name.endswith("_bucket"):
                bound = float(sample.labels["le"])
                buckets[bound] = buckets.get(bound, 0.0) + sample.value
            elif sample.name.endswith("_count"):
                calls += sample.value
            elif sample.name.endswith("_sum"):
                seconds += sample.value
    return calls, seconds, tuple(sorted(buckets.items()))


def read(
    source: Source, previous: Reading | None = None, clock: Callable[[], float] = time.monotonic
) -> Reading:
    """Read a node's published status and the handler histogram; no call into its loop.

    Collecting the histogram costs about a millisecond with ten commands, so while the
    applied index stands still since ``previous`` (no entry applied, so no handler ran)
    its totals are carried over instead.
    """
    status = source.status()
    progress = status.get("progress")
    matches = {}
    if status.get("state") == "leader" and isinstance(progress, dict):
        matches = {
            str(peer): int(p["match"])
            for peer, p in progress.items()
            if isinstance(p, dict) and isinstance(p.get("match"), int)
        }
    applied = int(status.get("applied", 0))
    if previous is not None and previous.applied == applied:
        calls, seconds = previous.handler_calls, previous.handler_seconds
        buckets = previous.handler_buckets
    else:
        calls, seconds, buckets = handler_totals()
    return Reading(
        at=clock(),
        time=time.time(),
        state=str(status.get("state", "")),
        term=int(status.get("term", 0)),
        leader=str(status.get("leader", "")),
        commit=int(status.get("commit", 0)),
        applied=applied,
        matches=matches,
        handler_calls=calls,
        handler_seconds=seconds,
        handler_buckets=buckets,
    )


class Sampler:
    """Samples a node into its ``History`` once per ``interval``, on a thread of its own."""

    def __init__(
        self, source: Source, interval: float = INTERVAL, capacity: int = CAPACITY
    ) -> None:
        self.source = source
        self.interval = interval
        self.history = History(source.node_id, capacity)
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._failed_at = 0.0

    def start(self) -> None:
        """Take a first sample now, then one per interval until ``stop``."""
        self._stopping.clear()
        thread = threading.Thread(
            target=self._run, name=f"raft-history-{self.source.node_id}", daemon=True
        )
        thread.start()
        self._thread = thread  # only once started: ``stop`` may run meanwhile, elsewhere

    def stop(self, timeout: float = 2.0) -> None:
        """Stop sampling (the samples stay)."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def sample(self) -> Sample | None:
        """Read the node once and record it; None (logged at most once a minute) on failure."""
        try:
            return self.history.add(read(self.source, self.history.last))
        except Exception:  # a sampler must never take the node down
            now = time.monotonic()
            if now - self._failed_at >= 60.0:
                self._failed_at = now
                logger.exception("raft: node %s: could not sample its history", self.source.node_id)
            return None

    def since(self, after: float = 0.0) -> list[dict[str, Any]]:
        """The samples taken after the wall-clock time ``after`` (``History.since``)."""
        return self.history.since(after)

    def _run(self) -> None:
        due = time.monotonic()
        while not self._stopping.is_set():
            self.sample()
            due += self.interval
            wait = due - time.monotonic()
            if wait < 0:  # fell behind (a paused process): sample on from now
                due, wait = time.monotonic(), 0.0
            self._stopping.wait(wait)
