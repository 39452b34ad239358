"""The leader's view of each follower: how far it matches and how to send it more.

A follower is in one of two modes (etcd-io/raft's design):

- probe: the leader does not know where the logs agree; it sends one AppendEntries
  and waits for the answer (or the next heartbeat) before sending another;
- replicate: the logs agree up to ``match``; the leader streams entries optimistically,
  advancing ``next`` as it sends, with at most ``max_inflight`` messages unanswered;
- snapshot: the entries the follower needs were compacted; the leader sends its
  snapshot one chunk at a time, resuming from the last byte the follower confirmed.
"""

from __future__ import annotations

import enum
from collections import deque


class ProgressState(enum.Enum):
    """How the leader is currently sending to a follower."""

    PROBE = "probe"
    REPLICATE = "replicate"
    SNAPSHOT = "snapshot"


class Inflights:
    """The last indexes of AppendEntries messages sent but not yet acknowledged."""

    __slots__ = ("_capacity", "_queue")

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._queue: deque[int] = deque()

    def add(self, last_index: int) -> None:
        """Record a message whose last entry is ``last_index``."""
        self._queue.append(last_index)

    def free_le(self, index: int) -> None:
        """Forget every message acknowledged by an answer matching up to ``index``."""
        queue = self._queue
        while queue and queue[0] <= index:
            queue.popleft()

    def free_first(self) -> None:
        """Forget the oldest message (its answer may be lost)."""
        if self._queue:
            self._queue.popleft()

    def full(self) -> bool:
        """Whether no more messages may be sent until some are answered."""
        return len(self._queue) >= self._capacity

    def reset(self) -> None:
        """Forget all messages."""
        self._queue.clear()

    def __len__(self) -> int:
        return len(self._queue)


class Progress:
    """Replication state of one follower, as the leader sees it.

    ``match`` is matchIndex of Figure 2 and ``next`` is nextIndex.
    """

    __slots__ = (
        "inflights",
        "match",
        "next",
        "probe_sent",
        "recent_active",
        "snapshot_index",
        "snapshot_offset",
        "state",
    )

    def __init__(self, next_index: int, max_inflight: int) -> None:
        self.match = 0
        self.next = next_index
        self.state = ProgressState.PROBE
        self.probe_sent = False
        self.recent_active = False
        self.inflights = Inflights(max_inflight)
        self.snapshot_index = 0
        """In snapshot mode: the index of the snapshot being sent."""
        self.snapshot_offset = 0
        """In snapshot mode: the next byte the follower confirmed it expects."""

    def become_probe(self) -> None:
        """Fall back to sending one message at a time from just past ``match``."""
        if self.state is ProgressState.SNAPSHOT:
            self.next = max(self.match, self.snapshot_index) + 1
        else:
            self.next = self.match + 1
        self.state = ProgressState.PROBE
        self.probe_sent = False
        self.inflights.reset()
        self.snapshot_index = 0

    def become_snapshot(self, snapshot_index: int) -> None:
        """Start sending the snapshot at ``snapshot_index`` from its first byte."""
        self.state = ProgressState.SNAPSHOT
        self.snapshot_index = snapshot_index
        self.snapshot_offset = 0
        self.probe_sent = False
        self.inflights.reset()

    def become_replicate(self) -> None:
        """Start streaming entries from just past ``match``."""
        self.state = ProgressState.REPLICATE
        self.next = self.match + 1
        self.probe_sent = False
        self.inflights.reset()
        self.snapshot_index = 0

    def is_paused(self) -> bool:
        """Whether the leader should hold back AppendEntries with entries (or a chunk)."""
        if self.state is not ProgressState.REPLICATE:
            return self.probe_sent
        return self.inflights.full()

    def sent_entries(self, last_index: int) -> None:
        """Note that entries up to ``last_index`` were just sent."""
        if self.state is ProgressState.REPLICATE:
            self.next = last_index + 1
            self.inflights.add(last_index)
        else:
            self.probe_sent = True

    def maybe_update(self, index: int) -> bool:
        """Record an acknowledgement up to ``index``; return whether match advanced."""
        updated = False
        if self.match < index:
            self.match = index
            updated = True
            self.probe_sent = False
        self.next = max(self.next, index + 1)
        return updated

    def maybe_decrease_to(self, rejected: int, match_hint: int) -> bool:
        """Handle a rejection of the message with prevLogIndex ``rejected``.

        Return False when the rejection is stale (answers a message sent before the
        leader already moved ``next``), True when ``next`` was moved back.
        """
        if self.state is ProgressState.SNAPSHOT:
            return False
        if self.state is ProgressState.REPLICATE:
            if rejected <= self.match:
                return False
            self.next = self.match + 1
            return True
        if self.next - 1 != rejected:
            return False
        self.next = max(min(rejected, match_hint + 1), self.match + 1)
        self.probe_sent = False
        return True
