"""Builders and a lock-step network shared by the core tests.

Every node here keeps its state in a ``MemoryStorage``; reading a node's ``Ready``
persists it there first, as a host would, so a node rebuilt from that storage sees
what the original had made durable.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from django_raft.core import (
    NONE,
    Config,
    ConfState,
    Entry,
    HardState,
    MemoryStorage,
    Message,
    RawNode,
    Ready,
    StateType,
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
    storage.append(make_entries(terms))
    if term is None:
        term = terms[-1] if terms else 0
    storage.set_hard_state(HardState(term=term, vote=vote, commit=commit))
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


def storage_of(node: RawNode) -> MemoryStorage:
    """Return the ``MemoryStorage`` the node was built over."""
    storage = node.raft.log.storage
    assert isinstance(storage, MemoryStorage)
    return storage


def persist(node: RawNode, ready: Ready) -> None:
    """Write a Ready's hard state and entries to the node's storage."""
    storage = storage_of(node)
    if ready.hard_state is not None:
        storage.set_hard_state(ready.hard_state)
    storage.append(ready.entries)


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
    nodes: Mapping[str, RawNode], *, drop: Drop | None = None, max_rounds: int = 1000
) -> list[Message]:
    """Run Ready/persist/advance on every node and route messages until none are sent.

    Messages to nodes outside ``nodes``, or for which ``drop`` is true, are lost.
    Return the messages that were delivered, in delivery order.
    """
    delivered: list[Message] = []
    for _ in range(max_rounds):
        sent = [
            message
            for node in nodes.values()
            if node.has_ready()
            for message in read_messages(node)
        ]
        if not sent:
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
