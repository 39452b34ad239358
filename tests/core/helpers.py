"""Builders and a lock-step network shared by the core tests.

Every node here keeps its state in a ``MemoryStorage``; reading a node's ``Ready``
persists it there first, as a host would, so a node rebuilt from that storage sees
what the original had made durable. ``Network`` goes further and plays the whole host:
it also keeps a small state machine per node, restored from received snapshots.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from django_raft.core import (
    NONE,
    ConfChange,
    Config,
    ConfState,
    Entry,
    EntryType,
    HardState,
    MemoryStorage,
    Message,
    RawNode,
    ReadState,
    Ready,
    Snapshot,
    StateType,
    bootstrap,
)

Drop = Callable[[Message], bool]
"""Decides whether the network loses a message."""


def node_ids(count: int) -> tuple[str, ...]:
    """Return the ids "1" to ``count``."""
    return tuple(str(i) for i in range(1, count + 1))


def make_entries(terms: Sequence[int], first: int = 1) -> list[Entry]:
    """Return one entry per term, at consecutive indexes from ``first``."""
    return [Entry(index=first + offset, term=term) for offset, term in enumerate(terms)]


def new_storage(
    voters: Sequence[str],
    *,
    terms: Sequence[int] = (),
    term: int | None = None,
    vote: str = NONE,
    commit: int = 0,
) -> MemoryStorage:
    """Return storage holding a log with ``terms``; ``term`` defaults to the last log term."""
    storage = MemoryStorage(ConfState(voters=tuple(voters)))
    if term is None:
        term = terms[-1] if terms else 0
    storage.persist(HardState(term=term, vote=vote, commit=commit), make_entries(terms))
    return storage


def new_node(
    node_id: str,
    voters: Sequence[str],
    *,
    terms: Sequence[int] = (),
    term: int | None = None,
    vote: str = NONE,
    commit: int = 0,
    **settings: Any,
) -> RawNode:
    """Build a node over ``new_storage(...)``; ``settings`` go to ``Config``."""
    storage = new_storage(voters, terms=terms, term=term, vote=vote, commit=commit)
    return RawNode(Config(id=node_id, **settings), storage)


def new_leader(
    node_id: str, voters: Sequence[str], *, terms: Sequence[int] = (), **settings: Any
) -> RawNode:
    """Build a node that won an election in the term after its last log term.

    Its Ready is consumed, so it holds the new no-op and has nothing to send.
    """
    node = new_node(node_id, voters, terms=terms, **settings)
    node.raft.become_candidate()
    node.raft.become_leader()
    read_messages(node)
    return node


def founding_storage(voters: Sequence[str]) -> MemoryStorage:
    """Return the storage of a founding node of a cluster started with ``bootstrap``."""
    storage = MemoryStorage()
    storage.persist(*bootstrap(tuple(voters)))
    return storage


def storage_of(node: RawNode) -> MemoryStorage:
    """Return the ``MemoryStorage`` the node was built over."""
    storage = node.raft.log.storage
    assert isinstance(storage, MemoryStorage)
    return storage


def persist(node: RawNode, ready: Ready) -> None:
    """Write a Ready's snapshot, hard state and entries to the node's storage.

    The snapshot goes first: the entries that come with it follow its last index.
    """
    storage_of(node).persist(ready.hard_state, ready.entries, ready.snapshot)


def read_ready(node: RawNode) -> Ready:
    """Take the node's Ready, persist it and advance."""
    ready = node.ready()
    persist(node, ready)
    node.advance(ready)
    return ready


def read_messages(node: RawNode) -> list[Message]:
    """Take the node's Ready, persist it, advance, and return the messages to send."""
    return list(read_ready(node).messages)


def log_entries(node: RawNode) -> list[Entry]:
    """Return every readable entry of the node's log, persisted or not."""
    log = node.raft.log
    first = log.first_index()
    return log.entries(first, log.last_index() + 1 - first)


def log_terms(node: RawNode) -> list[int]:
    """Return the term of every readable entry of the node's log."""
    return [entry.term for entry in log_entries(node)]


def cluster(count: int, **settings: Any) -> dict[str, RawNode]:
    """Return ``count`` fresh nodes that all know each other as voters."""
    voters = node_ids(count)
    return {node_id: new_node(node_id, voters, **settings) for node_id in voters}


def isolate(*node_ids: str) -> Drop:
    """Return a ``Drop`` that loses every message to or from the given nodes."""
    cut = set(node_ids)
    return lambda message: message.to in cut or message.sender in cut


def deliver_all(
    nodes: Mapping[str, RawNode],
    *,
    drop: Drop | None = None,
    max_rounds: int = 1000,
    read: Callable[[RawNode], list[Message]] = read_messages,
) -> list[Message]:
    """Run Ready/persist/advance on every node and route messages until none are sent.

    Messages to nodes outside ``nodes``, or for which ``drop`` is true, are lost.
    ``read`` handles one node's Ready and returns its messages. Return the messages that
    were delivered, in delivery order.
    """
    delivered: list[Message] = []
    for _ in range(max_rounds):
        sent = [
            message for node in list(nodes.values()) if node.has_ready() for message in read(node)
        ]
        if not sent and not any(node.has_ready() for node in nodes.values()):
            return delivered
        for message in sent:
            if message.to in nodes and not (drop is not None and drop(message)):
                nodes[message.to].step(message)
                delivered.append(message)
    raise AssertionError(f"messages still flowing after {max_rounds} rounds")


def run(nodes: Mapping[str, RawNode], ticks: int, *, drop: Drop | None = None) -> None:
    """Tick every node ``ticks`` times, letting the network go quiet after each tick."""
    for _ in range(ticks):
        for node in nodes.values():
            node.tick()
        deliver_all(nodes, drop=drop)


def elect(nodes: Mapping[str, RawNode], node_id: str) -> RawNode:
    """Make ``node_id`` campaign, run the network until quiet, and return the leader."""
    leader = nodes[node_id]
    leader.campaign()
    deliver_all(nodes)
    assert leader.raft.state is StateType.LEADER
    return leader


def leaders(nodes: Mapping[str, RawNode]) -> list[str]:
    """Return the ids of the nodes that currently believe they lead."""
    return [node_id for node_id, node in nodes.items() if node.raft.state is StateType.LEADER]


def conf_change_entries(node: RawNode) -> list[ConfChange]:
    """Return the membership changes in the node's readable log, in order."""
    return [
        ConfChange.decode(entry.data)
        for entry in log_entries(node)
        if entry.type is EntryType.CONF_CHANGE
    ]


class StateMachine:
    """A replicated list of commands, applied in log order and restorable from a snapshot.

    It checks the host's side of the ordering contract as it goes: entries arrive one
    index after another, and a snapshot only ever moves it forward.
    """

    def __init__(self) -> None:
        self.index = 0
        """The last index applied (or restored from a snapshot)."""
        self.commands: list[bytes] = []

    def apply(self, entries: Iterable[Entry]) -> None:
        """Apply committed entries; no-ops and membership changes leave no command."""
        for entry in entries:
            assert entry.index == self.index + 1, (
                f"entry {entry.index} handed out after applying {self.index}"
            )
            self.index = entry.index
            if entry.type is EntryType.NORMAL and entry.data:
                self.commands.append(entry.data)

    def snapshot_data(self) -> bytes:
        """Serialise the commands for a snapshot."""
        return json.dumps([command.hex() for command in self.commands]).encode()

    def restore(self, snapshot: Snapshot) -> None:
        """Replace the state by a snapshot's."""
        assert snapshot.metadata.index > self.index, (
            f"snapshot at {snapshot.metadata.index} handed out after applying {self.index}"
        )
        self.commands = [bytes.fromhex(command) for command in json.loads(snapshot.data)]
        self.index = snapshot.metadata.index


class Network:
    """Nodes on a lock-step network, each driven by a host that follows the Ready contract.

    For each Ready the host persists the snapshot, hard state and entries into the node's
    ``MemoryStorage``, sends the messages, restores the snapshot into the node's
    ``StateMachine`` and applies the committed entries, then advances. Messages for which
    ``drop`` is true, or addressed to nodes not (or no longer) in ``nodes``, are lost.
    """

    def __init__(self) -> None:
        self.nodes: dict[str, RawNode] = {}
        self.machines: dict[str, StateMachine] = {}
        self.read_states: dict[str, list[ReadState]] = {}
        self.drop: Drop | None = None
        self.delivered: list[Message] = []
        """Every message delivered so far, in delivery order."""

    @classmethod
    def of(
        cls,
        voters: Sequence[str],
        learners: Sequence[str] = (),
        *,
        founded: bool = False,
        **settings: Any,
    ) -> Network:
        """Return a network of nodes that all start with the same membership.

        The membership is given to each node's storage, or with ``founded`` written into
        the log by ``bootstrap`` (voters only).
        """
        network = cls()
        conf_state = ConfState(voters=tuple(voters), learners=tuple(learners))
        for node_id in (*voters, *learners):
            if founded:
                assert not learners, "bootstrap founds a cluster of voters"
                storage = founding_storage(voters)
            else:
                storage = MemoryStorage(conf_state)
            network.add(node_id, storage, **settings)
        return network

    def add(self, node_id: str, storage: MemoryStorage | None = None, **settings: Any) -> RawNode:
        """Start a node over ``storage``; by default a brand-new, empty one."""
        node = RawNode(
            Config(id=node_id, **settings), MemoryStorage() if storage is None else storage
        )
        self.nodes[node_id] = node
        self.machines[node_id] = StateMachine()
        self.read_states[node_id] = []
        return node

    def restart(self, node_id: str, **settings: Any) -> RawNode:
        """Rebuild a node from its storage, with the state machine it had applied."""
        machine = self.machines[node_id]
        node = RawNode(
            Config(id=node_id, applied=machine.index, **settings), storage_of(self.nodes[node_id])
        )
        self.nodes[node_id] = node
        return node

    def handle_ready(self, node: RawNode) -> list[Message]:
        """Persist, apply and advance one Ready of ``node``; return the messages to send."""
        ready = node.ready()
        persist(node, ready)
        machine = self.machines[node.id]
        if ready.snapshot is not None:
            machine.restore(ready.snapshot)
        machine.apply(ready.committed_entries)
        self.read_states[node.id].extend(ready.read_states)
        node.advance(ready)
        return list(ready.messages)

    def deliver(self) -> list[Message]:
        """Route messages until the network is quiet; return those delivered."""
        delivered = deliver_all(self.nodes, drop=self.drop, read=self.handle_ready)
        self.delivered.extend(delivered)
        return delivered

    def tick(self, ticks: int = 1) -> None:
        """Tick every node ``ticks`` times, letting the network go quiet after each tick."""
        for _ in range(ticks):
            for node in list(self.nodes.values()):
                node.tick()
            self.deliver()

    def elect(self, node_id: str) -> RawNode:
        """Make ``node_id`` campaign, run the network until quiet, and return it as leader."""
        node = self.nodes[node_id]
        node.campaign()
        self.deliver()
        assert node.raft.state is StateType.LEADER, f"{node_id} did not win"
        return node

    def leader(self) -> RawNode:
        """Return the one node that leads in the latest term any node leads in."""
        heads = [node for node in self.nodes.values() if node.raft.state is StateType.LEADER]
        assert heads, "no leader"
        term = max(node.raft.term for node in heads)
        current = [node for node in heads if node.raft.term == term]
        assert len(current) == 1, f"two leaders in term {term}"
        return current[0]

    def tick_until_leader(self, among: Iterable[str], max_ticks: int = 200) -> RawNode:
        """Tick until one of ``among`` leads in the latest term; return it."""
        candidates = set(among)
        for _ in range(max_ticks):
            self.tick()
            heads = [
                node
                for node_id, node in self.nodes.items()
                if node_id in candidates and node.raft.state is StateType.LEADER
            ]
            if heads:
                return max(heads, key=lambda node: node.raft.term)
        raise AssertionError(f"none of {sorted(candidates)} became leader in {max_ticks} ticks")

    def propose(self, *commands: bytes) -> int:
        """Propose commands on the leader, deliver, and return the last index."""
        leader = self.leader()
        index = 0
        for command in commands:
            index = leader.propose(command)
        self.deliver()
        return index

    def change(self, change: ConfChange) -> int:
        """Propose a membership change on the leader, deliver, and return its index."""
        index = self.leader().propose_conf_change(change)
        self.deliver()
        return index

    def take_snapshot(self, node_id: str) -> Snapshot:
        """Snapshot the node's state machine, store it and compact the log, as a host does."""
        node = self.nodes[node_id]
        machine = self.machines[node_id]
        snapshot = node.create_snapshot(machine.index, machine.snapshot_data())
        storage = storage_of(node)
        storage.create_snapshot(snapshot)
        storage.compact(node.compact_index(snapshot))
        return snapshot

    def commands(self, node_id: str) -> list[bytes]:
        """Return the commands the node's state machine has applied."""
        return self.machines[node_id].commands
