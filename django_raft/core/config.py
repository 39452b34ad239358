"""Configuration of one Raft node, validated in one place.

Time is counted in ticks: the host calls ``tick()`` at a fixed interval, so the
go-raft defaults (heartbeat 50 ms, election timeout 150 ms) are, with a 10 ms tick,
``heartbeat_tick=5`` and ``election_tick=15``.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from .errors import ConfigError
from .types import Snapshot

MAX_ENTRIES_PER_MESSAGE = 2000
"""go-raft's MaxLogEntriesPerRequest."""
MAX_BYTES_PER_MESSAGE = 8 << 20
"""Bytes of entry data one AppendEntries carries at most (etcd's MaxSizePerMsg); one
entry larger than that still goes, alone."""
ENTRIES_AFTER_SNAPSHOT = 200
"""go-raft's NumberOfLogEntriesAfterSnapshot: kept so slightly slow followers need no snapshot."""


class RandomSource(Protocol):
    """The randomness the core needs; ``random.Random`` satisfies it."""

    def randrange(self, start: int, stop: int) -> int:
        """Return an integer in [start, stop)."""
        ...


class SplitMix64:
    """A small seeded generator, so the core needs no global random state."""

    def __init__(self, seed: int) -> None:
        self._state = seed & 0xFFFFFFFFFFFFFFFF

    def randrange(self, start: int, stop: int) -> int:
        """Return an integer in [start, stop)."""
        if stop <= start:
            raise ValueError("empty range")
        self._state = (self._state + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
        z = self._state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
        z ^= z >> 31
        return start + z % (stop - start)


@dataclass(frozen=True, slots=True)
class Config:
    """Settings of one node.

    ``rng`` drives the randomized election timeout; when omitted a generator seeded
    from the node id is used, which keeps runs reproducible but differs per node.
    """

    id: str
    election_tick: int = 10
    heartbeat_tick: int = 1
    applied: int = 0
    """The last index the host's state machine has applied durably (or, when the state
    machine is volatile and rebuilt from the snapshot at start, the snapshot's index).

    Entries up to it are never handed out again. It may be above the stored commit
    index (a host need not sync a hard state that changes only ``commit``), but never
    past the last stored index.
    """
    max_entries_per_message: int = MAX_ENTRIES_PER_MESSAGE
    max_bytes_per_message: int = MAX_BYTES_PER_MESSAGE
    """Bytes of entry data per AppendEntries (at least one entry goes, however large)."""
    max_inflight_messages: int = 256
    max_committed_per_ready: int = 10_000
    async_apply: bool = False
    """Whether the host applies committed entries beside its loop, after ``advance``.

    When False, ``advance(ready)`` records ``ready.committed_entries`` as applied. When
    True, it records them as handed over: the host applies them later, in order, and
    reports each applied index with ``RawNode.applied_to``; meanwhile the next Readies
    carry the entries after them, the applied index trails the commit index, and
    ``snapshot_due``, ``create_snapshot`` and the host's reads go by the applied index.
    A snapshot in a Ready is handed over the same way: restore it in order with the
    entries, then report its index applied.
    """
    max_applying_bytes: int = 64 << 20
    """With ``async_apply``, bytes of entry data handed over and not yet reported
    applied beyond which no more committed entries are handed out (below it, the next
    entry always goes, however large)."""
    snapshot_threshold: int = 10_000
    """Applied entries since the last snapshot after which ``snapshot_due()`` says yes."""
    entries_after_snapshot: int = ENTRIES_AFTER_SNAPSHOT
    max_snapshot_chunk: int = 1 << 20
    """Bytes of snapshot data per InstallSnapshot message."""
    pre_vote: bool = True
    check_quorum: bool = True
    rng: RandomSource | None = None
    snapshot_check: Callable[[Snapshot], str | None] | None = None
    """Called with a snapshot received whole from the leader, before anything of it is
    kept: it returns why the snapshot is unusable (the transfer starts over), or None."""

    def validate(self) -> None:
        """Raise ``ConfigError`` naming the first invalid setting."""
        if not isinstance(self.id, str) or not self.id:
            raise ConfigError("id must be a non-empty string")
        for name in (
            "election_tick",
            "heartbeat_tick",
            "max_entries_per_message",
            "max_bytes_per_message",
            "max_inflight_messages",
            "max_committed_per_ready",
            "max_applying_bytes",
            "snapshot_threshold",
            "max_snapshot_chunk",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, not {value!r}")
        if self.election_tick <= self.heartbeat_tick:
            raise ConfigError(
                f"election_tick ({self.election_tick}) must be greater than "
                f"heartbeat_tick ({self.heartbeat_tick})"
            )
        for name in ("applied", "entries_after_snapshot"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"{name} must be a non-negative integer, not {value!r}")
        for name in ("pre_vote", "check_quorum", "async_apply"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be True or False")

    def random_source(self) -> RandomSource:
        """Return the injected generator, or a per-node deterministic one."""
        return self.rng if self.rng is not None else SplitMix64(zlib.crc32(self.id.encode()))
