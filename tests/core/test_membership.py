"""Single-server membership changes (thesis §4.1, §4.2) carried in the log."""

from __future__ import annotations

from typing import Any

import pytest

from django_raft.core import (
    NONE,
    ConfChange,
    ConfChangePendingError,
    ConfChangeType,
    Config,
    ConfState,
    DuplicatePeerError,
    MembershipError,
    MemoryStorage,
    Message,
    MessageType,
    NotLeaderError,
    RawNode,
    RemovedPeerError,
    StateType,
    UnknownPeerError,
)
from tests.core.helpers import (
    Network,
    conf_change_entries,
    isolate,
    log_entries,
    new_leader,
    node_ids,
    read_messages,
    storage_of,
)

ADD_VOTER = ConfChangeType.ADD_VOTER
ADD_LEARNER = ConfChangeType.ADD_LEARNER
REMOVE = ConfChangeType.REMOVE
ELECTION_TICK = 10


def add_voter(node_id: str) -> ConfChange:
    return ConfChange(ADD_VOTER, node_id)


def add_learner(node_id: str) -> ConfChange:
    return ConfChange(ADD_LEARNER, node_id)


def remove(node_id: str) -> ConfChange:
    return ConfChange(REMOVE, node_id)


def three_nodes(**settings: Any) -> Network:
    """Return "1", "2", "3" with "1" elected and its no-op committed everywhere."""
    network = Network.of(node_ids(3), **settings)
    network.elect("1")
    return network


def test_conf_change_takes_effect_when_appended() -> None:
    """Thesis §4.1: a server uses the newest configuration in its log whether or not it is
    committed; the leader as soon as it appends the change, a follower as soon as it
    appends the entry it received."""
    network = three_nodes()
    leader, follower = network.nodes["1"], network.nodes["2"]
    index = leader.propose_conf_change(add_voter("4"))
    assert leader.raft.log.committed < index
    assert leader.conf_state() == ConfState(voters=("1", "2", "3", "4"))
    assert leader.raft.quorum() == 3
    messages = read_messages(leader)
    assert {m.to for m in messages if m.type is MessageType.APPEND} == {"2", "3", "4"}
    for message in messages:
        if message.to == "2":
            follower.step(message)
    assert follower.raft.log.committed < index
    assert follower.conf_state() == ConfState(voters=("1", "2", "3", "4"))


def test_conf_change_entry_needs_majority_of_new_configuration() -> None:
    """Thesis §4.1: because the new configuration is in force from the moment it is
    appended, the entry that adds a fourth voter commits only with three of four."""
    network = three_nodes()
    network.drop = isolate("3")
    index = network.change(add_voter("4"))
    assert network.nodes["2"].raft.log.last_index() == index
    assert network.nodes["1"].raft.log.committed < index
    network.drop = None
    network.tick()
    assert network.nodes["1"].raft.log.committed >= index


def test_removal_takes_effect_when_appended() -> None:
    """Thesis §4.1: removing a dead voter from four lowers the quorum to two of three at
    once, so the removal itself commits with the leader and one follower."""
    network = Network.of(node_ids(4))
    network.elect("1")
    network.drop = isolate("3", "4")
    index = network.change(remove("4"))
    assert network.nodes["1"].conf_state() == ConfState(voters=("1", "2", "3"), removed=("4",))
    assert network.nodes["1"].raft.log.committed == index


def test_second_conf_change_refused_while_first_uncommitted() -> None:
    """Thesis §4.1: a leader starts no membership change until the previous one has
    committed; it refuses the second without touching its log."""
    network = three_nodes()
    leader = network.nodes["1"]
    first = leader.propose_conf_change(add_learner("4"))
    last = leader.raft.log.last_index()
    with pytest.raises(ConfChangePendingError):
        leader.propose_conf_change(add_learner("5"))
    assert leader.raft.log.last_index() == last
    assert add_learner("5") not in conf_change_entries(leader)
    network.deliver()
    assert leader.raft.log.committed >= first
    second = leader.propose_conf_change(add_learner("5"))
    assert second == first + 1
    assert leader.conf_state().learners == ("4", "5")


def test_normal_proposals_accepted_while_conf_change_uncommitted() -> None:
    """Only membership changes are limited to one in flight; commands still flow."""
    network = three_nodes()
    leader = network.nodes["1"]
    index = leader.propose_conf_change(add_learner("4"))
    assert leader.propose(b"x") == index + 1


def test_new_leader_refuses_conf_change_until_noop_commits() -> None:
    """Thesis §4.1 (the fix posted to raft-dev in 2015): a new leader may hold an
    uncommitted change from an earlier term, so it accepts none until an entry of its own
    term, its no-op, has committed."""
    leader = new_leader("1", node_ids(3), terms=[1])
    assert leader.raft.log.committed < leader.raft.log.last_index()
    last = leader.raft.log.last_index()
    with pytest.raises(ConfChangePendingError):
        leader.propose_conf_change(add_voter("4"))
    assert leader.raft.log.last_index() == last
    leader.step(Message(type=MessageType.APPEND_RESPONSE, to="1", sender="2", term=2, index=last))
    assert leader.raft.log.committed == last
    read_messages(leader)
    assert leader.propose_conf_change(add_voter("4")) == last + 1


def test_new_leader_with_uncommitted_change_from_earlier_term() -> None:
    """The case the rule exists for: a leader of term 1 appended a change that reached only
    one follower; that follower, now leader, must first commit it (through its no-op)."""
    network = three_nodes(pre_vote=False, check_quorum=False)
    index = network.nodes["1"].propose_conf_change(add_learner("4"))
    network.drop = lambda m: m.to != "2"
    network.deliver()
    assert network.nodes["1"].raft.log.committed < index
    new = network.nodes["2"]
    assert new.conf_state().learners == ("4",)
    new.campaign()
    for request in read_messages(new):
        if request.to == "3":
            network.nodes["3"].step(request)
    for answer in read_messages(network.nodes["3"]):
        new.step(answer)
    assert new.raft.state is StateType.LEADER
    with pytest.raises(ConfChangePendingError):
        new.propose_conf_change(remove("4"))
    network.drop = isolate("1")
    network.deliver()
    assert new.raft.log.committed > index
    new.propose_conf_change(remove("4"))
    assert new.conf_state() == ConfState(voters=node_ids(3), removed=("4",))


@pytest.mark.parametrize(
    ("change", "error"),
    [
        (add_voter("2"), DuplicatePeerError),
        (add_learner("4"), DuplicatePeerError),
        (add_learner("2"), DuplicatePeerError),
        (remove("9"), UnknownPeerError),
        (ConfChange(ADD_VOTER, ""), MembershipError),
    ],
)
def test_invalid_conf_change_refused(change: ConfChange, error: type[Exception]) -> None:
    """A change that does not fit the current membership is refused before it reaches the
    log: adding a member in the role it already has, removing a stranger."""
    network = Network.of(node_ids(3), learners=("4",))
    leader = network.elect("1")
    last = leader.raft.log.last_index()
    with pytest.raises(error):
        leader.propose_conf_change(change)
    assert leader.raft.log.last_index() == last
    assert leader.conf_state() == ConfState(voters=("1", "2", "3"), learners=("4",))


def test_last_voter_cannot_be_removed() -> None:
    """A cluster without voters could never elect a leader again."""
    network = Network.of(("1",), learners=("2",))
    leader = network.elect("1")
    with pytest.raises(MembershipError) as raised:
        leader.propose_conf_change(remove("1"))
    assert type(raised.value) is MembershipError
    assert leader.conf_state() == ConfState(voters=("1",), learners=("2",))
    network.change(remove("2"))
    assert leader.conf_state() == ConfState(voters=("1",), removed=("2",))


def test_follower_cannot_propose_conf_change() -> None:
    """Only the leader appends to the log; a follower names the leader it knows."""
    network = three_nodes()
    follower = network.nodes["2"]
    last = follower.raft.log.last_index()
    with pytest.raises(NotLeaderError) as raised:
        follower.propose_conf_change(add_voter("4"))
    assert raised.value.leader == "1"
    assert follower.raft.log.last_index() == last
    assert follower.conf_state() == ConfState(voters=node_ids(3))


def test_truncated_conf_change_is_undone() -> None:
    """Thesis §4.1: if a change entry is removed from the log because leadership changed,
    the server falls back to the configuration before it, on the deposed leader and on
    the follower that had appended it."""
    network = Network.of(node_ids(5))
    network.elect("1")
    network.drop = lambda m: m.to in ("3", "4", "5") or m.sender in ("3", "4", "5")
    index = network.change(add_voter("6"))
    old = ConfState(voters=node_ids(5))
    new = ConfState(voters=node_ids(6))
    assert network.nodes["1"].conf_state() == new
    assert network.nodes["2"].conf_state() == new
    assert network.nodes["2"].raft.log.last_index() == index
    assert network.nodes["1"].raft.log.committed < index

    minority = ("1", "2")
    network.drop = lambda m: (m.sender in minority) != (m.to in minority)
    leader = network.tick_until_leader(["3", "4", "5"])
    network.propose(b"x")
    network.drop = None
    network.tick(2)
    assert network.leader() is leader
    for node_id in ("1", "2"):
        node = network.nodes[node_id]
        assert node.conf_state() == old, node_id
        assert log_entries(node) == log_entries(leader)
        assert add_voter("6") not in conf_change_entries(node)
    assert network.commands("1") == network.commands("2") == [b"x"]


def test_learner_does_not_vote_or_count_toward_commit() -> None:
    """A learner (thesis §4.2.1) receives the log but is not part of any majority: its
    acknowledgement commits nothing, candidates do not ask for its vote and do not count
    it, and it never campaigns itself."""
    network = Network.of(("1", "2"), founded=True)
    leader = network.elect("1")
    network.add("3")
    network.change(add_learner("3"))
    learner = network.nodes["3"]
    assert log_entries(learner) == log_entries(leader)

    network.drop = isolate("2")
    index = network.propose(b"x")
    assert learner.raft.log.last_index() == index
    assert leader.raft.log.committed < index

    network.drop = isolate("1")
    candidate = network.nodes["2"]
    candidate.campaign()
    requests = read_messages(candidate)
    assert {(m.type, m.to) for m in requests} == {(MessageType.PRE_VOTE, "1")}
    candidate.step(
        Message(
            type=MessageType.PRE_VOTE_RESPONSE, to="2", sender="3", term=candidate.raft.term + 1
        )
    )
    assert candidate.raft.state is StateType.PRE_CANDIDATE

    for _ in range(10 * ELECTION_TICK):
        learner.tick()
    assert learner.raft.state is StateType.FOLLOWER
    assert not any(m.sender == "3" for m in read_messages(learner))


def test_add_voter_promotes_learner() -> None:
    """ADD_VOTER on a learner makes it a voter, keeping its replication progress; from
    then on its acknowledgement counts."""
    network = Network.of(("1", "2"), founded=True)
    leader = network.elect("1")
    network.add("3")
    network.change(add_learner("3"))
    match = leader.raft.progress["3"].match
    network.drop = isolate("2")
    assert network.propose(b"not yet") > leader.raft.log.committed
    index = leader.propose_conf_change(add_voter("3"))
    assert leader.raft.progress["3"].match >= match > 0
    network.deliver()
    assert leader.conf_state() == ConfState(voters=("1", "2", "3"))
    assert leader.raft.log.committed >= index
    index = network.propose(b"now")
    assert leader.raft.log.committed == index


def test_removed_follower_gets_nothing_more() -> None:
    """Once the removal is appended, the leader stops replicating to the removed server
    and ignores what it still sends."""
    network = three_nodes()
    leader = network.nodes["1"]
    network.change(remove("3"))
    assert "3" not in leader.raft.progress
    network.delivered.clear()
    network.propose(b"x")
    network.tick(3)
    assert not any(m.to == "3" for m in network.delivered)
    leader.step(
        Message(
            type=MessageType.APPEND_RESPONSE,
            to="1",
            sender="3",
            term=1,
            index=leader.raft.log.last_index(),
        )
    )
    assert "3" not in leader.raft.progress


@pytest.mark.parametrize("kind", [ConfChangeType.ADD_VOTER, ConfChangeType.ADD_LEARNER])
def test_removed_id_never_rejoins(kind: ConfChangeType) -> None:
    """A removed id cannot be added back: a message still on its way from the old node
    (an acknowledgement, a vote) would be taken for the new node's. The refusal says to
    join under a new id, which works."""
    network = Network.of(node_ids(3), founded=True)
    network.elect("1")
    network.change(remove("3"))
    leader = network.leader()
    last = leader.raft.log.last_index()
    with pytest.raises(RemovedPeerError, match="new id"):
        leader.propose_conf_change(ConfChange(kind, "3"))
    assert leader.raft.log.last_index() == last
    network.add("4")
    network.change(ConfChange(kind, "4"))
    network.tick()
    conf = network.nodes["4"].conf_state()
    assert conf == leader.conf_state()
    assert conf.removed == ("3",)
    assert "4" in (*conf.voters, *conf.learners)


def test_removed_ids_are_remembered_in_snapshots() -> None:
    """The ids removed before a snapshot are part of its membership, so a node that
    starts from the snapshot refuses them too."""
    network = three_nodes()
    network.change(remove("3"))
    network.propose(b"x")
    snapshot = network.take_snapshot("1")
    assert snapshot.metadata.conf_state.removed == ("3",)
    restarted = network.restart("1")
    assert restarted.conf_state().removed == ("3",)


@pytest.mark.parametrize("pre_vote", [False, True])
def test_removed_node_vote_requests_ignored(pre_vote: bool) -> None:
    """Thesis §4.2.3: a removed server that never learns of its removal times out and
    campaigns; the remaining servers ignore its requests (even without check-quorum's
    lease), so it cannot raise their term or depose the leader."""
    settings = {"pre_vote": pre_vote, "check_quorum": False}
    network = three_nodes(**settings)
    network.drop = isolate("3")
    network.change(remove("3"))
    assert network.nodes["3"].conf_state() == ConfState(voters=node_ids(3))
    network.tick(5 * ELECTION_TICK)
    removed = network.nodes["3"]
    assert removed.raft.state is not StateType.LEADER
    if not pre_vote:
        assert removed.raft.term > 1
    network.drop = None
    network.delivered.clear()
    network.tick(10 * ELECTION_TICK)
    assert network.leader() is network.nodes["1"]
    assert [network.nodes[i].raft.term for i in ("1", "2")] == [1, 1]
    assert not any(m.to == "3" for m in network.delivered)
    assert any(
        m.sender == "3" and m.type in (MessageType.PRE_VOTE, MessageType.REQUEST_VOTE)
        for m in network.delivered
    )


def test_leader_removing_itself_steps_down_after_commit() -> None:
    """Thesis §4.2.2: a leader that removes itself manages the cluster until the removal
    commits, without counting itself toward the new majority; then it steps down and,
    no longer a voter, never campaigns."""
    network = three_nodes()
    leader = network.nodes["1"]
    index = leader.propose_conf_change(remove("1"))
    assert leader.conf_state() == ConfState(voters=("2", "3"), removed=("1",))
    assert leader.raft.state is StateType.LEADER
    assert leader.propose(b"while leaving") == index + 1

    network.drop = isolate("3")
    network.deliver()
    assert network.nodes["2"].raft.log.last_index() == index + 1
    assert leader.raft.log.committed < index
    assert leader.raft.state is StateType.LEADER

    network.drop = None
    network.tick()
    assert leader.raft.state is StateType.FOLLOWER
    assert network.nodes["2"].raft.log.committed >= index
    network.delivered.clear()
    new = network.tick_until_leader(["2", "3"])
    network.propose(b"after")
    assert leader.raft.state is StateType.FOLLOWER
    assert not any(
        m.sender == "1" and m.type in (MessageType.PRE_VOTE, MessageType.REQUEST_VOTE)
        for m in network.delivered
    )
    assert new.conf_state() == ConfState(voters=("2", "3"), removed=("1",))
    assert network.commands("2") == network.commands("3") == [b"while leaving", b"after"]


def test_new_node_never_campaigns() -> None:
    """A brand-new server starts with no membership at all: it is not a voter in its own
    eyes, so it waits to hear from a leader instead of electing itself."""
    node = RawNode(Config(id="4"), MemoryStorage())
    assert node.conf_state() == ConfState()
    for _ in range(10 * ELECTION_TICK):
        node.tick()
    assert (node.raft.state, node.raft.term) == (StateType.FOLLOWER, 0)
    assert not node.has_ready()
    node.campaign()
    assert not node.has_ready()


def test_new_node_learns_membership_from_leader() -> None:
    """A server added with empty storage learns the whole membership from the leader,
    including the servers the cluster was founded with (``bootstrap`` writes them into
    the log); were it to see only the later changes, a server added to a one-node
    cluster would think it was alone and elect itself with no one else's vote."""
    network = Network.of(("1",), founded=True)
    leader = network.elect("1")
    network.propose(b"x")
    network.add("2")
    network.change(add_voter("2"))
    assert leader.conf_state() == ConfState(voters=("1", "2"))
    assert network.nodes["2"].conf_state() == leader.conf_state()
    assert network.commands("2") == [b"x"]
    network.drop = isolate("1")
    network.tick(5 * ELECTION_TICK)
    assert network.nodes["2"].raft.state is not StateType.LEADER


def test_membership_recovered_on_restart() -> None:
    """A restarted server rebuilds its membership from storage: the snapshot's, then every
    change in the log after it, committed or not."""
    network = three_nodes()
    network.change(add_learner("4"))
    network.drop = isolate("2")
    network.change(add_voter("4"))
    network.drop = None
    follower = network.restart("3")
    assert follower.conf_state() == ConfState(voters=("1", "2", "3", "4"))
    assert follower.raft.log.committed < follower.raft.log.last_index()
    leader = network.restart("1")
    assert leader.conf_state() == ConfState(voters=("1", "2", "3", "4"))
    assert (leader.raft.state, leader.raft.lead) == (StateType.FOLLOWER, NONE)
    assert storage_of(leader).snapshot().metadata.index == 0
    assert conf_change_entries(leader)[-2:] == [add_learner("4"), add_voter("4")]


def test_removed_node_learns_its_removal() -> None:
    """The leader keeps replicating to a removed server until the removal commits, and
    tells it the commit, so the server knows it was removed (go-raft's removed event)
    instead of waiting for a leader forever."""
    network = three_nodes()
    index = network.change(remove("3"))
    removed = network.nodes["3"]
    assert removed.raft.log.committed >= index
    assert removed.conf_state() == ConfState(voters=("1", "2"), removed=("3",))
    assert not removed.raft.promotable()
