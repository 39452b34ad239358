"""What the core reads from stable storage, and an in-memory implementation for tests.

The core never writes to storage itself: the host persists what a ``Ready`` hands it
and the core reads it back through this protocol. Indexes start at 1; index 0 (or the
index of the latest snapshot) is a dummy whose term is known but whose entry is not.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from .errors import CompactedError, UnavailableError
from .types import ConfState, Entry, EntryType, HardState, Snapshot, SnapshotMetadata


class Storage(Protocol):
    """Read access to the persisted log and state."""

    def initial_state(self) -> tuple[HardState, ConfState]:
        """Return the persisted hard state and the membership as of the latest snapshot.

        With no snapshot, that is the bootstrap membership; changes carried in the log
        after the snapshot are replayed by the core.
        """
        ...

    def snapshot(self) -> Snapshot:
        """Return the latest snapshot (index 0 and empty data when there is none)."""
        ...

    def conf_entries(self, lo: int, hi: int) -> list[Entry]:
        """Return the CONF_CHANGE entries in [lo, hi), so startup need not scan the log."""
        ...

    def entries(self, lo: int, hi: int, max_count: int) -> list[Entry]:
        """Return entries in [lo, hi), at most ``max_count`` of them (at least one)."""
        ...

    def term(self, index: int) -> int:
        """Return the term of the entry at ``index`` (first_index - 1 included)."""
        ...

    def first_index(self) -> int:
        """Return the index of the first entry that may be read."""
        ...

    def last_index(self) -> int:
        """Return the index of the last persisted entry."""
        ...


class MemoryStorage:
    """A ``Storage`` held in memory, with the write methods a host would implement.

    ``_entries[0]`` is a dummy entry at the offset (0, or the last compacted index) so
    the term of the entry just before the first real one is always known.
    """

    def __init__(self, conf_state: ConfState | None = None) -> None:
        self.hard_state = HardState()
        self._snapshot = Snapshot(SnapshotMetadata(conf_state=conf_state or ConfState()))
        self._entries: list[Entry] = [Entry(index=0, term=0)]

    def initial_state(self) -> tuple[HardState, ConfState]:
        """Return the stored hard state and the membership as of the snapshot."""
        return self.hard_state, self._snapshot.metadata.conf_state

    def snapshot(self) -> Snapshot:
        """Return the latest snapshot."""
        return self._snapshot

    def conf_entries(self, lo: int, hi: int) -> list[Entry]:
        """Return the CONF_CHANGE entries in [lo, hi)."""
        offset = self._offset()
        lo = max(lo, offset + 1)
        return [
            entry
            for entry in self._entries[lo - offset : max(lo, hi) - offset]
            if entry.type is EntryType.CONF_CHANGE
        ]

    def _offset(self) -> int:
        return self._entries[0].index

    def first_index(self) -> int:
        """Return the first readable index (one past the dummy)."""
        return self._offset() + 1

    def last_index(self) -> int:
        """Return the last stored index."""
        return self._entries[-1].index

    def term(self, index: int) -> int:
        """Return the term at ``index``; raise when compacted or not yet written."""
        offset = self._offset()
        if index < offset:
            raise CompactedError(index)
        if index > self.last_index():
            raise UnavailableError(index)
        return self._entries[index - offset].term

    def entries(self, lo: int, hi: int, max_count: int) -> list[Entry]:
        """Return entries in [lo, hi), capped at ``max_count``."""
        offset = self._offset()
        if lo <= offset:
            raise CompactedError(lo)
        if hi > self.last_index() + 1:
            raise UnavailableError(hi - 1)
        hi = min(hi, lo + max(1, max_count))
        return self._entries[lo - offset : hi - offset]

    def persist(
        self,
        hard_state: HardState | None = None,
        entries: Sequence[Entry] = (),
        snapshot: Snapshot | None = None,
    ) -> None:
        """Write what a Ready hands over, in the order the contract requires.

        ``snapshot`` (received from the leader) is installed first, then ``entries``
        replace every stored entry from the first one's index on, then ``hard_state``
        (when not None) is stored. The same call as the Django storage's ``persist``.
        """
        if snapshot is not None:
            self.apply_snapshot(snapshot)
        self.append(entries)
        if hard_state is not None:
            self.set_hard_state(hard_state)

    def set_hard_state(self, hard_state: HardState) -> None:
        """Persist the hard state."""
        self.hard_state = hard_state

    def append(self, entries: Sequence[Entry]) -> None:
        """Persist entries, replacing any stored entries from the first new index on.

        Raft only ever hands the host entries whose predecessors it already has, so a gap
        is a bug in the caller and raises.
        """
        if not entries:
            return
        first = entries[0].index
        offset = self._offset()
        if first > self.last_index() + 1:
            raise ValueError(f"gap in log: have up to {self.last_index()}, got {first}")
        if first <= offset:
            entries = list(entries)[offset + 1 - first :]
            if not entries:
                return
            first = entries[0].index
        del self._entries[first - offset :]
        self._entries.extend(entries)

    def create_snapshot(self, snapshot: Snapshot) -> None:
        """Record a snapshot the host made of its own state; the log is left as it is."""
        if snapshot.metadata.index <= self._snapshot.metadata.index:
            return
        if snapshot.metadata.index > self.last_index():
            raise UnavailableError(snapshot.metadata.index)
        self._snapshot = snapshot

    def apply_snapshot(self, snapshot: Snapshot) -> None:
        """Install a snapshot received from the leader (Figure 13, steps 6 and 7).

        Entries after the snapshot are kept if the log holds the snapshot's last entry
        with the same term; otherwise the whole log is replaced by the snapshot.
        """
        index, term = snapshot.metadata.index, snapshot.metadata.term
        if index <= self._snapshot.metadata.index:
            return
        self._snapshot = snapshot
        if self._offset() <= index <= self.last_index() and self.term(index) == term:
            self.compact(index)
        else:
            self._entries = [Entry(index=index, term=term)]

    def compact(self, index: int) -> None:
        """Discard entries up to and including ``index``, keeping its term as the dummy.

        Only entries a snapshot covers may go: anything else would be lost for good.
        """
        offset = self._offset()
        if index <= offset:
            return
        if index > self.last_index():
            raise UnavailableError(index)
        if index > self._snapshot.metadata.index:
            raise ValueError(
                f"cannot compact to {index}: the snapshot covers only up to "
                f"{self._snapshot.metadata.index}"
            )
        dummy = Entry(index=index, term=self._entries[index - offset].term)
        self._entries = [dummy, *self._entries[index - offset + 1 :]]
