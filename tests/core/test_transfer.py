"""Leadership transfer (thesis §3.10): catch the transferee up, then TimeoutNow."""

from __future__ import annotations

import pytest

from django_raft.core import (
    ConfChange,
    ConfChangeType,
    MembershipError,
    Message,
    MessageType,
    NotLeaderError,
    ProposalDroppedError,
    StateType,
    UnknownPeerError,
)
from tests.core.helpers import (
    Network,
    isolate,
    log_entries,
    new_node,
    node_ids,
    read_messages,
)

ELECTION_TICK = 10


def three_nodes() -> Network:
    network = Network.of(node_ids(3))
    network.elect("1")
    network.propose(b"a")
    return network


def test_transfer_to_caught_up_follower() -> None:
    """Thesis §3.10: when the target's log is already the leader's, the leader sends
    TimeoutNow at once; the target campaigns immediately, without pre-vote and with the
    transfer flag, and wins the next term."""
    network = three_nodes()
    leader = network.nodes["1"]
    leader.transfer_leadership("2")
    assert [(m.type, m.to) for m in leader.raft.messages] == [(MessageType.TIMEOUT_NOW, "2")]
    network.delivered.clear()
    network.deliver()
    campaign = next(m for m in network.delivered if m.sender == "2" and m.to == "3")
    assert (campaign.type, campaign.term, campaign.transfer) == (
        MessageType.REQUEST_VOTE,
        2,
        True,
    )
    assert not any(m.type is MessageType.PRE_VOTE for m in network.delivered)
    assert network.leader() is network.nodes["2"]
    assert (leader.raft.state, leader.raft.term, leader.raft.lead) == (StateType.FOLLOWER, 2, "2")
    network.propose(b"b")
    assert network.commands("1") == network.commands("3") == [b"a", b"b"]


def test_transfer_catches_up_first() -> None:
    """Thesis §3.10: a target whose log is behind is first sent the missing entries;
    TimeoutNow goes out only once its match index reaches the leader's last index."""
    network = three_nodes()
    leader, target = network.nodes["1"], network.nodes["2"]
    network.drop = isolate("2")
    last = network.propose(b"b", b"c", b"d")
    network.drop = None
    assert target.raft.log.last_index() < last
    seen: list[tuple[int, int]] = []

    def observe(message: Message) -> bool:
        if message.type is MessageType.TIMEOUT_NOW:
            seen.append((target.raft.log.last_index(), leader.raft.progress["2"].match))
        return False

    network.drop = observe
    leader.transfer_leadership("2")
    first = [m for m in leader.raft.messages if m.to == "2"]
    assert [m.type for m in first] == [MessageType.APPEND]
    network.deliver()
    assert seen == [(last, last)]
    assert network.leader() is target
    assert log_entries(target)[:last] == log_entries(leader)[:last]
    assert network.commands("2") == [b"a", b"b", b"c", b"d"]


def test_transfer_vote_request_bypasses_lease() -> None:
    """Thesis §4.2.3: a vote request sent because of a transfer is not a disruption, so a
    voter that heard from the leader recently still answers it (without the flag, check
    quorum's lease makes it ignore the request)."""
    voter = new_node("3", node_ids(3), term=1)
    voter.step(Message(type=MessageType.HEARTBEAT, to="3", sender="1", term=1))
    read_messages(voter)
    request = Message(type=MessageType.REQUEST_VOTE, to="3", sender="2", term=2)
    voter.step(request)
    assert read_messages(voter) == []
    assert voter.raft.term == 1
    voter.step(Message(type=MessageType.REQUEST_VOTE, to="3", sender="2", term=2, transfer=True))
    assert [(m.type, m.reject) for m in read_messages(voter)] == [
        (MessageType.REQUEST_VOTE_RESPONSE, False)
    ]
    assert (voter.raft.term, voter.raft.vote) == (2, "2")


def test_timeout_now_skips_pre_vote() -> None:
    """TimeoutNow starts a real election at once, even with pre-vote on."""
    node = new_node("2", node_ids(3), term=1, pre_vote=True)
    node.step(Message(type=MessageType.TIMEOUT_NOW, to="2", sender="1", term=1))
    messages = read_messages(node)
    assert node.raft.state is StateType.CANDIDATE
    assert {(m.type, m.term, m.transfer) for m in messages} == {(MessageType.REQUEST_VOTE, 2, True)}


def test_stale_timeout_now_ignored() -> None:
    """A TimeoutNow from a leader of an earlier term does not start an election."""
    node = new_node("2", node_ids(3), term=3)
    node.step(Message(type=MessageType.TIMEOUT_NOW, to="2", sender="1", term=2))
    assert (node.raft.state, node.raft.term) == (StateType.FOLLOWER, 3)
    assert not any(m.type is MessageType.REQUEST_VOTE for m in read_messages(node))


def test_learner_ignores_timeout_now() -> None:
    """Only a voter can be made leader: a learner told to time out does nothing."""
    network = Network.of(("1", "2"), learners=("3",))
    network.elect("1")
    learner = network.nodes["3"]
    learner.step(Message(type=MessageType.TIMEOUT_NOW, to="3", sender="1", term=1))
    assert learner.raft.state is StateType.FOLLOWER
    assert read_messages(learner) == []


def test_proposals_refused_during_transfer() -> None:
    """Thesis §3.10: while a transfer is under way the leader stops accepting client
    requests (they would be lost in the new term), membership changes included."""
    network = three_nodes()
    leader = network.nodes["1"]
    network.drop = isolate("2")
    leader.transfer_leadership("2")
    last = leader.raft.log.last_index()
    with pytest.raises(ProposalDroppedError):
        leader.propose(b"x")
    with pytest.raises(ProposalDroppedError):
        leader.propose_conf_change(ConfChange(ConfChangeType.ADD_LEARNER, "4"))
    assert leader.raft.log.last_index() == last


def test_transfer_times_out() -> None:
    """Thesis §3.10: a transfer that has not completed within an election timeout is
    abandoned; the leader keeps its term and accepts proposals again."""
    network = three_nodes()
    leader = network.nodes["1"]
    network.drop = isolate("2")
    leader.transfer_leadership("2")
    network.tick(ELECTION_TICK - 1)
    with pytest.raises(ProposalDroppedError):
        leader.propose(b"x")
    network.tick()
    index = leader.propose(b"x")
    network.deliver()
    assert network.leader() is leader
    assert leader.raft.term == 1
    assert leader.raft.log.committed == index
    assert network.commands("3") == [b"a", b"x"]


def test_transfer_errors() -> None:
    """Only a leader transfers leadership, only to another voter."""
    network = Network.of(("1", "2", "3"), learners=("4",))
    leader = network.elect("1")
    with pytest.raises(NotLeaderError) as not_leader:
        network.nodes["2"].transfer_leadership("3")
    assert not_leader.value.leader == "1"
    for target in ("4", "9"):
        with pytest.raises(UnknownPeerError):
            leader.transfer_leadership(target)
    with pytest.raises(MembershipError) as itself:
        leader.transfer_leadership("1")
    assert type(itself.value) is MembershipError
    assert leader.raft.lead_transferee == ""
    assert read_messages(leader) == []
    leader.propose(b"still leading")
