"""Take a snapshot now and compact the log (go-raft's ``TakeSnapshot``).

``take_snapshot(node)`` must run on the node's loop thread, which alone may touch the
core, the storage and the state machine: ``RaftNode`` calls it for a ``"snapshot"``
request on its queue.
"""

from __future__ import annotations

import time
from typing import Any, Protocol

from ..core import RawNode
from .events import snapshot_taken
from .statemachine import StateMachine
from .storage import DjangoStorage


class SnapshotHost(Protocol):
    """What ``take_snapshot`` needs of the node (``RaftNode`` has it)."""

    node_id: str
    raw: RawNode
    storage: DjangoStorage
    machine: StateMachine


def take_snapshot(node: SnapshotHost) -> dict[str, Any]:
    """Snapshot the state machine as of the applied index, store it, compact the log.

    Return ``{"index", "term", "size", "seconds", "compacted_to", "taken"}``; ``taken`` is
    False when the stored snapshot already covers every applied entry.
    """
    started = time.perf_counter()
    index, term = node.machine.applied()
    stored = node.storage.snapshot().metadata
    if index <= stored.index:
        return {
            "index": stored.index,
            "term": stored.term,
            "size": len(node.storage.snapshot().data),
            "seconds": 0.0,
            "compacted_to": node.storage.first_index() - 1,
            "taken": False,
        }
    data = node.machine.save()
    snapshot = node.raw.create_snapshot(index, data)
    node.storage.create_snapshot(snapshot)
    compacted_to = node.raw.compact_index(snapshot)
    node.storage.compact(compacted_to)
    seconds = time.perf_counter() - started
    snapshot_taken.send_robust(
        sender=type(node), node_id=node.node_id, index=index, size=len(data), seconds=seconds
    )
    return {
        "index": index,
        "term": term,
        "size": len(data),
        "seconds": seconds,
        "compacted_to": max(compacted_to, node.storage.first_index() - 1),
        "taken": True,
    }
