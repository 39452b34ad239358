"""Prometheus metrics of a ``raftnode``, named after etcd's ``etcd_server_*`` and ``etcd_disk_*``.

The gauges (term, commit, applied, ...) are read from the node's status when scraped;
the counters are updated from Django signals (``events.install`` connects them) and by
the functions below, which the node's loop and transport call where the work happens.
They live in their own registry, so a web process that imports this module exports
nothing it does not own.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

REGISTRY = CollectorRegistry(auto_describe=True)

_DISK_BUCKETS = (0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.0)

term = Gauge("django_raft_server_term", "The current term.", registry=REGISTRY)
commit_index = Gauge(
    "django_raft_server_commit_index", "The highest log index known committed.", registry=REGISTRY
)
applied_index = Gauge(
    "django_raft_server_applied_index", "The highest log index applied.", registry=REGISTRY
)
last_index = Gauge("django_raft_server_last_index", "The last index in the log.", registry=REGISTRY)
snapshot_index = Gauge(
    "django_raft_server_snapshot_index", "The last index the snapshot covers.", registry=REGISTRY
)
is_leader = Gauge(
    "django_raft_server_is_leader", "1 when this node is the leader, else 0.", registry=REGISTRY
)
has_leader = Gauge(
    "django_raft_server_has_leader", "1 when a leader is known, else 0.", registry=REGISTRY
)
streams_open = Gauge(
    "django_raft_network_streams_open",
    "Streams this node serves: from its peers (kind=peer), from clients (kind=command), "
    "watches (kind=watch).",
    ["kind"],
    registry=REGISTRY,
)
leader_changes = Counter(
    "django_raft_server_leader_changes_seen",
    "Leader changes seen by this node.",
    registry=REGISTRY,
)
state_changes = Counter(
    "django_raft_server_state_changes",
    "Role changes of this node, by the new role.",
    ["state"],
    registry=REGISTRY,
)
proposals_committed = Counter(
    "django_raft_server_proposals_committed",
    "Proposals this leader saw committed and applied.",
    registry=REGISTRY,
)
proposals_failed = Counter(
    "django_raft_server_proposals_failed",
    "Proposals that failed (not leader, dropped, superseded, timed out).",
    registry=REGISTRY,
)
apply_duration = Histogram(
    "django_raft_server_apply_duration_seconds",
    "Time to apply one run of committed entries (one transaction).",
    buckets=_DISK_BUCKETS,
    registry=REGISTRY,
)
persist_duration = Histogram(
    "django_raft_disk_wal_fsync_duration_seconds",
    "Time to persist one Ready (hard state and entries), fsync included.",
    buckets=_DISK_BUCKETS,
    registry=REGISTRY,
)
fsyncs = Counter("django_raft_disk_wal_fsyncs", "Durable writes of the log.", registry=REGISTRY)
rpcs_sent = Counter(
    "django_raft_network_peer_sent_messages",
    "Raft messages sent to peers, by type.",
    ["type"],
    registry=REGISTRY,
)
rpcs_received = Counter(
    "django_raft_network_peer_received_messages",
    "Raft messages received from peers, by type.",
    ["type"],
    registry=REGISTRY,
)
rpc_failures = Counter(
    "django_raft_network_peer_sent_failures",
    "Requests to a peer that failed, by peer.",
    ["peer"],
    registry=REGISTRY,
)
handler_duration = Histogram(
    "django_raft_server_handler_duration_seconds",
    "Time a command's handler ran (a batch handler: one call for its run), by command.",
    ["command"],
    buckets=(0.0001, 0.001, 0.01, 0.1, 0.5, 1, 2, 5, 10, 30, 60),
    registry=REGISTRY,
)
snapshot_size = Histogram(
    "django_raft_snap_size_bytes",
    "Size of the snapshots taken or installed.",
    buckets=(1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9),
    registry=REGISTRY,
)
snapshot_duration = Histogram(
    "django_raft_snap_save_total_duration_seconds",
    "Time to take and store a snapshot.",
    buckets=(0.001, 0.01, 0.1, 0.5, 1, 2, 5, 10, 30),
    registry=REGISTRY,
)
membership_changes = Counter(
    "django_raft_server_membership_changes",
    "Membership changes applied, by kind (added, removed).",
    ["kind"],
    registry=REGISTRY,
)


def observe_persist(seconds: float) -> None:
    """Record one durable write of a Ready (the runner calls it around ``storage.persist``)."""
    persist_duration.observe(seconds)
    fsyncs.inc()


@contextmanager
def persisting() -> Iterator[None]:
    """Time the block as one durable write: ``with metrics.persisting(): storage.persist(...)``."""
    started = time.perf_counter()
    yield
    observe_persist(time.perf_counter() - started)


@contextmanager
def applying() -> Iterator[None]:
    """Time the block as one apply run: ``with metrics.applying(): machine.apply(...)``."""
    started = time.perf_counter()
    yield
    observe_apply(time.perf_counter() - started)


def observe_apply(seconds: float) -> None:
    """Record one run of committed entries applied (around ``machine.apply``)."""
    apply_duration.observe(seconds)


_handler_timers: dict[str, Any] = {}
"""``handler_duration``'s child for each command, looked up once (it is per entry)."""


def observe_handler(command: str, seconds: float) -> None:
    """Record one call of ``command``'s handler (the state machine times each)."""
    timer = _handler_timers.get(command)
    if timer is None:
        timer = _handler_timers[command] = handler_duration.labels(command)
    timer.observe(seconds)


def count_proposal(ok: bool) -> None:
    """Count one proposal's end: committed and applied, or failed."""
    (proposals_committed if ok else proposals_failed).inc()


def count_sent(message_type: str, count: int = 1) -> None:
    """Count Raft messages handed to the transport, by type (e.g. ``"append"``)."""
    rpcs_sent.labels(message_type).inc(count)


def count_received(message_type: str, count: int = 1) -> None:
    """Count Raft messages received from peers, by type."""
    rpcs_received.labels(message_type).inc(count)


def count_send_failure(peer: str) -> None:
    """Count a request to ``peer`` that failed."""
    rpc_failures.labels(peer).inc()


def observe_snapshot(size: int, seconds: float) -> None:
    """Record a snapshot taken or installed: its size in bytes and how long it took."""
    snapshot_size.observe(size)
    snapshot_duration.observe(seconds)


def exposition(status: dict[str, Any]) -> bytes:
    """Set the gauges from a node's ``status()`` and return the text exposition format."""
    term.set(int(status.get("term", 0)))
    commit_index.set(int(status.get("commit", 0)))
    applied_index.set(int(status.get("applied", 0)))
    last_index.set(int(status.get("last_index", 0)))
    snapshot_index.set(int(status.get("snapshot_index", 0) or 0))
    is_leader.set(1 if status.get("state") == "leader" else 0)
    has_leader.set(1 if status.get("leader") else 0)
    return generate_latest(REGISTRY)
