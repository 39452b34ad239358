"""The node: one loop thread drives the core; everything else talks to it through a queue.

The loop owns the ``RawNode`` and the storage, so neither needs a lock. Other threads
(the WSGI server's request threads, the transport's senders, a ``do()`` from the
node's own process) put typed requests on the mailbox and wait on a future.

Every turn of the loop is bounded, so ticks and heartbeats are never starved however
much is queued or committed: it takes at most ``MAX_ITEMS_PER_TURN`` requests, ticks the
core when a tick is due, then handles Readies in the order the core requires (persist,
send, hand over to apply, advance) until the turn's time budget is spent; what is left
waits for the next turn. A peer's request is answered as soon as the entries it carried
are durable.

Committed entries are applied beside the loop, by the applier thread (``applier``;
the core's ``Config.async_apply``): the loop never runs a handler and never waits for
one. The applier answers this node's callers once their entries are applied, and
reports the applied index back through the mailbox; reads are served, snapshots taken
and backpressure counted at that index. Callbacks of callers' futures run on a
completer thread, and signals are sent by a dispatcher thread.

Proposals wait in the node until the log has room for them: at most
``MAX_UNAPPLIED`` entries may be appended and not yet applied here, so the log never
runs ahead of what the state machine can apply; those that fit go to the core as one
batch (one append, one broadcast). Proposals are bounded too (``MAX_PENDING_PROPOSALS``):
beyond the bound they are refused with ``OverloadedError``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import logging
import queue
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from django.db import close_old_connections, connections

from .. import signals
from ..conf import raft_settings
from ..core import (
    ConfChange,
    ConfChangeType,
    Entry,
    EntryType,
    Message,
    MessageType,
    RaftError,
    RawNode,
    Ready,
    Snapshot,
    StateType,
)
from ..exceptions import (
    ApplyError,
    CommandTimeoutError,
    NodeServerError,
    OverloadedError,
    StopError,
)
from ..protocol import local
from . import clock, events, history, metrics, rtt, submit
from .applier import Applied, Applier, Forget, InlineFuture, Restore, Waiting
from .applier import Run as ApplyRun
from .dispatch import Completer, Completion, SignalDispatcher
from .statemachine import Outcome, StateMachine, check_snapshot
from .storage import DjangoStorage
from .transport import Transport

logger = logging.getLogger(__name__)

MAX_ITEMS_PER_TURN = 500
"""Mailbox requests handled in one turn of the loop."""
MAX_APPLY_PER_READY = 128
"""Committed entries handed to the applier in one Ready (one transaction)."""
MAX_APPLYING_BYTES = 4 << 20
"""Bytes of committed entries handed to the applier and not yet applied, beyond which
the core hands over no more (they wait in the log, on disk)."""
STOP_APPLY_TIMEOUT = 5.0
"""Seconds ``stop`` waits for the applier to finish the run in hand."""
TURN_BUDGET_FRACTION = 0.2
"""A turn stops handling Readies once it ran this fraction of the heartbeat interval."""
MAX_PROPOSED_BYTES = 4 << 20
"""Bytes of commands proposed in one turn of the loop at most (one command always goes):
the turn's append must stay well inside the election timeout."""
MAX_PENDING_PROPOSALS = 65_536
"""Proposals queued or waiting for their commit before new ones are refused."""
COMMIT_WRITE_INTERVAL = 1.0
"""Seconds between writes of a commit index that moved alone (see ``DjangoStorage.persist``:
the node never reads it back; the admin shows it)."""
MAX_UNAPPLIED = 2048
"""Entries this node may have appended and not yet applied before it holds proposals
back (below the storage's in-memory tail of 4,096 entries, so small entries to apply are
never read back; large ones may be, since the tail is bounded in bytes too)."""


# -- the mailbox: what other threads ask of the loop -------------------------------------


@dataclass(slots=True)
class ReplySlot:
    """Where the messages answering one peer's request are collected."""

    peer: str
    messages: list[Message] = field(default_factory=list)
    done: threading.Event = field(default_factory=threading.Event)


@dataclass(frozen=True, slots=True)
class Step:
    """Messages from one peer, stepped in order; ``slot`` collects the answers (or None)."""

    messages: tuple[Message, ...]
    slot: ReplySlot | None = None


@dataclass(frozen=True, slots=True)
class Propose:
    """Append a command to the log; ``future`` resolves once it is applied here."""

    data: bytes
    future: Future[Outcome]


@dataclass(frozen=True, slots=True)
class ProposeConfChange:
    """Append a membership change; ``future`` resolves once it is applied here."""

    change: ConfChange
    future: Future[Outcome]


@dataclass(frozen=True, slots=True)
class ReadIndex:
    """Ask for a linearizable read; ``future`` gets the index to wait for, or a
    ``CommandTimeoutError`` once ``deadline`` (``time.monotonic()``) has passed.
    ``notify``: callbacks are attached, so the completer thread resolves it."""

    future: Future[int]
    deadline: float
    notify: bool = False


@dataclass(frozen=True, slots=True)
class TransferLeadership:
    """Ask the leader to hand over to ``transferee``."""

    transferee: str
    future: Future[None]


@dataclass(frozen=True, slots=True)
class TakeSnapshot:
    """Snapshot the state now and compact the log; ``future`` gets what was taken."""

    future: Future[dict[str, Any]]


@dataclass(frozen=True, slots=True)
class SnapshotWanted:
    """A ``TakeSnapshot`` waiting for a snapshot at ``index`` or later (started when asked)."""

    index: int
    started: float
    future: Future[dict[str, Any]]


@dataclass(frozen=True, slots=True)
class SnapshotSaved:
    """The snapshot thread saved the state as of applied ``index`` (``data`` None: failed)."""

    index: int
    data: bytes | None


@dataclass(frozen=True, slots=True)
class Wake:
    """Wake the loop (to notice that it is stopping)."""


@dataclass(frozen=True, slots=True)
class ApplyFailed:
    """The applier could not apply (the database failed): the node stops."""

    error: BaseException


Request = (
    Step
    | Propose
    | ProposeConfChange
    | ReadIndex
    | TransferLeadership
    | TakeSnapshot
    | SnapshotSaved
    | Applied
    | ApplyFailed
    | Wake
)


def _defer_commit_notices(
    ready: Ready, early: tuple[Message, ...], late: tuple[Message, ...]
) -> tuple[tuple[Message, ...], tuple[Message, ...], tuple[Message, ...]]:
    """Take the AppendEntries that carry no entries (a leader's commit notices) out of
    a Ready's messages, to be sent once the applier reports its committed entries
    applied (or with the next heartbeat, which carries the commit index too).

    A message may always be sent later than the core allows. These only tell followers
    what to apply: sent first, they would wake every follower to apply while the leader
    applies and answers its caller, on the same few cores. Not when a membership change
    is applied: a removed node must still hear that its removal committed, and applying
    it stops sending to that node.
    """
    if any(entry.type is EntryType.CONF_CHANGE for entry in ready.committed_entries):
        return early, late, ()

    def is_notice(message: Message) -> bool:
        return message.type is MessageType.APPEND and not message.entries

    notices = tuple(m for m in (*early, *late) if is_notice(m))
    if not notices:
        return early, late, ()
    return (
        tuple(m for m in early if not is_notice(m)),
        tuple(m for m in late if not is_notice(m)),
        notices,
    )


class RaftNode:
    """A running Raft node in this process."""

    current: RaftNode | None = None
    """The node running in this process, if any (``do()`` uses it directly)."""

    def __init__(
        self,
        node_id: str,
        address: str,
        storage: DjangoStorage,
        machine: StateMachine,
        *,
        max_pending: int = MAX_PENDING_PROPOSALS,
    ):
        self.node_id = node_id
        self.address = address
        self.storage = storage
        self.machine = machine
        applied, _ = machine.applied()
        config = raft_settings.core_config(node_id, applied=applied)
        config = dataclasses.replace(
            config,
            max_committed_per_ready=min(config.max_committed_per_ready, MAX_APPLY_PER_READY),
            async_apply=True,
            max_applying_bytes=MAX_APPLYING_BYTES,
            snapshot_check=check_snapshot,
        )
        self.raw = RawNode(config, storage)
        self.tick_interval = raft_settings.TICK_INTERVAL
        self.heartbeat_interval = raft_settings.HEARTBEAT_INTERVAL
        self.turn_budget = self.heartbeat_interval * TURN_BUDGET_FRACTION
        self.inbox: queue.SimpleQueue[Request] = queue.SimpleQueue()
        self.stopping = threading.Event()
        self.stopped = threading.Event()
        self.transport = Transport(
            node_id,
            raft_settings.SECRET,
            raft_settings.URL_PREFIX,
            raft_settings.RPC_TIMEOUT,
        )
        for member_id, member_address in machine.addresses().items():
            self.transport.set_address(member_id, member_address)
        for member_id, member_address in raft_settings.CLUSTER.items():
            self.transport.set_address(member_id, member_address)
        self._heartbeats_sent: dict[str, float] = {}
        self.signals = SignalDispatcher(f"raft-signals-{node_id}", RaftNode)
        self.completer = Completer(f"raft-complete-{node_id}")
        self.max_pending = max_pending
        self._room = threading.BoundedSemaphore(max_pending)
        self._pending: dict[int, Waiting] = {}
        self._held: deque[Propose] = deque()
        self._reads: dict[bytes, ReadIndex] = {}
        self._read_waiting: list[tuple[int, ReadIndex]] = []
        self._read_ids = itertools.count()
        self._slots: dict[str, ReplySlot] = {}
        self._notices: list[Message] = []
        """Commit notices held until the applier reports (``_defer_commit_notices``)."""
        self._waiting_slots: list[ReplySlot] = []
        self._max_turn = 0.0
        self._commit_written_at = time.monotonic()
        self._full_status_at = 0.0
        self._membership_changed = False
        self._dropped_since_log = 0
        self._dropped_logged_at = 0.0
        self._snapshotting = False
        self._snapshots_wanted: list[SnapshotWanted] = []
        self.snapshot_failures = 0
        """Snapshots that could not be saved (each logged; the next is tried when due)."""
        self.failure: BaseException | None = None
        """What stopped the loop, when it did not stop because it was told to."""
        self._status: dict[str, Any] = self._make_status()
        self._last_leader_contact = time.monotonic()
        self._threshold_warned = False
        self._thread = threading.Thread(target=self._run, name=f"raft-loop-{node_id}", daemon=True)
        self.history = history.Sampler(self)
        """Recent samples of this node's status, for the admin's charts."""
        self.applier = Applier(
            f"raft-apply-{node_id}",
            machine,
            self.completer,
            report=self.inbox.put,
            leader=lambda: str(self._status.get("leader", "")),
            failed=lambda error: self.inbox.put(ApplyFailed(error)),
        )
        self.clock = clock.ClockProposer(
            machine.alias, lambda data: self.propose_async(data, inline=True)
        )
        """Proposes clock entries while registrations exist (``clock``)."""

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        """Start the loop thread and the signal dispatcher."""
        RaftNode.current = self
        local.register(self)
        self.signals.start()
        self.completer.start()
        self.applier.start()
        self._thread.start()
        self.history.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the loop (what was persisted stays), fail waiting callers with StopError."""
        self.stopping.set()
        self.history.stop()
        self.inbox.put(Wake())
        self._thread.join(timeout)
        self.applier.stop(STOP_APPLY_TIMEOUT)
        self.completer.stop()
        self.transport.stop()
        self.signals.stop()
        if RaftNode.current is self:
            RaftNode.current = None
        local.unregister(self)

    # -- the API other threads use ------------------------------------------------------

    def submit(self, body: dict[str, Any]) -> dict[str, Any]:
        """Run a client request body here, in this thread (``submit.submit``); its JSON
        answer."""
        return submit.submit(self, body).result()

    def receive(self, messages: list[Message], timeout: float) -> list[Message]:
        """Step messages from one peer, in order; return the messages that answer them.

        They are stepped in one turn of the loop, so a batch of AppendEntries costs one
        write to disk; the answer comes as soon as that write is durable (no answer if
        that takes longer than ``timeout``).
        """
        slot = ReplySlot(messages[0].sender)
        self._submit(Step(tuple(messages), slot))
        if not slot.done.wait(timeout):
            return []  # the loop is behind: the sender will retry
        return slot.messages

    def propose_async(self, data: bytes, *, inline: bool = False) -> Future[Outcome]:
        """Propose a command without waiting; the future resolves once it is applied here.

        The future's result is the command's ``Outcome``; its exception is a
        ``NotLeaderError``, ``OverloadedError`` (more than ``max_pending`` proposals
        outstanding: nothing was proposed), ``StopError`` or another ``RaftError``.
        Its done-callbacks run on the node's completer thread, in log order: keep them
        short, since a slow one delays the other callers' answers (never the loop).
        ``inline``: the callbacks never block and take microseconds (the node's own),
        so the applier runs them itself when the command is applied.
        """
        future: Future[Outcome] = InlineFuture() if inline else Future()
        if not self._room.acquire(blocking=False):
            future.set_exception(self._overloaded())
            return future
        self._enqueue_proposal(data, future)
        return future

    def propose(self, data: bytes, timeout: float) -> Outcome:
        """Propose a command and wait until it is committed and applied here.

        When ``max_pending`` proposals are outstanding, wait for room within ``timeout``
        and raise ``OverloadedError`` if none came. Raise
        ``concurrent.futures.TimeoutError`` when the command was not applied in time.
        """
        deadline = time.monotonic() + timeout
        if not self._room.acquire(timeout=max(0.0, timeout)):
            raise self._overloaded()
        future = InlineFuture()
        self._enqueue_proposal(data, future)
        return future.result(max(0.0, deadline - time.monotonic()))

    def change_membership(self, change: ConfChange, timeout: float) -> Outcome:
        """Propose a membership change and wait until it is applied."""
        future: Future[Outcome] = Future()
        self._submit(ProposeConfChange(change, future))
        return future.result(timeout)

    def read_index(self, timeout: float) -> int:
        """Wait until a linearizable read may be served here; return its index."""
        future: Future[int] = Future()
        self._submit(ReadIndex(future, time.monotonic() + timeout))
        return future.result(timeout)

    def read_index_async(self, timeout: float) -> Future[int]:
        """``read_index`` without waiting: the future's callbacks run on the completer
        thread once it has the index, or a ``CommandTimeoutError`` after ``timeout``."""
        future: Future[int] = Future()
        if self.stopping.is_set():
            future.set_exception(StopError(f"node {self.node_id!r} is stopping"))
        else:
            self.inbox.put(ReadIndex(future, time.monotonic() + timeout, notify=True))
        return future

    def transfer_leadership(self, transferee: str, timeout: float) -> None:
        """Ask the leader to hand over to ``transferee``."""
        future: Future[None] = Future()
        self._submit(TransferLeadership(transferee, future))
        future.result(timeout)

    def take_snapshot(self, timeout: float) -> dict[str, Any]:
        """Snapshot the state now and compact the log (go-raft's ``TakeSnapshot``).

        Return the snapshot's ``index``, ``term``, ``size``, ``seconds``,
        ``compacted_to`` and whether one was ``taken`` (not when the stored snapshot
        already covers every applied entry).
        """
        future: Future[dict[str, Any]] = Future()
        self._submit(TakeSnapshot(future))
        return future.result(timeout)

    def status(self) -> dict[str, Any]:
        """Return the node's last reported status (updated by the loop every turn).

        Besides the core's fields: ``max_turn_ms``, the longest turn of the loop so far;
        ``pending_proposals``, proposals not yet answered; ``signals_dropped``, events
        dropped because signal receivers could not keep up; ``snapshot_failures``,
        snapshots that could not be saved (logged; tried again when next due).
        """
        return dict(self._status)

    def leader_address(self) -> str:
        """Return the address of the leader this node knows of, or ""."""
        leader = self._status.get("leader", "")
        return self.transport.addresses.get(leader, "") if leader != self.node_id else self.address

    def _overloaded(self) -> OverloadedError:
        return OverloadedError(
            f"node {self.node_id!r} has {self.max_pending} proposals outstanding; retry later"
        )

    def _enqueue_proposal(self, data: bytes, future: Future[Outcome]) -> None:
        future.add_done_callback(self._release_room)
        if self.stopping.is_set():
            future.set_exception(StopError(f"node {self.node_id!r} is stopping"))
            return
        self.inbox.put(Propose(data, future))

    def _release_room(self, future: Future[Outcome]) -> None:
        self._room.release()

    def _submit(self, request: Request) -> None:
        if self.stopping.is_set():
            raise StopError(f"node {self.node_id!r} is stopping")
        self.inbox.put(request)

    def deliver(self, messages: list[Message]) -> None:
        """Step messages a peer streamed, in order; the answers go out on this node's
        own streams to it."""
        self._submit(Step(tuple(messages)))

    # -- the loop -----------------------------------------------------------------------

    def _run(self) -> None:
        next_tick = time.monotonic() + self.tick_interval
        try:
            while not self.stopping.is_set():
                busy = self.raw.has_ready() or (self._held and self._room_in_log() > 0)
                wait = 0.0 if busy else next_tick - time.monotonic()
                requests = self._take(max(0.0, wait))
                started = time.monotonic()
                self._handle(requests)
                now = time.monotonic()
                if now >= next_tick:
                    self.raw.tick()
                    next_tick += self.tick_interval
                    if now - next_tick > 10 * self.tick_interval:
                        next_tick = now + self.tick_interval  # fell far behind: skip ahead
                    self._watch_leader(now)
                    self._expire_reads(now)
                    self.clock.tick(self._status["state"] == "leader", now)
                    if now - self._commit_written_at >= COMMIT_WRITE_INTERVAL:
                        self.storage.write_commit()
                        self._commit_written_at = now
                self._process_ready(started + self.turn_budget)
                self._max_turn = max(self._max_turn, time.monotonic() - started)
                self._update_status()
        except Exception as error:
            self.failure = error
            logger.exception("raft: node %s loop crashed", self.node_id)
            raise
        finally:
            self._fail_waiting(StopError(f"node {self.node_id!r} stopped"))
            with contextlib.suppress(Exception):  # the database may be what failed
                self.storage.write_commit()
            close_old_connections()
            self.stopped.set()

    def _take(self, timeout: float) -> list[Request]:
        try:
            requests = [self.inbox.get(timeout=timeout)]
        except queue.Empty:
            return []
        while len(requests) < MAX_ITEMS_PER_TURN:
            try:
                requests.append(self.inbox.get_nowait())
            except queue.Empty:
                break
        return requests

    def _handle(self, requests: list[Request]) -> None:
        held = self._held
        for request in requests:
            if isinstance(request, Propose):
                if request.future.set_running_or_notify_cancel():
                    held.append(request)
                continue
            if isinstance(request, Step):
                if request.slot is not None:
                    # Replies to a peer ride on its first waiting request; every one of
                    # its requests is answered when the turn's writes are durable.
                    self._slots.setdefault(request.slot.peer, request.slot)
                    self._waiting_slots.append(request.slot)
                for message in request.messages:
                    self._step(message)
            elif isinstance(request, Applied):
                self._applied(request)
            elif isinstance(request, Wake):
                continue
            elif isinstance(request, SnapshotSaved):
                self._snapshot_saved(request)
            elif isinstance(request, ApplyFailed):
                raise ApplyError(f"node {self.node_id!r} could not apply") from request.error
            elif request.future.set_running_or_notify_cancel():
                try:
                    self._request(request)
                except RaftError as error:
                    request.future.set_exception(error)
        room = min(self._room_in_log(), MAX_ITEMS_PER_TURN)
        if held and room > 0:
            batch = [held.popleft()]
            size = len(batch[0].data)
            while held and len(batch) < room and size + len(held[0].data) <= MAX_PROPOSED_BYTES:
                size += len(held[0].data)
                batch.append(held.popleft())
            self._propose(batch)

    def _room_in_log(self) -> int:
        """How many more entries may be appended before ``MAX_UNAPPLIED`` is reached.

        A node that does not lead lets every held proposal through: the core refuses
        them at once with ``NotLeaderError``.
        """
        status = self.raw.basic_status()
        if status.state is not StateType.LEADER:
            return len(self._held)
        return MAX_UNAPPLIED - (status.last_index - status.applied)

    def _propose(self, proposals: list[Propose]) -> None:
        """Append a burst of proposals to the log together: one append, one broadcast."""
        raw = self.raw
        try:
            first, _ = raw.propose_batch([proposal.data for proposal in proposals])
        except RaftError as error:  # not the leader: refused at once, off the loop thread
            self.completer.complete([(proposal.future, None, error) for proposal in proposals])
            return
        term = raw.basic_status().term
        for index, proposal in enumerate(proposals, first):
            self._pending[index] = Waiting(term, proposal.future)

    def _step(self, message: Message) -> None:
        status = self._status
        if message.term == status["term"] and message.sender == status["leader"]:
            self._last_leader_contact = time.monotonic()
        dropped = self.raw.dropped
        before = dropped.total()
        self.raw.step(message)  # never raises for a peer's input: it drops and counts
        if dropped.total() != before:
            self._dropped_since_log += 1
            if time.monotonic() - self._dropped_logged_at > 10:  # a note at most every 10 s
                logger.warning(
                    "raft: node %s dropped a %s from %r that does not fit its state"
                    " (%d dropped since the last note; counts by reason: %s)",
                    self.node_id,
                    message.type.value,
                    message.sender,
                    self._dropped_since_log,
                    dict(dropped),
                )
                self._dropped_since_log = 0
                self._dropped_logged_at = time.monotonic()
        if message.type is MessageType.HEARTBEAT_RESPONSE and status["state"] == "leader":
            sent = self._heartbeats_sent.pop(message.sender, None)
            if sent is not None and time.monotonic() - sent > self.heartbeat_interval:
                self.signals.send(
                    signals.heartbeat_interval,
                    node_id=self.node_id,
                    peer=message.sender,
                    value=time.monotonic() - sent,
                    prev_value=self.heartbeat_interval,
                )
            self.signals.send(
                signals.heartbeat, node_id=self.node_id, value=message.sender, prev_value=None
            )

    def _request(
        self, request: ProposeConfChange | ReadIndex | TransferLeadership | TakeSnapshot
    ) -> None:
        raw = self.raw
        if isinstance(request, TakeSnapshot):
            self._want_snapshot(request.future)
        elif isinstance(request, ProposeConfChange):
            index = raw.propose_conf_change(request.change)
            self._pending[index] = Waiting(raw.basic_status().term, request.future)
        elif isinstance(request, ReadIndex):
            context = f"{self.node_id}:{next(self._read_ids)}".encode()
            raw.read_index(context)
            self._reads[context] = request
        else:
            raw.transfer_leadership(request.transferee)
            request.future.set_result(None)

    def _watch_leader(self, now: float) -> None:
        status = self._status
        if status["state"] != "follower" or status["leader"] == "":
            self._last_leader_contact = now
            return
        threshold = (
            raft_settings.ELECTION_TIMEOUT * raft_settings.ELECTION_TIMEOUT_THRESHOLD_PERCENT
        )
        silence = now - self._last_leader_contact
        if silence > threshold and not self._threshold_warned:
            self._threshold_warned = True
            self.signals.send(
                signals.election_timeout_threshold,
                node_id=self.node_id,
                value=silence,
                prev_value=threshold,
            )
        elif silence <= threshold:
            self._threshold_warned = False

    # -- Ready: persist, send, apply, advance ------------------------------------------

    def _process_ready(self, deadline: float) -> None:
        """Handle Readies until none is left or the turn's budget is spent."""
        raw = self.raw
        while raw.has_ready():
            ready = raw.ready()
            early, late = ready.partition_messages()
            if ready.committed_entries and ready.messages:
                early, late, notices = _defer_commit_notices(ready, early, late)
                self._notices.extend(notices)
            self._send(early)  # a leader replicates while it persists its own entries
            with metrics.persisting():
                self.storage.persist(ready.hard_state, ready.entries, ready.snapshot)
            self._learn_addresses(ready.entries)
            self._send(late)
            self._answer_peers()  # durable now: answer before applying
            if ready.snapshot is not None:
                self.applier.hand_over(Restore(ready.snapshot))
            if ready.committed_entries:
                self._hand_over(ready.committed_entries)
            for read_state in ready.read_states:
                asked = self._reads.pop(read_state.context, None)
                if asked is not None:
                    self._read_waiting.append((read_state.index, asked))
            raw.advance(ready)
            self._serve_reads()
            if time.monotonic() >= deadline:
                break
        self._answer_peers()

    def _hand_over(self, entries: tuple[Entry, ...]) -> None:
        """Give committed entries, with the proposals waiting for them, to the applier."""
        pending = self._pending
        waiting = {}
        for entry in entries:
            proposal = pending.pop(entry.index, None)
            if proposal is not None:
                waiting[entry.index] = proposal
        self.applier.hand_over(ApplyRun(entries, waiting))

    def _applied(self, applied: Applied) -> None:
        """The applier reached ``applied.index``: count it, tell the followers, serve
        reads, snapshot."""
        self.raw.applied_to(applied.index)
        if self._notices:
            notices, self._notices = self._notices, []
            self._send(tuple(notices))
        for change in applied.changes:
            self._membership_applied(change)
        if applied.restored:
            self._reload_addresses()
        self._serve_reads()
        self._maybe_snapshot()

    def _answer_peers(self) -> None:
        for slot in self._waiting_slots:
            slot.done.set()
        self._slots.clear()
        self._waiting_slots.clear()

    def _send(self, messages: tuple[Message, ...]) -> None:
        outgoing = []
        for message in messages:
            if message.type is MessageType.HEARTBEAT:
                self._heartbeats_sent.setdefault(message.to, time.monotonic())
            slot = self._slots.get(message.to)
            if slot is not None:
                slot.messages.append(message)
            else:
                outgoing.append(message)
        if outgoing:
            self.transport.send(outgoing)

    def _learn_addresses(self, entries: tuple[Entry, ...]) -> None:
        for entry in entries:
            if entry.type is EntryType.CONF_CHANGE:
                self._membership_changed = True
                change = ConfChange.decode(entry.data)
                if change.type is not ConfChangeType.REMOVE:
                    self.transport.set_address(change.node_id, change.context)

    def _reload_addresses(self) -> None:
        for member_id, member_address in self.machine.addresses().items():
            self.transport.set_address(member_id, member_address)

    def _membership_applied(self, change: ConfChange) -> None:
        self._membership_changed = True
        node_id = change.node_id
        if change.type is ConfChangeType.REMOVE:
            self.transport.forget(node_id)
            self.signals.send(
                signals.peer_removed, node_id=self.node_id, value=node_id, prev_value=None
            )
            if node_id == self.node_id:
                self.signals.send(
                    signals.removed, node_id=self.node_id, value=node_id, prev_value=None
                )
                self.stopping.set()
        else:
            self.signals.send(
                signals.peer_added, node_id=self.node_id, value=node_id, prev_value=None
            )

    def _serve_reads(self) -> None:
        if not self._read_waiting:
            return
        applied = self.raw.basic_status().applied
        still = []
        notified: list[Completion] = []
        for index, asked in self._read_waiting:
            if applied < index:
                still.append((index, asked))
            elif asked.notify:
                notified.append((asked.future, index, None))
            elif not asked.future.done():
                asked.future.set_result(index)
        self._read_waiting = still
        self.completer.complete(notified)

    def _expire_reads(self, now: float) -> None:
        """Fail the reads whose deadline passed: their ReadIndex round may never end
        (this node lost its leadership, or the leader dropped the request)."""
        late = [context for context, asked in self._reads.items() if asked.deadline <= now]
        expired = [self._reads.pop(context) for context in late]
        if any(asked.deadline <= now for _, asked in self._read_waiting):
            expired += [asked for _, asked in self._read_waiting if asked.deadline <= now]
            self._read_waiting = [(i, a) for i, a in self._read_waiting if a.deadline > now]
        if not expired:
            return
        error = CommandTimeoutError("no read index in time")
        for asked in expired:
            if not asked.notify and not asked.future.done():
                asked.future.set_exception(error)
        self.completer.complete([(a.future, None, error) for a in expired if a.notify])

    def _want_snapshot(self, future: Future[dict[str, Any]]) -> None:
        """A snapshot asked for now (``TakeSnapshot``): saved like any other, in the
        snapshot thread (the application's state hooks never run on the loop); answered
        at once when the stored snapshot already covers every applied entry."""
        applied = self.raw.basic_status().applied
        stored = self.storage.snapshot()
        if applied <= stored.metadata.index:
            future.set_result(self._snapshot_report(stored, 0.0, taken=False))
            return
        self._snapshots_wanted.append(SnapshotWanted(applied, time.perf_counter(), future))
        self._start_snapshot()

    def _snapshot_report(
        self, snapshot: Snapshot, seconds: float, *, taken: bool
    ) -> dict[str, Any]:
        """What ``take_snapshot`` answers: the snapshot's index, term, size, the seconds it
        took, how far the log is compacted and whether it was taken for this request."""
        metadata = snapshot.metadata
        return {
            "index": metadata.index,
            "term": metadata.term,
            "size": len(snapshot.data),
            "seconds": seconds,
            "compacted_to": self.storage.first_index() - 1,
            "taken": taken,
        }

    def _answer_snapshots_wanted(self, saved: int | None) -> None:
        """A save of the state as of index ``saved`` ended (None: it failed). Answer the
        ``TakeSnapshot`` requests the stored snapshot now covers; save again for those
        asked after that save began; fail the others."""
        stored = self.storage.snapshot()
        still = []
        for wanted in self._snapshots_wanted:
            if saved is None or (saved >= wanted.index > stored.metadata.index):
                wanted.future.set_exception(
                    NodeServerError(
                        f"node {self.node_id!r} could not save a snapshot (logged on the node)"
                    )
                )
            elif stored.metadata.index >= wanted.index:
                seconds = time.perf_counter() - wanted.started
                wanted.future.set_result(self._snapshot_report(stored, seconds, taken=True))
                self.signals.send(
                    events.snapshot_taken,
                    node_id=self.node_id,
                    index=stored.metadata.index,
                    size=len(stored.data),
                    seconds=seconds,
                )
            else:
                still.append(wanted)
        self._snapshots_wanted = still
        if still:
            self._start_snapshot()

    def _maybe_snapshot(self) -> None:
        """Start saving a snapshot when one is due."""
        if not self._snapshotting and self.raw.snapshot_due():
            self._start_snapshot()

    def _start_snapshot(self) -> None:
        """Save a snapshot of the applied state in a thread (it may take seconds), unless
        one is being saved."""
        if self._snapshotting:
            return
        connection = connections[self.machine.alias]
        if connection.vendor == "sqlite" and connection.is_in_memory_db():  # type: ignore[attr-defined]
            # Another connection would not see this one's database: save it here.
            try:
                saved = SnapshotSaved(*self.machine.save_applied())
            except Exception:
                logger.exception("raft: node %s could not save a snapshot", self.node_id)
                saved = SnapshotSaved(0, None)
            self._snapshot_saved(saved)
            return
        self._snapshotting = True
        threading.Thread(
            target=self._save_snapshot, name=f"raft-snapshot-{self.node_id}", daemon=True
        ).start()

    def _save_snapshot(self) -> None:
        """Save the state (in the snapshot thread) and hand it to the loop."""
        index, data = 0, None
        try:
            index, data = self.machine.save_applied()
        except Exception:
            logger.exception("raft: node %s could not save a snapshot", self.node_id)
        finally:
            connections.close_all()  # this thread's connections only
        self.inbox.put(SnapshotSaved(index, data))

    def _snapshot_saved(self, saved: SnapshotSaved) -> None:
        """Record a saved snapshot and compact the log behind it."""
        self._snapshotting = False
        if saved.data is None:
            self.snapshot_failures += 1
            self._answer_snapshots_wanted(None)
            return
        try:
            snapshot = self.raw.create_snapshot(saved.index, saved.data)
        except (RaftError, ValueError) as error:
            # A snapshot from the leader overtook it meanwhile.
            logger.info(
                "raft: node %s drops its snapshot at %s: %s", self.node_id, saved.index, error
            )
        else:
            self.storage.create_snapshot(snapshot)
            compacted_to = self.raw.compact_index(snapshot)
            self.storage.compact(compacted_to)
            self.applier.hand_over(Forget(compacted_to))
        self._answer_snapshots_wanted(saved.index)

    def _make_status(self) -> dict[str, Any]:
        status = self.raw.status()
        self._full_status_at = time.monotonic()
        self._membership_changed = False
        return self._add_runtime_status(status)

    def _add_runtime_status(self, status: dict[str, Any]) -> dict[str, Any]:
        status["max_turn_ms"] = round(self._max_turn * 1000, 3)
        status["pending_proposals"] = len(self._pending) + len(self._held)
        status["signals_dropped"] = self.signals.dropped
        status["messages_dropped"] = dict(self.raw.dropped)
        status["snapshot_failures"] = self.snapshot_failures
        status["cluster_id"] = self.storage.identity[1]
        status["round_trips"] = rtt.reported()
        return status

    def _update_status(self) -> None:
        """Publish the status; the full one (lists, progress) at most every heartbeat."""
        before = self._status
        basic = self.raw.basic_status()
        if (
            basic.state.value != before["state"]
            or basic.term != before["term"]
            or basic.lead != before["leader"]
            or self._membership_changed
            or time.monotonic() - self._full_status_at >= self.heartbeat_interval
        ):
            after = self._make_status()
        else:
            after = self._add_runtime_status(
                {
                    **before,
                    "commit": basic.commit,
                    "applied": basic.applied,
                    "last_index": basic.last_index,
                }
            )
        self._status = after
        if before["state"] == "leader" and after["state"] != "leader":
            self._abandon_proposals(after["commit"])
        for key, signal in (
            ("state", signals.state_changed),
            ("leader", signals.leader_changed),
            ("term", signals.term_changed),
        ):
            if before.get(key) != after.get(key):
                self.signals.send(
                    signal, node_id=self.node_id, value=after.get(key), prev_value=before.get(key)
                )
        if before.get("applied") != after.get("applied"):
            self.signals.send(
                signals.committed,
                node_id=self.node_id,
                value=after.get("applied"),
                prev_value=before.get("applied"),
            )

    def _abandon_proposals(self, commit: int) -> None:
        """This node stopped leading: fail the proposals it can no longer see through.

        Their entries may still be committed by the next leader, so the error says the
        outcome is unknown (the client decides whether to retry).
        """
        error = CommandTimeoutError(
            "leadership changed before the command was committed; it may still be applied"
        )
        abandoned = [index for index in self._pending if index > commit]
        self.completer.complete(
            [(self._pending.pop(index).future, None, error) for index in abandoned]
        )

    def _fail_waiting(self, error: Exception) -> None:
        """Fail every waiting caller with ``error``; a proposal already appended with a
        ``CommandTimeoutError`` instead (another node may still commit it)."""
        appended = CommandTimeoutError(f"{error}; the command may still be applied")
        for pending in self._pending.values():
            if not pending.future.done():
                pending.future.set_exception(appended)
        for proposal in self._held:
            proposal.future.set_exception(error)
        self._held.clear()
        for asked in (*self._reads.values(), *(asked for _, asked in self._read_waiting)):
            if not asked.future.done():
                asked.future.set_exception(error)
        for wanted in self._snapshots_wanted:
            wanted.future.set_exception(error)
        self._snapshots_wanted.clear()
        self._pending.clear()
        self._reads.clear()
        self._read_waiting.clear()
        self._answer_peers()
        while True:
            try:
                request = self.inbox.get_nowait()
            except queue.Empty:
                break
            if isinstance(request, Step | Wake | SnapshotSaved | Applied | ApplyFailed):
                continue
            if request.future.set_running_or_notify_cancel():
                request.future.set_exception(error)
