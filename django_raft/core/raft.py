"""The Raft state machine: every state transition of one node lives in this file.

``Raft`` takes ticks and messages and leaves behind what to persist, send and apply
(collected by ``RawNode``). The behaviour that depends on the role is swapped as a
function (``self._step_role``), as etcd-io/raft does. Section numbers refer to the
Raft paper (Ongaro and Ousterhout, 2014) and the thesis (Ongaro, 2014).
"""

from __future__ import annotations

from collections.abc import Callable

from .config import Config
from .errors import NotLeaderError
from .log import RaftLog
from .progress import Progress, ProgressState
from .storage import Storage
from .types import (
    NONE,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    MessageType,
    SoftState,
    StateType,
)

_VOTE_RESPONSE = {
    MessageType.REQUEST_VOTE: MessageType.REQUEST_VOTE_RESPONSE,
    MessageType.PRE_VOTE: MessageType.PRE_VOTE_RESPONSE,
}


class Raft:
    """One Raft node's protocol state, independent of any I/O."""

    def __init__(self, config: Config, storage: Storage) -> None:
        config.validate()
        self.id = config.id
        self.config = config
        self._rng = config.random_source()
        self.log = RaftLog(storage, config.applied)
        hard_state, conf_state = storage.initial_state()
        self.voters: tuple[str, ...] = tuple(conf_state.voters)
        self.learners: tuple[str, ...] = tuple(conf_state.learners)
        self.term = hard_state.term
        self.vote = hard_state.vote
        self.lead = NONE
        self.state = StateType.FOLLOWER
        self.progress: dict[str, Progress] = {}
        self.votes: dict[str, bool] = {}
        self.messages: list[Message] = []
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
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
        return SoftState(leader=self.lead, state=self.state)

    def conf_state(self) -> ConfState:
        """Return the current membership."""
        return ConfState(voters=self.voters, learners=self.learners)

    def quorum(self) -> int:
        """Return how many voters make a majority."""
        return len(self.voters) // 2 + 1

    def promotable(self) -> bool:
        """Whether this node may campaign: it must be a voter."""
        return self.id in self.voters

    # -- sending ------------------------------------------------------------------------

    def _send(self, message: Message) -> None:
        self.messages.append(message)

    def _send_append(self, to: str, send_if_empty: bool = True) -> bool:
        """Send entries (or an empty probe) to ``to``; return whether a message went out."""
        progress = self.progress[to]
        if progress.is_paused():
            return False
        prev_index = progress.next - 1
        prev_term = self.log.term(prev_index)
        entries = self.log.entries(progress.next, self.config.max_entries_per_message)
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

    def _send_heartbeat(self, to: str) -> None:
        # A follower may not yet hold entries up to our commit index; it must never be
        # told to commit past what it matches.
        commit = min(self.progress[to].match, self.log.committed)
        self._send(
            Message(
                type=MessageType.HEARTBEAT, to=to, sender=self.id, term=self.term, commit=commit
            )
        )

    def _peers(self) -> list[str]:
        return [peer for peer in self.progress if peer != self.id]

    def broadcast_append(self) -> None:
        """Send what each follower is missing, as soon as there is something to send."""
        for peer in self._peers():
            self._send_append(peer)

    def broadcast_heartbeat(self) -> None:
        """Assert leadership to every follower."""
        for peer in self._peers():
            self._send_heartbeat(peer)

    # -- role changes -------------------------------------------------------------------

    def _reset(self, term: int) -> None:
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
        next_index = self.log.last_index() + 1
        self.progress = {
            member: Progress(next_index, self.config.max_inflight_messages)
            for member in (*self.voters, *self.learners)
        }
        if self.id in self.progress:
            self.progress[self.id].match = self.log.last_index()

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
        self.progress[self.id].become_replicate()
        for peer, progress in self.progress.items():
            progress.recent_active = peer == self.id
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
        if self.state is StateType.LEADER and self.heartbeat_elapsed >= self.config.heartbeat_tick:
            self.heartbeat_elapsed = 0
            self.step(Message(type=MessageType.BEAT, sender=self.id))

    def tick(self) -> None:
        """Advance logical time by one tick."""
        self._tick()

    def _hup(self) -> None:
        if self.state is StateType.LEADER or not self.promotable():
            return
        if self.config.pre_vote:
            self._campaign(MessageType.PRE_VOTE)
        else:
            self._campaign(MessageType.REQUEST_VOTE)

    def _campaign(self, kind: MessageType) -> None:
        if kind is MessageType.PRE_VOTE:
            self.become_pre_candidate()
            term = self.term + 1
        else:
            self.become_candidate()
            term = self.term
        if self._poll(self.id, _VOTE_RESPONSE[kind], granted=True):
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

    def step(self, message: Message) -> None:
        """Handle one message: first the term rules common to every role, then the role's."""
        if message.term > self.term:
            if message.type in _VOTE_RESPONSE and self._in_lease():
                # Check-quorum: a follower that heard from a leader within the minimum
                # election timeout ignores vote requests, so a node that was cut off and
                # comes back cannot depose a healthy leader (§4.2.3 of the thesis).
                return
            if message.type is MessageType.PRE_VOTE:
                pass
            elif message.type is MessageType.PRE_VOTE_RESPONSE and not message.reject:
                # We asked with our term + 1; the term is raised only if the real vote runs.
                pass
            elif message.type in (MessageType.APPEND, MessageType.HEARTBEAT):
                self.become_follower(message.term, message.sender)
            else:
                self.become_follower(message.term, NONE)
        elif message.term and message.term < self.term:
            self._step_stale(message)
            return

        kind = message.type
        if kind is MessageType.HUP:
            self._hup()
        elif kind in _VOTE_RESPONSE:
            self._step_vote_request(message)
        else:
            self._step_role(message)

    def _in_lease(self) -> bool:
        return (
            self.config.check_quorum
            and self.lead != NONE
            and self.election_elapsed < self.config.election_tick
        )

    def _step_stale(self, message: Message) -> None:
        if message.type in (MessageType.APPEND, MessageType.HEARTBEAT) and (
            self.config.check_quorum or self.config.pre_vote
        ):
            # A stale leader that cannot see a higher term (because our pre-votes never
            # raise anyone's term) would otherwise never learn it was replaced.
            self._send(
                Message(
                    type=MessageType.APPEND_RESPONSE,
                    to=message.sender,
                    sender=self.id,
                    term=self.term,
                )
            )
        elif message.type is MessageType.PRE_VOTE:
            self._send(
                Message(
                    type=MessageType.PRE_VOTE_RESPONSE,
                    to=message.sender,
                    sender=self.id,
                    term=self.term,
                    reject=True,
                )
            )

    def _step_vote_request(self, message: Message) -> None:
        response = _VOTE_RESPONSE[message.type]
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
            return
        if kind is MessageType.APPEND_RESPONSE:
            progress.recent_active = True
            self._handle_append_response(message, progress)
        elif kind is MessageType.HEARTBEAT_RESPONSE:
            progress.recent_active = True
            progress.probe_sent = False
            if progress.state is ProgressState.REPLICATE and progress.inflights.full():
                progress.inflights.free_first()
            if progress.match < self.log.last_index():
                self._send_append(message.sender)

    def _handle_append_response(self, message: Message, progress: Progress) -> None:
        sender = message.sender
        if message.reject:
            hint_index = message.reject_hint
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
        else:
            progress.inflights.free_le(message.index)
        if self._maybe_commit():
            self.broadcast_append()
        elif was_paused:
            self._send_append(sender)
        while self._send_append(sender, send_if_empty=False):
            pass

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
        matches = sorted(self.progress[voter].match for voter in self.voters)
        index = matches[len(matches) - self.quorum()]
        return self.log.maybe_commit(index, self.term)

    def append_entries(self, entries: list[Entry]) -> int:
        """Give entries the leader's next indexes and term and append them; return last."""
        last = self.log.last_index()
        stamped = [
            Entry(index=last + offset, term=self.term, type=entry.type, data=entry.data)
            for offset, entry in enumerate(entries, start=1)
        ]
        last = self.log.append(stamped)
        self.progress[self.id].maybe_update(last)
        self._maybe_commit()
        return last

    def _step_candidate(self, message: Message) -> None:
        kind = message.type
        if kind is MessageType.PROPOSE:
            raise NotLeaderError(NONE)
        if kind is MessageType.APPEND:
            self.become_follower(message.term, message.sender)
            self._handle_append(message)
        elif kind is MessageType.HEARTBEAT:
            self.become_follower(message.term, message.sender)
            self._handle_heartbeat(message)
        elif (self.state is StateType.PRE_CANDIDATE and kind is MessageType.PRE_VOTE_RESPONSE) or (
            self.state is StateType.CANDIDATE and kind is MessageType.REQUEST_VOTE_RESPONSE
        ):
            self._poll(message.sender, kind, granted=not message.reject)

    def _step_follower(self, message: Message) -> None:
        kind = message.type
        if kind is MessageType.PROPOSE:
            raise NotLeaderError(self.lead)
        if kind is MessageType.APPEND:
            self.election_elapsed = 0
            self.lead = message.sender
            self._handle_append(message)
        elif kind is MessageType.HEARTBEAT:
            self.election_elapsed = 0
            self.lead = message.sender
            self._handle_heartbeat(message)

    def _handle_append(self, message: Message) -> None:
        if message.index < self.log.committed:
            # Everything up to our commit index already matches the leader's log.
            self._send(
                Message(
                    type=MessageType.APPEND_RESPONSE,
                    to=message.sender,
                    sender=self.id,
                    term=self.term,
                    index=self.log.committed,
                )
            )
            return
        last = self.log.maybe_append(
            message.index, message.log_term, message.commit, message.entries
        )
        if last is not None:
            self._send(
                Message(
                    type=MessageType.APPEND_RESPONSE,
                    to=message.sender,
                    sender=self.id,
                    term=self.term,
                    index=last,
                )
            )
            return
        hint_index = min(message.index, self.log.last_index())
        hint_index, hint_term = self.log.find_conflict_by_term(hint_index, message.log_term)
        self._send(
            Message(
                type=MessageType.APPEND_RESPONSE,
                to=message.sender,
                sender=self.id,
                term=self.term,
                index=message.index,
                reject=True,
                reject_hint=hint_index,
                log_term=hint_term,
            )
        )

    def _handle_heartbeat(self, message: Message) -> None:
        self.log.commit_to(message.commit)
        self._send(
            Message(
                type=MessageType.HEARTBEAT_RESPONSE,
                to=message.sender,
                sender=self.id,
                term=self.term,
            )
        )

    def propose(self, data: bytes, entry_type: EntryType = EntryType.NORMAL) -> int:
        """Append a command to the leader's log; return its index.

        Raise ``NotLeaderError`` (naming the known leader) anywhere but on the leader.
        """
        if self.state is not StateType.LEADER:
            raise NotLeaderError(self.lead)
        self.step(
            Message(
                type=MessageType.PROPOSE,
                sender=self.id,
                entries=(Entry(index=0, term=0, type=entry_type, data=data),),
            )
        )
        return self.log.last_index()
