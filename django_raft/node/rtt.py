"""Round trips to each peer, measured, and whether they fit the election timeout.

A thread (``Prober``) sends every peer a signed ``ping`` once every ``PROBE_INTERVAL``
over a connection it keeps open, and times the answer (etcd's prober does the same).
Heartbeats cannot be timed instead: many are in flight at once on a slow link, and an
answer does not say which heartbeat it answers.

The rule (etcd's: heartbeat interval about the round trip, election timeout about ten
heartbeats): a link is *too slow* when the median of its last ``WINDOW`` round trips
is above ``ELECTION_TIMEOUT * LIMIT_FRACTION`` (a tenth). The median, not a high
percentile: a probe now and then delayed by a busy CPU (a stalled process, a garbage
collection) says nothing about the network, which delays every probe. Then the node
logs a warning (at most every ``WARN_EVERY`` seconds), sets the
``django_raft_network_peer_round_trip_too_slow`` gauge, and reports it in its status
(``round_trips``), which the admin's health verdict reads.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from prometheus_client import Gauge, Histogram

from ..protocol.connection import NodeConnection
from . import metrics
from .transport import Transport

__all__ = [
    "LIMIT_FRACTION",
    "PING_PATH",
    "PROBE_INTERVAL",
    "Prober",
    "RoundTrips",
    "current",
    "reported",
]

logger = logging.getLogger(__name__)

PING_PATH = "ping"
"""The Raft route a peer answers at once, without its loop (``rpc/ping``)."""
PROBE_INTERVAL = 1.0
"""Seconds between two probes of a peer."""
PROBE_TIMEOUT = 2.0
"""Seconds a probe waits for its answer; one that waits longer counts no sample."""
WINDOW = 30
"""Round trips per peer the rule looks at (the last half minute)."""
MIN_SAMPLES = 5
"""Round trips a peer needs before its link is judged."""
LIMIT_FRACTION = 0.1
"""A link is too slow when its round trip (the median) passes this share of the
election timeout."""
WARN_EVERY = 60.0
"""Seconds between two warnings about slow links (the gauge and status say it always)."""

round_trip_seconds = Histogram(
    "django_raft_network_peer_round_trip_time_seconds",
    "Round trip of a probe to a peer (its ping route, on a kept-open connection), by peer.",
    ["peer"],
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0),
    registry=metrics.REGISTRY,
)
too_slow_gauge = Gauge(
    "django_raft_network_peer_round_trip_too_slow",
    "1 when the round trip to a peer is too large for the election timeout "
    "(its median above a tenth of it), else 0, by peer.",
    ["peer"],
    registry=metrics.REGISTRY,
)


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(fraction * len(ordered)) - 1))]


class RoundTrips:
    """The recent round trips to each peer, and the verdict of the rule on them."""

    def __init__(
        self,
        node_id: str,
        election_timeout: float,
        clock: Callable[[], float] = time.monotonic,
        warn_every: float = WARN_EVERY,
    ) -> None:
        self.node_id = node_id
        self.limit = election_timeout * LIMIT_FRACTION
        self.clock = clock
        self.warn_every = warn_every
        self._samples: dict[str, deque[float]] = {}
        self._lock = threading.Lock()
        self._warned_at = -math.inf

    def record(self, peer: str, seconds: float) -> None:
        """Count one round trip to ``peer``."""
        with self._lock:
            self._samples.setdefault(peer, deque(maxlen=WINDOW)).append(seconds)
        round_trip_seconds.labels(peer).observe(seconds)
        too_slow_gauge.labels(peer).set(1 if peer in self.too_slow() else 0)

    def forget(self, peer: str) -> None:
        """Drop a peer that is no longer a member."""
        with self._lock:
            self._samples.pop(peer, None)
        too_slow_gauge.labels(peer).set(0)

    def too_slow(self) -> dict[str, float]:
        """The peers whose link breaks the rule, with their median round trip (seconds)."""
        with self._lock:
            samples = {peer: list(values) for peer, values in self._samples.items()}
        found = {}
        for peer, values in samples.items():
            if len(values) >= MIN_SAMPLES:
                median = _percentile(values, 0.5)
                if median > self.limit:
                    found[peer] = median
        return found

    def report(self) -> dict[str, Any]:
        """What the status route says: the limit, and per peer the recent round trips."""
        with self._lock:
            samples = {peer: list(values) for peer, values in self._samples.items()}
        slow = self.too_slow()
        peers = {
            peer: {
                "p50_ms": round(_percentile(values, 0.5) * 1000, 3),
                "p90_ms": round(_percentile(values, 0.9) * 1000, 3),
                "max_ms": round(max(values) * 1000, 3),
                "samples": len(values),
                "too_slow": peer in slow,
            }
            for peer, values in sorted(samples.items())
            if values
        }
        return {"limit_ms": round(self.limit * 1000, 3), "peers": peers, "too_slow": sorted(slow)}

    def warn(self) -> bool:
        """Log the slow links, at most every ``warn_every`` seconds; whether it did."""
        slow = self.too_slow()
        now = self.clock()
        if not slow or now - self._warned_at < self.warn_every:
            return False
        self._warned_at = now
        links = ", ".join(f"{peer} {rtt * 1000:.0f} ms" for peer, rtt in sorted(slow.items()))
        logger.warning(
            "raft: node %s: the round trip to %s (median) is too large for the "
            "election timeout: keep it under %.0f ms (a tenth of ELECTION_TIMEOUT), or raise "
            "ELECTION_TIMEOUT to at least ten times the round trip and HEARTBEAT_INTERVAL to "
            "about one round trip (docs/deployment.md, 'Timeouts and the network')",
            self.node_id,
            links,
            self.limit * 1000,
        )
        return True


_current: RoundTrips | None = None
_reported: dict[str, Any] = {}


def current() -> RoundTrips | None:
    """The round trips of the node running in this process, if it probes its peers."""
    return _current


def reported() -> dict[str, Any]:
    """The last ``RoundTrips.report()`` of this process's node (made after each round of
    probes, so reading it costs nothing); empty when it probes nothing."""
    return _reported


class Prober(threading.Thread):
    """Probes every peer the transport knows, once every ``interval``, one after another."""

    def __init__(
        self, transport: Transport, trips: RoundTrips, interval: float = PROBE_INTERVAL
    ) -> None:
        super().__init__(name=f"raft-rtt-{transport.node_id}", daemon=True)
        self.transport = transport
        self.trips = trips
        self.interval = interval
        self.stopped = threading.Event()
        self._connections: dict[str, NodeConnection] = {}

    def start(self) -> None:
        global _current, _reported
        _current, _reported = self.trips, self.trips.report()
        super().start()

    def stop(self) -> None:
        global _current, _reported
        self.stopped.set()
        if _current is self.trips:
            _current, _reported = None, {}

    def run(self) -> None:
        try:
            while not self.stopped.wait(self.interval):
                self.probe_all()
        finally:
            for connection in self._connections.values():
                connection.close()

    def probe_all(self) -> None:
        """Probe each current peer once; forget those no longer members."""
        transport = self.transport
        peers = {
            peer: address
            for peer, address in list(transport.addresses.items())
            if peer != transport.node_id and peer not in transport.forgotten and address
        }
        for peer in set(self._connections) - set(peers):
            self._connections.pop(peer).close()
            self.trips.forget(peer)
        for peer, address in peers.items():
            if self.stopped.is_set():
                return
            seconds = self.probe(peer, address)
            if seconds is not None:
                self.trips.record(peer, seconds)
        self.trips.warn()
        global _reported
        if _current is self.trips:
            _reported = self.trips.report()  # replaced whole: statuses share it

    def probe(self, peer: str, address: str) -> float | None:
        """One round trip to ``peer``, in seconds; None when it did not answer in time."""
        connection = self._connections.get(peer)
        if connection is None or connection.address != address:
            if connection is not None:
                connection.close()
            connection = NodeConnection(address, PROBE_TIMEOUT, self.transport.tls_context)
            self._connections[peer] = connection
            try:  # open it first: a probe times a round trip, not a connection's setup
                connection.post(*self._request(peer))
            except Exception:  # unreachable now: the next probe tries again
                connection.close()
                return None
        path, body, headers, limit = self._request(peer)
        started = time.monotonic()
        try:
            status, _ = connection.post(path, body, headers, limit)
        except Exception:  # unreachable now: the next probe tries again
            connection.close()
            return None
        elapsed = time.monotonic() - started
        return elapsed if status == 200 else None

    def _request(self, peer: str) -> tuple[str, bytes, dict[str, str], int]:
        path = f"/{self.transport.prefix}rpc/{PING_PATH}"
        return path, b"", self.transport.signer.headers("POST", path, peer, b""), 64
