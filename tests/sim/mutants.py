"""Deliberately broken variants of the core, each violating one rule of the paper.

A mutant is a set of (owner, attribute, replacement) patches. The mutation tests apply
one with pytest's ``monkeypatch`` and require the simulator to catch it, which shows
that the invariant checks can fail at all.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django_raft.core import NONE, Entry, HardState, Message, MessageType
from django_raft.core.log import RaftLog
from django_raft.core.raft import Raft

from .invariants import (
    CORE_ERROR,
    ELECTION_SAFETY,
    LEADER_APPEND_ONLY,
    LEADER_COMPLETENESS,
    LOG_MATCHING,
    STATE_MACHINE_SAFETY,
)

_original_maybe_append = RaftLog.maybe_append


@dataclass(frozen=True)
class Mutant:
    """A named defect, the property it must break, and how to introduce it."""

    name: str
    rule: str
    catches: frozenset[str]
    patches: tuple[tuple[type, str, Callable[..., Any]], ...]


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


def _heartbeat_full_commit(self: Raft, to: str) -> None:
    self._send(
        Message(
            type=MessageType.HEARTBEAT,
            to=to,
            sender=self.id,
            term=self.term,
            commit=self.log.committed,
        )
    )


def _follower_commits_unverified_tail(self: Raft, message: Message) -> None:
    self.log.commit_to(min(message.commit, self.log.last_index()))
    self._send(
        Message(
            type=MessageType.HEARTBEAT_RESPONSE, to=message.sender, sender=self.id, term=self.term
        )
    )


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
        "follower_commits_unverified_tail",
        "§5.3: commitIndex = min(leaderCommit, index of last new entry)",
        frozenset({STATE_MACHINE_SAFETY}),
        (
            (Raft, "_send_heartbeat", _heartbeat_full_commit),
            (Raft, "_handle_heartbeat", _follower_commits_unverified_tail),
        ),
    ),
    Mutant(
        "truncate_matching_entries",
        "§5.3: delete only entries that conflict, never entries that match",
        frozenset({LEADER_COMPLETENESS, STATE_MACHINE_SAFETY, CORE_ERROR}),
        ((RaftLog, "maybe_append", _truncate_matching_tail),),
    ),
)
