"""The host's handle on the core: feed it ticks and messages, take ``Ready``, ``advance``.

A complete host loop, here for a one-node cluster whose state machine is a list (the
ordering contract it follows is written down once, in ``Ready``; the test suite runs
this example as it stands)::

    from django_raft.core import (
        Config, EntryType, MemoryStorage, RawNode, StateType, bootstrap,
    )

    storage = MemoryStorage()
    storage.persist(*bootstrap(["a"]))         # once, before the first start
    state_machine: list[bytes] = []            # volatile: rebuilt from the snapshot
    node = RawNode(Config(id="a", applied=storage.snapshot().metadata.index), storage)
    outbox = []                                # what a transport would send
    reads = []                                 # ReadStates to serve once applied

    def handle_ready() -> None:
        while node.has_ready():
            ready = node.ready()
            early, late = ready.partition_messages()
            outbox.extend(early)               # a leader's replication may go first
            storage.persist(ready.hard_state, ready.entries, ready.snapshot)  # synced
            outbox.extend(late)                # votes and acknowledgements: once durable
            if ready.snapshot is not None:     # the leader sent us its state machine
                state_machine[:] = [ready.snapshot.data]
            for entry in ready.committed_entries:
                # Membership changes are applied by the core; empty data is a no-op.
                if entry.type is EntryType.NORMAL and entry.data:
                    state_machine.append(entry.data)
            reads.extend(ready.read_states)
            node.advance(ready)

    while node.basic_status().state is not StateType.LEADER:
        node.tick()                            # at a fixed interval, e.g. every 10 ms
        handle_ready()                         # after every tick, step and proposal
    first, last = node.propose_batch([b"x", b"y"])
    handle_ready()
    node.read_index(b"read-1")
    handle_ready()
    assert state_machine == [b"x", b"y"]
    assert [(r.index, r.context) for r in reads] == [(last, b"read-1")]

Messages received from peers go to ``node.step(message)``, followed by
``handle_ready()``. ``step`` never raises for what a peer sent: what does not fit is
dropped and counted in ``node.dropped``. An ``AssertionError`` from the core means the
host broke the contract (storage that lost what a Ready persisted, entries applied out
of order): stop the node and investigate.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from .config import Config
from .errors import StoppedError
from .raft import Raft
from .storage import Storage
from .types import (
    BasicStatus,
    ConfChange,
    ConfState,
    HardState,
    Message,
    MessageType,
    Ready,
    Snapshot,
    SoftState,
    StateType,
)


class RawNode:
    """A Raft node without I/O, threads or clock."""

    def __init__(self, config: Config, storage: Storage) -> None:
        self.raft = Raft(config, storage)
        self._prev_hard_state = self.raft.hard_state()
        self._prev_soft_state = self.raft.soft_state()
        self._stopped = False

    @property
    def id(self) -> str:
        """This node's id."""
        return self.raft.id

    def _check_running(self) -> None:
        if self._stopped:
            raise StoppedError(f"node {self.raft.id!r} was stopped")

    def stop(self) -> None:
        """Refuse all further input (go-raft's Stop); what was persisted stays valid."""
        self._stopped = True

    def tick(self) -> None:
        """Advance logical time by one tick (elections and heartbeats count ticks)."""
        self._check_running()
        self.raft.tick()

    def campaign(self) -> None:
        """Start an election now instead of waiting for the timeout."""
        self._check_running()
        self.raft.step(Message(type=MessageType.HUP, sender=self.raft.id))

    def propose(self, data: bytes) -> int:
        """Propose a command; return the index it was appended at on this leader.

        Raise ``NotLeaderError`` when this node is not the leader and
        ``ProposalDroppedError`` during a leadership transfer. An index is not a promise:
        the entry may still be overwritten if leadership changes before it commits, which
        the host sees as a different entry applied at that index.
        """
        self._check_running()
        return self.raft.propose(data)

    def propose_batch(self, datas: Sequence[bytes]) -> tuple[int, int]:
        """Propose several commands as one append and one broadcast.

        Return the (first, last) indexes they were appended at. Raise as ``propose``
        does, and ``ValueError`` for an empty batch.
        """
        self._check_running()
        return self.raft.propose_batch(datas)

    def propose_conf_change(self, change: ConfChange) -> int:
        """Propose a membership change; return its index. It takes effect when appended.

        Raise ``NotLeaderError``, ``ConfChangePendingError`` while another change is
        uncommitted, ``DuplicatePeerError`` / ``UnknownPeerError`` / ``MembershipError``
        when the change does not fit the current membership.
        """
        self._check_running()
        return self.raft.propose_conf_change(change)

    def transfer_leadership(self, transferee: str) -> None:
        """Hand leadership to the voter ``transferee`` (see ``Raft.transfer_leadership``)."""
        self._check_running()
        self.raft.transfer_leadership(transferee)

    def read_index(self, context: bytes) -> None:
        """Request a linearizable read named ``context``; a ``ReadState`` answers it.

        The host serves the read once its state machine has applied the ReadState's
        index. No answer comes if leadership changes first: the host retries, with the
        same context if it likes (a context names one read at a time: asking again
        abandons the earlier read, whose answer, should it still come, is dropped; an
        answer already handed out in a Ready not yet advanced is the earlier read's).
        """
        self._check_running()
        self.raft.read_index(context)

    def snapshot_due(self) -> bool:
        """Whether enough entries were applied since the last snapshot to take a new one."""
        raft = self.raft
        last = raft.log.storage.snapshot().metadata.index
        return raft.log.applied - last >= raft.config.snapshot_threshold

    def create_snapshot(self, index: int, data: bytes) -> Snapshot:
        """Describe the state machine as of applied ``index`` (``data``) as a snapshot.

        The host stores it and then discards log entries up to ``compact_index(snapshot)``
        (go-raft keeps 200 entries after the snapshot so that slightly slow followers can
        still be sent entries rather than the whole snapshot).
        """
        self._check_running()
        snapshot = self.raft.snapshot_at(index, data)
        self.raft.log.compacted(index)
        return snapshot

    def compact_index(self, snapshot: Snapshot) -> int:
        """Return the index up to which the log may be discarded after ``snapshot``.

        It keeps ``entries_after_snapshot`` entries, and everything after a snapshot still
        being sent to a follower, which continues from there with entries: a lagging
        follower is never caught in a loop of ever newer snapshots.
        """
        keep_from = snapshot.metadata.index - self.raft.config.entries_after_snapshot
        return max(0, min(keep_from, self.raft.compaction_floor()))

    def step(self, message: Message) -> None:
        """Hand the core one message received from a peer.

        It never raises for what a peer sent: a message that does not fit this node's
        state is dropped and counted in ``dropped``. An ``AssertionError`` from the core
        means the host broke the contract (for example, entries not persisted as a Ready
        required, or storage that lost acknowledged state): the node must stop.
        """
        self._check_running()
        self.raft.receive(message)

    @property
    def dropped(self) -> Counter[str]:
        """How many messages from peers were refused, by reason (for metrics and logs)."""
        return self.raft.dropped

    def has_ready(self) -> bool:
        """Whether there is anything to persist, send or apply."""
        raft = self.raft
        if raft.messages or raft.log.unstable or raft.read_states or raft.commit_news:
            return True
        config = raft.config
        if raft.log.has_room_to_apply(config.max_applying_bytes if config.async_apply else None):
            return True
        if raft.soft_state() != self._prev_soft_state:
            return True
        return raft.hard_state() != self._prev_hard_state

    def ready(self) -> Ready:
        """Collect what the host must do now; messages are handed over exactly once."""
        raft = self.raft
        raft.flush_commit_news()
        soft_state: SoftState | None = None
        current = raft.soft_state()
        if current != self._prev_soft_state:
            soft_state = self._prev_soft_state = current
        hard_state: HardState | None = raft.hard_state()
        previous = self._prev_hard_state
        if hard_state == previous:
            hard_state = None
        messages = tuple(raft.messages)
        raft.messages.clear()
        read_states = tuple(raft.read_states)
        raft.read_states.clear()
        return Ready(
            soft_state=soft_state,
            hard_state=hard_state,
            entries=tuple(raft.log.unstable),
            snapshot=raft.log.pending_snapshot,
            committed_entries=tuple(
                raft.log.next_committed(
                    raft.config.max_committed_per_ready,
                    raft.config.max_applying_bytes if raft.config.async_apply else None,
                )
            ),
            messages=messages,
            read_states=read_states,
            term_or_vote_changed=hard_state is not None
            and (hard_state.term != previous.term or hard_state.vote != previous.vote),
        )

    def advance(self, ready: Ready) -> None:
        """Tell the core that ``ready`` was persisted and sent, and its snapshot and
        committed entries applied (with ``Config.async_apply``: taken to apply, see
        ``applied_to``)."""
        log = self.raft.log
        applies_now = not self.raft.config.async_apply
        if ready.hard_state is not None:
            self._prev_hard_state = ready.hard_state
        if ready.snapshot is not None:
            index = ready.snapshot.metadata.index
            if log.snapshot_persisted(index) and applies_now:
                log.applied_to(index)
        if ready.entries:
            last = ready.entries[-1]
            log.stable_to(last.index, last.term)
            self.raft.persisted()
        if ready.committed_entries:
            log.handed_over(ready.committed_entries)
            if applies_now:
                log.applied_to(ready.committed_entries[-1].index)

    def applied_to(self, index: int) -> None:
        """Report that the state machine applied everything up to ``index`` (with
        ``Config.async_apply``: entries and snapshots taken by ``advance``, in order).

        Reads wait for it (``ReadState``), snapshots are taken at it, and committed
        entries are handed out again once the bytes outstanding fall below
        ``Config.max_applying_bytes``. An index outside what was handed over is a
        contract breach: ``AssertionError``.
        """
        self._check_running()
        self.raft.log.applied_to(index)

    def conf_state(self) -> ConfState:
        """Return the current membership."""
        return self.raft.conf_state()

    def basic_status(self) -> BasicStatus:
        """Return this node's role, term, leader and indexes; O(1), cheap to poll."""
        raft = self.raft
        log = raft.log
        return BasicStatus(
            id=raft.id,
            state=raft.state,
            term=raft.term,
            lead=raft.lead,
            commit=log.committed,
            applied=log.applied,
            last_index=log.last_index(),
        )

    def status(self) -> dict[str, object]:
        """Return a full report of this node's state (lists included), for humans.

        ``progress`` is empty except on the leader, where it gives each follower's match
        and next index, its mode (probe, replicate or snapshot), how many AppendEntries
        are unanswered and whether it was heard from in the current election timeout.
        """
        raft = self.raft
        progress: dict[str, dict[str, object]] = {}
        if raft.state is StateType.LEADER:
            progress = {
                peer: {
                    "match": p.match,
                    "next": p.next,
                    "state": p.state.value,
                    "inflight": len(p.inflights),
                    "recent_active": p.recent_active,
                }
                for peer, p in raft.progress.items()
                if peer != raft.id
            }
        return {
            "id": raft.id,
            "state": raft.state.value,
            "term": raft.term,
            "vote": raft.vote,
            "leader": raft.lead,
            "commit": raft.log.committed,
            "applied": raft.log.applied,
            "last_index": raft.log.last_index(),
            "snapshot_index": raft.log.storage.snapshot().metadata.index,
            "voters": list(raft.voters),
            "learners": list(raft.learners),
            "progress": progress,
        }
