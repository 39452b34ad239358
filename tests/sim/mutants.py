"""Deliberately broken variants of the core, each violating one rule of the paper.

A mutant is a set of (owner, attribute, replacement) patches. The mutation tests apply
one with pytest's ``monkeypatch`` and require the simulator to catch it, which shows
that the invariant checks can fail at all.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from django_raft.core import (
    NONE,
    ConfChange,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    MessageType,
    NotLeaderError,
    Ready,
    StateType,
    validate_conf_change,
)
from django_raft.core import raft as raft_module
from django_raft.core.log import RaftLog
from django_raft.core.progress import Progress
from django_raft.core.raft import _FROM_LEADER, _VOTE_REPLY, Raft, _PendingRead

from .invariants import (
    CORE_ERROR,
    DURABILITY,
    ELECTION_SAFETY,
    LEADER_APPEND_ONLY,
    LEADER_COMPLETENESS,
    LINEARIZABILITY,
    LIVENESS,
    LOG_MATCHING,
    STALE_TERM,
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
    patches: tuple[tuple[object, str, Callable[..., Any]], ...]
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


def _hand_out_uncommitted(
    self: RaftLog, max_count: int, max_bytes: int | None = None
) -> list[Entry]:
    if self.pending_snapshot is not None:
        return []
    return self.entries(self.applying + 1, max_count)


def _handed_over_unchecked(self: RaftLog, entries: Sequence[Entry]) -> None:
    self.applying = max(self.applying, entries[-1].index)


def _applied_to_unchecked(self: RaftLog, index: int) -> None:
    self.applied = max(self.applied, index)


def _read_before_own_commit(self: Raft, context: bytes, requester: str) -> None:
    read = _PendingRead(context, self.log.committed, requester, {self.id}, self.new_read_key())
    self.pending_reads.append(read)
    for peer in self._peers():
        self._send_heartbeat(peer, read.key)


def _read_without_quorum(self: Raft, context: bytes, requester: str) -> None:
    self._answer_read(_PendingRead(context, self.log.committed, requester))


def _conf_change_without_waiting(self: Raft, change: ConfChange) -> int:
    self._check_can_propose()
    validate_conf_change(self.conf_state(), change)
    return self._propose_entry(EntryType.CONF_CHANGE, change.encode())


def _validate_allowing_removed_ids(conf_state: ConfState, change: ConfChange) -> None:
    validate_conf_change(ConfState(conf_state.voters, conf_state.learners), change)


def _stale_answered_only_with_check_quorum(self: Raft, message: Message) -> None:
    if message.type in _FROM_LEADER and self.config.check_quorum:
        self._send(
            Message(
                type=MessageType.APPEND_RESPONSE, to=message.sender, sender=self.id, term=self.term
            )
        )
    elif message.type is MessageType.PRE_VOTE:
        self._send(
            Message(
                type=_VOTE_REPLY[message.type],
                to=message.sender,
                sender=self.id,
                term=self.term,
                reject=True,
            )
        )


def _reset_keeping_queued_messages(self: Raft, term: int) -> None:
    if self.term != term:
        self.term = term
        self.vote = NONE
    self.lead = NONE
    self.election_elapsed = 0
    self.heartbeat_elapsed = 0
    self.randomized_election_timeout = self._rng.randrange(
        self.config.election_tick, 2 * self.config.election_tick
    )
    self.votes = {}
    self.lead_transferee = NONE
    self.outgoing_snapshots = {}
    self.pending_reads = []
    self.forwarded_reads = {}
    self.reads_awaiting_commit = []
    next_index = self.log.last_index() + 1
    self.progress = {
        member: Progress(next_index, self.config.max_inflight_messages)
        for member in (*self.voters, *self.learners)
    }
    if self.id in self.progress:
        self.progress[self.id].match = self.log.stable_index()


def _read_index_with_host_context(self: Raft, context: bytes) -> None:
    if self.state is StateType.LEADER:
        self._read_index(context, self.id)
    elif self.lead != NONE:
        self.forwarded_reads[context] = context
        self._send(
            Message(type=MessageType.READ_INDEX, to=self.lead, sender=self.id, context=context)
        )
    else:
        raise NotLeaderError(NONE)


def _leader_read_with_host_context(self: Raft, context: bytes, requester: str) -> None:
    if self.log.term(self.log.committed) != self.term:
        self.reads_awaiting_commit.append(
            Message(type=MessageType.READ_INDEX, sender=requester, context=context)
        )
        return
    read = _PendingRead(context, self.log.committed, requester, {self.id}, context)
    if self.voters == (self.id,):
        self._answer_read(read)
        return
    self.pending_reads.append(read)
    for peer in self._peers():
        self._send_heartbeat(peer, context)


def _send_everything_before_persisting(
    self: Ready,
) -> tuple[tuple[Message, ...], tuple[Message, ...]]:
    return self.messages, ()


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
        frozenset({ELECTION_SAFETY, DURABILITY}),
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
            (RaftLog, "handed_over", _handed_over_unchecked),
            (RaftLog, "applied_to", _applied_to_unchecked),
        ),
    ),
    Mutant(
        "truncate_matching_entries",
        "§5.3: delete only entries that conflict, never entries that match",
        frozenset({LEADER_COMPLETENESS, STATE_MACHINE_SAFETY, CORE_ERROR, DURABILITY}),
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
    Mutant(
        "removed_id_rejoins",
        "a removed id never rejoins: its old messages would be taken for the new node's",
        frozenset({LEADER_COMPLETENESS, STATE_MACHINE_SAFETY, LIVENESS, CORE_ERROR}),
        ((raft_module, "validate_conf_change", _validate_allowing_removed_ids),),
        "membership",
    ),
    Mutant(
        "stale_term_unanswered",
        "Figure 2: a request from an older term is answered with the current term",
        frozenset({STALE_TERM}),
        ((Raft, "_step_stale", _stale_answered_only_with_check_quorum),),
    ),
    Mutant(
        "stale_acks_survive_a_new_term",
        "a Ready sends only messages backed by what it persists: replies of an older term go",
        frozenset({DURABILITY}),
        ((Raft, "_reset", _reset_keeping_queued_messages),),
    ),
    Mutant(
        "read_context_from_the_host",
        "§6.4 of the thesis: a heartbeat answer confirms only the read it was sent for",
        frozenset({LINEARIZABILITY}),
        (
            (Raft, "read_index", _read_index_with_host_context),
            (Raft, "_read_index", _leader_read_with_host_context),
        ),
    ),
    Mutant(
        "send_everything_before_persisting",
        "Figure 2: votes and acknowledgements are sent only once persisted",
        frozenset({DURABILITY}),
        ((Ready, "partition_messages", _send_everything_before_persisting),),
    ),
)
