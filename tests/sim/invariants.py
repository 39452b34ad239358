"""The five safety properties of Raft (Figure 3), checked incrementally at every step.

Each check is O(1) or O(new entries) per event so that thousands of schedules stay cheap:
logs are compared through a hash chain (the hash of entry i covers entries 1..i), so
"the logs are identical up to i" is one comparison.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from django_raft.core import Entry, StateType
from django_raft.core.raft import Raft

ELECTION_SAFETY = "Election Safety"
LEADER_APPEND_ONLY = "Leader Append-Only"
LOG_MATCHING = "Log Matching"
LEADER_COMPLETENESS = "Leader Completeness"
STATE_MACHINE_SAFETY = "State Machine Safety"
LIVENESS = "Liveness"
LINEARIZABILITY = "Linearizable reads"
CORE_ERROR = "Core raised"
DURABILITY = "Persisted before sent"
"""Every message is backed by state persisted in the same or an earlier Ready."""
STALE_TERM = "Stale term answered"
"""Figure 2: a request from an older term is answered with the current term."""


class InvariantViolation(AssertionError):
    """A property failed; carries which one so tests can tell the checks apart."""

    def __init__(self, prop: str, detail: str) -> None:
        self.prop = prop
        self.detail = detail
        super().__init__(f"{prop}: {detail}")


ChainAt = Callable[[int], "int | None"]
"""A node's log hash chain: the hash of its persisted log up to an index, if known."""


def chain_hash(previous: int, entry: Entry) -> int:
    """Extend a log hash chain by one entry."""
    return hash((previous, entry.term, entry.type, entry.data))


@dataclass
class Checker:
    """Global knowledge of the run: leaders per term, committed and applied entries."""

    leaders: dict[int, str] = field(default_factory=dict)
    chain_at: dict[tuple[int, int], int] = field(default_factory=dict)
    committed: list[int] = field(default_factory=lambda: [0])
    applied: dict[int, tuple[int, bytes]] = field(default_factory=dict)
    digests: dict[int, int] = field(default_factory=dict)
    leader_tip: dict[str, tuple[int, int, Entry | None]] = field(default_factory=dict)

    def after_step(self, raft: Raft) -> None:
        """Election Safety and Leader Append-Only, after every tick or message."""
        if raft.state is not StateType.LEADER:
            self.leader_tip.pop(raft.id, None)
            return
        term = raft.term
        holder = self.leaders.setdefault(term, raft.id)
        if holder != raft.id:
            raise InvariantViolation(
                ELECTION_SAFETY, f"{holder} and {raft.id} are both leaders of term {term}"
            )
        last = raft.log.last_index()
        tip = self.leader_tip.get(raft.id)
        if tip is not None and tip[0] == term:
            _, old_last, old_entry = tip
            if old_last < raft.log.first_index():
                # Compacted by our own snapshot: committed, so it can no longer change.
                now_entry = old_entry
            else:
                entries = raft.log.entries(old_last, 1) if old_last else []
                now_entry = entries[0] if entries else None
            if last < old_last or now_entry != old_entry:
                raise InvariantViolation(
                    LEADER_APPEND_ONLY,
                    f"leader {raft.id} of term {term} had {old_entry} at {old_last}; "
                    f"now {now_entry} (last index {last})",
                )
        if tip is None or tip[0] != term or tip[1] != last:
            entries = raft.log.entries(last, 1) if last else []
            self.leader_tip[raft.id] = (term, last, entries[0] if entries else None)

    def became_leader(self, raft: Raft, chain_at: ChainAt, last_index: int) -> None:
        """Leader Completeness: a new leader holds every entry committed so far.

        Where the leader's log was compacted past the newest commit, its snapshot point
        stands for the prefix: the chains must agree there instead.
        """
        top = len(self.committed) - 1
        if top == 0:
            return
        index = top
        while chain_at(index) is None and index < last_index:
            index += 1
        ours = chain_at(index)
        if last_index < top or ours is None or index >= len(self.committed):
            raise InvariantViolation(
                LEADER_COMPLETENESS,
                f"{raft.id} leads term {raft.term} without committed entry {top} "
                f"(its persisted log ends at {last_index})",
            )
        if ours != self.committed[index]:
            raise InvariantViolation(
                LEADER_COMPLETENESS,
                f"{raft.id} leads term {raft.term} with a log that differs from the "
                f"committed one at index {index}",
            )

    def persisted(self, node_id: str, chain_at: ChainAt, entries: tuple[Entry, ...]) -> None:
        """Log Matching: an (index, term) pair names one and the same log prefix everywhere."""
        for entry in entries:
            key = (entry.index, entry.term)
            value = chain_at(entry.index)
            assert value is not None
            known = self.chain_at.setdefault(key, value)
            if known != value:
                raise InvariantViolation(
                    LOG_MATCHING,
                    f"{node_id} holds entry {key} with a log prefix that differs from "
                    "another node's entry with the same index and term",
                )

    def commit_advanced(self, node_id: str, chain_at: ChainAt, old: int, new: int) -> None:
        """Committed entries never change: every node commits the same prefix."""
        committed = self.committed
        for index in range(old + 1, new + 1):
            ours = chain_at(index)
            if ours is None:
                if index > len(committed) - 1 and chain_at(new) is None:
                    raise InvariantViolation(
                        STATE_MACHINE_SAFETY,
                        f"{node_id} committed {index} beyond its persisted log",
                    )
                continue  # covered by a snapshot that is checked where it starts
            if index > len(committed):
                raise InvariantViolation(
                    STATE_MACHINE_SAFETY,
                    f"{node_id} committed {index} before anyone committed {len(committed)}",
                )
            if index < len(committed):
                if committed[index] != ours:
                    raise InvariantViolation(
                        STATE_MACHINE_SAFETY,
                        f"{node_id} committed a different entry at index {index}",
                    )
            else:
                committed.append(ours)

    def applied_entry(self, node_id: str, entry: Entry, digest: int) -> None:
        """State Machine Safety: no two nodes apply different entries at one index."""
        value = (entry.term, entry.data)
        known = self.applied.setdefault(entry.index, value)
        if known != value:
            raise InvariantViolation(
                STATE_MACHINE_SAFETY,
                f"{node_id} applied {value} at index {entry.index}; another node applied {known}",
            )
        self._same_state(node_id, entry.index, digest)

    def restored(self, node_id: str, index: int, digest: int) -> None:
        """A snapshot installed at ``index`` holds the state every node had there."""
        self._same_state(node_id, index, digest)

    def _same_state(self, node_id: str, index: int, digest: int) -> None:
        known = self.digests.setdefault(index, digest)
        if known != digest:
            raise InvariantViolation(
                STATE_MACHINE_SAFETY,
                f"{node_id}'s state machine at index {index} differs from another node's",
            )
