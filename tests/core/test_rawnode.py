"""The host's side of the core: what a Ready carries, restarts, and errors."""

from __future__ import annotations

import pytest

from django_raft.core import (
    LOCAL_MESSAGES,
    NONE,
    Config,
    ConfState,
    Entry,
    HardState,
    MemoryStorage,
    Message,
    MessageType,
    NotLeaderError,
    RawNode,
    SoftState,
    StateType,
)
from tests.core.helpers import (
    cluster,
    deliver_all,
    elect,
    log_entries,
    new_node,
    node_ids,
    persist,
    read_messages,
    read_ready,
    storage_of,
)


def vote_request(sender: str, term: int) -> Message:
    return Message(type=MessageType.REQUEST_VOTE, to="1", sender=sender, term=term)


def test_term_and_vote_in_hard_state_before_messages() -> None:
    """Figure 2: currentTerm and votedFor are on stable storage before the server answers
    an RPC, so the Ready that carries a granted vote carries the hard state with it."""
    node = new_node("1", node_ids(3), term=1)
    node.step(vote_request("2", 2))
    assert node.has_ready()
    ready = node.ready()
    assert [(m.type, m.to, m.reject) for m in ready.messages] == [
        (MessageType.REQUEST_VOTE_RESPONSE, "2", False)
    ]
    assert ready.hard_state == HardState(term=2, vote="2", commit=0)


def test_candidate_hard_state_in_same_ready_as_vote_requests() -> None:
    """Figure 2: a candidate's new term and its vote for itself are persisted with (that
    is, before sending) its RequestVote messages."""
    node = new_node("1", node_ids(3), term=1, pre_vote=False)
    node.campaign()
    ready = node.ready()
    assert ready.hard_state == HardState(term=2, vote="1", commit=0)
    assert {m.type for m in ready.messages} == {MessageType.REQUEST_VOTE}


def test_pre_vote_changes_nothing_durable() -> None:
    """Thesis §9.6: starting a pre-vote changes neither term nor vote, so there is no hard
    state to persist."""
    node = new_node("1", node_ids(3), term=1)
    node.campaign()
    ready = node.ready()
    assert ready.hard_state is None
    assert {m.type for m in ready.messages} == {MessageType.PRE_VOTE}


def test_entries_in_same_ready_as_acknowledgement() -> None:
    """§5.3: a follower acknowledges entries only together with handing them over to be
    persisted (the Ready persists before it sends)."""
    node = new_node("1", node_ids(3), term=1)
    entries = (Entry(index=1, term=1), Entry(index=2, term=1))
    node.step(Message(type=MessageType.APPEND, to="1", sender="2", term=1, entries=entries))
    ready = node.ready()
    assert ready.entries == entries
    assert [(m.type, m.index, m.reject) for m in ready.messages] == [
        (MessageType.APPEND_RESPONSE, 2, False)
    ]


def test_restart_keeps_term_and_vote() -> None:
    """Figure 2: a server that restarts from its storage still knows its term and whom it
    voted for, so it cannot vote for a second candidate in the same term."""
    node = new_node("1", node_ids(3), term=1)
    node.step(vote_request("2", 2))
    read_messages(node)
    restarted = RawNode(Config(id="1"), storage_of(node))
    assert (restarted.raft.term, restarted.raft.vote) == (2, "2")
    restarted.step(vote_request("3", 2))
    restarted.step(vote_request("2", 2))
    answers = [(m.to, m.reject) for m in read_messages(restarted)]
    assert answers == [("3", True), ("2", False)]


def test_restart_keeps_log_and_commit() -> None:
    """A restarted server finds its log and commit index in storage; it re-applies
    committed entries unless told (``Config.applied``) how far it had applied them."""
    nodes = cluster(3)
    elect(nodes, "1")
    nodes["1"].propose(b"x")
    deliver_all(nodes)
    for message in read_messages(nodes["1"]):
        nodes[message.to].step(message)
    node = nodes["2"]
    read_messages(node)
    assert node.raft.log.committed == 2
    restarted = RawNode(Config(id="2"), storage_of(node))
    assert log_entries(restarted) == log_entries(node)
    assert restarted.raft.log.committed == 2
    assert [e.index for e in read_ready(restarted).committed_entries] == [1, 2]
    resumed = RawNode(Config(id="2", applied=2), storage_of(node))
    assert read_ready(resumed).committed_entries == ()


def test_ready_hands_out_work_once() -> None:
    """Messages and committed entries are handed to the host once; after ``advance`` there
    is nothing left to do."""
    node = new_node("1", ("1",))
    node.campaign()
    node.propose(b"x")
    ready = read_ready(node)
    assert [e.data for e in ready.entries] == [b"", b"x"]
    assert ready.soft_state == SoftState(leader="1", state=StateType.LEADER, term=1)
    ready = read_ready(node)
    assert [e.data for e in ready.committed_entries] == [b"", b"x"]
    assert not node.has_ready()
    again = node.ready()
    assert (again.messages, again.entries, again.committed_entries) == ((), (), ())
    assert (again.hard_state, again.soft_state) == (None, None)


def test_single_node_commits_own_proposal_once_persisted() -> None:
    """§5.3 with a cluster of one: the leader is the majority, so its proposal commits as
    soon as the leader itself has persisted it (``advance``), and is handed out to apply
    in the next Ready (thesis §10.2.1: the leader counts itself only once durable)."""
    node = new_node("1", ("1",))
    node.campaign()
    read_ready(node)
    read_ready(node)
    index = node.propose(b"x")
    ready = node.ready()
    assert ready.entries == (Entry(index=index, term=1, data=b"x"),)
    assert ready.committed_entries == ()
    assert node.raft.log.committed == index - 1
    persist(node, ready)
    node.advance(ready)
    assert node.raft.log.committed == index
    ready = read_ready(node)
    assert ready.committed_entries == (Entry(index=index, term=1, data=b"x"),)
    assert ready.hard_state == HardState(term=1, vote="1", commit=index)
    assert not node.has_ready()


@pytest.mark.parametrize(
    ("state", "leader"),
    [
        (StateType.FOLLOWER, "1"),
        (StateType.FOLLOWER, NONE),
        (StateType.PRE_CANDIDATE, NONE),
        (StateType.CANDIDATE, NONE),
    ],
)
def test_propose_on_follower_raises_not_leader_with_hint(state: StateType, leader: str) -> None:
    """§8: a server that is not the leader refuses a client's command and names the most
    recent leader it knows of, so the client can retry there."""
    node = new_node("2", node_ids(3), term=1)
    if leader:
        node.step(Message(type=MessageType.HEARTBEAT, to="2", sender=leader, term=1))
    elif state is StateType.PRE_CANDIDATE:
        node.raft.become_pre_candidate()
    elif state is StateType.CANDIDATE:
        node.raft.become_candidate()
    assert node.raft.state is state
    last = node.raft.log.last_index()
    with pytest.raises(NotLeaderError) as raised:
        node.propose(b"x")
    assert raised.value.leader == leader
    assert (repr(leader) in str(raised.value)) is bool(leader)
    assert node.raft.log.last_index() == last


@pytest.mark.parametrize("kind", [kind for kind in MessageType if kind in LOCAL_MESSAGES])
def test_step_refuses_local_messages(kind: MessageType) -> None:
    """Local message kinds (HUP, BEAT, CHECK_QUORUM, PROPOSE) cannot arrive from the
    network: a peer must not be able to start our election or append to our log. Such a
    message is dropped and counted, never raised about."""
    node = new_node("1", node_ids(3), term=1)
    node.step(Message(type=kind, to="1", sender="2", term=1))
    assert (node.raft.state, node.raft.term) == (StateType.FOLLOWER, 1)
    assert not node.has_ready()
    assert node.dropped == {"local_type": 1}


def test_learner_neither_campaigns_nor_counts_toward_commit() -> None:
    """A learner receives the log but is not a voter: it never starts an election, and its
    acknowledgement does not make a majority."""
    storage = MemoryStorage(ConfState(voters=("1", "2", "3"), learners=("4",)))
    learner = RawNode(Config(id="4"), storage)
    for _ in range(100):
        learner.tick()
    assert learner.raft.state is StateType.FOLLOWER
    assert not learner.has_ready()

    storage = MemoryStorage(ConfState(voters=("1", "2", "3"), learners=("4",)))
    storage.persist(HardState(term=1))
    leader = RawNode(Config(id="1"), storage)
    leader.raft.become_candidate()
    leader.raft.become_leader()
    index = leader.propose(b"x")
    assert "4" in {m.to for m in read_messages(leader)}
    leader.step(Message(type=MessageType.APPEND_RESPONSE, to="1", sender="4", term=2, index=index))
    assert leader.raft.log.committed == 0
