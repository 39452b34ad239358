"""The five safety properties of Raft (Figure 3), checked incrementally at every step.

Each check is O(1) or O(new entries) per event so that thousands of schedules stay cheap:
logs are compared through a hash chain (the hash of entry i covers entries 1..i), so
"the logs are identical up to i" is one comparison.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from django_raft.core import Entry, StateType
from django_raft.core.raft import Raft

ELECTION_SAFETY = "Election Safety"
LEADER_APPEND_ONLY = "Leader Append-Only"
LOG_MATCHING = "Log Matching"
LEADER_COMPLETENESS = "Leader Completeness"
STATE_MACHINE_SAFETY = "State Machine Safety"
LIVENESS = "Liveness"
CORE_ERROR = "Core raised"


class InvariantViolation(AssertionError):
    """A property failed; carries which one so tests can tell the checks apart."""

    def __init__(self, prop: str, detail: str) -> None:
        self.prop = prop
        self.detail = detail
        super().__init__(f"{prop}: {detail}")


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

    def became_leader(self, raft: Raft, chain: list[int]) -> None:
        """Leader Completeness: a new leader holds every entry committed so far."""
        top = len(self.committed) - 1
        if top == 0:
            return
        if len(chain) <= top or chain[top] != self.committed[top]:
            raise InvariantViolation(
                LEADER_COMPLETENESS,
                f"{raft.id} leads term {raft.term} without committed entry {top} "
                f"(its persisted log ends at {len(chain) - 1})",
            )

    def persisted(self, node_id: str, chain: list[int], entries: tuple[Entry, ...]) -> None:
        """Log Matching: an (index, term) pair names one and the same log prefix everywhere."""
        for entry in entries:
            key = (entry.index, entry.term)
            value = chain[entry.index]
            known = self.chain_at.setdefault(key, value)
            if known != value:
                raise InvariantViolation(
                    LOG_MATCHING,
                    f"{node_id} holds entry {key} with a log prefix that differs from "
                    "another node's entry with the same index and term",
                )

    def commit_advanced(self, node_id: str, chain: list[int], old: int, new: int) -> None:
        """Committed entries never change: every node commits the same prefix."""
        committed = self.committed
        for index in range(old + 1, new + 1):
            if index >= len(chain):
                raise InvariantViolation(
                    STATE_MACHINE_SAFETY, f"{node_id} committed {index} beyond its persisted log"
                )
            if index < len(committed):
                if committed[index] != chain[index]:
                    raise InvariantViolation(
                        STATE_MACHINE_SAFETY,
                        f"{node_id} committed a different entry at index {index}",
                    )
            else:
                committed.append(chain[index])

    def applied_entry(self, node_id: str, entry: Entry) -> None:
        """State Machine Safety: no two nodes apply different entries at one index."""
        value = (entry.term, entry.data)
        known = self.applied.setdefault(entry.index, value)
        if known != value:
            raise InvariantViolation(
                STATE_MACHINE_SAFETY,
                f"{node_id} applied {value} at index {entry.index}; another node applied {known}",
            )
