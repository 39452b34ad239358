"""No message a peer sends makes ``step()`` raise: what does not fit is dropped and counted.

A byzantine peer is outside Raft's fault model; these are the messages a bug, corruption
or version skew produces: values out of range, indexes past what we hold, membership the
receiver does not know.
"""

from __future__ import annotations

import random
from dataclasses import replace

import pytest

from django_raft.core import (
    ConfState,
    Entry,
    EntryType,
    Message,
    MessageType,
    RawNode,
    SnapshotMetadata,
    StateType,
)
from tests.core.helpers import (
    Network,
    new_leader,
    new_node,
    node_ids,
    read_messages,
    read_ready,
)


def test_heartbeat_commit_past_the_log_is_clamped() -> None:
    """A heartbeat cannot commit past our last entry (it crashed the node, and again at
    every restart)."""
    node = new_node("2", node_ids(3), terms=[1, 1], term=1)
    node.step(Message(type=MessageType.HEARTBEAT, to="2", sender="1", term=1, commit=7))
    assert node.raft.log.committed == 2
    assert node.dropped == {"commit_past_log": 1}
    assert [m.type for m in read_messages(node)] == [MessageType.HEARTBEAT_RESPONSE]


def test_acknowledgement_of_entries_the_leader_never_had_is_dropped() -> None:
    """A match index past the leader's log (a forged or misrouted answer) is dropped; it
    neither moves the follower's progress nor makes the leader send from there."""
    leader = new_leader("1", node_ids(3), terms=[1])
    last = leader.raft.log.last_index()
    leader.step(Message(type=MessageType.APPEND_RESPONSE, to="1", sender="2", term=2, index=10**9))
    assert leader.raft.progress["2"].match == 0
    assert leader.dropped == {"match_past_log": 1}
    leader.step(Message(type=MessageType.APPEND_RESPONSE, to="1", sender="2", term=2, index=last))
    assert leader.raft.progress["2"].match == last


def test_transfer_vote_from_a_non_member_is_ignored() -> None:
    """A vote request marked as a leadership transfer lifts the leader's lease; only a
    voter may send one."""
    leader = new_leader("1", node_ids(3), terms=[1])
    leader.step(
        Message(
            type=MessageType.REQUEST_VOTE,
            to="1",
            sender="9",
            term=5,
            index=10,
            log_term=5,
            transfer=True,
        )
    )
    assert (leader.raft.state, leader.raft.term) == (StateType.LEADER, 2)
    assert leader.dropped == {"transfer_from_non_member": 1}


def test_timeout_now_from_a_non_member_is_ignored() -> None:
    node = new_node("2", node_ids(3), term=1)
    node.step(Message(type=MessageType.TIMEOUT_NOW, to="2", sender="9", term=1))
    assert node.raft.state is StateType.FOLLOWER
    assert node.dropped == {"timeout_now_not_from_leader": 1}


def conf_entry(index: int, data: bytes) -> Entry:
    return Entry(index=index, term=1, type=EntryType.CONF_CHANGE, data=data)


MALFORMED = {
    "local_type": Message(type=MessageType.PROPOSE, to="2", sender="1", term=1),
    "wrong_recipient": Message(type=MessageType.HEARTBEAT, to="3", sender="1", term=1),
    "bad_sender": Message(type=MessageType.HEARTBEAT, to="2", sender="2", term=1),
    "out_of_range": Message(type=MessageType.HEARTBEAT, to="2", sender="1", term=-1),
    "bad_entries": Message(
        type=MessageType.APPEND, to="2", sender="1", term=1, entries=(Entry(index=5, term=1),)
    ),
    "entry_above_term": Message(
        type=MessageType.APPEND, to="2", sender="1", term=1, entries=(Entry(index=1, term=4),)
    ),
    "bad_conf_change": Message(
        type=MessageType.APPEND, to="2", sender="1", term=1, entries=(conf_entry(1, b"junk"),)
    ),
    "snapshot_without_voters": Message(
        type=MessageType.SNAPSHOT,
        to="2",
        sender="1",
        term=1,
        snapshot=SnapshotMetadata(5, 1, ConfState()),
        done=True,
    ),
    "snapshot_from_the_future": Message(
        type=MessageType.SNAPSHOT,
        to="2",
        sender="1",
        term=1,
        snapshot=SnapshotMetadata(5, 3, ConfState(voters=node_ids(3))),
        done=True,
    ),
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_message_is_dropped_and_changes_nothing(name: str) -> None:
    node = new_node("2", node_ids(3), terms=[1], term=1)
    before = (node.raft.term, node.raft.log.last_index(), node.raft.log.committed)
    node.step(MALFORMED[name])
    assert sum(node.dropped.values()) == 1
    assert (node.raft.term, node.raft.log.last_index(), node.raft.log.committed) == before
    assert not node.has_ready()


def random_message(rng: random.Random, nodes: dict[str, RawNode], to: str) -> Message:
    """A message of any kind, with every field drawn from values near and far off."""

    def number() -> int:
        return rng.choice((0, 1, 2, 3, 5, 8, 40, -1, 2**63 - 1))

    entries: tuple[Entry, ...] = ()
    if rng.random() < 0.5:
        first = number()
        entries = tuple(
            Entry(
                index=first + offset,
                term=number(),
                type=rng.choice(tuple(EntryType)),
                data=rng.choice((b"", b"x", b'{"type":"remove","node_id":"1","context":""}')),
            )
            for offset in range(rng.randint(1, 3))
        )
    snapshot = None
    if rng.random() < 0.3:
        voters = rng.choice(((), ("1",), node_ids(3), ("9",)))
        snapshot = SnapshotMetadata(number(), number(), ConfState(voters=voters))
    return Message(
        type=rng.choice(tuple(MessageType)),
        to=rng.choice((to, to, "", "9")),
        sender=rng.choice((*nodes, "9", "")),
        term=number(),
        log_term=number(),
        index=number(),
        entries=entries,
        commit=number(),
        reject=rng.random() < 0.3,
        reject_hint=number(),
        snapshot=snapshot,
        offset=number(),
        data=rng.choice((b"", b"x" * 10)),
        done=rng.random() < 0.5,
        context=rng.choice((b"", b"ctx")),
        transfer=rng.random() < 0.2,
    )


@pytest.mark.parametrize("seed", range(8))
def test_random_messages_never_make_step_raise(seed: int) -> None:
    """Thousands of random messages into a working cluster, in every role: no exception,
    and the log's own invariants hold after each (commit within the log, applied within
    commit)."""
    rng = random.Random(seed)
    network = Network.of(node_ids(3))
    network.elect("1")
    network.propose(b"a", b"b")
    nodes = network.nodes
    for step in range(600):
        to = rng.choice(tuple(nodes))
        message = random_message(rng, nodes, to)
        if rng.random() < 0.5:
            # Keep some messages close to what a correct peer sends.
            message = replace(message, term=nodes[to].raft.term, sender=rng.choice(("1", "2")))
        nodes[to].step(message)
        log = nodes[to].raft.log
        assert log.applied <= log.committed <= log.last_index()
        network.handle_ready(nodes[to])
        if step % 50 == 0:
            network.tick()
    for node in nodes.values():
        read_ready(node)
