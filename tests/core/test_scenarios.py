"""Scripted scenarios on a lock-step network: membership, snapshots, transfer, reads."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from django_raft.core import (
    ConfChange,
    ConfChangeType,
    Config,
    ConfState,
    Message,
    MessageType,
    ProposalDroppedError,
    RawNode,
    StateType,
    StoppedError,
)
from tests.core.helpers import Network, isolate, log_entries, node_ids, storage_of

ELECTION_TICK = 10


def add_voter(node_id: str) -> ConfChange:
    return ConfChange(ConfChangeType.ADD_VOTER, node_id)


def remove(node_id: str) -> ConfChange:
    return ConfChange(ConfChangeType.REMOVE, node_id)


def assert_same_state(network: Network, node_ids: list[str] | tuple[str, ...]) -> None:
    """Every listed node applied the same commands and holds the same membership."""
    first = node_ids[0]
    for node_id in node_ids:
        assert network.commands(node_id) == network.commands(first), node_id
        assert network.nodes[node_id].conf_state() == network.nodes[first].conf_state(), node_id


def test_bootstrap_and_grow() -> None:
    """Found a one-node cluster with ``bootstrap``, elect it, and add four more one at a
    time, each starting from empty storage: every command reaches every node, every node
    ends up with the same membership, and the grown cluster elects a new leader when the
    first one is lost."""
    network = Network.of(("n1",), founded=True)
    leader = network.elect("n1")
    network.propose(b"c0")
    members = ["n1"]
    for count, node_id in enumerate(("n2", "n3", "n4", "n5"), start=1):
        network.add(node_id)
        index = network.change(add_voter(node_id))
        members.append(node_id)
        assert leader.raft.log.committed >= index
        assert leader.conf_state() == ConfState(voters=tuple(members))
        network.propose(b"c%d" % count)
        network.tick()
        assert_same_state(network, members)
    assert network.commands("n5") == [b"c0", b"c1", b"c2", b"c3", b"c4"]

    network.drop = isolate("n1")
    new = network.tick_until_leader(["n2", "n3", "n4", "n5"])
    network.propose(b"c5")
    network.tick()
    assert new.conf_state() == ConfState(voters=("n1", "n2", "n3", "n4", "n5"))
    for node_id in ("n2", "n3", "n4", "n5"):
        assert network.commands(node_id)[-1] == b"c5"


def test_shrink_to_one_node() -> None:
    """Remove four of five voters one at a time; the last one commits on its own, and the
    removed nodes, still running, never take over."""
    network = Network.of(node_ids(5))
    leader = network.elect("1")
    network.propose(b"start")
    for node_id in ("5", "4", "3", "2"):
        index = network.change(remove(node_id))
        assert leader.raft.log.committed >= index
        network.propose(b"without " + node_id.encode())
        network.tick()
    assert leader.conf_state() == ConfState(voters=("1",), removed=("2", "3", "4", "5"))
    assert leader.raft.quorum() == 1
    index = leader.propose(b"alone")
    network.drop = isolate("2", "3", "4", "5")
    network.deliver()
    assert leader.raft.log.committed == index
    network.drop = None
    network.tick(10 * ELECTION_TICK)
    assert network.leader() is leader
    assert leader.raft.term == 1
    assert network.commands("1") == [
        b"start",
        b"without 5",
        b"without 4",
        b"without 3",
        b"without 2",
        b"alone",
    ]


def test_remove_the_leader() -> None:
    """The leader removes itself: it steps down once the removal commits, the others elect
    a leader among themselves and carry on, and the old leader stays out."""
    network = Network.of(node_ids(5))
    old = network.elect("1")
    network.propose(b"a")
    network.change(remove("1"))
    network.tick()
    assert old.raft.state is StateType.FOLLOWER
    new = network.tick_until_leader(["2", "3", "4", "5"])
    network.propose(b"b")
    network.tick(3 * ELECTION_TICK)
    assert network.leader() is new
    assert new.conf_state() == ConfState(voters=("2", "3", "4", "5"), removed=("1",))
    assert_same_state(network, ("2", "3", "4", "5"))
    assert network.commands("2") == [b"a", b"b"]
    assert old.raft.state is StateType.FOLLOWER
    assert old.raft.term == 1


def test_snapshot_to_far_behind_follower() -> None:
    """A follower cut off while thousands of entries were written and compacted away is
    sent the snapshot in many small chunks, once, then the entries after it; its state
    ends up equal to the leader's."""
    network = Network.of(
        node_ids(3), max_snapshot_chunk=512, entries_after_snapshot=50, snapshot_threshold=400
    )
    leader = network.elect("1")
    network.drop = isolate("3")
    for batch in range(25):
        network.propose(*(b"%d.%d" % (batch, n) for n in range(120)))
        for node_id in ("1", "2"):
            if network.nodes[node_id].snapshot_due():
                network.take_snapshot(node_id)
    snapshot = storage_of(leader).snapshot()
    assert snapshot.metadata.index > 2500
    assert leader.raft.log.first_index() > 2000
    assert len(snapshot.data) > 20 * 512
    network.drop = None
    network.delivered.clear()
    network.propose(b"last")
    network.tick(2)
    lagging = network.nodes["3"]
    installs = [m for m in network.delivered if m.type is MessageType.SNAPSHOT and m.done]
    assert len(installs) == 1
    assert storage_of(lagging).snapshot().metadata == installs[0].snapshot
    assert all(len(m.data) <= 512 for m in network.delivered if m.type is MessageType.SNAPSHOT)
    assert len(network.commands("3")) == 25 * 120 + 1
    assert_same_state(network, ("1", "2", "3"))
    tail = log_entries(lagging)
    assert tail == log_entries(leader)[-len(tail) :]
    assert network.machines["3"].index == leader.raft.log.applied


def test_transfer_under_partition() -> None:
    """A transfer to a cut-off node cannot finish: it times out and the cluster keeps
    working without it; after the partition heals the node is caught up and the transfer
    succeeds."""
    network = Network.of(node_ids(3))
    leader = network.elect("1")
    network.propose(b"a")
    network.drop = isolate("2")
    leader.transfer_leadership("2")
    with pytest.raises(ProposalDroppedError):
        leader.propose(b"refused")
    network.tick(ELECTION_TICK)
    network.propose(b"b")
    assert network.leader() is leader
    assert network.commands("3") == [b"a", b"b"]
    assert network.commands("2") == [b"a"]

    network.drop = None
    network.tick()
    leader.transfer_leadership("2")
    network.deliver()
    target = network.nodes["2"]
    assert network.leader() is target
    assert target.raft.term == 2
    network.propose(b"c")
    network.tick()
    assert_same_state(network, ("1", "2", "3"))
    assert network.commands("1") == [b"a", b"b", b"c"]


def test_stopped_node_refuses_input_and_restarts_from_storage() -> None:
    """After ``stop()`` a node takes no input at all; what it persisted stays valid, so a
    node rebuilt from its storage rejoins and catches up."""
    network = Network.of(node_ids(3))
    network.elect("1")
    network.propose(b"a")
    node = network.nodes.pop("3")
    term, vote = node.raft.term, node.raft.vote
    node.stop()
    calls: list[Callable[[], object]] = [
        node.tick,
        node.campaign,
        lambda: node.step(Message(type=MessageType.HEARTBEAT, to="3", sender="1", term=1)),
        lambda: node.propose(b"x"),
        lambda: node.propose_conf_change(remove("2")),
        lambda: node.transfer_leadership("2"),
        lambda: node.read_index(b"ctx"),
        lambda: node.create_snapshot(1, b""),
    ]
    for call in calls:
        with pytest.raises(StoppedError):
            call()
    network.propose(b"b")
    restarted = RawNode(Config(id="3", applied=network.machines["3"].index), storage_of(node))
    assert (restarted.raft.term, restarted.raft.vote) == (term, vote)
    network.nodes["3"] = restarted
    network.tick(2)
    assert network.commands("3") == [b"a", b"b"]


# -- a read around a leader change ------------------------------------------------------
#
# Linearizability of ReadIndex: a read issued on the old leader around a leader change
# is either never answered, or answered with an index at least that of every write
# acknowledged before the read started.


class ReadCheck:
    """Record the writes acknowledged before a read started, and check its answer."""

    def __init__(self, network: Network, reader: str, context: bytes) -> None:
        self.network = network
        self.reader = reader
        self.context = context
        self.bound = max(node.raft.log.committed for node in network.nodes.values())
        network.nodes[reader].read_index(context)

    def answers(self) -> list[int]:
        return [
            state.index
            for state in self.network.read_states[self.reader]
            if state.context == self.context
        ]

    def check(self) -> None:
        assert all(index >= self.bound for index in self.answers()), (
            f"read answered with {self.answers()} after writes up to {self.bound} were acknowledged"
        )


def read_on_deposed_leader() -> tuple[Network, ReadCheck]:
    """The old leader, cut off, does not know it was replaced and a write was acknowledged
    by the new one; then a read arrives on it."""
    network = Network.of(node_ids(3), check_quorum=False)
    old = network.elect("1")
    network.propose(b"a")
    network.drop = isolate("1")
    network.tick_until_leader(["2", "3"])
    network.propose(b"b")
    assert old.raft.state is StateType.LEADER
    return network, ReadCheck(network, "1", b"ctx")


def read_in_flight_during_election() -> tuple[Network, ReadCheck]:
    """The read's heartbeats are delayed while the old leader is cut off and replaced; a
    write is acknowledged by the new leader; then the old heartbeats arrive."""
    network = Network.of(node_ids(3), check_quorum=False)
    network.elect("1")
    network.propose(b"a")
    held: list[Message] = []

    def hold_read(message: Message) -> bool:
        if message.context == b"ctx":
            held.append(message)
            return True
        return message.sender == "1" or message.to == "1"

    network.drop = hold_read
    check = ReadCheck(network, "1", b"ctx")
    network.deliver()
    network.tick_until_leader(["2", "3"])
    network.propose(b"b")
    network.drop = None
    for message in held:
        network.nodes[message.to].step(message)
    return network, check


def read_forwarded_during_transfer() -> tuple[Network, ReadCheck]:
    """A follower's read reaches the leader while it hands leadership to another node
    that then acknowledges a write."""
    network = Network.of(node_ids(3))
    network.elect("1")
    network.propose(b"a")
    network.nodes["1"].transfer_leadership("2")
    check = ReadCheck(network, "3", b"ctx")
    network.deliver()
    network.propose(b"b")
    return network, check


def read_on_leader_removing_itself() -> tuple[Network, ReadCheck]:
    """Of two voters, the leader removes itself; the other appends the removal (its
    answer is lost), is cut off, elects itself as the only voter left and acknowledges a
    write; then a read arrives on the old leader, which still leads its own term."""
    network = Network.of(("1", "2"), check_quorum=False)
    old = network.elect("1")
    network.propose(b"a")
    network.drop = lambda m: m.sender == "2"
    old.propose_conf_change(remove("1"))
    network.deliver()
    network.drop = isolate("1")
    network.tick_until_leader(["2"])
    network.propose(b"b")
    assert old.raft.state is StateType.LEADER
    return network, ReadCheck(network, "1", b"ctx")


@pytest.mark.parametrize(
    "schedule",
    [
        read_on_deposed_leader,
        read_in_flight_during_election,
        read_forwarded_during_transfer,
        read_on_leader_removing_itself,
    ],
)
def test_read_during_leader_change(schedule: Callable[[], tuple[Network, ReadCheck]]) -> None:
    """Thesis §6.4: whatever the interleaving, a read answered at all is answered with an
    index that covers every write acknowledged before it started."""
    network, check = schedule()
    network.deliver()
    check.check()
    network.tick(ELECTION_TICK)
    check.check()
    network.drop = None
    network.tick(3 * ELECTION_TICK)
    check.check()
