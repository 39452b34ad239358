"""Deliberately broken variants of the core, each violating one rule of the paper.

A mutant is a set of (owner, attribute, replacement) patches. The mutation tests apply
one with pytest's ``monkeypatch`` and require the simulator to catch it, which shows
that the invariant checks can fail at all.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django_raft.core import (
    NONE,
    ConfChange,
    Entry,
    EntryType,
    HardState,
    Message,
    validate_conf_change,
)
from django_raft.core.log import RaftLog
from django_raft.core.raft import Raft, _PendingRead

from .invariants import (
    CORE_ERROR,
    ELECTION_SAFETY,
    LEADER_APPEND_ONLY,
    LEADER_COMPLETENESS,
    LINEARIZABILITY,
    LOG_MATCHING,
    STATE_MACHINE_SAFETY,
)

_original_maybe_append = RaftLog.maybe_append


@dataclass(frozen=True)
class Mutant:
    """A named defect, the property it must break, and how to introduce it.

    ``profile`` is the simulator profile that hunts for it (see ``Faults.draw``).
    """

    name: str
    rule: str
    catches: frozenset[str]
    patches: tuple[tuple[type, str, Callable[..., Any]], ...]
    profile: str | None = None


def _vote_without_one_vote_per_term(self: Raft, message: Message) -> bool:
    return self.log.is_up_to_date(message.index, message.log_term)


def _vote_ignoring_log(self: RaftLog, last_index: int, last_term: int) -> bool:
    return True


def _hard_state_without_vote(self: Raft) -> HardState:
    return HardState(term=self.term, vote=NONE, commit=self.log.committed)


def _leader_overwrites_uncommitted_tail(self: Raft, entries: list[Entry]) -> int:
    first = self.log.committed + 1
    stamped = [
        Entry(index=first + offset, term=self.term, type=entry.type, data=entry.data)
        for offset, entry in enumerate(entries)
    ]
    last = self.log.append(stamped)
    self.progress[self.id].match = last
    self._maybe_commit()
    return last


def _append_without_consistency_check(
    self: RaftLog, prev_index: int, prev_term: int, commit: int, entries: tuple[Entry, ...]
) -> int | None:
    if prev_index > self.last_index():
        return None
    last_new = prev_index + len(entries)
    fresh = [e for e in entries if e.index > self.committed]
    if fresh and self.find_conflict(tuple(fresh)):
        self.append(fresh)
    self.commit_to(min(commit, last_new, self.last_index()))
    return last_new


def _truncate_matching_tail(
    self: RaftLog, prev_index: int, prev_term: int, commit: int, entries: tuple[Entry, ...]
) -> int | None:
    last_new = _original_maybe_append(self, prev_index, prev_term, commit, entries)
    if (
        last_new is not None
        and entries
        and entries[0].index > self.committed
        and last_new < self.last_index()
    ):
        self.append(list(entries))
    return last_new


def _hand_out_uncommitted(self: RaftLog, max_count: int) -> list[Entry]:
    if self.pending_snapshot is not None:
        return []
    return self.entries(self.applied + 1, max_count)


def _applied_to_unchecked(self: RaftLog, index: int) -> None:
    self.applied = max(self.applied, index)


def _read_before_own_commit(self: Raft, context: bytes, requester: str) -> None:
    read = _PendingRead(context, self.log.committed, requester, {self.id})
    self.pending_reads.append(read)
    for peer in self._peers():
        self._send_heartbeat(peer, context)


def _read_without_quorum(self: Raft, context: bytes, requester: str) -> None:
    self._answer_read(_PendingRead(context, self.log.committed, requester))


def _conf_change_without_waiting(self: Raft, change: ConfChange) -> int:
    self._check_can_propose()
    validate_conf_change(self.conf_state(), change)
    return self._propose_entry(EntryType.CONF_CHANGE, change.encode())


MUTANTS = (
    Mutant(
        "vote_twice_in_a_term",
        "§5.2: each server votes for at most one candidate in a given term",
        frozenset({ELECTION_SAFETY}),
        ((Raft, "_grant_vote", _vote_without_one_vote_per_term),),
    ),
    Mutant(
        "vote_not_persisted",
        "Figure 2: votedFor is persisted before responding",
        frozenset({ELECTION_SAFETY}),
        ((Raft, "hard_state", _hard_state_without_vote),),
        "elections",
    ),
    Mutant(
        "leader_overwrites_its_log",
        "§5.3: a leader never overwrites or deletes entries in its log",
        frozenset({LEADER_APPEND_ONLY}),
        ((Raft, "append_entries", _leader_overwrites_uncommitted_tail),),
    ),
    Mutant(
        "append_without_consistency_check",
        "§5.3: reject AppendEntries if the log has no entry at prevLogIndex with prevLogTerm",
        frozenset({LOG_MATCHING}),
        ((RaftLog, "maybe_append", _append_without_consistency_check),),
    ),
    Mutant(
        "vote_ignores_log",
        "§5.4.1: grant a vote only to a candidate whose log is at least as up to date",
        frozenset({LEADER_COMPLETENESS}),
        ((RaftLog, "is_up_to_date", _vote_ignoring_log),),
    ),
    Mutant(
        "apply_before_commit",
        "Figure 2: apply log[lastApplied] only once commitIndex > lastApplied",
        frozenset({STATE_MACHINE_SAFETY}),
        (
            (RaftLog, "next_committed", _hand_out_uncommitted),
            (RaftLog, "applied_to", _applied_to_unchecked),
        ),
    ),
    Mutant(
        "truncate_matching_entries",
        "§5.3: delete only entries that conflict, never entries that match",
        frozenset({LEADER_COMPLETENESS, STATE_MACHINE_SAFETY, CORE_ERROR}),
        ((RaftLog, "maybe_append", _truncate_matching_tail),),
    ),
    Mutant(
        "read_index_before_own_commit",
        "§6.4 of the thesis: a new leader serves reads only once an entry of its term commits",
        frozenset({LINEARIZABILITY}),
        ((Raft, "_read_index", _read_before_own_commit),),
    ),
    Mutant(
        "read_index_without_quorum",
        "§6.4 of the thesis: a leader confirms it still leads before answering a read",
        frozenset({LINEARIZABILITY}),
        ((Raft, "_read_index", _read_without_quorum),),
    ),
    Mutant(
        "concurrent_membership_changes",
        "§4.1 of the thesis: one membership change at a time",
        frozenset({ELECTION_SAFETY, LEADER_COMPLETENESS, STATE_MACHINE_SAFETY, LOG_MATCHING}),
        ((Raft, "propose_conf_change", _conf_change_without_waiting),),
        "membership",
    ),
)
