"""The Raft state machine: every state transition of one node lives in this file.

``Raft`` takes ticks and messages and leaves behind what to persist, send and apply
(collected by ``RawNode``). The behaviour that depends on the role is swapped as a
function (``self._step_role``), as etcd-io/raft does. Section numbers refer to the
Raft paper (Ongaro and Ousterhout, 2014) and the thesis (Ongaro, 2014).
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from .config import Config
from .errors import (
    ConfChangePendingError,
    MembershipError,
    NotLeaderError,
    ProposalDroppedError,
    UnknownPeerError,
)
from .log import RaftLog
from .membership import validate_conf_change
from .progress import Progress, ProgressState
from .storage import Storage
from .types import (
    LOCAL_MESSAGES,
    NONE,
    ConfChange,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    MessageType,
    ReadState,
    Snapshot,
    SnapshotMetadata,
    SoftState,
    StateType,
)

_VOTE_REPLY = {
    MessageType.REQUEST_VOTE: MessageType.REQUEST_VOTE_RESPONSE,
    MessageType.PRE_VOTE: MessageType.PRE_VOTE_RESPONSE,
}
_VOTE_REQUESTS = (MessageType.REQUEST_VOTE, MessageType.PRE_VOTE)
_FROM_LEADER = (MessageType.APPEND, MessageType.HEARTBEAT, MessageType.SNAPSHOT)
_LOCAL = tuple(LOCAL_MESSAGES)
# Tuples, not sets: membership of an enum in a tuple compares identities, while a set
# calls the enum's (slow, Python-level) __hash__ on every message.
_MAX_FORWARDED_READS = 10_000
_log = logging.getLogger(__name__)


def _malformed(message: Message, own_id: str) -> str:
    """Return why ``message`` cannot come from a correct peer, or "" when it can."""
    if message.type in _LOCAL:
        return "local_type"
    if message.to not in (NONE, own_id):
        return "wrong_recipient"
    if message.sender in (NONE, own_id):
        return "bad_sender"
    if (
        min(message.term, message.index, message.log_term, message.commit) < 0
        or min(message.reject_hint, message.offset) < 0
    ):
        return "out_of_range"
    if message.log_term > message.term and message.type in _FROM_LEADER:
        return "out_of_range"
    if message.entries:
        if message.type is not MessageType.APPEND:
            return "bad_entries"
        previous_term = message.log_term
        for position, entry in enumerate(message.entries, start=message.index + 1):
            if entry.index != position or not previous_term <= entry.term <= message.term:
                return "bad_entries"
            previous_term = entry.term
            if entry.type is EntryType.CONF_CHANGE:
                try:
                    ConfChange.decode(entry.data)
                except ValueError:
                    return "bad_entries"
    if message.type is MessageType.SNAPSHOT:
        metadata = message.snapshot
        if (
            metadata is None
            or not 0 < metadata.term <= message.term
            or metadata.index <= 0
            or not metadata.conf_state.voters
        ):
            return "bad_snapshot"
    return ""


@dataclass
class _PendingRead:
    """A ReadIndex request waiting for a quorum to confirm our leadership (thesis §6.4)."""

    context: bytes
    index: int
    requester: str
    acks: set[str] = field(default_factory=set)
    key: bytes = b""
    """Names this read in heartbeats: issued by the core, so unique by construction."""


@dataclass
class _IncomingSnapshot:
    """Chunks of a snapshot received so far, from one leader in one term."""

    leader: str
    term: int
    metadata: SnapshotMetadata
    data: bytearray


class Raft:
    """One Raft node's protocol state, independent of any I/O."""

    def __init__(self, config: Config, storage: Storage) -> None:
        config.validate()
        self.id = config.id
        self.config = config
        self._rng = config.random_source()
        self.log = RaftLog(storage, config.applied)
        hard_state, _ = storage.initial_state()
        self._conf = self.log.conf_state()
        self.voters: tuple[str, ...] = self._conf.voters
        self.learners: tuple[str, ...] = self._conf.learners
        self.term = hard_state.term
        self.vote = hard_state.vote
        self.lead = NONE
        self.state = StateType.FOLLOWER
        self.progress: dict[str, Progress] = {}
        self.votes: dict[str, bool] = {}
        self.messages: list[Message] = []
        self.read_states: list[ReadState] = []
        self.pending_reads: list[_PendingRead] = []
        self.forwarded_reads: dict[bytes, bytes] = {}
        """Reads sent to the leader and not answered yet: key -> the host's context."""
        self._read_nonce = os.urandom(8)
        """Makes read keys differ between runs of the process, so that an answer to a read
        made before a restart never answers one made after it."""
        self._read_seq = 0
        self.dropped: Counter[str] = Counter()
        """Messages refused because they do not fit this node's state, by reason."""
        self.reads_awaiting_commit: list[Message] = []
        self.incoming_snapshot: _IncomingSnapshot | None = None
        self.outgoing_snapshots: dict[str, Snapshot] = {}
        """The snapshot each follower in snapshot mode is being sent."""
        self.pending_conf_index = 0
        self.lead_transferee = NONE
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.commit_news = False
        """The leader's commit index advanced and followers have not been told yet."""
        self.randomized_election_timeout = config.election_tick
        self._tick: Callable[[], None] = self._tick_election
        self._step_role: Callable[[Message], None] = self._step_follower
        self.become_follower(self.term, NONE)

    # -- what the host reads ------------------------------------------------------------

    def hard_state(self) -> HardState:
        """Return the state that must be persisted."""
        return HardState(term=self.term, vote=self.vote, commit=self.log.committed)

    def soft_state(self) -> SoftState:
        """Return the leader and role, for reporting."""
        return SoftState(leader=self.lead, state=self.state, term=self.term)

    def conf_state(self) -> ConfState:
        """Return the current membership."""
        return self._conf

    def quorum(self) -> int:
        """Return how many voters make a majority."""
        return len(self.voters) // 2 + 1

    def promotable(self) -> bool:
        """Whether this node may campaign.

        A voter may; so may a node that a not-yet-committed change removed, as long as it
        is a voter of the committed membership: its log may be the only up-to-date one
        (a leader that removed itself and lost office before the removal committed), and
        without it the remaining voters could never elect anyone.
        """
        if self.id in self.voters:
            return True
        log = self.log
        return log.last_conf_index() > log.committed and (
            self.id in log.conf_state_at(log.committed).voters
        )

    # -- membership ---------------------------------------------------------------------

    def _sync_conf(self) -> None:
        """Follow the membership in the log: it takes effect when appended (thesis §4.1)."""
        conf = self.log.conf_state()
        if conf is self._conf:
            return
        self._conf = conf
        self.voters, self.learners = conf.voters, conf.learners
        members = (*conf.voters, *conf.learners)
        next_index = self.log.last_index() + 1
        pending = self.log.last_conf_index() > self.log.committed
        for gone in [member for member in self.progress if member not in members]:
            if not (pending and self.state is StateType.LEADER):
                del self.progress[gone]
            # Otherwise the leader keeps replicating to a removed node until the removal
            # commits, so that it learns it was removed instead of waiting forever.
        for member in members:
            if member not in self.progress:
                progress = Progress(next_index, self.config.max_inflight_messages)
                if member == self.id:
                    progress.match = self.log.stable_index()
                self.progress[member] = progress
        if self.lead_transferee not in conf.voters:
            self.lead_transferee = NONE
        if self.state is StateType.LEADER:
            self._maybe_commit()

    def _conf_committed_without_us(self) -> bool:
        return self.id not in self.voters and self.log.committed >= self.log.last_conf_index()

    def propose_conf_change(self, change: ConfChange) -> int:
        """Append a single-server membership change; return its index.

        Only one change may be uncommitted at a time, and a new leader accepts none
        until an entry of its own term has committed (the fix to the single-server
        change bug described on raft-dev in 2015).
        """
        self._check_can_propose()
        if self.pending_conf_index > self.log.committed:
            raise ConfChangePendingError(
                f"the membership change at index {self.pending_conf_index} is not committed yet"
            )
        validate_conf_change(self._conf, change)
        index = self._propose_entry(EntryType.CONF_CHANGE, change.encode())
        self.pending_conf_index = index
        return index

    # -- sending ------------------------------------------------------------------------

    def _send(self, message: Message) -> None:
        self.messages.append(message)

    def _send_append(self, to: str, send_if_empty: bool = True) -> bool:
        """Send entries (or an empty probe) to ``to``; return whether a message went out.

        When the follower needs entries that were compacted, send the snapshot instead.
        """
        progress = self.progress[to]
        if progress.is_paused():
            return False
        if progress.state is ProgressState.SNAPSHOT:
            return self._send_snapshot_chunk(to, progress)
        prev_index = progress.next - 1
        prev_term = self.log.term(prev_index)
        if progress.next < self.log.first_index() or (prev_term == 0 and prev_index > 0):
            self._start_snapshot(to, progress)
            return self._send_snapshot_chunk(to, progress)
        entries = _within(
            self.log.entries(progress.next, self.config.max_entries_per_message),
            self.config.max_bytes_per_message,
        )
        if not entries and not send_if_empty:
            return False
        self._send(
            Message(
                type=MessageType.APPEND,
                to=to,
                sender=self.id,
                term=self.term,
                index=prev_index,
                log_term=prev_term,
                entries=tuple(entries),
                commit=self.log.committed,
            )
        )
        if entries:
            # Only messages carrying entries are pipelined: an empty one (a probe of an
            # up-to-date follower, or news of a commit) must not hold an in-flight slot.
            progress.sent_entries(entries[-1].index)
        return True

    def _start_snapshot(self, to: str, progress: Progress) -> None:
        snapshot = self.log.storage.snapshot()
        progress.become_snapshot(snapshot.metadata.index)
        self.outgoing_snapshots[to] = snapshot

    def _send_snapshot_chunk(self, to: str, progress: Progress) -> bool:
        # A transfer goes on with the snapshot it started with, even when a newer one was
        # taken meanwhile (the log is not compacted past it, see compaction_floor), so
        # a slow follower is never sent a new snapshot before it finished the last one.
        snapshot = self.outgoing_snapshots.get(to)
        if snapshot is None or snapshot.metadata.index != progress.snapshot_index:
            self._start_snapshot(to, progress)
            snapshot = self.outgoing_snapshots[to]
        offset = progress.snapshot_offset
        chunk = snapshot.data[offset : offset + self.config.max_snapshot_chunk]
        self._send(
            Message(
                type=MessageType.SNAPSHOT,
                to=to,
                sender=self.id,
                term=self.term,
                snapshot=snapshot.metadata,
                offset=offset,
                data=chunk,
                done=offset + len(chunk) >= len(snapshot.data),
            )
        )
        progress.probe_sent = True
        return True

    def _send_heartbeat(self, to: str, context: bytes = b"") -> None:
        # A follower may not yet hold entries up to our commit index; it must never be
        # told to commit past what it matches.
        commit = min(self.progress[to].match, self.log.committed)
        self._send(
            Message(
                type=MessageType.HEARTBEAT,
                to=to,
                sender=self.id,
                term=self.term,
                commit=commit,
                context=context,
            )
        )

    def _peers(self) -> list[str]:
        return [peer for peer in self.progress if peer != self.id]

    def broadcast_append(self) -> None:
        """Send what each follower is missing, as soon as there is something to send.

        A follower being replicated to is sent everything new at once (several messages
        of at most ``max_entries_per_message`` entries each, within the in-flight limit).
        """
        for peer in self._peers():
            if self._send_append(peer):
                progress = self.progress[peer]
                while progress.state is ProgressState.REPLICATE and self._send_append(
                    peer, send_if_empty=False
                ):
                    pass

    def _announce_commit(self) -> None:
        """Tell followers about a new commit index when the next Ready is collected.

        Followers that are sent entries in that Ready learn it from them; the others
        get an empty AppendEntries (see ``flush_commit_news``).
        """
        if self.state is StateType.LEADER:
            self.commit_news = True

    def flush_commit_news(self) -> None:
        """Piggyback the commit index on queued AppendEntries, or send it to the rest."""
        if not self.commit_news:
            return
        self.commit_news = False
        if self.state is not StateType.LEADER:
            return
        committed = self.log.committed
        carrying: dict[str, int] = {}
        for position, message in enumerate(self.messages):
            if message.type is MessageType.APPEND and message.entries and message.term == self.term:
                carrying[message.to] = position
        for peer in self._peers():
            position = carrying.get(peer, -1)
            if position < 0:
                self._send_append(peer)
            elif self.messages[position].commit < committed:
                self.messages[position] = replace(self.messages[position], commit=committed)

    def persisted(self) -> None:
        """The host made the log durable up to ``log.stable_index()``: a leader now counts
        itself for those entries, which may commit them (Raft thesis §10.2.1)."""
        if self.state is not StateType.LEADER:
            return
        own = self.progress.get(self.id)
        if own is not None and own.maybe_update(self.log.stable_index()) and self._maybe_commit():
            self._announce_commit()

    def broadcast_heartbeat(self) -> None:
        """Assert leadership to every follower (repeating the newest pending read)."""
        context = self.pending_reads[-1].key if self.pending_reads else b""
        for peer in self._peers():
            self._send_heartbeat(peer, context)

    # -- role changes -------------------------------------------------------------------

    def _reset(self, term: int) -> None:
        if self.term != term:
            self.term = term
            self.vote = NONE
            # Replies queued in an older term (an acknowledgement, a vote) are no longer
            # backed by what this Ready persists: they must not be sent.
            self.messages = [m for m in self.messages if not 0 < m.term < term]
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
            # The leader counts itself only for what it has persisted (see persisted()).
            self.progress[self.id].match = self.log.stable_index()

    def become_follower(self, term: int, lead: str) -> None:
        """Follow ``lead`` (or nobody yet) in ``term``."""
        self._reset(term)
        self.lead = lead
        self.state = StateType.FOLLOWER
        self._tick = self._tick_election
        self._step_role = self._step_follower

    def become_pre_candidate(self) -> None:
        """Ask whether we could win before disturbing anyone's term (thesis §9.6)."""
        if self.state is StateType.LEADER:
            raise AssertionError("a leader cannot become a pre-candidate")
        # Unlike _reset, the term and vote stay: a pre-vote changes nothing durable.
        self.votes = {}
        self.lead = NONE
        self.state = StateType.PRE_CANDIDATE
        self._tick = self._tick_election
        self._step_role = self._step_candidate

    def become_candidate(self) -> None:
        """Start an election: a new term, and our own vote (§5.2)."""
        if self.state is StateType.LEADER:
            raise AssertionError("a leader cannot become a candidate")
        self._reset(self.term + 1)
        self.vote = self.id
        self.state = StateType.CANDIDATE
        self._tick = self._tick_election
        self._step_role = self._step_candidate

    def become_leader(self) -> None:
        """Take office and append a no-op, so entries of earlier terms can commit (§5.4.2)."""
        if self.state is StateType.FOLLOWER:
            raise AssertionError("a follower cannot become leader without an election")
        self._reset(self.term)
        self.lead = self.id
        self.state = StateType.LEADER
        self._tick = self._tick_heartbeat
        self._step_role = self._step_leader
        own = self.progress.get(self.id)
        if own is not None:  # None when a pending change removed us (see promotable)
            own.become_replicate()
        for peer, progress in self.progress.items():
            progress.recent_active = peer == self.id
        # Any membership change in the log may still be uncommitted; no new one is
        # accepted before the no-op (an entry of this term) commits.
        self.pending_conf_index = self.log.last_index() + 1
        self.append_entries([Entry(index=0, term=0)])

    # -- elections ----------------------------------------------------------------------

    def _tick_election(self) -> None:
        self.election_elapsed += 1
        if self.promotable() and self.election_elapsed >= self.randomized_election_timeout:
            self.election_elapsed = 0
            self.step(Message(type=MessageType.HUP, sender=self.id))

    def _tick_heartbeat(self) -> None:
        self.heartbeat_elapsed += 1
        self.election_elapsed += 1
        if self.election_elapsed >= self.config.election_tick:
            self.election_elapsed = 0
            if self.config.check_quorum:
                self.step(Message(type=MessageType.CHECK_QUORUM, sender=self.id))
            if self.state is StateType.LEADER and self.lead_transferee != NONE:
                # The transfer did not finish within an election timeout: give up on it.
                self.lead_transferee = NONE
        if self.state is StateType.LEADER and self.heartbeat_elapsed >= self.config.heartbeat_tick:
            self.heartbeat_elapsed = 0
            self.step(Message(type=MessageType.BEAT, sender=self.id))

    def tick(self) -> None:
        """Advance logical time by one tick."""
        self._tick()

    def _hup(self, transfer: bool = False) -> None:
        if self.state is StateType.LEADER or not self.promotable():
            return
        if self.log.pending_snapshot is not None:
            # Campaign with a log we have not yet made durable: not allowed.
            return
        if (self.config.pre_vote or self.id not in self.voters) and not transfer:
            # A node that its own log removes (the change is not committed yet, see
            # promotable) always asks with a pre-vote first, whatever the settings: it
            # may still be needed to lead, but must not raise the others' terms in vain
            # (each raise would cost a lagging voter its vote, and the cluster a leader).
            self._campaign(MessageType.PRE_VOTE)
        else:
            self._campaign(MessageType.REQUEST_VOTE, transfer)

    def _campaign(self, kind: MessageType, transfer: bool = False) -> None:
        if kind is MessageType.PRE_VOTE:
            self.become_pre_candidate()
            term = self.term + 1
        else:
            self.become_candidate()
            term = self.term
        if self._poll(self.id, _VOTE_REPLY[kind], granted=True):
            return
        last_index = self.log.last_index()
        last_term = self.log.last_term()
        for voter in self.voters:
            if voter != self.id:
                self._send(
                    Message(
                        type=kind,
                        to=voter,
                        sender=self.id,
                        term=term,
                        index=last_index,
                        log_term=last_term,
                        transfer=transfer,
                    )
                )

    def _poll(self, voter: str, kind: MessageType, granted: bool) -> bool:
        """Record a vote and act on the outcome; return whether the election is decided."""
        if voter in self.voters:
            self.votes.setdefault(voter, granted)
        yes = sum(1 for vote in self.votes.values() if vote)
        no = len(self.votes) - yes
        if yes >= self.quorum():
            if kind is MessageType.PRE_VOTE_RESPONSE:
                self._campaign(MessageType.REQUEST_VOTE)
            else:
                self.become_leader()
                self.broadcast_append()
            return True
        if no > len(self.voters) - self.quorum():
            self.become_follower(self.term, NONE)
            return True
        return False

    def _grant_vote(self, message: Message) -> bool:
        """The vote rule (§5.2, §5.4.1): one vote per term, only for an up-to-date log."""
        can_vote = (
            self.vote == message.sender
            or (self.vote == NONE and self.lead == NONE)
            or (message.type is MessageType.PRE_VOTE and message.term > self.term)
        )
        return can_vote and self.log.is_up_to_date(message.index, message.log_term)

    # -- stepping -----------------------------------------------------------------------

    def _drop(self, reason: str) -> None:
        self.dropped[reason] += 1
        _log.debug("node %s dropped a message: %s", self.id, reason)

    def receive(self, message: Message) -> None:
        """Step a message from a peer, after checking that it could make sense here.

        A message that no correct peer could have sent (a local kind, a negative term or
        index, entries that do not follow prevLogIndex or have terms above the
        message's, an undecodable membership change, a snapshot that does not fit its
        term) is dropped and counted in ``dropped``: nothing a peer sends makes a node
        raise.
        """
        reason = _malformed(message, self.id)
        if reason:
            self._drop(reason)
            return
        self.step(message)

    def step(self, message: Message) -> None:
        """Handle one message: first the term rules common to every role, then the role's."""
        kind = message.type
        if kind in _VOTE_REQUESTS and self._ignore_vote_request(message):
            return
        if kind in _VOTE_REQUESTS and message.transfer and message.sender not in self.voters:
            # Only a voter can be handed leadership; a transfer vote lifts the lease.
            self._drop("transfer_from_non_member")
            return
        if message.term > self.term:
            if kind in _VOTE_REQUESTS and not message.transfer and self._in_lease(message.sender):
                # Check-quorum: a follower that heard from a leader within the minimum
                # election timeout ignores vote requests, so a node that was cut off and
                # comes back cannot depose a healthy leader (§4.2.3 of the thesis).
                return
            if kind is MessageType.PRE_VOTE:
                pass
            elif kind is MessageType.PRE_VOTE_RESPONSE and not message.reject:
                # We asked with our term + 1; the term is raised only if the real vote runs.
                pass
            elif kind in _FROM_LEADER:
                self.become_follower(message.term, message.sender)
            else:
                # Figure 2: only a current leader's AppendEntries or a vote we grant reset
                # the election timer. A node that restarted its timer on every newer term
                # it merely heard of stays a step behind a disruptive candidate for good.
                elapsed = self.election_elapsed
                self.become_follower(message.term, NONE)
                self.election_elapsed = elapsed
        elif message.term and message.term < self.term:
            self._step_stale(message)
            return

        if kind is MessageType.HUP:
            self._hup()
        elif kind in _VOTE_REQUESTS:
            self._step_vote_request(message)
        else:
            self._step_role(message)

    def _ignore_vote_request(self, message: Message) -> bool:
        """Whether a vote request comes from a node removed from the cluster.

        Such a node, not knowing it was removed, would otherwise raise terms and depose
        leaders. A non-member whose log is at least as up to date as ours is not
        ignored: it may have been added by entries we have not received yet, and with
        an empty membership (a new node) we know of no one, so we ignore no one.
        """
        return (
            bool(self.voters)
            and message.sender not in self.voters
            and not self.log.is_up_to_date(message.index, message.log_term)
        )

    def _in_lease(self, candidate: str) -> bool:
        """Whether to disregard a vote request because a current leader was heard from
        within the minimum election timeout (thesis §4.2.3).

        With check-quorum this holds for every candidate (a leader that lost its quorum
        steps down, so the lease cannot outlive it). Without it, it holds only for a
        candidate outside our membership: a removed server that never learned of its
        removal, which would otherwise keep raising the term of a member that does not
        know it (a new one knows nobody) and depose every leader, for good.
        """
        return (
            (self.config.check_quorum or candidate not in self.voters)
            and self.lead != NONE
            and self.election_elapsed < self.config.election_tick
        )

    def _step_stale(self, message: Message) -> None:
        """Figure 2: a request from an older term is answered with our current term, so
        a stale leader or candidate learns it was superseded, whatever the settings."""
        if message.type in _FROM_LEADER:
            self._send(
                Message(
                    type=MessageType.APPEND_RESPONSE,
                    to=message.sender,
                    sender=self.id,
                    term=self.term,
                )
            )
        elif message.type in _VOTE_REQUESTS:
            self._send(
                Message(
                    type=_VOTE_REPLY[message.type],
                    to=message.sender,
                    sender=self.id,
                    term=self.term,
                    reject=True,
                )
            )

    def _step_vote_request(self, message: Message) -> None:
        response = _VOTE_REPLY[message.type]
        if self._grant_vote(message):
            # A granted pre-vote answers with the term asked for, so the pre-candidate
            # counts it; nothing of ours changes.
            self._send(Message(type=response, to=message.sender, sender=self.id, term=message.term))
            if message.type is MessageType.REQUEST_VOTE:
                self.election_elapsed = 0
                self.vote = message.sender
        else:
            self._send(
                Message(
                    type=response, to=message.sender, sender=self.id, term=self.term, reject=True
                )
            )

    def _step_leader(self, message: Message) -> None:
        kind = message.type
        if kind is MessageType.BEAT:
            self.broadcast_heartbeat()
            return
        if kind is MessageType.CHECK_QUORUM:
            if not self._quorum_active():
                self.become_follower(self.term, NONE)
            return
        if kind is MessageType.PROPOSE:
            self.append_entries(list(message.entries))
            self.broadcast_append()
            return
        progress = self.progress.get(message.sender)
        if progress is None:
            self._drop("not_a_member")
            return
        if kind is MessageType.READ_INDEX:
            self._read_index(message.context, message.sender)
            return
        if kind is MessageType.APPEND_RESPONSE:
            if message.index > self.log.last_index():
                # No follower can match entries we never had.
                self._drop("match_past_log")
                return
            progress.recent_active = True
            self._handle_append_response(message, progress)
        elif kind is MessageType.HEARTBEAT_RESPONSE:
            progress.recent_active = True
            self._handle_heartbeat_response(message, progress)
        elif kind is MessageType.SNAPSHOT_RESPONSE:
            progress.recent_active = True
            outgoing = self.outgoing_snapshots.get(message.sender)
            if (
                progress.state is ProgressState.SNAPSHOT
                and message.snapshot is not None
                and message.snapshot.index == progress.snapshot_index
                and message.index == progress.snapshot_offset
                and outgoing is not None
                and message.offset <= len(outgoing.data)
            ):
                # The answer to the chunk in flight (stale and duplicate answers are
                # ignored, so only one chunk is ever outstanding): go on from where the
                # follower says it is.
                progress.snapshot_offset = message.offset
                progress.probe_sent = False
                self._send_append(message.sender)

    def _handle_append_response(self, message: Message, progress: Progress) -> None:
        sender = message.sender
        if message.reject:
            hint_index = min(message.reject_hint, self.log.last_index())
            if message.log_term > 0:
                # Skip, in one step, every entry of ours whose term the follower's
                # entry at hint_index rules out (§5.3's optimisation).
                hint_index, _ = self.log.find_conflict_by_term(hint_index, message.log_term)
            if progress.maybe_decrease_to(message.index, hint_index):
                if progress.state is ProgressState.REPLICATE:
                    progress.become_probe()
                self._send_append(sender)
            return
        was_paused = progress.is_paused()
        if not progress.maybe_update(message.index):
            return
        if progress.state is ProgressState.PROBE:
            progress.become_replicate()
        elif progress.state is ProgressState.SNAPSHOT:
            if progress.match < progress.snapshot_index:
                return
            progress.become_replicate()
            self.outgoing_snapshots.pop(sender, None)
        else:
            progress.inflights.free_le(message.index)
        if self._maybe_commit():
            if self.state is not StateType.LEADER:
                return
            self._announce_commit()
        elif was_paused:
            self._send_append(sender)
        while self.state is StateType.LEADER and self._send_append(sender, send_if_empty=False):
            pass
        if (
            sender == self.lead_transferee
            and self.state is StateType.LEADER
            and progress.match == self.log.last_index()
        ):
            self._send_timeout_now(sender)

    def _handle_heartbeat_response(self, message: Message, progress: Progress) -> None:
        progress.probe_sent = False
        if progress.state is ProgressState.REPLICATE and progress.inflights.full():
            progress.inflights.free_first()
        if progress.match < self.log.last_index() or progress.state is ProgressState.SNAPSHOT:
            # In snapshot mode this resends the last unconfirmed chunk, so a lost chunk
            # costs one heartbeat interval, not the whole transfer.
            self._send_append(message.sender)
        if message.context:
            self._confirm_read(message.context, message.sender)

    def _quorum_active(self) -> bool:
        active = 0
        for voter in self.voters:
            progress = self.progress.get(voter)
            if progress is not None and (voter == self.id or progress.recent_active):
                active += 1
        for peer, progress in self.progress.items():
            progress.recent_active = peer == self.id
        return active >= self.quorum()

    def _maybe_commit(self) -> bool:
        """Commit the largest index a majority of voters holds, if it is from our term."""
        if not self.voters:
            return False
        matches = sorted(self.progress[voter].match for voter in self.voters)
        index = matches[len(matches) - self.quorum()]
        if not self.log.maybe_commit(index, self.term):
            return False
        if self.reads_awaiting_commit:
            waiting, self.reads_awaiting_commit = self.reads_awaiting_commit, []
            for request in waiting:
                self._read_index(request.context, request.sender)
        if self.log.committed >= self.log.last_conf_index():
            members = (*self.voters, *self.learners)
            for gone in [member for member in self.progress if member not in members]:
                if gone != self.id:
                    self._send_append(gone)  # carries the commit of its removal
                del self.progress[gone]
        if self._conf_committed_without_us():
            # A leader that removed itself steps down once the removal commits (§4.2.2).
            self.broadcast_append()
            self.become_follower(self.term, NONE)
        return True

    def append_entries(self, entries: list[Entry]) -> int:
        """Give entries the leader's next indexes and term and append them; return last."""
        last = self.log.last_index()
        stamped = [
            Entry(index=last + offset, term=self.term, type=entry.type, data=entry.data)
            for offset, entry in enumerate(entries, start=1)
        ]
        last = self.log.append(stamped)
        self._sync_conf()
        return last

    def _step_candidate(self, message: Message) -> None:
        kind = message.type
        if kind in _FROM_LEADER:
            self.become_follower(message.term, message.sender)
            self._step_follower(message)
        elif (self.state is StateType.PRE_CANDIDATE and kind is MessageType.PRE_VOTE_RESPONSE) or (
            self.state is StateType.CANDIDATE and kind is MessageType.REQUEST_VOTE_RESPONSE
        ):
            self._poll(message.sender, kind, granted=not message.reject)

    def _step_follower(self, message: Message) -> None:
        kind = message.type
        if kind in _FROM_LEADER:
            self.election_elapsed = 0
            self.lead = message.sender
            if kind is MessageType.APPEND:
                self._handle_append(message)
            elif kind is MessageType.HEARTBEAT:
                self._handle_heartbeat(message)
            else:
                self._handle_snapshot(message)
        elif kind is MessageType.TIMEOUT_NOW:
            if message.sender not in self.voters or self.lead not in (NONE, message.sender):
                self._drop("timeout_now_not_from_leader")
                return
            self._hup(transfer=True)
        elif kind is MessageType.READ_INDEX_RESPONSE:
            context = self.forwarded_reads.pop(message.context, None)
            if context is None:
                self._drop("unknown_read")
                return
            self.read_states.append(ReadState(message.index, context))

    def _respond(self, message: Message, kind: MessageType, **fields: Any) -> None:
        self._send(Message(type=kind, to=message.sender, sender=self.id, term=self.term, **fields))

    def _handle_append(self, message: Message) -> None:
        if message.index < self.log.committed:
            # Everything up to our commit index already matches the leader's log.
            self._respond(message, MessageType.APPEND_RESPONSE, index=self.log.committed)
            return
        if self.log.match_term(message.index, message.log_term) and self.log.conflicts_below(
            self.log.committed, message.entries
        ):
            # A leader never sends entries that differ from committed ones.
            self._drop("conflicts_with_commit")
            return
        last = self.log.maybe_append(
            message.index, message.log_term, message.commit, message.entries
        )
        if last is not None:
            self._forget_truncated_acks()
            self._sync_conf()
            self._respond(message, MessageType.APPEND_RESPONSE, index=last)
            return
        hint_index = min(message.index, self.log.last_index())
        hint_index, hint_term = self.log.find_conflict_by_term(hint_index, message.log_term)
        self._respond(
            message,
            MessageType.APPEND_RESPONSE,
            index=message.index,
            reject=True,
            reject_hint=hint_index,
            log_term=hint_term,
        )

    def _forget_truncated_acks(self) -> None:
        """Drop queued acknowledgements of entries the log no longer holds."""
        truncated = self.log.truncated_at
        if truncated:
            self.log.truncated_at = 0
            self.messages = [
                m
                for m in self.messages
                if not (
                    m.type is MessageType.APPEND_RESPONSE and not m.reject and m.index >= truncated
                )
            ]

    def _handle_heartbeat(self, message: Message) -> None:
        # The leader sends min(our match, its commit): anything past our log is wrong.
        last = self.log.last_index()
        if message.commit > last:
            self._drop("commit_past_log")
        self.log.commit_to(min(message.commit, last))
        self._respond(message, MessageType.HEARTBEAT_RESPONSE, context=message.context)

    # -- snapshots ----------------------------------------------------------------------

    def _handle_snapshot(self, message: Message) -> None:
        """Take one chunk; install the snapshot when the last one arrives (Figure 13)."""
        metadata = message.snapshot
        if metadata is None:
            return
        if metadata.index <= self.log.committed:
            # We already have everything the snapshot covers.
            self.incoming_snapshot = None
            self._respond(message, MessageType.APPEND_RESPONSE, index=self.log.committed)
            return
        incoming = self.incoming_snapshot
        if (
            incoming is None
            or incoming.leader != message.sender
            or incoming.term != message.term
            or incoming.metadata != metadata
        ):
            incoming = None
            if message.offset == 0:
                incoming = _IncomingSnapshot(message.sender, message.term, metadata, bytearray())
            self.incoming_snapshot = incoming
        if incoming is None or message.offset > len(incoming.data):
            # A gap, or a transfer we do not hold (we restarted): say where to resume.
            self._respond(
                message,
                MessageType.SNAPSHOT_RESPONSE,
                snapshot=metadata,
                index=message.offset,
                offset=len(incoming.data) if incoming else 0,
                reject=True,
            )
            return
        # A chunk may overlap what we have (a resend): keep only the new bytes.
        incoming.data += message.data[len(incoming.data) - message.offset :]
        if not message.done:
            self._respond(
                message,
                MessageType.SNAPSHOT_RESPONSE,
                snapshot=metadata,
                index=message.offset,
                offset=len(incoming.data),
            )
            return
        self.incoming_snapshot = None
        snapshot = Snapshot(metadata, bytes(incoming.data))
        check = self.config.snapshot_check
        problem = check(snapshot) if check is not None else None
        if problem:
            # Nothing of it is kept: the leader is told to send it again from the start.
            self._drop("snapshot_invalid")
            _log.warning("node %s refused a snapshot: %s", self.id, problem)
            self._respond(
                message,
                MessageType.SNAPSHOT_RESPONSE,
                snapshot=metadata,
                index=message.offset,
                offset=0,
                reject=True,
            )
            return
        self._restore(snapshot)
        # We match the leader up to the snapshot; entries we kept after it may still differ.
        self._respond(message, MessageType.APPEND_RESPONSE, index=self.log.committed)

    def _restore(self, snapshot: Snapshot) -> None:
        metadata = snapshot.metadata
        if self.log.match_term(metadata.index, metadata.term):
            # Figure 13, step 6: our log already holds the snapshot's last entry, so the
            # entries that follow it are kept and only the commit index moves.
            self.log.commit_to(metadata.index)
            return
        self.log.restore(snapshot)
        self._forget_truncated_acks()
        self._sync_conf()

    def compaction_floor(self) -> int:
        """Return the lowest index a snapshot still being sent to a follower needs kept.

        The follower continues from that snapshot with entries, so they must stay.
        """
        floors = [
            snapshot.metadata.index
            for peer, snapshot in self.outgoing_snapshots.items()
            if peer in self.progress and self.progress[peer].state is ProgressState.SNAPSHOT
        ]
        return min(floors, default=self.log.committed)

    def snapshot_at(self, index: int, data: bytes) -> Snapshot:
        """Describe the host's state machine, as of applied ``index``, as a snapshot."""
        if index > self.log.applying:
            # The host may know of entries applied before it reported them (applied_to).
            raise ValueError(f"cannot snapshot index {index}: only {self.log.applying} applied")
        term = self.log.term(index)
        if term == 0 and index > 0:
            raise ValueError(f"cannot snapshot index {index}: it was compacted")
        return Snapshot(SnapshotMetadata(index, term, self.log.conf_state_at(index)), data)

    # -- leadership transfer ------------------------------------------------------------

    def transfer_leadership(self, transferee: str) -> None:
        """Hand leadership to ``transferee`` (thesis §3.10): catch it up, then TimeoutNow.

        Proposals are refused until the transfer ends; it is abandoned after one election
        timeout.
        """
        if self.state is not StateType.LEADER:
            raise NotLeaderError(self.lead)
        if transferee == self.id:
            raise MembershipError("already the leader")
        if transferee not in self.voters:
            raise UnknownPeerError(f"{transferee!r} is not a voter")
        self.lead_transferee = transferee
        self.election_elapsed = 0
        if self.progress[transferee].match == self.log.last_index():
            self._send_timeout_now(transferee)
        else:
            self._send_append(transferee)

    def _send_timeout_now(self, to: str) -> None:
        self._send(Message(type=MessageType.TIMEOUT_NOW, to=to, sender=self.id, term=self.term))

    # -- linearizable reads -------------------------------------------------------------

    def read_index(self, context: bytes) -> None:
        """Ask for a linearizable read; the answer comes back as a ``ReadState``.

        On the leader it is answered locally once a quorum confirms leadership; on a
        follower it is forwarded to the leader. Heartbeats and the request to the leader
        carry a key the core issues, never ``context``; a context names one read at a
        time, so asking again with a context still unanswered abandons the earlier read.
        """
        self._abandon_read(context)
        if self.state is StateType.LEADER:
            self._read_index(context, self.id)
        elif self.lead != NONE:
            key = self.new_read_key()
            if len(self.forwarded_reads) >= _MAX_FORWARDED_READS:
                # Answers lost on the way are never collected otherwise.
                del self.forwarded_reads[next(iter(self.forwarded_reads))]
            self.forwarded_reads[key] = context
            self._send(
                Message(type=MessageType.READ_INDEX, to=self.lead, sender=self.id, context=key)
            )
        else:
            raise NotLeaderError(NONE)

    def _abandon_read(self, context: bytes) -> None:
        """Forget an unanswered read of ours named ``context``: a context names one read
        at a time, so an answer to the earlier read can never answer the new one."""
        own = self.id
        if self.read_states:
            self.read_states = [r for r in self.read_states if r.context != context]
        if self.pending_reads:
            self.pending_reads = [
                r for r in self.pending_reads if r.requester != own or r.context != context
            ]
        if self.reads_awaiting_commit:
            self.reads_awaiting_commit = [
                m for m in self.reads_awaiting_commit if m.sender != own or m.context != context
            ]
        if context in self.forwarded_reads.values():
            self.forwarded_reads = {
                key: value for key, value in self.forwarded_reads.items() if value != context
            }

    def new_read_key(self) -> bytes:
        """Return a name for a read that no other read of this process ever had."""
        self._read_seq += 1
        return self._read_nonce + self._read_seq.to_bytes(8, "big")

    def _read_index(self, context: bytes, requester: str) -> None:
        if self.log.term(self.log.committed) != self.term:
            # Until an entry of our term commits we may not know the latest commit index.
            self.reads_awaiting_commit.append(
                Message(type=MessageType.READ_INDEX, sender=requester, context=context)
            )
            return
        read = _PendingRead(context, self.log.committed, requester, {self.id}, self.new_read_key())
        if self.voters == (self.id,):
            # Alone, we are the majority. A leader that removed itself is no part of the
            # majority, so even a single remaining voter must confirm its leadership.
            self._answer_read(read)
            return
        self.pending_reads.append(read)
        for peer in self._peers():
            self._send_heartbeat(peer, read.key)

    def _confirm_read(self, key: bytes, voter: str) -> None:
        if voter not in self.voters:
            return
        for position, read in enumerate(self.pending_reads):
            if read.key == key:
                read.acks.add(voter)
                if len(read.acks & set(self.voters)) >= self.quorum():
                    # A quorum confirmed our leadership after this read (and every earlier
                    # one) arrived, so all of them may be answered.
                    confirmed = self.pending_reads[: position + 1]
                    del self.pending_reads[: position + 1]
                    for done in confirmed:
                        self._answer_read(done)
                return

    def _answer_read(self, read: _PendingRead) -> None:
        if read.requester == self.id:
            self.read_states.append(ReadState(read.index, read.context))
        else:
            self._send(
                Message(
                    type=MessageType.READ_INDEX_RESPONSE,
                    to=read.requester,
                    sender=self.id,
                    term=self.term,
                    index=read.index,
                    context=read.context,
                )
            )

    # -- proposals ----------------------------------------------------------------------

    def _check_can_propose(self) -> None:
        if self.state is not StateType.LEADER:
            raise NotLeaderError(self.lead)
        if self.lead_transferee != NONE:
            raise ProposalDroppedError(
                f"leadership is being transferred to {self.lead_transferee!r}"
            )

    def _propose_entry(self, entry_type: EntryType, data: bytes) -> int:
        index = self.log.last_index() + 1
        self.step(
            Message(
                type=MessageType.PROPOSE,
                sender=self.id,
                entries=(Entry(index=0, term=0, type=entry_type, data=data),),
            )
        )
        return index

    def propose(self, data: bytes) -> int:
        """Append a command to the leader's log; return its index.

        Raise ``NotLeaderError`` (naming the known leader) anywhere but on the leader, and
        ``ProposalDroppedError`` during a leadership transfer.
        """
        self._check_can_propose()
        return self._propose_entry(EntryType.NORMAL, data)

    def propose_batch(self, datas: Sequence[bytes]) -> tuple[int, int]:
        """Append several commands as one append and one broadcast; return (first, last).

        Raise as ``propose`` does, and ``ValueError`` for an empty batch.
        """
        self._check_can_propose()
        if not datas:
            raise ValueError("propose_batch needs at least one command")
        first = self.log.last_index() + 1
        self.step(
            Message(
                type=MessageType.PROPOSE,
                sender=self.id,
                entries=tuple(Entry(index=0, term=0, data=data) for data in datas),
            )
        )
        return first, first + len(datas) - 1


def _within(entries: list[Entry], max_bytes: int) -> list[Entry]:
    """The first of ``entries`` whose data fit in ``max_bytes`` (the first one always)."""
    total = 0
    for count, entry in enumerate(entries):
        total += len(entry.data)
        if total > max_bytes and count:
            return entries[:count]
    return entries
