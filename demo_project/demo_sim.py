"""A simulated django-raft cluster in one process, told as a story.

Run it with::

    python -m demo_project.demo_sim [--seed N] [--nodes 3|5] [--commands N]

Every node is a ``RawNode`` of the sans-IO core with a ``MemoryStorage`` as its durable
state and a small key/value store as its state machine. Time is logical (one tick stands
for 10 ms), the network delays each message by 1 to 3 ticks and loses a few percent of
them, and all randomness comes from the seed, so a seed always tells the same story.

The story: the nodes elect a leader, a client writes keys through it, the leader crashes
with a write in flight, the others elect a new leader and the client retries there, the
crashed node restarts from its storage and catches up. At the end the run checks the
Raft guarantees it can observe and exits with status 1 if one of them does not hold.

Only the standard library and ``django_raft.core`` are used: no Django, no threads.
"""

from __future__ import annotations

import argparse
import heapq
import json
import random
import sys
import traceback
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from django_raft.core import (
    Config,
    Entry,
    EntryType,
    MemoryStorage,
    Message,
    MessageType,
    NotLeaderError,
    RaftError,
    RawNode,
    SoftState,
    StateType,
    bootstrap,
)

TICK_MS = 10
"""Simulated milliseconds per tick."""
ELECTION_TICK = 15
"""go-raft's 150 ms election timeout (randomized by the core to 150-300 ms)."""
HEARTBEAT_TICK = 5
"""go-raft's 50 ms heartbeat interval."""
MIN_DELAY, MAX_DELAY = 1, 3
"""Range of network delays, in ticks."""
DROP_RATE = 0.02
"""Fraction of messages the network loses."""
KEYS = ("x", "y", "z", "w")
"""The keys the client writes to."""
MAX_COMMANDS = 500
"""Upper bound of ``--commands``, to keep a run short."""
SHOWN_PER_PHASE = 3
"""Acknowledged commands narrated one by one in each phase; the rest are summarized."""
ATTEMPT_TIMEOUT = 4 * ELECTION_TICK
"""Ticks the client waits for one attempt before trying again."""
COMMAND_DEADLINE = 100 * ELECTION_TICK
"""Ticks after which the client gives up on a command (the run then fails)."""
RESTART_DELAY = 40
"""Ticks a crashed node stays down, at least."""
WHOLE = 10**9
"""An entry count larger than any log here, to read a whole log at once."""


class SimulationError(Exception):
    """The simulated cluster stopped making progress."""


def ms(ticks: int) -> str:
    """Format a number of ticks as simulated milliseconds."""
    return f"{ticks * TICK_MS} ms"


def plural(count: int, word: str) -> str:
    """Return ``"1 entry"`` / ``"2 entries"`` style counts."""
    if count == 1:
        return f"{count} {word}"
    return f"{count} {word[:-1]}ies" if word.endswith("y") else f"{count} {word}s"


# -- the state machine ------------------------------------------------------------------


@dataclass(frozen=True)
class Command:
    """One client write; ``seq`` identifies it so a retried duplicate is applied once."""

    seq: int
    key: str
    value: str

    def encode(self) -> bytes:
        """Return the JSON bytes carried by the log entry."""
        body = {"op": "set", "key": self.key, "value": self.value, "id": self.seq}
        return json.dumps(body, separators=(",", ":")).encode()

    def __str__(self) -> str:
        return f"kv.set {self.key}={self.value}"


class KeyValueStore:
    """The replicated state machine: a dict, plus the ids of the commands applied.

    A client that retries after losing track of a command may get it committed twice;
    remembering command ids makes applying the second copy a no-op (thesis §6.3).
    """

    def __init__(self) -> None:
        self.data: dict[str, str] = {}
        self.applied_ids: Counter[int] = Counter()
        self.duplicates = 0

    def apply(self, payload: bytes) -> None:
        """Apply one committed command."""
        command = json.loads(payload)
        if command["op"] != "set":
            raise ValueError(f"unknown operation {command['op']!r}")
        if command["id"] in self.applied_ids:
            self.duplicates += 1
            return
        self.applied_ids[command["id"]] += 1
        self.data[command["key"]] = command["value"]


# -- nodes and network --------------------------------------------------------------------


@dataclass
class SimNode:
    """One server: durable storage that survives crashes, and what a crash wipes out."""

    id: str
    storage: MemoryStorage
    raw: RawNode | None = None
    kv: KeyValueStore = field(default_factory=KeyValueStore)
    applied: dict[int, Entry] = field(default_factory=dict)
    """Entries applied since the node last started, by index."""
    last_applied: int = 0
    incarnation: int = 0
    role: StateType = StateType.FOLLOWER
    last_heard: int = 0
    """Tick at which the node last heard from a leader (or started)."""

    def node(self) -> RawNode:
        """Return the running RawNode; the node must be up."""
        if self.raw is None:
            raise SimulationError(f"{self.id} is down")
        return self.raw

    def is_leader(self) -> bool:
        """Whether the node is up and currently leads."""
        return self.raw is not None and self.raw.raft.state is StateType.LEADER


class Network:
    """Delivers messages after a random delay, in order of delivery time; loses a few."""

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self._queue: list[tuple[int, int, Message]] = []
        self._seq = 0
        self.sent = 0
        self.dropped = 0
        self.lost_to_crashes = 0

    def send(self, message: Message, now: int) -> None:
        """Put a message on the wire."""
        self.sent += 1
        if self._rng.random() < DROP_RATE:
            self.dropped += 1
            return
        self._seq += 1
        due = now + self._rng.randint(MIN_DELAY, MAX_DELAY)
        heapq.heappush(self._queue, (due, self._seq, message))

    def pop_due(self, now: int) -> Message | None:
        """Return the next message due by ``now``, if any."""
        if self._queue and self._queue[0][0] <= now:
            return heapq.heappop(self._queue)[2]
        return None

    def purge(self, node_id: str) -> int:
        """Drop every message in flight to or from ``node_id``; return how many."""
        kept = [item for item in self._queue if node_id not in (item[2].to, item[2].sender)]
        purged = len(self._queue) - len(kept)
        heapq.heapify(kept)
        self._queue = kept
        self.lost_to_crashes += purged
        return purged


# -- the cluster ---------------------------------------------------------------------------


def founding_storage(ids: Sequence[str]) -> MemoryStorage:
    """Return a founding node's disk: the cluster's membership written into its log."""
    storage = MemoryStorage()
    storage.persist(*bootstrap(ids))
    return storage


class Cluster:
    """The nodes, the network and the clock, with the host loop that drives each node."""

    def __init__(self, ids: Sequence[str], seed: int) -> None:
        self.seed = seed
        self.ids = tuple(ids)
        self.now = 0
        self.max_ticks = 0
        self.network = Network(random.Random(f"{seed}:network"))
        self.nodes = {node_id: SimNode(node_id, founding_storage(self.ids)) for node_id in self.ids}
        self.leaders: dict[int, set[str]] = {}
        """Every node seen leading, by term."""
        self.granted: dict[tuple[str, int], set[str]] = {}
        """Votes received, by (candidate, term)."""
        self.committed: dict[int, Entry] = {}
        """The entry first applied at each index, to compare every other node against."""
        self.problems: list[str] = []
        self.catching_up: dict[str, int] = {}
        for node in self.nodes.values():
            self._boot(node)

    # -- narration and lookup --

    def say(self, text: str) -> None:
        """Print one line of the story, stamped with the simulated time."""
        print(f"[{self.now * TICK_MS:>6} ms] {text}")

    def live(self) -> list[SimNode]:
        """Return the nodes that are up."""
        return [node for node in self.nodes.values() if node.raw is not None]

    def leader(self) -> SimNode | None:
        """Return the live leader with the highest term, if any."""
        leaders = [node for node in self.live() if node.is_leader()]
        return max(leaders, key=lambda node: node.node().raft.term, default=None)

    def next_id(self, node_id: str) -> str:
        """Return the id after ``node_id``, round-robin."""
        return self.ids[(self.ids.index(node_id) + 1) % len(self.ids)]

    # -- the host loop --

    def _boot(self, node: SimNode) -> None:
        config = Config(
            id=node.id,
            election_tick=ELECTION_TICK,
            heartbeat_tick=HEARTBEAT_TICK,
            applied=0,
            rng=random.Random(f"{self.seed}:{node.id}:{node.incarnation}"),
        )
        node.raw = RawNode(config, node.storage)
        node.kv = KeyValueStore()
        node.applied = {}
        node.last_applied = 0
        node.role = StateType.FOLLOWER
        node.last_heard = self.now

    def drain(self, node: SimNode) -> None:
        """Handle every Ready of ``node``: persist, then send, then apply, then advance."""
        raw = node.node()
        while raw.has_ready():
            ready = raw.ready()
            if ready.soft_state is not None:
                self._on_role(node, ready.soft_state)
            if ready.entries:
                self._note_overwrite(node, ready.entries)
            node.storage.persist(ready.hard_state, ready.entries, ready.snapshot)
            for message in ready.messages:
                self.network.send(message, self.now)
            for entry in ready.committed_entries:
                self._apply(node, entry)
            raw.advance(ready)

    def tick(self) -> None:
        """Advance the clock one tick: tick every live node, then deliver what is due."""
        self.now += 1
        if self.now > self.max_ticks:
            raise SimulationError(f"no progress after {ms(self.max_ticks)} of simulated time")
        for node in self.live():
            node.node().tick()
            self.drain(node)
        while (message := self.network.pop_due(self.now)) is not None:
            self._deliver(message)
        self._check_catch_up()

    def idle(self, ticks: int) -> None:
        """Let the cluster run on its own for ``ticks`` ticks."""
        for _ in range(ticks):
            self.tick()

    def run_until(self, done: Callable[[], bool], ticks: int, what: str) -> None:
        """Tick until ``done()``; raise ``SimulationError`` naming ``what`` after ``ticks``."""
        deadline = self.now + ticks
        while not done():
            if self.now >= deadline:
                raise SimulationError(f"{what} within {ms(ticks)}")
            self.tick()

    def _deliver(self, message: Message) -> None:
        target = self.nodes[message.to]
        if target.raw is None or self.nodes[message.sender].raw is None:
            self.network.lost_to_crashes += 1
            return
        if message.type is MessageType.REQUEST_VOTE_RESPONSE and not message.reject:
            self.granted.setdefault((target.id, message.term), set()).add(message.sender)
        if message.type in (MessageType.APPEND, MessageType.HEARTBEAT):
            target.last_heard = self.now
        target.raw.step(message)
        self.drain(target)

    # -- observations --

    def _on_role(self, node: SimNode, soft: SoftState) -> None:
        term = node.node().raft.term
        if soft.state is node.role:
            return
        was, node.role = node.role, soft.state
        if soft.state is StateType.CANDIDATE:
            quiet = self.now - node.last_heard
            self.say(
                f"{node.id} starts an election for term {term} "
                f"(heard from no leader for {ms(quiet)})"
            )
        elif soft.state is StateType.LEADER:
            leaders = self.leaders.setdefault(term, set())
            leaders.add(node.id)
            if len(leaders) > 1:
                self.problems.append(f"two leaders in term {term}: {sorted(leaders)}")
            others = sorted(self.granted.get((node.id, term), set()) - {node.id})
            votes = ", ".join(others) + " and its own" if others else "only its own"
            self.say(f"{node.id} became leader of term {term} (votes: {votes})")
        elif was is StateType.LEADER:
            self.say(f"{node.id} is no longer leader: now {soft.state.value} in term {term}")

    def _note_overwrite(self, node: SimNode, entries: tuple[Entry, ...]) -> None:
        first, last = entries[0].index, node.storage.last_index()
        if first > last:
            return
        replaced = node.storage.entries(first, last + 1, WHOLE)
        terms = ", ".join(str(term) for term in sorted({entry.term for entry in replaced}))
        what = f"entry {first}" if first == last else f"entries {first}-{last}"
        self.say(
            f"{node.id} drops its uncommitted {what} (term {terms}), "
            f"overwritten by leader {node.node().raft.lead or '?'}'s log"
        )

    def _apply(self, node: SimNode, entry: Entry) -> None:
        if entry.index != node.last_applied + 1:
            self.problems.append(
                f"{node.id} applied index {entry.index} right after {node.last_applied}"
            )
        first = self.committed.setdefault(entry.index, entry)
        if first != entry:
            self.problems.append(
                f"{node.id} applied {entry} at index {entry.index}, another node applied {first}"
            )
        node.applied[entry.index] = entry
        node.last_applied = entry.index
        if entry.type is EntryType.NORMAL and entry.data:
            node.kv.apply(entry.data)

    def _check_catch_up(self) -> None:
        leader = self.leader()
        if leader is None:
            return
        leader_log = leader.node().raft.log
        for node_id, since in list(self.catching_up.items()):
            node = self.nodes[node_id]
            if node is leader or node.raw is None:
                continue
            last = node.storage.last_index()
            if (
                last == leader.storage.last_index()
                and node.storage.term(last) == leader.storage.term(last)
                and node.last_applied == leader_log.committed
            ):
                del self.catching_up[node_id]
                self.say(
                    f"{node_id} caught up {ms(self.now - since)} after restarting: log identical "
                    f"to leader {leader.id}'s, applied index {node.last_applied}"
                )

    # -- faults --

    def crash(self, node_id: str) -> None:
        """Crash a node: lose its RawNode and state machine, keep its storage."""
        node = self.nodes[node_id]
        role = " (the leader)" if node.is_leader() else ""
        node.raw = None
        node.kv = KeyValueStore()
        node.applied = {}
        node.last_applied = 0
        self.network.purge(node_id)
        hard = node.storage.hard_state
        self.say(
            f"CRASH {node_id}{role}: memory lost, storage kept (term {hard.term}, "
            f"{plural(node.storage.last_index(), 'entry')}, commit {hard.commit})"
        )

    def restart(self, node_id: str) -> None:
        """Restart a crashed node from its storage; it replays its committed entries."""
        node = self.nodes[node_id]
        if node.raw is not None:
            raise SimulationError(f"{node_id} is already running")
        hard = node.storage.hard_state
        node.incarnation += 1
        self._boot(node)
        self.drain(node)
        vote = f"voted {hard.vote}" if hard.vote else "no vote"
        replayed = f"entries 1-{node.last_applied}" if node.last_applied > 1 else "its log"
        self.say(
            f"RESTART {node_id} from storage (term {hard.term}, {vote}, "
            f"{plural(node.storage.last_index(), 'entry')}, commit {hard.commit}): "
            f"replays {replayed}"
        )
        self.catching_up[node_id] = self.now

    def converged(self) -> bool:
        """Whether all nodes are up and hold and have applied the leader's whole log."""
        leader = self.leader()
        if leader is None or len(self.live()) != len(self.nodes):
            return False
        log = leader.node().raft.log
        if log.committed != log.last_index():
            return False
        return all(
            node.storage.last_index() == log.last_index()
            and node.last_applied == log.committed
            and not node.node().has_ready()
            for node in self.nodes.values()
        )


# -- the client ----------------------------------------------------------------------------


@dataclass
class Ack:
    """A command the cluster acknowledged: its entry was applied on the leader."""

    command: Command
    index: int
    term: int
    leader: str
    latency: int
    failures: list[str]


class Client:
    """Submits commands one at a time to whichever node it believes leads."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.target = cluster.ids[0]
        self.acks: list[Ack] = []

    def execute(
        self, command: Command, on_appended: Callable[[SimNode, int, int], None] | None = None
    ) -> Ack:
        """Run ``command`` until a leader applies it; return the acknowledgement.

        ``on_appended(node, index, term)`` is called once, right after the first leader
        appended (and persisted) the entry.
        """
        cluster = self.cluster
        data = command.encode()
        start = cluster.now
        failures: list[str] = []
        while True:
            if cluster.now - start > COMMAND_DEADLINE:
                raise SimulationError(f"{command} not acknowledged within {ms(COMMAND_DEADLINE)}")
            node = cluster.nodes[self.target]
            if node.raw is None:
                self.target = cluster.next_id(self.target)
                cluster.tick()
                continue
            try:
                index = node.raw.propose(data)
            except NotLeaderError as error:
                self.target = error.leader or cluster.next_id(self.target)
                cluster.tick()
                continue
            term = node.raw.raft.term
            cluster.drain(node)
            if on_appended is not None:
                on_appended(node, index, term)
                on_appended = None
            failure = self._await(node, node.incarnation, index, term, data)
            if failure is None:
                ack = Ack(command, index, term, node.id, cluster.now - start, failures)
                self.acks.append(ack)
                return ack
            failures.append(failure)

    def _await(
        self, node: SimNode, incarnation: int, index: int, term: int, data: bytes
    ) -> str | None:
        """Wait for the entry at (index, term) to be applied on ``node``; None on success."""
        cluster = self.cluster
        deadline = cluster.now + ATTEMPT_TIMEOUT
        while True:
            cluster.tick()
            if node.raw is None or node.incarnation != incarnation:
                self.target = cluster.next_id(node.id)
                return f"{node.id} crashed"
            entry = node.applied.get(index)
            if entry is not None:
                if entry.term == term and entry.data == data:
                    return None
                return f"entry {index} was replaced"
            raft = node.raw.raft
            if raft.state is not StateType.LEADER or raft.term != term:
                self.target = raft.lead or cluster.next_id(node.id)
                return f"{node.id} lost leadership"
            if cluster.now >= deadline:
                return f"no answer from {node.id} in {ms(ATTEMPT_TIMEOUT)}"


# -- the story -------------------------------------------------------------------------------


class Narrator:
    """Tells acknowledged commands one by one, summarizing the tail of long phases."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self._shown = 0
        self._hidden: list[Ack] = []

    def report(self, ack: Ack) -> None:
        """Tell (or remember, to summarize) one acknowledgement."""
        if self._shown >= SHOWN_PER_PHASE:
            self._hidden.append(ack)
            return
        self._shown += 1
        outcome = f"committed at index {ack.index} (term {ack.term})"
        if ack.failures:
            reasons = "; ".join(dict.fromkeys(ack.failures))
            text = f"retried ({reasons}): {outcome} on {ack.leader}, {ms(ack.latency)}"
        else:
            text = f"{outcome}, applied by {ack.leader} in {ms(ack.latency)}"
        self.cluster.say(f"client: {ack.command} -> {text}")

    def end_phase(self) -> None:
        """Summarize the acknowledgements not told one by one."""
        hidden, self._hidden, self._shown = self._hidden, [], 0
        if not hidden:
            return
        retried = sum(1 for ack in hidden if ack.failures)
        slowest = max(ack.latency for ack in hidden)
        note = f", {retried} retried" if retried else ""
        self.cluster.say(
            f"client: ... {plural(len(hidden), 'more command')} committed and applied "
            f"(indexes {hidden[0].index}-{hidden[-1].index}, at most {ms(slowest)} each{note})"
        )


def split_phases(count: int) -> tuple[int, int, int]:
    """Split the commands between before the crash, during the outage and after restart."""
    before = -(-count // 3)
    during = -(-(count - before) // 2)
    return before, during, count - before - during


def run(seed: int, node_count: int, command_count: int) -> int:
    """Run the whole story; return the exit status."""
    ids = [f"n{number}" for number in range(1, node_count + 1)]
    cluster = Cluster(ids, seed)
    cluster.max_ticks = 2000 + 100 * command_count
    client = Client(cluster)
    narrator = Narrator(cluster)
    rng = random.Random(f"{seed}:client")
    commands = [Command(seq, rng.choice(KEYS), str(seq)) for seq in range(1, command_count + 1)]
    before, during, _after = split_phases(command_count)

    print(
        f"django-raft simulated cluster: {node_count} nodes ({', '.join(ids)}), seed {seed}, "
        f"tick = {TICK_MS} ms"
    )
    print(
        f"election timeout {ELECTION_TICK * TICK_MS}-{ms(2 * ELECTION_TICK)}, heartbeat "
        f"{ms(HEARTBEAT_TICK)}; network delay {MIN_DELAY * TICK_MS}-{ms(MAX_DELAY)}, "
        f"{DROP_RATE:.0%} of messages lost"
    )

    def submit(batch: Sequence[Command]) -> None:
        for command in batch:
            narrator.report(client.execute(command))
            cluster.idle(rng.randint(0, 3))
        narrator.end_phase()

    crashes: list[tuple[str, int]] = []  # (node, when)

    def crash(node: SimNode) -> None:
        cluster.crash(node.id)
        crashes.append((node.id, cluster.now))

    def crash_after_append(node: SimNode, index: int, term: int) -> None:
        cluster.say(
            f"client: {commands[before]} -> leader {node.id} appends it at index {index} "
            f"(term {term}) and persists it"
        )
        crash(node)

    rerun = f"--seed {seed} --nodes {node_count} --commands {command_count}"
    try:
        cluster.run_until(lambda: cluster.leader() is not None, 50 * ELECTION_TICK, "no leader")
        submit(commands[:before])
        cluster.idle(rng.randint(10, 30))
        if during:
            narrator.report(client.execute(commands[before], on_appended=crash_after_append))
            submit(commands[before + 1 : before + during])
        elif (leader := cluster.leader()) is not None:
            crash(leader)
        else:
            raise SimulationError("no leader to crash")
        victim, crashed_at = crashes[0]
        cluster.idle(max(0, crashed_at + RESTART_DELAY - cluster.now))
        cluster.restart(victim)
        submit(commands[before + during :])
        cluster.run_until(cluster.converged, 100 * ELECTION_TICK, "the cluster did not converge")
        if victim in cluster.catching_up:
            raise SimulationError(f"{victim} never caught up")
    except SimulationError as error:
        print(f"FAILED at {ms(cluster.now)} ({rerun}): {error}", file=sys.stderr)
        return 1
    except (RaftError, AssertionError) as error:
        traceback.print_exc()
        print(f"FAILED at {ms(cluster.now)} ({rerun}): the core raised {error!r}", file=sys.stderr)
        return 1
    return check(cluster, client, rerun)


def check(cluster: Cluster, client: Client, rerun: str) -> int:
    """Check what the run observed; print the results and return the exit status."""
    nodes = list(cluster.nodes.values())
    first = nodes[0]
    results: list[tuple[bool, str]] = []

    doubles = [term for term, ids in cluster.leaders.items() if len(ids) > 1]
    terms = ", ".join(
        f"term {term}: {' '.join(sorted(ids))}" for term, ids in sorted(cluster.leaders.items())
    )
    results.append((not doubles, f"one leader per term ({terms})"))

    log = first.storage.entries(1, first.storage.last_index() + 1, WHOLE)
    same_logs = all(
        node.storage.entries(1, node.storage.last_index() + 1, WHOLE) == log for node in nodes
    )
    results.append(
        (same_logs, f"logs identical on all {len(nodes)} nodes ({plural(len(log), 'entry')})")
    )

    same_state = all(node.kv.data == first.kv.data for node in nodes)
    problems = "; ".join(cluster.problems)
    results.append(
        (
            same_state and not problems,
            "state machines identical, every node applied the same entry at every index, "
            f"in order{': ' + problems if problems else ''}",
        )
    )

    expected: dict[str, str] = {}
    for ack in client.acks:
        expected[ack.command.key] = ack.command.value
    in_logs = all(
        ack.index <= len(log)
        and log[ack.index - 1].term == ack.term
        and log[ack.index - 1].data == ack.command.encode()
        for ack in client.acks
    )
    once = all(node.kv.applied_ids[ack.command.seq] == 1 for node in nodes for ack in client.acks)
    duplicates = sum(node.kv.duplicates for node in nodes)
    results.append(
        (
            in_logs and once and first.kv.data == expected,
            f"all {len(client.acks)} acknowledged commands in the log at their index and "
            "applied exactly once everywhere"
            + (f" ({duplicates} committed duplicates ignored)" if duplicates else ""),
        )
    )

    where = "identical on every node" if same_state else f"on {first.id}"
    print(f"Final state ({where}): {first.kv.data}")
    failed = 0
    for ok, text in results:
        print(f"{'Checked' if ok else 'CHECK FAILED'}: {text}")
        failed += not ok
    network = cluster.network
    print(
        f"Simulated {ms(cluster.now)}: {network.sent} messages sent, {network.dropped} lost "
        f"by the network, {network.lost_to_crashes} lost to the crash"
    )
    if failed:
        print(f"FAILED ({rerun}): {plural(failed, 'check')} did not hold", file=sys.stderr)
        return 1
    return 0


# -- command line ------------------------------------------------------------------------------


def _command_count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
    if not 1 <= value <= MAX_COMMANDS:
        raise argparse.ArgumentTypeError(f"must be between 1 and {MAX_COMMANDS}, not {value}")
    return value


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse the command line; argparse exits with status 2 on a bad value."""
    parser = argparse.ArgumentParser(
        prog="python -m demo_project.demo_sim",
        description="Run a simulated django-raft cluster in one process and tell what happens.",
    )
    parser.add_argument("--seed", type=int, default=1, help="seed of the run (default: 1)")
    parser.add_argument(
        "--nodes", type=int, choices=(3, 5), default=3, help="cluster size (default: 3)"
    )
    parser.add_argument(
        "--commands",
        type=_command_count,
        default=9,
        metavar="N",
        help=f"client writes to make, 1 to {MAX_COMMANDS} (default: 9)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; return the process exit status."""
    args = parse_args(argv)
    return run(args.seed, args.nodes, args.commands)


if __name__ == "__main__":
    sys.exit(main())
