"""A deterministic simulator: N cores, a hostile network, crashes, all from one seed.

The simulator plays the host: it persists each Ready into the node's MemoryStorage
(the node's disk, which survives a crash), sends its messages into a simulated network,
applies its committed entries and calls advance. Time is logical (ticks). Everything
random comes from ``random.Random(seed)``, so a seed replays exactly.

Faults, for the first 70 % of a run:
- messages are dropped, duplicated, delayed (which reorders them) and, rarely, held
  back for several election timeouts and delivered stale;
- partitions: symmetric splits, a leader isolated, one-way link cuts;
- crashes at four points: before a Ready is persisted (losing what was stepped),
  after it is persisted but before its messages are sent, right after they are sent,
  or between Readies; a
  crashed node restarts later from its storage, with an empty state machine.

Then the faults heal and liveness is checked: a leader must emerge, and every proposal
accepted by a leader that stays in office must commit within a bounded number of ticks.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

from django_raft.core import (
    Config,
    ConfState,
    Entry,
    MemoryStorage,
    Message,
    NotLeaderError,
    RawNode,
    Ready,
    StateType,
)

from .invariants import CORE_ERROR, LIVENESS, Checker, InvariantViolation, chain_hash

ELECTION_TICK = 10
HEARTBEAT_TICK = 2
COMMIT_BOUND = 40
"""Ticks within which a proposal to a leader that stays in office must commit, once healed."""
LEADER_BOUND = 12 * ELECTION_TICK
"""Ticks after healing within which one leader must be known to every node."""
QUIET_TICKS = 60
"""Ticks at the end without proposals, so every node can catch up before the last check."""


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

    @classmethod
    def draw(cls, rng: random.Random) -> Faults:
        """Pick a fault mix: some schedules calm, some brutal."""
        return cls(
            drop=rng.choice((0.0, 0.01, 0.05, 0.15)),
            duplicate=rng.choice((0.0, 0.02, 0.1)),
            max_delay=rng.choice((1, 2, 3, 5)),
            stale=rng.choice((0.0, 0.002, 0.01)),
            partition_rate=rng.choice((0.0, 0.005, 0.02)),
            crash_rate=rng.choice((0.0, 0.003, 0.01, 0.03)),
            restart_rate=rng.choice((0.05, 0.3)),
            propose_rate=rng.choice((0.2, 0.5, 1.0)),
        )


class SimNode:
    """One node: its disk (storage, survives crashes) and its process (core, volatile)."""

    def __init__(self, node_id: str, voters: tuple[str, ...]) -> None:
        self.id = node_id
        self.storage = MemoryStorage(ConfState(voters=voters))
        self.chain: list[int] = [0]
        """chain[i] is the hash of persisted entries 1..i (derived from the disk)."""
        self.raw: RawNode | None = None
        self.applied_index = 0
        self.state_machine: list[bytes] = []
        self.pending_crash: str | None = None
        self.was_leader = False

    def start(self, rng: random.Random) -> None:
        """Boot the process from what is on disk; the state machine starts empty."""
        config = Config(
            id=self.id,
            election_tick=ELECTION_TICK,
            heartbeat_tick=HEARTBEAT_TICK,
            rng=random.Random(rng.getrandbits(64)),
        )
        self.raw = RawNode(config, self.storage)
        self.applied_index = 0
        self.state_machine = []
        self.pending_crash = None
        self.was_leader = False

    def crash(self) -> None:
        """Lose the process and everything not on disk."""
        self.raw = None
        self.pending_crash = None
        self.was_leader = False


@dataclass
class Proposal:
    """A client command accepted by a leader at some tick."""

    tick: int
    leader: str
    term: int
    index: int
    data: bytes


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


@dataclass
class Simulation:
    """One seeded schedule."""

    seed: int
    ticks: int = 1000
    nodes_count: int | None = None
    stats: Stats = field(default_factory=Stats)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        count = self.nodes_count or self.rng.choice((3, 5))
        self.ids = tuple(f"n{i}" for i in range(1, count + 1))
        self.faults = Faults.draw(self.rng)
        self.heal_at = int(self.ticks * 0.7)
        self.nodes = {node_id: SimNode(node_id, self.ids) for node_id in self.ids}
        self.checker = Checker()
        self.inflight: dict[int, list[Message]] = defaultdict(list)
        self.cut: set[tuple[str, str]] = set()
        self.proposals: list[Proposal] = []
        self.now = 0
        for node in self.nodes.values():
            node.start(self.rng)

    # -- the host's side of the ordering contract --------------------------------------

    def _drain(self, node: SimNode) -> None:
        raw = node.raw
        while raw is not None and raw.has_ready():
            ready = raw.ready()
            self._persist(node, ready)
            if node.pending_crash == "after_persist":
                self._crash(node)
                return
            for message in ready.messages:
                self._send(message)
            if node.pending_crash == "after_send" and ready.messages:
                self._crash(node)
                return
            for entry in ready.committed_entries:
                self._apply(node, entry)
            raw.advance(ready)

    def _persist(self, node: SimNode, ready: Ready) -> None:
        storage = node.storage
        old_commit = storage.hard_state.commit
        if ready.entries:
            storage.append(ready.entries)
            first = ready.entries[0].index
            del node.chain[first:]
            previous = node.chain[-1]
            for entry in ready.entries:
                previous = chain_hash(previous, entry)
                node.chain.append(previous)
            self.checker.persisted(node.id, node.chain, ready.entries)
        if ready.hard_state is not None:
            storage.set_hard_state(ready.hard_state)
            if ready.hard_state.commit > old_commit:
                self.checker.commit_advanced(
                    node.id, node.chain, old_commit, ready.hard_state.commit
                )

    def _apply(self, node: SimNode, entry: Entry) -> None:
        if entry.index != node.applied_index + 1:
            raise InvariantViolation(
                CORE_ERROR,
                f"{node.id} was handed entry {entry.index} after applying {node.applied_index}",
            )
        node.applied_index = entry.index
        self.checker.applied_entry(node.id, entry)
        if entry.data:
            node.state_machine.append(entry.data)

    # -- the network -----------------------------------------------------------------

    def _send(self, message: Message) -> None:
        faults = self.faults if self.now < self.heal_at else None
        self.stats.messages += 1
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
        for message in due:
            node = self.nodes[message.to]
            if node.raw is None or (message.sender, message.to) in self.cut:
                continue
            self._guard(node, partial(RawNode.step, message=message))
            if node.pending_crash == "before_persist":
                self._crash(node)
                continue
            self._drain(node)

    # -- faults ------------------------------------------------------------------------

    def _crash(self, node: SimNode) -> None:
        node.crash()
        self.stats.crashes += 1

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
                mode = rng.choice(("now", "before_persist", "after_persist", "after_send"))
                if mode == "now":
                    self._crash(node)
                else:
                    node.pending_crash = mode
        for node in self.nodes.values():
            if node.raw is None and rng.random() < faults.restart_rate:
                node.start(rng)

    def _partition(self) -> None:
        rng = self.rng
        ids = list(self.ids)
        kind = rng.choice(("split", "isolate_leader", "one_way"))
        self.cut.clear()
        if kind == "one_way":
            for _ in range(rng.randint(1, len(ids))):
                a, b = rng.sample(ids, 2)
                self.cut.add((a, b))
            return
        if kind == "isolate_leader":
            leaders = [n for n in self.nodes.values() if self._is_leader(n)]
            alone = [leaders[0].id] if leaders else [rng.choice(ids)]
        else:
            rng.shuffle(ids)
            alone = ids[: rng.randint(1, len(ids) // 2)]
        rest = [i for i in ids if i not in alone]
        for a in alone:
            for b in rest:
                self.cut.add((a, b))
                self.cut.add((b, a))

    def _heal(self) -> None:
        self.cut.clear()
        for node in self.nodes.values():
            node.pending_crash = None
            if node.raw is None:
                node.start(self.rng)

    # -- clients -----------------------------------------------------------------------

    @staticmethod
    def _is_leader(node: SimNode) -> bool:
        return node.raw is not None and node.raw.raft.state is StateType.LEADER

    def _propose(self) -> None:
        leaders = [n for n in self.nodes.values() if self._is_leader(n)]
        if not leaders:
            return
        node = self.rng.choice(leaders)
        assert node.raw is not None
        data = f"{self.seed}:{self.stats.proposals}".encode()
        try:
            index = node.raw.propose(data)
        except NotLeaderError:
            return
        self.stats.proposals += 1
        self.proposals.append(Proposal(self.now, node.id, node.raw.raft.term, index, data))
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
            self.checker.became_leader(raw.raft, node.chain)
        node.was_leader = leader

    def run(self) -> Stats:
        """Run the schedule; raise ``InvariantViolation`` on the first broken property."""
        try:
            for tick in range(self.ticks):
                self.now = tick
                if self.now < self.heal_at:
                    self._inject_faults()
                elif self.now == self.heal_at:
                    self._heal()
                for node in self.nodes.values():
                    if node.raw is not None:
                        self._guard(node, lambda raw: raw.tick())
                        self._drain(node)
                if (
                    self.now < self.ticks - QUIET_TICKS
                    and self.rng.random() < self.faults.propose_rate
                ):
                    self._propose()
                self._deliver_due()
                if self.now >= self.heal_at:
                    self._check_liveness()
        except InvariantViolation as violation:
            violation.add_note(self.replay_hint())
            raise
        self.stats.ticks = self.ticks
        self._check_converged()
        self.stats.committed = len(self.checker.committed) - 1
        return self.stats

    def replay_hint(self) -> str:
        """One line that replays this schedule."""
        return (
            f"seed {self.seed} failed at tick {self.now}; replay with: "
            f"SIM_SEED={self.seed} SIM_TICKS={self.ticks} scripts/test tests/sim -k replay"
        )

    # -- liveness ----------------------------------------------------------------------

    def _check_liveness(self) -> None:
        now = self.now
        if now - self.heal_at == LEADER_BOUND:
            leaders = {n.raw.raft.lead for n in self.nodes.values() if n.raw is not None}
            if len(leaders) != 1 or "" in leaders:
                raise InvariantViolation(
                    LIVENESS, f"{LEADER_BOUND} ticks after healing, nodes follow {leaders}"
                )
        while self.proposals and now - self.proposals[0].tick > COMMIT_BOUND:
            proposal = self.proposals.pop(0)
            if proposal.tick < self.heal_at:
                continue
            node = self.nodes[proposal.leader]
            raw = node.raw
            if raw is None or raw.raft.term != proposal.term or not self._is_leader(node):
                continue
            if raw.raft.log.committed < proposal.index:
                raise InvariantViolation(
                    LIVENESS,
                    f"proposal at index {proposal.index} to {proposal.leader} (term "
                    f"{proposal.term}, tick {proposal.tick}) not committed after "
                    f"{COMMIT_BOUND} ticks with the same leader",
                )

    def _check_converged(self) -> None:
        applied = {n.id: n.applied_index for n in self.nodes.values()}
        if len(set(applied.values())) != 1:
            raise InvariantViolation(
                LIVENESS, f"nodes did not converge after healing: applied {applied}"
            )
        machines = {tuple(n.state_machine) for n in self.nodes.values()}
        if len(machines) != 1:
            raise InvariantViolation(LIVENESS, "state machines differ after healing")
