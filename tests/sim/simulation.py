"""A deterministic simulator: N cores, a hostile network, crashes, all from one seed.

The simulator plays the host: it persists each Ready into the node's MemoryStorage
(the node's disk, which survives a crash), sends its messages into a simulated network,
applies its committed entries and calls advance. Time is logical (ticks). Everything
random comes from ``random.Random(seed)``, so a seed replays exactly.

Faults, for the first 70 % of a run:
- messages are dropped, duplicated, delayed (which reorders them) and, rarely, held
  back for several election timeouts and delivered stale; in half of the ticks a node
  steps every message due to it before it takes its Ready (a batch);
- partitions: symmetric splits, a leader isolated, one-way (asymmetric) link cuts, and
  bridges (two sides that only one node connects);
- pre-vote and check-quorum each switched off in some schedules;
- the host follows the Ready contract with the leader sending its replication
  messages before it persists (``Ready.partition_messages``) and every node sending
  its replies before it applies;
- crashes at five points: before a Ready is persisted (losing what was stepped),
  after the leader sent its early messages but before it persisted, after persisting
  but before the other messages are sent, right after they are sent, or between
  Readies; a crashed node restarts later from its storage, restoring its state
  machine from its snapshot;
- membership churn: learners and voters added (fresh nodes with empty disks),
  learners promoted, members removed, the leader included, and removed ids added back
  with empty disks (which the core refuses);
- snapshots: automatic (a small threshold) and forced, with few entries kept after
  them, so lagging and new nodes are sent snapshots in small chunks;
- leadership transfers to random voters, and linearizable reads (ReadIndex) on any node,
  the host reusing the context of a read it gave up on;
- in some schedules the host applies beside its loop (``Config.async_apply``): committed
  entries and snapshots wait in a queue and are applied ticks later, a few at a time,
  under a small byte bound, so the applied index trails the commit index while reads,
  snapshots and elections go on.

Then the faults heal and liveness is checked: a leader must emerge, and every proposal
accepted by a leader that stays in office must commit within a bounded number of ticks.
"""

from __future__ import annotations

import dataclasses
import json
import random
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

from django_raft.core import (
    ConfChange,
    ConfChangeType,
    Config,
    Entry,
    EntryType,
    MemoryStorage,
    Message,
    MessageType,
    ProgressState,
    RaftError,
    RawNode,
    Ready,
    RemovedPeerError,
    Snapshot,
    StateType,
    bootstrap,
)

from .invariants import (
    CORE_ERROR,
    DURABILITY,
    LINEARIZABILITY,
    LIVENESS,
    STALE_TERM,
    Checker,
    InvariantViolation,
    chain_hash,
)

ELECTION_TICK = 10
HEARTBEAT_TICK = 2
COMMIT_BOUND = 40
"""Ticks within which a proposal to a leader that stays in office must commit, once healed,
when a quorum of its voters is caught up (replicating)."""
CATCH_UP_BOUND = 250
"""The same when voters are still catching up (a new voter receiving a snapshot)."""
LEADER_BOUND = 12 * ELECTION_TICK
"""Ticks after healing within which one leader must be known to every member."""
QUIET_TICKS = 80
"""Ticks at the end without proposals, so every node can catch up before the last check."""
CONVERGE_BOUND = 400
"""Extra quiet ticks allowed, after the run, for every member to reach the same state."""
MAX_VOTERS = 5
_FROM_LEADER = (MessageType.APPEND, MessageType.HEARTBEAT, MessageType.SNAPSHOT)
_CLAIMS_OWN_VOTE = (*_FROM_LEADER, MessageType.TIMEOUT_NOW, MessageType.REQUEST_VOTE)


ALLOWED_ELECTION_SETTINGS = ((True, True), (True, True), (True, False), (False, True))
"""``(pre_vote, check_quorum)`` as schedules draw them: what a node may run with. Both off
is refused by the settings (check ``django_raft.E036``): with neither, a removed node
that never learned of its removal forced new terms forever in randomized schedules, and
each new term restarted a snapshot transfer, so a lagging follower never caught up."""


@dataclass(frozen=True)
class Faults:
    """How hostile the network and the machines are in one schedule."""

    drop: float
    duplicate: float
    max_delay: int
    stale: float
    partition_rate: float
    crash_rate: float
    restart_rate: float
    propose_rate: float
    membership_rate: float
    transfer_rate: float
    read_rate: float
    snapshot_threshold: int
    entries_after_snapshot: int
    forced_snapshot_rate: float
    chunk: int
    pre_vote: bool = True
    check_quorum: bool = True
    slow_disk: float = 0.0
    """How often a leader's write takes several ticks while it goes on working."""
    apply_lag: float = 0.0
    """With more than 0, nodes apply beside their loop: the chance that a node's
    applier applies nothing in a tick (what was handed over waits)."""
    max_applying_bytes: int = 1 << 20

    @classmethod
    def draw(cls, rng: random.Random, profile: str) -> Faults:
        """Pick a fault mix and the election settings (pre-vote and check-quorum each off
        in some schedules, never both: ``ALLOWED_ELECTION_SETTINGS``)."""
        faults = cls._draw(rng, profile)
        pre_vote, check_quorum = rng.choice(ALLOWED_ELECTION_SETTINGS)
        return dataclasses.replace(
            faults,
            pre_vote=pre_vote,
            check_quorum=check_quorum,
            slow_disk=rng.choice((0.0, 0.2, 0.5)),
            apply_lag=rng.choice((0.0, 0.0, 0.5, 0.9)),
            max_applying_bytes=rng.choice((1, 64, 1 << 20)),
        )

    @classmethod
    def _draw(cls, rng: random.Random, profile: str) -> Faults:
        """Pick a fault mix: some schedules calm, some brutal.

        The "elections" profile leaves out membership, snapshots and reads and crashes
        nodes often, to hunt for bugs in voting and in what survives a restart; the
        "membership" profile changes the membership every few ticks under faults.
        """
        if profile == "membership":
            return cls(
                drop=0.05,
                duplicate=0.02,
                max_delay=rng.choice((2, 5)),
                stale=0.01,
                partition_rate=0.02,
                crash_rate=0.02,
                restart_rate=0.3,
                propose_rate=0.5,
                membership_rate=0.1,
                transfer_rate=0.0,
                read_rate=0.0,
                snapshot_threshold=10_000,
                entries_after_snapshot=200,
                forced_snapshot_rate=0.0,
                chunk=4096,
            )
        if profile == "elections":
            return cls(
                drop=rng.choice((0.05, 0.15)),
                duplicate=0.1,
                max_delay=5,
                stale=0.01,
                partition_rate=0.02,
                crash_rate=0.03,
                restart_rate=0.3,
                propose_rate=rng.choice((0.2, 1.0)),
                membership_rate=0.0,
                transfer_rate=0.0,
                read_rate=0.0,
                snapshot_threshold=10_000,
                entries_after_snapshot=200,
                forced_snapshot_rate=0.0,
                chunk=4096,
            )
        return cls(
            drop=rng.choice((0.0, 0.01, 0.05, 0.15)),
            duplicate=rng.choice((0.0, 0.02, 0.1)),
            max_delay=rng.choice((1, 2, 3, 5)),
            stale=rng.choice((0.0, 0.002, 0.01)),
            partition_rate=rng.choice((0.0, 0.005, 0.02)),
            crash_rate=rng.choice((0.0, 0.003, 0.01, 0.03)),
            restart_rate=rng.choice((0.05, 0.3)),
            propose_rate=rng.choice((0.2, 0.5, 1.0)),
            membership_rate=rng.choice((0.0, 0.0, 0.01, 0.03)),
            transfer_rate=rng.choice((0.0, 0.005, 0.02)),
            read_rate=rng.choice((0.0, 0.1, 0.3)),
            snapshot_threshold=rng.choice((10_000, 40, 100)),
            entries_after_snapshot=rng.choice((0, 5, 20)),
            forced_snapshot_rate=rng.choice((0.0, 0.0, 0.005)),
            chunk=rng.choice((64, 512, 4096)),
        )


class SimNode:
    """One node: its disk (storage, survives crashes) and its process (core, volatile).

    The state machine is a digest of every command applied, in order; its snapshot
    carries that digest, the hash chain of the log at the snapshot index, and filler
    bytes so that snapshots span several chunks.
    """

    def __init__(self, node_id: str, founders: tuple[str, ...]) -> None:
        self.id = node_id
        self.storage = MemoryStorage()
        self.chain_offset = 0
        self.chain: list[int] = [0]
        """chain[i - chain_offset] hashes the persisted log up to index i."""
        if founders:
            hard_state, entries = bootstrap(founders)
            self.storage.persist(hard_state, entries)
            for entry in entries:
                self.chain.append(chain_hash(self.chain[-1], entry))
        self.raw: RawNode | None = None
        self.applied_index = 0
        self.digest = 0
        self.pending_crash: str | None = None
        self.was_leader = False
        self.writing: tuple[Ready, tuple[Message, ...]] | None = None
        """A Ready whose write is still in progress (a slow disk)."""
        self.write_done = 0
        self.to_apply: deque[Snapshot | tuple[Entry, ...]] = deque()
        """What was handed over to apply and is not applied yet (``async_apply``)."""
        self.apply_held = False
        """Whether the applier lags in this tick (``Faults.apply_lag``)."""

    def chain_at(self, index: int) -> int | None:
        """The hash of this node's persisted log up to ``index``, if it still knows it."""
        position = index - self.chain_offset
        return self.chain[position] if 0 <= position < len(self.chain) else None

    def last_chain_index(self) -> int:
        return self.chain_offset + len(self.chain) - 1

    def start(self, rng: random.Random, faults: Faults) -> None:
        """Boot the process from what is on disk; restore the state machine from it."""
        snapshot = self.storage.snapshot()
        self.applied_index, self.digest = snapshot.metadata.index, 0
        if snapshot.data:
            self.digest = json.loads(snapshot.data.split(b"|")[0])["digest"]
        config = Config(
            id=self.id,
            election_tick=ELECTION_TICK,
            heartbeat_tick=HEARTBEAT_TICK,
            applied=self.applied_index,
            snapshot_threshold=faults.snapshot_threshold,
            entries_after_snapshot=faults.entries_after_snapshot,
            max_snapshot_chunk=faults.chunk,
            pre_vote=faults.pre_vote,
            check_quorum=faults.check_quorum,
            async_apply=faults.apply_lag > 0,
            max_applying_bytes=faults.max_applying_bytes,
            rng=random.Random(rng.getrandbits(64)),
        )
        self.raw = RawNode(config, self.storage)
        self.pending_crash = None
        self.was_leader = False
        self.writing = None
        self.to_apply.clear()

    def crash(self) -> None:
        """Lose the process and everything not on disk."""
        self.raw = None
        self.pending_crash = None
        self.was_leader = False
        self.writing = None
        self.to_apply.clear()

    def snapshot_data(self, rng: random.Random) -> bytes:
        """Serialise the state machine as of ``applied_index``."""
        header = json.dumps(
            {"digest": self.digest, "chain": self.chain_at(self.applied_index)}
        ).encode()
        return header + b"|" + b"x" * rng.randint(0, 3000)


@dataclass
class Proposal:
    """A client command accepted by a leader at some tick."""

    tick: int
    leader: str
    term: int
    index: int
    data: bytes
    clock: int = 0
    """When the commit bound started counting."""

    def __post_init__(self) -> None:
        self.clock = self.tick


@dataclass
class Read:
    """A linearizable read: when it began and the newest write acknowledged by then."""

    node: str
    began: int
    must_see: int
    index: int | None = None


@dataclass
class Stats:
    """What a run did, for reports."""

    ticks: int = 0
    messages: int = 0
    dropped: int = 0
    crashes: int = 0
    elections: int = 0
    proposals: int = 0
    committed: int = 0
    conf_changes: int = 0
    reuse_refused: int = 0
    """Attempts to add back a removed id, which the core refuses."""
    snapshots_sent: int = 0
    snapshots_installed: int = 0
    transfers: int = 0
    reads: int = 0
    reads_served: int = 0
    reads_reused: int = 0
    """Reads issued with the context of an earlier, unanswered read."""
    stale_answered: int = 0
    """Requests from an older term, each answered with the current term."""
    slow_writes: int = 0
    """Readies whose write spanned ticks while the node went on working."""
    early_sends: int = 0
    """Messages a leader sent before persisting the Ready that carried them."""
    late_applies: int = 0
    """Batches applied beside the loop (``async_apply``), after their Ready's advance."""


@dataclass
class Simulation:
    """One seeded schedule."""

    seed: int
    ticks: int = 1000
    profile: str | None = None
    """"full", "elections" or "membership"; by default drawn from the seed (one
    schedule in four is an elections one, none a membership one)."""
    stats: Stats = field(default_factory=Stats)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        if self.profile is None:
            self.profile = "elections" if self.rng.random() < 0.25 else "full"
        sizes = (3, 5) if self.profile == "elections" else (1, 3, 3, 5, 5)
        count = self.rng.choice(sizes)
        ids = tuple(f"n{i}" for i in range(1, count + 1))
        self.next_id = count + 1
        self.faults = Faults.draw(self.rng, self.profile)
        self.heal_at = int(self.ticks * 0.7)
        self.nodes = {node_id: SimNode(node_id, ids) for node_id in ids}
        self.checker = Checker()
        self.inflight: dict[int, list[Message]] = defaultdict(list)
        self.cut: set[tuple[str, str]] = set()
        self.proposals: list[Proposal] = []
        self.proposed: dict[tuple[str, int], bytes] = {}
        self.acknowledged = 0
        """The highest index of a write a client was told had committed."""
        self.reads: dict[bytes, Read] = {}
        self.now = 0
        for node in self.nodes.values():
            self.checker.commit_advanced(node.id, node.chain_at, 0, node.storage.hard_state.commit)
            node.start(self.rng, self.faults)

    @property
    def ids(self) -> tuple[str, ...]:
        """Every node ever started, members or not."""
        return tuple(self.nodes)

    # -- the host's side of the ordering contract --------------------------------------

    def _drain(self, node: SimNode) -> None:
        raw = node.raw
        while raw is not None and node.writing is None and raw.has_ready():
            ready = raw.ready()
            early, late = ready.partition_messages()
            self.stats.early_sends += len(early)
            for message in early:
                self._check_backed(node, message)
                self._send(message)
            if node.pending_crash == "after_early_send" and early:
                self._crash(node)
                return
            if early and self.rng.random() < self.faults.slow_disk:
                # The write takes a few ticks; the node goes on stepping and ticking
                # meanwhile, and takes no Ready before this one is advanced.
                self.stats.slow_writes += 1
                node.writing = (ready, late)
                node.write_done = self.now + self.rng.randint(1, 4)
                return
            if not self._finish(node, ready, late):
                return

    def _finish(self, node: SimNode, ready: Ready, late: tuple[Message, ...]) -> bool:
        """Persist a Ready, send what had to wait, apply, advance; False if it crashed."""
        raw = node.raw
        assert raw is not None
        self._persist(node, ready)
        if node.pending_crash == "after_persist":
            self._crash(node)
            return False
        for message in late:
            self._check_backed(node, message)
            self._send(message)
        if node.pending_crash == "after_send" and late:
            self._crash(node)
            return False
        if self.faults.apply_lag > 0:
            if ready.snapshot is not None:
                node.to_apply.append(ready.snapshot)
            if ready.committed_entries:
                node.to_apply.append(ready.committed_entries)
        else:
            if ready.snapshot is not None:
                self._restore(node, ready.snapshot)
            for entry in ready.committed_entries:
                self._apply(node, entry)
        for read_state in ready.read_states:
            self._read_answered(node, read_state.index, read_state.context)
        raw.advance(ready)
        self._apply_queued(node)
        self._serve_reads(node)
        self._maybe_snapshot(node)
        return True

    def _apply_queued(self, node: SimNode) -> None:
        """Apply what waits beside the loop, unless the applier lags this tick."""
        raw = node.raw
        queue = node.to_apply
        if raw is None or not queue or node.apply_held:
            return
        while queue:
            item = queue.popleft()
            if isinstance(item, Snapshot):
                self._restore(node, item)
            else:
                for entry in item:
                    self._apply(node, entry)
            raw.applied_to(node.applied_index)
            self.stats.late_applies += 1

    def _persist(self, node: SimNode, ready: Ready) -> None:
        storage = node.storage
        old_commit = storage.hard_state.commit
        storage.persist(ready.hard_state, ready.entries, ready.snapshot)
        if ready.snapshot is not None:
            self.stats.snapshots_installed += 1
            header = json.loads(ready.snapshot.data.split(b"|")[0])
            self._rebuild_chain(node, ready.snapshot.metadata.index, header["chain"])
        if ready.entries:
            first = ready.entries[0].index
            del node.chain[first - node.chain_offset :]
            previous = node.chain[-1]
            for entry in ready.entries:
                previous = chain_hash(previous, entry)
                node.chain.append(previous)
            self.checker.persisted(node.id, node.chain_at, ready.entries)
        if ready.hard_state is not None and ready.hard_state.commit > old_commit:
            self.checker.commit_advanced(
                node.id, node.chain_at, old_commit, ready.hard_state.commit
            )

    def _rebuild_chain(self, node: SimNode, index: int, chain: int) -> None:
        """Derive the chain from the disk after a snapshot replaced (part of) the log."""
        storage = node.storage
        node.chain_offset, node.chain = index, [chain]
        if storage.last_index() > index:
            previous = chain
            for entry in storage.entries(index + 1, storage.last_index() + 1, 1 << 30):
                previous = chain_hash(previous, entry)
                node.chain.append(previous)

    def _restore(self, node: SimNode, snapshot: Snapshot) -> None:
        header = json.loads(snapshot.data.split(b"|")[0])
        node.applied_index = snapshot.metadata.index
        node.digest = header["digest"]
        self.checker.restored(node.id, snapshot.metadata.index, node.digest)

    def _apply(self, node: SimNode, entry: Entry) -> None:
        if entry.index != node.applied_index + 1:
            raise InvariantViolation(
                CORE_ERROR,
                f"{node.id} was handed entry {entry.index} after applying {node.applied_index}",
            )
        node.applied_index = entry.index
        if entry.type is EntryType.NORMAL and entry.data:
            node.digest = hash((node.digest, entry.data))
        self.checker.applied_entry(node.id, entry, node.digest)
        if self.proposed.get((node.id, entry.index)) == entry.data:
            del self.proposed[(node.id, entry.index)]
            self.acknowledged = max(self.acknowledged, entry.index)

    def _maybe_snapshot(self, node: SimNode) -> None:
        raw = node.raw
        if raw is None or node.applied_index == 0:
            return
        forced = self.rng.random() < self.faults.forced_snapshot_rate
        if not (forced or raw.snapshot_due()):
            return
        if node.applied_index <= node.storage.snapshot().metadata.index:
            return
        snapshot = raw.create_snapshot(node.applied_index, node.snapshot_data(self.rng))
        node.storage.create_snapshot(snapshot)
        node.storage.compact(raw.compact_index(snapshot))

    # -- reads -------------------------------------------------------------------------

    def _read(self) -> None:
        live = [n for n in self.nodes.values() if n.raw is not None]
        if not live:
            return
        node = self.rng.choice(live)
        assert node.raw is not None
        # A host may reuse the context of a read it gave up on (not answered within a few
        # election timeouts): the core must not confuse the two.
        context = f"read-{node.id}-{self.rng.randrange(4)}".encode()
        pending = self.reads.get(context)
        if pending is not None:
            if self.now - pending.began < 3 * ELECTION_TICK or node.writing is not None:
                # Not while a Ready is in progress: it may carry the earlier read's answer.
                return
            del self.reads[context]
            self.stats.reads_reused += 1
        self.stats.reads += 1
        try:
            node.raw.read_index(context)
        except RaftError:
            return
        self.reads[context] = Read(node.id, self.now, self.acknowledged)
        self._after_step(node)
        self._drain(node)

    def _read_answered(self, node: SimNode, index: int, context: bytes) -> None:
        read = self.reads.get(context)
        if read is None:
            return  # a duplicate answer to a read already served
        if read.node != node.id:
            raise InvariantViolation(CORE_ERROR, f"{node.id} answered {read.node}'s read")
        read.index = index
        if index < read.must_see:
            raise InvariantViolation(
                LINEARIZABILITY,
                f"read {context!r} on {node.id} (began at tick {read.began}) got read index "
                f"{index}, older than write {read.must_see} acknowledged before it began",
            )

    def _serve_reads(self, node: SimNode) -> None:
        for context, read in list(self.reads.items()):
            served = read.index is not None and node.applied_index >= read.index
            if read.node == node.id and served:
                del self.reads[context]
                self.stats.reads_served += 1

    # -- the network -----------------------------------------------------------------

    def _send(self, message: Message) -> None:
        faults = self.faults if self.now < self.heal_at else None
        self.stats.messages += 1
        if message.snapshot is not None and message.offset == 0:
            self.stats.snapshots_sent += 1
        if faults is not None and self.rng.random() < faults.drop:
            self.stats.dropped += 1
            return
        copies = 2 if faults is not None and self.rng.random() < faults.duplicate else 1
        for _ in range(copies):
            delay = self.rng.randint(1, faults.max_delay if faults else 2)
            if faults is not None and self.rng.random() < faults.stale:
                delay += self.rng.randint(2, 6) * ELECTION_TICK
            self.inflight[self.now + delay].append(message)

    def _deliver_due(self) -> None:
        due = self.inflight.pop(self.now, None)
        if not due:
            return
        self.rng.shuffle(due)
        if self.rng.random() < 0.5:
            # A host steps everything it received before it takes the next Ready: a
            # batch may hold a request and a newer term's message that supersedes it.
            due.sort(key=lambda m: m.to)
        for position, message in enumerate(due):
            node = self.nodes[message.to]
            if node.raw is None or (message.sender, message.to) in self.cut:
                continue
            stale = (
                message.type in _FROM_LEADER
                and 0 < message.term < node.raw.raft.term
                and node.raw.raft.term
            )
            self._guard(node, partial(RawNode.step, message=message))
            if stale and node.raw is not None:
                self._check_stale_answered(node, message, stale)
            if node.pending_crash == "before_persist":
                self._crash(node)
                continue
            if position + 1 < len(due) and due[position + 1].to == message.to:
                continue  # the rest of this node's batch first
            self._drain(node)

    def _check_stale_answered(self, node: SimNode, request: Message, term: int) -> None:
        """Figure 2: a request from an older term is answered with the current term."""
        assert node.raw is not None
        if not any(m.to == request.sender and m.term == term for m in node.raw.raft.messages):
            raise InvariantViolation(
                STALE_TERM,
                f"{node.id} (term {term}) did not answer {request.type.value} of term "
                f"{request.term} from {request.sender}",
            )
        self.stats.stale_answered += 1

    def _check_backed(self, node: SimNode, message: Message) -> None:
        """Every message is backed by state already persisted when it is sent."""
        kind = message.type
        if message.term == 0 or kind in (MessageType.PRE_VOTE, MessageType.PRE_VOTE_RESPONSE):
            return
        hard_state = node.storage.hard_state
        problem = ""
        if message.term != hard_state.term:
            problem = f"of term {message.term} with term {hard_state.term} persisted"
        elif kind in _CLAIMS_OWN_VOTE and hard_state.vote != node.id:
            problem = f"with vote {hard_state.vote!r} persisted"
        elif (
            kind is MessageType.REQUEST_VOTE_RESPONSE
            and not message.reject
            and hard_state.vote != message.to
        ):
            problem = f"granting a vote with vote {hard_state.vote!r} persisted"
        elif (
            kind is MessageType.APPEND_RESPONSE
            and not message.reject
            and node.storage.last_index() < message.index
        ):
            problem = f"up to {message.index} with {node.storage.last_index()} persisted"
        if problem:
            raise InvariantViolation(
                DURABILITY, f"{node.id} sent {kind.value} to {message.to} {problem}"
            )

    # -- faults ------------------------------------------------------------------------

    def _crash(self, node: SimNode) -> None:
        node.crash()
        self.stats.crashes += 1
        for context in [c for c, read in self.reads.items() if read.node == node.id]:
            del self.reads[context]

    def _inject_faults(self) -> None:
        faults = self.faults
        rng = self.rng
        if rng.random() < faults.partition_rate:
            self._partition()
        elif self.cut and rng.random() < 0.05:
            self.cut.clear()
        if rng.random() < faults.crash_rate:
            node = self.nodes[rng.choice(self.ids)]
            if node.raw is not None:
                mode = rng.choice(
                    ("now", "before_persist", "after_early_send", "after_persist", "after_send")
                )
                if mode == "now":
                    self._crash(node)
                else:
                    node.pending_crash = mode
        for node in self.nodes.values():
            if node.raw is None and rng.random() < faults.restart_rate:
                node.start(rng, faults)
        if rng.random() < faults.membership_rate:
            self._change_membership()
        if rng.random() < faults.transfer_rate:
            self._transfer()

    def _partition(self) -> None:
        rng = self.rng
        ids = list(self.ids)
        kind = rng.choice(("split", "isolate_leader", "one_way", "bridge"))
        self.cut.clear()
        if len(ids) < 2:
            return
        if kind == "one_way":
            for _ in range(rng.randint(1, len(ids))):
                a, b = rng.sample(ids, 2)
                self.cut.add((a, b))
            return
        if kind == "bridge" and len(ids) >= 3:
            # Two sides that cannot hear each other, and one node (ids[0], the bridge)
            # that hears both.
            rng.shuffle(ids)
            rest = ids[1:]
            side = rest[: rng.randint(1, len(rest) - 1)]
            for a in side:
                for b in rest:
                    if b not in side:
                        self.cut.add((a, b))
                        self.cut.add((b, a))
            return
        if kind == "isolate_leader":
            leaders = self._leaders()
            alone = [leaders[0].id] if leaders else [rng.choice(ids)]
        else:
            rng.shuffle(ids)
            alone = ids[: rng.randint(1, len(ids) // 2)]
        rest = [i for i in ids if i not in alone]
        for a in alone:
            for b in rest:
                self.cut.add((a, b))
                self.cut.add((b, a))

    def _change_membership(self) -> None:
        leaders = self._leaders()
        if not leaders:
            return
        leader = self.rng.choice(leaders)
        assert leader.raw is not None
        conf = leader.raw.conf_state()
        choices: list[ConfChange] = []
        if len(conf.voters) < MAX_VOTERS:
            new_id = f"n{self.next_id}"
            choices += [
                ConfChange(ConfChangeType.ADD_VOTER, new_id),
                ConfChange(ConfChangeType.ADD_LEARNER, new_id),
            ]
            choices += [ConfChange(ConfChangeType.ADD_VOTER, n) for n in conf.learners]
            # A node that was removed tries to come back under its old id, with an
            # empty disk: the core refuses (a removed id never rejoins).
            choices += [ConfChange(ConfChangeType.ADD_VOTER, n) for n in conf.removed]
        choices += [ConfChange(ConfChangeType.REMOVE, n) for n in conf.voters + conf.learners]
        change = self.rng.choice(choices)
        reused = change.type is not ConfChangeType.REMOVE and change.node_id in conf.removed
        try:
            leader.raw.propose_conf_change(change)
        except RemovedPeerError:
            self.stats.reuse_refused += 1
            return
        except RaftError:
            return
        self.stats.conf_changes += 1
        if reused:
            node = SimNode(change.node_id, ())
            self.nodes[node.id] = node
            node.start(self.rng, self.faults)
        elif change.node_id not in self.nodes:
            self.next_id += 1
            node = SimNode(change.node_id, ())
            self.nodes[node.id] = node
            node.start(self.rng, self.faults)
        self._after_step(leader)
        self._drain(leader)

    def _transfer(self) -> None:
        leaders = self._leaders()
        if not leaders:
            return
        leader = self.rng.choice(leaders)
        assert leader.raw is not None
        voters = [v for v in leader.raw.conf_state().voters if v != leader.id]
        if not voters:
            return
        try:
            leader.raw.transfer_leadership(self.rng.choice(voters))
        except RaftError:
            return
        self.stats.transfers += 1
        self._after_step(leader)
        self._drain(leader)

    def _heal(self) -> None:
        self.cut.clear()
        for node in self.nodes.values():
            node.pending_crash = None
            if node.raw is None:
                node.start(self.rng, self.faults)

    # -- clients -----------------------------------------------------------------------

    def _leaders(self) -> list[SimNode]:
        return [n for n in self.nodes.values() if self._is_leader(n)]

    @staticmethod
    def _is_leader(node: SimNode) -> bool:
        return node.raw is not None and node.raw.raft.state is StateType.LEADER

    def _propose(self) -> None:
        leaders = self._leaders()
        if not leaders:
            return
        node = self.rng.choice(leaders)
        assert node.raw is not None
        data = f"{self.seed}:{self.stats.proposals}".encode()
        try:
            index = node.raw.propose(data)
        except RaftError:
            return
        self.stats.proposals += 1
        self.proposals.append(Proposal(self.now, node.id, node.raw.raft.term, index, data))
        self.proposed[(node.id, index)] = data
        self._after_step(node)
        self._drain(node)

    # -- the loop ----------------------------------------------------------------------

    def _guard(self, node: SimNode, action: Callable[[RawNode], object]) -> None:
        assert node.raw is not None
        try:
            action(node.raw)
        except InvariantViolation:
            raise
        except Exception as error:
            raise InvariantViolation(CORE_ERROR, f"{node.id}: {error!r}") from error
        self._after_step(node)

    def _after_step(self, node: SimNode) -> None:
        raw = node.raw
        if raw is None:
            return
        self.checker.after_step(raw.raft)
        leader = raw.raft.state is StateType.LEADER
        if leader and not node.was_leader:
            self.stats.elections += 1
            self.checker.became_leader(raw.raft, node.chain_at, node.last_chain_index())
        node.was_leader = leader

    def run(self) -> Stats:
        """Run the schedule; raise ``InvariantViolation`` on the first broken property.

        After the last tick, the quiet cluster gets up to ``CONVERGE_BOUND`` more ticks to
        bring every member to the same state (a snapshot sent in small chunks may still
        be on its way); not converging by then is a liveness failure.
        """
        try:
            for tick in range(self.ticks):
                self._tick(tick, proposing=tick < self.ticks - QUIET_TICKS)
            for tick in range(self.ticks, self.ticks + CONVERGE_BOUND):
                if self._converged():
                    break
                self._tick(tick, proposing=False)
            self.stats.ticks = self.now + 1
            self._check_converged()
        except InvariantViolation as violation:
            violation.add_note(self.replay_hint())
            raise
        self.stats.committed = len(self.checker.committed) - 1
        return self.stats

    def _tick(self, tick: int, proposing: bool) -> None:
        self.now = tick
        if self.now < self.heal_at:
            self._inject_faults()
        elif self.now == self.heal_at:
            self._heal()
        for node in list(self.nodes.values()):
            if node.writing is not None and node.write_done <= tick:
                (ready, late), node.writing = node.writing, None
                if self._finish(node, ready, late):
                    self._drain(node)
            node.apply_held = self.rng.random() < self.faults.apply_lag
            if node.raw is not None and node.to_apply:
                self._apply_queued(node)
                self._serve_reads(node)
                self._maybe_snapshot(node)
            if node.raw is not None:
                self._guard(node, lambda raw: raw.tick())
                self._drain(node)
        if proposing and self.rng.random() < self.faults.propose_rate:
            self._propose()
        if proposing and self.rng.random() < self.faults.read_rate:
            self._read()
        self._deliver_due()
        if self.now >= self.heal_at:
            self._check_liveness()

    def replay_hint(self) -> str:
        """One line that replays this schedule."""
        return (
            f"seed {self.seed} failed at tick {self.now}; replay with: "
            f"SIM_SEED={self.seed} SIM_TICKS={self.ticks} scripts/test tests/sim -k replay"
        )

    # -- liveness ----------------------------------------------------------------------

    def _members(self) -> list[SimNode]:
        """The nodes in the membership the newest leader knows (all nodes if none)."""
        leaders = self._leaders()
        if not leaders:
            return list(self.nodes.values())
        newest = max(leaders, key=lambda n: n.raw.raft.term if n.raw else 0)
        assert newest.raw is not None
        conf = newest.raw.conf_state()
        return [self.nodes[n] for n in conf.voters + conf.learners]

    def _check_liveness(self) -> None:
        now = self.now
        if now - self.heal_at == LEADER_BOUND:
            members = self._members()
            leaders = {n.raw.raft.lead for n in members if n.raw is not None}
            if len(leaders) != 1 or "" in leaders:
                raise InvariantViolation(
                    LIVENESS, f"{LEADER_BOUND} ticks after healing, members follow {leaders}"
                )
        pending = []
        for proposal in self.proposals:
            node = self.nodes[proposal.leader]
            raw = node.raw
            if raw is None or raw.raft.term != proposal.term or not self._is_leader(node):
                continue  # the leader lost office: the proposal may be lost, that is allowed
            raft = raw.raft
            if raft.log.committed >= proposal.index:
                continue
            if proposal.tick >= self.heal_at:
                replicating = sum(
                    1
                    for voter in raft.voters
                    if raft.progress[voter].state is ProgressState.REPLICATE
                )
                if replicating < raft.quorum():
                    # Voters are still catching up (a new voter receiving a snapshot):
                    # the clock starts once a quorum is replicating, within a hard bound.
                    proposal.clock = now
                waited = now - proposal.clock
                if waited > COMMIT_BOUND or now - proposal.tick > CATCH_UP_BOUND:
                    raise InvariantViolation(
                        LIVENESS,
                        f"proposal at index {proposal.index} to {proposal.leader} (term "
                        f"{proposal.term}, tick {proposal.tick}) not committed after "
                        f"{now - proposal.tick} ticks with the same leader",
                    )
            pending.append(proposal)
        self.proposals = pending

    def _converged(self) -> bool:
        members = self._members()
        return (
            len({n.applied_index for n in members}) == 1 and len({n.digest for n in members}) == 1
        )

    def _check_converged(self) -> None:
        if self._converged():
            return
        applied = {n.id: n.applied_index for n in self._members()}
        raise InvariantViolation(
            LIVENESS,
            f"members did not converge {CONVERGE_BOUND} ticks after the last proposal "
            f"window: applied {applied}",
        )
