"""What happens to a ``raftnode``: logged at INFO, counted in metrics, kept for the admin.

``install()`` (called by ``manage.py raftnode`` before the node starts) connects one
receiver to each Raft signal. A receiver logs the event on the ``django_raft.events``
logger, updates the metrics and appends it to a bounded ring buffer that the node's
``overview`` route serves to the admin's dashboard. Signals are sent only in the
``raftnode`` process, so web processes never fill the buffer.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import Any

import django.dispatch

from .. import signals
from . import metrics

logger = logging.getLogger("django_raft.events")

MAX_EVENTS = 200
"""Events kept in memory; older ones are dropped."""

_events: deque[dict[str, Any]] = deque(maxlen=MAX_EVENTS)
_last_contact: dict[str, float] = {}
_unreachable: set[str] = set()
_lock = threading.Lock()
_installed = False

snapshot_taken = django.dispatch.Signal()
"""Sent after a snapshot was taken on demand: ``node_id``, ``index``, ``size``, ``seconds``."""


def record(kind: str, node_id: str, message: str, **details: Any) -> None:
    """Keep one event (with the wall-clock time) in the ring buffer and log it at INFO."""
    event = {"time": time.time(), "kind": kind, "node_id": node_id, "message": message, **details}
    with _lock:
        _events.append(event)
    logger.info("raft %s: %s", node_id, message)


def recent(limit: int = 50) -> list[dict[str, Any]]:
    """Return up to ``limit`` recent events, newest first."""
    with _lock:
        items = list(_events)
    return items[::-1][:limit]


def last_contact() -> dict[str, float]:
    """Return, per peer, the wall-clock time it last answered a heartbeat of this leader."""
    with _lock:
        return dict(_last_contact)


def clear() -> None:
    """Forget every event and contact time (for tests)."""
    with _lock:
        _events.clear()
        _last_contact.clear()
        _unreachable.clear()


def _on_state(node_id: str, value: Any, prev_value: Any, **kwargs: Any) -> None:
    metrics.state_changes.labels(str(value)).inc()
    kind = "election" if value in ("candidate", "pre-candidate") else "state"
    record(kind, node_id, f"state {prev_value} -> {value}", value=value, prev_value=prev_value)


def _on_leader(node_id: str, value: Any, prev_value: Any, **kwargs: Any) -> None:
    if value:
        metrics.leader_changes.inc()
        message = f"leader is {value}" + (f" (was {prev_value})" if prev_value else "")
    else:
        message = f"leader {prev_value} lost"
    record("leader", node_id, message, value=value, prev_value=prev_value)


def _on_term(node_id: str, value: Any, prev_value: Any, **kwargs: Any) -> None:
    record("term", node_id, f"term {prev_value} -> {value}", value=value, prev_value=prev_value)


def _on_peer_added(node_id: str, value: Any, **kwargs: Any) -> None:
    metrics.membership_changes.labels("added").inc()
    record("membership", node_id, f"member {value} added", value=value)


def _on_peer_removed(node_id: str, value: Any, **kwargs: Any) -> None:
    metrics.membership_changes.labels("removed").inc()
    with _lock:
        _last_contact.pop(str(value), None)
    record("membership", node_id, f"member {value} removed", value=value)


def _on_removed(node_id: str, **kwargs: Any) -> None:
    record("membership", node_id, "this node was removed from the cluster; stopping")


def _on_heartbeat(node_id: str, value: Any, **kwargs: Any) -> None:
    peer = str(value)
    with _lock:
        _last_contact[peer] = time.time()
        was_unreachable = peer in _unreachable
        _unreachable.discard(peer)
    if was_unreachable:
        record("reachable", node_id, f"peer {peer} answers again", peer=peer)


def peer_failed(node_id: str, peer: str, error: str) -> None:
    """Count a failed request to ``peer``; the first failure in a row is an event.

    The transport calls it when a request to a peer fails; the peer's next heartbeat
    answer records that it is back.
    """
    metrics.count_send_failure(peer)
    with _lock:
        first = peer not in _unreachable
        _unreachable.add(peer)
    if first:
        record("unreachable", node_id, f"peer {peer} unreachable: {error}", peer=peer)


def snapshot_installed(node_id: str, index: int, size: int, seconds: float) -> None:
    """Record a snapshot received from the leader and restored (the runner calls it)."""
    metrics.observe_snapshot(size, seconds)
    record(
        "snapshot",
        node_id,
        f"snapshot at #{index} installed ({size} bytes, {seconds * 1000:.1f} ms)",
        index=index,
        size=size,
    )


def _on_slow_peer(node_id: str, value: Any, peer: str = "", **kwargs: Any) -> None:
    logger.debug("raft %s: a request to %s took %.3f s", node_id, peer, value)


def _on_leader_silent(node_id: str, value: Any, prev_value: Any, **kwargs: Any) -> None:
    record(
        "unreachable",
        node_id,
        f"no word from the leader for {value:.3f} s (threshold {prev_value:.3f} s)",
    )


def _on_snapshot(node_id: str, index: int, size: int, seconds: float, **kwargs: Any) -> None:
    metrics.observe_snapshot(size, seconds)
    record(
        "snapshot",
        node_id,
        f"snapshot taken at #{index} ({size} bytes, {seconds * 1000:.1f} ms)",
        index=index,
        size=size,
    )


_RECEIVERS: tuple[tuple[django.dispatch.Signal, Any], ...] = (
    (signals.state_changed, _on_state),
    (signals.leader_changed, _on_leader),
    (signals.term_changed, _on_term),
    (signals.peer_added, _on_peer_added),
    (signals.peer_removed, _on_peer_removed),
    (signals.removed, _on_removed),
    (signals.heartbeat, _on_heartbeat),
    (signals.heartbeat_interval, _on_slow_peer),
    (signals.election_timeout_threshold, _on_leader_silent),
    (snapshot_taken, _on_snapshot),
)


def install(verbosity: int = 1) -> None:
    """Connect the receivers (once) and set the log level from ``-v`` (0 quiet, 1+ INFO).

    At verbosity 0 only warnings are logged; 1 and 2 log the node's life at INFO; 3 adds
    DEBUG (slow requests to peers). A handler on stderr is added when logging has none.
    """
    global _installed
    if not _installed:
        for signal, receiver in _RECEIVERS:
            signal.connect(receiver, dispatch_uid=f"django_raft.events.{receiver.__name__}")
        _installed = True
    level = logging.WARNING if verbosity == 0 else logging.DEBUG if verbosity >= 3 else logging.INFO
    package = logging.getLogger("django_raft")
    package.setLevel(level)
    if not package.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        package.addHandler(handler)


def uninstall() -> None:
    """Disconnect the receivers (for tests)."""
    global _installed
    for signal, receiver in _RECEIVERS:
        signal.disconnect(receiver, dispatch_uid=f"django_raft.events.{receiver.__name__}")
    _installed = False
