"""The Raft log as the core sees it: stable entries in storage plus unstable ones in memory.

Unstable entries are those appended since the host last persisted a ``Ready``. They
always sit after (or replace the tail of) what storage holds, so reads check the
unstable part first and fall back to storage. A snapshot received from the leader is
unstable too until persisted; while it is, storage is stale and is not read at all.

The log also knows the membership: a change takes effect as soon as its entry is in
the log (thesis §4.1), and is undone if that entry is truncated.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

from .errors import CompactedError, ConfigError, UnavailableError
from .membership import apply_conf_change
from .storage import Storage
from .types import ConfChange, ConfState, Entry, EntryType, Snapshot


class RaftLog:
    """Entries, the commit index and the applied index of one node."""

    __slots__ = (
        "applied",
        "applying",
        "applying_bytes",
        "committed",
        "conf_history",
        "handed",
        "offset",
        "pending_snapshot",
        "storage",
        "truncated_at",
        "unstable",
    )

    def __init__(self, storage: Storage, applied: int = 0) -> None:
        self.storage = storage
        self.unstable: list[Entry] = []
        self.offset = storage.last_index() + 1
        """Index of ``unstable[0]``."""
        self.pending_snapshot: Snapshot | None = None
        self.truncated_at = 0
        """The lowest index whose entry was replaced or removed since last read (0: none)."""
        hard_state, conf_state = storage.initial_state()
        snapshot_index = storage.snapshot().metadata.index
        self.applied = max(applied, snapshot_index)
        if self.applied > self.offset - 1:
            raise ConfigError(
                f"applied ({applied}) is past the last stored index {self.offset - 1}: "
                "Config.applied must be the state machine's durable applied index"
            )
        # commitIndex is volatile (Figure 2): a host that does not sync commit-only hard
        # states restarts with an applied index above the stored commit.
        self.committed = max(hard_state.commit, self.applied)
        self.applying = self.applied
        """The last index handed to the host to apply (above ``applied`` only while the
        host applies beside its loop: ``Config.async_apply``)."""
        self.handed: deque[tuple[int, int]] = deque()
        """(last index, bytes of entry data) of each batch handed over and not yet applied."""
        self.applying_bytes = 0
        self.conf_history: list[tuple[int, ConfState]] = [(snapshot_index, conf_state)]
        """(index, membership) from the snapshot on, one item per change in the log."""
        self._track_conf_changes(storage.conf_entries(snapshot_index + 1, self.offset))

    def first_index(self) -> int:
        """Return the first index that can still be read."""
        if self.pending_snapshot is not None:
            return self.pending_snapshot.metadata.index + 1
        return self.storage.first_index()

    def last_index(self) -> int:
        """Return the index of the last entry, persisted or not."""
        if self.unstable:
            return self.unstable[-1].index
        if self.pending_snapshot is not None:
            return self.pending_snapshot.metadata.index
        return self.storage.last_index()

    def conf_state(self) -> ConfState:
        """Return the membership in force: the latest one in the log."""
        return self.conf_history[-1][1]

    def last_conf_index(self) -> int:
        """Return the index of the latest membership change (or of the snapshot)."""
        return self.conf_history[-1][0]

    def conf_state_at(self, index: int) -> ConfState:
        """Return the membership in force at ``index`` (for snapshots)."""
        for conf_index, conf_state in reversed(self.conf_history):
            if conf_index <= index:
                return conf_state
        raise CompactedError(index)

    def _track_conf_changes(self, entries: list[Entry] | tuple[Entry, ...]) -> None:
        history = self.conf_history
        for entry in entries:
            if entry.type is EntryType.CONF_CHANGE:
                change = ConfChange.decode(entry.data)
                history.append((entry.index, apply_conf_change(history[-1][1], change)))

    def stable_index(self) -> int:
        """Return the last index the host has persisted (and that still stands)."""
        return self.offset - 1

    def last_term(self) -> int:
        """Return the term of the last entry."""
        return self.term(self.last_index())

    def term(self, index: int) -> int:
        """Return the term at ``index``, or 0 when it is unknown (compacted or absent)."""
        if index >= self.offset:
            position = index - self.offset
            if position < len(self.unstable):
                return self.unstable[position].term
            return 0
        if self.pending_snapshot is not None:
            metadata = self.pending_snapshot.metadata
            return metadata.term if index == metadata.index else 0
        try:
            return self.storage.term(index)
        except (CompactedError, UnavailableError):
            return 0

    def match_term(self, index: int, term: int) -> bool:
        """Whether the entry at ``index`` has ``term`` (index 0 always matches term 0)."""
        return self.term(index) == term

    def is_up_to_date(self, last_index: int, last_term: int) -> bool:
        """§5.4.1: a log is at least as up to date as ours if its last term is later,
        or equal with an index at least as large."""
        our_term = self.last_term()
        return last_term > our_term or (last_term == our_term and last_index >= self.last_index())

    def find_conflict(self, entries: tuple[Entry, ...]) -> int:
        """Return the index of the first entry that is new or conflicts, or 0.

        Entries we already hold with the same term are not conflicts: truncating them
        would let a delayed message delete entries we already acknowledged.
        """
        for entry in entries:
            if not self.match_term(entry.index, entry.term):
                return entry.index
        return 0

    def find_conflict_by_term(self, index: int, term: int) -> tuple[int, int]:
        """Return the largest (index, term) at or below ``index`` whose term is <= ``term``.

        This is the fast-backtracking hint: every entry between there and ``index`` has
        a larger term, so it cannot match a log whose entry at ``index`` has ``term``.
        """
        first = self.first_index()
        while index >= first:
            entry_term = self.term(index)
            if entry_term <= term:
                return index, entry_term
            index -= 1
        return index, self.term(index)

    def maybe_append(
        self, prev_index: int, prev_term: int, commit: int, entries: tuple[Entry, ...]
    ) -> int | None:
        """Apply an AppendEntries (§5.3); return the last index it covers, or None.

        None means the consistency check failed: we have no entry at ``prev_index`` with
        ``prev_term``. Otherwise entries are appended from the first conflict on, and the
        commit index advances to min(leaderCommit, index of last new entry).
        """
        if not self.match_term(prev_index, prev_term):
            return None
        last_new = prev_index + len(entries)
        conflict = self.find_conflict(entries)
        if conflict:
            if conflict <= self.committed:
                raise AssertionError(
                    f"entry {conflict} conflicts with committed entry (committed={self.committed})"
                )
            if conflict <= self.last_index():
                self._note_truncation(conflict)
            self.append(entries[conflict - prev_index - 1 :])
        self.commit_to(min(commit, last_new))
        return last_new

    def _note_truncation(self, index: int) -> None:
        if not self.truncated_at or index < self.truncated_at:
            self.truncated_at = index

    def conflicts_below(self, index: int, entries: tuple[Entry, ...]) -> bool:
        """Whether any of ``entries`` at or below ``index`` differs from ours in term."""
        for entry in entries:
            if entry.index > index:
                return False
            if entry.index >= self.first_index() and not self.match_term(entry.index, entry.term):
                return True
        return False

    def append(self, entries: tuple[Entry, ...] | list[Entry]) -> int:
        """Append entries, replacing any from ``entries[0].index`` on; return last index."""
        if not entries:
            return self.last_index()
        first = entries[0].index
        if first <= self.committed:
            raise AssertionError(f"cannot overwrite committed entry {first} ({self.committed})")
        history = self.conf_history
        while history[-1][0] >= first:
            history.pop()
        self._track_conf_changes(entries)
        if first == self.offset + len(self.unstable):
            self.unstable.extend(entries)
        elif first <= self.offset:
            self.offset = first
            self.unstable = list(entries)
        else:
            del self.unstable[first - self.offset :]
            self.unstable.extend(entries)
        return self.last_index()

    def commit_to(self, index: int) -> None:
        """Advance the commit index; it never moves back."""
        if index > self.committed:
            if index > self.last_index():
                raise AssertionError(f"commit {index} is past the last index {self.last_index()}")
            self.committed = index

    def maybe_commit(self, index: int, term: int) -> bool:
        """§5.4.2: commit ``index`` by counting only if its entry is from ``term``."""
        if index > self.committed and self.term(index) == term:
            self.commit_to(index)
            return True
        return False

    def entries(self, lo: int, max_count: int) -> list[Entry]:
        """Return up to ``max_count`` entries from ``lo`` on; raise if ``lo`` was compacted."""
        if lo < self.first_index():
            raise CompactedError(lo)
        hi = min(self.last_index() + 1, lo + max_count)
        if lo >= hi:
            return []
        result: list[Entry] = []
        if lo < self.offset:
            result = self.storage.entries(lo, min(hi, self.offset), hi - lo)
            if len(result) < min(hi, self.offset) - lo:
                return result
        if hi > self.offset:
            start = max(lo, self.offset) - self.offset
            result.extend(self.unstable[start : hi - self.offset])
        return result

    def next_committed(self, max_count: int, max_bytes: int | None = None) -> list[Entry]:
        """Return committed entries not yet handed over (none while a snapshot is pending).

        With ``max_bytes``, no more than that many bytes of entry data may be handed over
        and not yet applied, counting those already out, except that one entry goes
        whenever fewer are out (so an entry larger than the bound goes too).
        """
        if self.committed <= self.applying or self.pending_snapshot is not None:
            return []
        entries = self.entries(self.applying + 1, min(max_count, self.committed - self.applying))
        if max_bytes is None:
            return entries
        room = max_bytes - self.applying_bytes
        if room <= 0:
            return []
        for count, entry in enumerate(entries):
            room -= len(entry.data)
            if room < 0:
                return entries[: max(count, 1)]
        return entries

    def has_room_to_apply(self, max_bytes: int | None) -> bool:
        """Whether committed entries wait to be handed over and the byte bound lets them
        (``next_committed`` then hands over at least one)."""
        if self.committed <= self.applying or self.pending_snapshot is not None:
            return False
        return max_bytes is None or self.applying_bytes < max_bytes

    def handed_over(self, entries: Sequence[Entry]) -> None:
        """Record that the host took ``entries`` (the next committed ones) to apply."""
        last = entries[-1].index
        if entries[0].index != self.applying + 1 or last > self.committed:
            raise AssertionError(
                f"entries {entries[0].index}-{last} handed over after {self.applying}"
                f" (committed {self.committed})"
            )
        size = sum(len(entry.data) for entry in entries)
        self.applying = last
        self.handed.append((last, size))
        self.applying_bytes += size

    def stable_to(self, index: int, term: int) -> None:
        """Forget unstable entries up to ``index`` once the host persisted them."""
        if index < self.offset or self.term(index) != term:
            return
        del self.unstable[: index + 1 - self.offset]
        self.offset = index + 1

    def restore(self, snapshot: Snapshot) -> None:
        """Replace the whole log by a snapshot received from the leader."""
        metadata = snapshot.metadata
        if self.last_index() > metadata.index:
            self._note_truncation(metadata.index + 1)
        self.pending_snapshot = snapshot
        self.unstable = []
        self.offset = metadata.index + 1
        self.committed = metadata.index
        self.conf_history = [(metadata.index, metadata.conf_state)]

    def snapshot_persisted(self, index: int) -> bool:
        """Note that the host persisted the pending snapshot and took it to restore;
        return whether it was the pending one (its index is then to be applied)."""
        if self.pending_snapshot is None or self.pending_snapshot.metadata.index != index:
            return False
        self.pending_snapshot = None
        if index > self.applying:
            self.applying = index
            self.handed.append((index, 0))
        return True

    def compacted(self, index: int) -> None:
        """Forget membership history made obsolete by a snapshot at ``index``."""
        history = self.conf_history
        while len(history) > 1 and history[1][0] <= index:
            history.pop(0)

    def applied_to(self, index: int) -> None:
        """Record that entries up to ``index`` (handed over before) were applied."""
        if index > self.applying or index < self.applied:
            raise AssertionError(f"applied {index} outside [{self.applied}, {self.applying}]")
        self.applied = index
        handed = self.handed
        while handed and handed[0][0] <= index:
            self.applying_bytes -= handed.popleft()[1]
