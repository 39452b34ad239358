"""The node: one loop thread drives the core; everything else talks to it through a queue.

The loop owns the ``RawNode``, the storage and the state machine, so none of them needs a
lock. Other threads (the WSGI server's request threads, the transport's senders, a
``do()`` from the node's own process) put work on the queue and wait on a future.

Each turn of the loop takes everything queued (so a burst of proposals shares one
database transaction), ticks the core when a tick is due, then handles every Ready in
the order the core requires: persist, then send, then apply, then advance.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from django.db import close_old_connections

from . import signals
from .conf import raft_settings
from .core import (
    ConfChange,
    ConfChangeType,
    Entry,
    EntryType,
    Message,
    MessageType,
    NotLeaderError,
    RaftError,
    RawNode,
    StateType,
)
from .exceptions import StopError
from .statemachine import Outcome, StateMachine
from .storage import DjangoStorage
from .transport import Transport

logger = logging.getLogger(__name__)

MAX_BATCH = 5000
"""Queue items handled before the loop persists and sends what they produced."""


@dataclass
class _ReplySlot:
    """Where the messages answering one incoming request are collected."""

    peer: str
    messages: list[Message] = field(default_factory=list)
    done: threading.Event = field(default_factory=threading.Event)


@dataclass
class _Pending:
    term: int
    future: Future[Outcome]


class RaftNode:
    """A running Raft node in this process."""

    current: RaftNode | None = None
    """The node running in this process, if any (``do()`` uses it directly)."""

    def __init__(self, node_id: str, address: str, storage: DjangoStorage, machine: StateMachine):
        self.node_id = node_id
        self.address = address
        self.storage = storage
        self.machine = machine
        applied, _ = machine.applied()
        self.raw = RawNode(raft_settings.core_config(node_id, applied=applied), storage)
        self.tick_interval = raft_settings.TICK_INTERVAL
        self.heartbeat_interval = raft_settings.HEARTBEAT_INTERVAL
        self.inbox: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()
        self.stopping = threading.Event()
        self.stopped = threading.Event()
        self.transport = Transport(
            node_id,
            raft_settings.SECRET,
            raft_settings.URL_PREFIX,
            raft_settings.RPC_TIMEOUT,
            deliver=self._deliver_replies,
            on_round_trip=self._round_trip,
        )
        for member_id, member_address in machine.addresses().items():
            self.transport.set_address(member_id, member_address)
        for member_id, member_address in raft_settings.CLUSTER.items():
            self.transport.set_address(member_id, member_address)
        self._pending: dict[int, _Pending] = {}
        self._reads: dict[bytes, Future[int]] = {}
        self._read_waiting: list[tuple[int, Future[int]]] = []
        self._read_ids = itertools.count()
        self._slots: dict[str, _ReplySlot] = {}
        self._status: dict[str, Any] = self.raw.status()
        self._last_leader_contact = time.monotonic()
        self._threshold_warned = False
        self._thread = threading.Thread(target=self._run, name=f"raft-loop-{node_id}", daemon=True)

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        """Start the loop thread."""
        RaftNode.current = self
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the loop (what was persisted stays), fail waiting callers with StopError."""
        self.stopping.set()
        self.inbox.put(("wake",))
        self._thread.join(timeout)
        self.transport.stop()
        if RaftNode.current is self:
            RaftNode.current = None

    # -- the API other threads use ------------------------------------------------------

    def receive(self, messages: list[Message], timeout: float) -> list[Message]:
        """Step messages from one peer, in order; return the messages that answer them.

        They are stepped in one turn of the loop, so a batch of AppendEntries costs one
        write to disk.
        """
        slot = _ReplySlot(messages[0].sender)
        self._submit(("step", messages, slot))
        slot.done.wait(timeout)
        return slot.messages

    def propose(self, data: bytes, timeout: float) -> Outcome:
        """Propose a command and wait until it is committed and applied here."""
        return self._call(("propose", data), timeout)

    def change_membership(self, change: ConfChange, timeout: float) -> Outcome:
        """Propose a membership change and wait until it is applied."""
        return self._call(("conf", change), timeout)

    def read_index(self, timeout: float) -> int:
        """Wait until a linearizable read may be served here; return its index."""
        index: int = self._call(("read",), timeout)
        return index

    def transfer_leadership(self, transferee: str, timeout: float) -> None:
        """Ask the leader to hand over to ``transferee``."""
        self._call(("transfer", transferee), timeout)

    def status(self) -> dict[str, Any]:
        """Return the node's last reported status (updated by the loop)."""
        return dict(self._status)

    def leader_address(self) -> str:
        """Return the address of the leader this node knows of, or ""."""
        leader = self._status.get("leader", "")
        return self.transport.addresses.get(leader, "") if leader != self.node_id else self.address

    def _submit(self, item: tuple[Any, ...]) -> None:
        if self.stopping.is_set():
            raise StopError(f"node {self.node_id!r} is stopping")
        self.inbox.put(item)

    def _call(self, item: tuple[Any, ...], timeout: float) -> Any:
        future: Future[Any] = Future()
        self._submit((*item, future))
        return future.result(timeout)

    def _deliver_replies(self, messages: list[Message]) -> None:
        self.inbox.put(("step", messages, None))

    def _round_trip(self, peer: str, seconds: float) -> None:
        if seconds > self.heartbeat_interval:
            signals.heartbeat_interval.send_robust(
                sender=RaftNode,
                node_id=self.node_id,
                peer=peer,
                value=seconds,
                prev_value=self.heartbeat_interval,
            )

    # -- the loop -----------------------------------------------------------------------

    def _run(self) -> None:
        next_tick = time.monotonic() + self.tick_interval
        try:
            while not self.stopping.is_set():
                items = self._take(max(0.0, next_tick - time.monotonic()))
                for item in items:
                    self._handle(item)
                now = time.monotonic()
                if now >= next_tick:
                    self.raw.tick()
                    next_tick += self.tick_interval
                    if now - next_tick > 10 * self.tick_interval:
                        next_tick = now + self.tick_interval  # fell far behind: skip ahead
                    self._watch_leader(now)
                self._process_ready()
        except Exception:
            logger.exception("raft: node %s loop crashed", self.node_id)
            raise
        finally:
            self._fail_waiting(StopError(f"node {self.node_id!r} stopped"))
            close_old_connections()
            self.stopped.set()

    def _take(self, timeout: float) -> list[tuple[Any, ...]]:
        try:
            items = [self.inbox.get(timeout=timeout)]
        except queue.Empty:
            return []
        while len(items) < MAX_BATCH:
            try:
                items.append(self.inbox.get_nowait())
            except queue.Empty:
                break
        return items

    def _handle(self, item: tuple[Any, ...]) -> None:
        kind = item[0]
        if kind == "step":
            messages, slot = item[1], item[2]
            if slot is not None:
                self._slots.setdefault(slot.peer, slot)
            for message in messages:
                self._step(message)
        elif kind == "wake":
            return
        else:
            future: Future[Any] = item[-1]
            if not future.set_running_or_notify_cancel():
                return
            try:
                self._request(kind, item[1:-1], future)
            except RaftError as error:
                future.set_exception(error)

    def _step(self, message: Message) -> None:
        raw = self.raw
        if message.term == raw.raft.term and message.sender == raw.raft.lead:
            self._last_leader_contact = time.monotonic()
        try:
            raw.step(message)
        except RaftError as error:
            logger.warning("raft: cannot step %s: %s", message.type.value, error)
        if message.type is MessageType.HEARTBEAT_RESPONSE and raw.raft.state is StateType.LEADER:
            signals.heartbeat.send_robust(
                sender=RaftNode, node_id=self.node_id, value=message.sender, prev_value=None
            )

    def _request(self, kind: str, arguments: tuple[Any, ...], future: Future[Any]) -> None:
        raw = self.raw
        if kind == "propose":
            index = raw.propose(arguments[0])
            self._pending[index] = _Pending(raw.raft.term, future)
        elif kind == "conf":
            index = raw.propose_conf_change(arguments[0])
            self._pending[index] = _Pending(raw.raft.term, future)
        elif kind == "read":
            context = f"{self.node_id}:{next(self._read_ids)}".encode()
            raw.read_index(context)
            self._reads[context] = future
        elif kind == "transfer":
            raw.transfer_leadership(arguments[0])
            future.set_result(None)
        else:
            raise ValueError(f"unknown request {kind!r}")

    def _watch_leader(self, now: float) -> None:
        raft = self.raw.raft
        if raft.state is not StateType.FOLLOWER or raft.lead == "":
            self._last_leader_contact = now
            return
        threshold = (
            raft_settings.ELECTION_TIMEOUT * raft_settings.ELECTION_TIMEOUT_THRESHOLD_PERCENT
        )
        silence = now - self._last_leader_contact
        if silence > threshold and not self._threshold_warned:
            self._threshold_warned = True
            signals.election_timeout_threshold.send_robust(
                sender=RaftNode, node_id=self.node_id, value=silence, prev_value=threshold
            )
        elif silence <= threshold:
            self._threshold_warned = False

    # -- Ready: persist, send, apply, advance ------------------------------------------

    def _process_ready(self) -> None:
        raw = self.raw
        before = self._status
        while raw.has_ready():
            ready = raw.ready()
            self.storage.persist(ready.hard_state, ready.entries, ready.snapshot)
            self._learn_addresses(ready.entries)
            self._send(ready.messages)
            if ready.snapshot is not None:
                self.machine.restore(
                    ready.snapshot.data, ready.snapshot.metadata.index, ready.snapshot.metadata.term
                )
                self._reload_addresses()
            if ready.committed_entries:
                self._apply(ready.committed_entries)
            for read_state in ready.read_states:
                future = self._reads.pop(read_state.context, None)
                if future is not None:
                    self._read_waiting.append((read_state.index, future))
            raw.advance(ready)
            self._serve_reads()
            self._maybe_snapshot()
        for slot in self._slots.values():
            slot.done.set()
        self._slots.clear()
        self._status = raw.status()
        self._emit_changes(before, self._status)

    def _send(self, messages: tuple[Message, ...]) -> None:
        outgoing = []
        for message in messages:
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
                change = ConfChange.decode(entry.data)
                if change.type is not ConfChangeType.REMOVE:
                    self.transport.set_address(change.node_id, change.context)

    def _reload_addresses(self) -> None:
        for member_id, member_address in self.machine.addresses().items():
            self.transport.set_address(member_id, member_address)

    def _apply(self, entries: tuple[Entry, ...]) -> None:
        outcomes = self.machine.apply(entries)
        for entry in entries:
            pending = self._pending.pop(entry.index, None)
            if entry.type is EntryType.CONF_CHANGE:
                self._membership_applied(ConfChange.decode(entry.data))
            if pending is None or pending.future.done():
                continue
            if pending.term != entry.term:
                pending.future.set_exception(
                    NotLeaderError(self.raw.raft.lead)
                    if self.raw.raft.lead != self.node_id
                    else RaftError("the command was superseded by another leader's entry")
                )
            else:
                pending.future.set_result(outcomes[entry.index])

    def _membership_applied(self, change: ConfChange) -> None:
        node_id = change.node_id
        if change.type is ConfChangeType.REMOVE:
            signals.peer_removed.send_robust(
                sender=RaftNode, node_id=self.node_id, value=node_id, prev_value=None
            )
            if node_id == self.node_id:
                signals.removed.send_robust(
                    sender=RaftNode, node_id=self.node_id, value=node_id, prev_value=None
                )
                self.stopping.set()
        else:
            signals.peer_added.send_robust(
                sender=RaftNode, node_id=self.node_id, value=node_id, prev_value=None
            )

    def _serve_reads(self) -> None:
        applied = self.raw.raft.log.applied
        still = []
        for index, future in self._read_waiting:
            if applied >= index:
                future.set_result(index)
            else:
                still.append((index, future))
        self._read_waiting = still

    def _maybe_snapshot(self) -> None:
        if not self.raw.snapshot_due():
            return
        index, _ = self.machine.applied()
        snapshot = self.raw.create_snapshot(index, self.machine.save())
        self.storage.create_snapshot(snapshot)
        self.storage.compact(self.raw.compact_index(snapshot))

    def _emit_changes(self, before: dict[str, Any], after: dict[str, Any]) -> None:
        for key, signal in (
            ("state", signals.state_changed),
            ("leader", signals.leader_changed),
            ("term", signals.term_changed),
        ):
            if before.get(key) != after.get(key):
                signal.send_robust(
                    sender=RaftNode,
                    node_id=self.node_id,
                    value=after.get(key),
                    prev_value=before.get(key),
                )
        if before.get("applied") != after.get("applied"):
            signals.committed.send_robust(
                sender=RaftNode,
                node_id=self.node_id,
                value=after.get("commit"),
                prev_value=before.get("commit"),
            )

    def _fail_waiting(self, error: Exception) -> None:
        for pending in self._pending.values():
            if not pending.future.done():
                pending.future.set_exception(error)
        for future in self._reads.values():
            if not future.done():
                future.set_exception(error)
        for _, future in self._read_waiting:
            if not future.done():
                future.set_exception(error)
        self._pending.clear()
        self._reads.clear()
        self._read_waiting.clear()
        for slot in self._slots.values():
            slot.done.set()
        while True:
            try:
                item = self.inbox.get_nowait()
            except queue.Empty:
                break
            if item[0] not in ("step", "wake"):
                future = item[-1]
                if not future.done():
                    future.set_exception(error)
