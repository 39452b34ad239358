"""Linearizable reads without writing to the log: ReadIndex (thesis §6.4)."""

from __future__ import annotations

import pytest

from django_raft.core import (
    ConfChange,
    ConfChangeType,
    Message,
    MessageType,
    NotLeaderError,
    RawNode,
    ReadState,
    StateType,
)
from tests.core.helpers import (
    Network,
    isolate,
    new_leader,
    new_node,
    node_ids,
    read_messages,
    read_ready,
)

ELECTION_TICK = 10


def heartbeat_answer(leader: RawNode, sender: str, context: bytes) -> Message:
    return Message(
        type=MessageType.HEARTBEAT_RESPONSE,
        to=leader.id,
        sender=sender,
        term=leader.raft.term,
        context=context,
    )


def settled_leader(voters: tuple[str, ...], learners: tuple[str, ...] = ()) -> Network:
    network = Network.of(voters, learners=learners)
    network.elect(voters[0])
    network.propose(b"a")
    return network


def test_read_index_waits_for_current_term_commit() -> None:
    """Thesis §6.4, step 1: a new leader does not know the latest commit index until an
    entry of its own term has committed, so a read waits for its no-op."""
    leader = new_leader("1", node_ids(3), terms=[1, 1])
    leader.read_index(b"ctx")
    ready = read_ready(leader)
    assert ready.read_states == ()
    assert not any(m.context == b"ctx" for m in ready.messages)
    noop = leader.raft.log.last_index()
    leader.step(Message(type=MessageType.APPEND_RESPONSE, to="1", sender="2", term=2, index=noop))
    assert leader.raft.log.committed == noop
    ready = read_ready(leader)
    assert ready.read_states == ()
    beats = [m for m in ready.messages if m.type is MessageType.HEARTBEAT]
    key = beats[0].context
    assert {(m.to, m.context) for m in beats} == {("2", key), ("3", key)}
    leader.step(heartbeat_answer(leader, "3", key))
    assert read_ready(leader).read_states == (ReadState(noop, b"ctx"),)


def test_read_index_needs_quorum_heartbeat() -> None:
    """Thesis §6.4, steps 2 and 3: the read index is the commit index when the read
    arrived; it is handed out only after a majority of voters (the leader included, no
    learner) answered a heartbeat sent after that."""
    network = settled_leader(node_ids(5), learners=("6",))
    leader = network.nodes["1"]
    commit = leader.raft.log.committed
    leader.read_index(b"ctx")
    ready = read_ready(leader)
    beats = [m for m in ready.messages if m.type is MessageType.HEARTBEAT]
    key = beats[0].context
    assert {m.to for m in beats if m.context == key} == {"2", "3", "4", "5", "6"}
    for sender in ("6", "2", "2"):
        leader.step(heartbeat_answer(leader, sender, key))
        assert read_ready(leader).read_states == ()
    leader.step(heartbeat_answer(leader, "3", b"other"))
    assert read_ready(leader).read_states == ()
    leader.step(heartbeat_answer(leader, "3", key))
    assert read_ready(leader).read_states == (ReadState(commit, b"ctx"),)
    leader.step(heartbeat_answer(leader, "4", key))
    assert read_ready(leader).read_states == ()


def test_read_index_is_commit_index_when_read_arrived() -> None:
    """The read index is the commit index when the read arrives: not an uncommitted entry
    the leader holds (it may never commit), and not what commits while the read waits."""
    network = settled_leader(node_ids(3))
    leader = network.nodes["1"]
    commit = leader.raft.log.committed
    network.drop = lambda m: m.type is MessageType.APPEND_RESPONSE
    network.propose(b"b")
    assert leader.raft.log.last_index() > commit == leader.raft.log.committed
    answers = {MessageType.APPEND_RESPONSE, MessageType.HEARTBEAT_RESPONSE}
    network.drop = lambda m: m.type in answers
    leader.read_index(b"ctx")
    network.deliver()
    network.drop = lambda m: m.type is MessageType.HEARTBEAT_RESPONSE
    network.propose(b"c")
    assert leader.raft.log.committed > commit
    assert network.read_states["1"] == []
    network.drop = None
    network.tick()
    assert network.read_states["1"] == [ReadState(commit, b"ctx")]


def test_lost_read_heartbeat_repeated() -> None:
    """If the heartbeats carrying a read are lost, the next heartbeat round repeats the
    read's context, and the read is answered then."""
    network = settled_leader(node_ids(3))
    leader = network.nodes["1"]
    leader.read_index(b"ctx")
    network.drop = lambda m: m.type is MessageType.HEARTBEAT
    network.deliver()
    assert network.read_states["1"] == []
    network.drop = None
    network.tick()
    assert network.read_states["1"] == [ReadState(leader.raft.log.committed, b"ctx")]


def test_later_confirmation_answers_earlier_reads_in_order() -> None:
    """A quorum that confirms leadership after a read arrived confirms it for every read
    that arrived before, too; they are answered in the order they came."""
    network = settled_leader(node_ids(3))
    leader = network.nodes["1"]
    leader.read_index(b"first")
    read_messages(leader)
    leader.read_index(b"second")
    (key,) = {m.context for m in read_messages(leader)}
    leader.step(heartbeat_answer(leader, "2", key))
    commit = leader.raft.log.committed
    assert read_ready(leader).read_states == (
        ReadState(commit, b"first"),
        ReadState(commit, b"second"),
    )


def test_single_voter_read_answered_at_once() -> None:
    """With one voter the leader is the majority: the read needs no round trip."""
    network = settled_leader(("1",), learners=("2",))
    leader = network.nodes["1"]
    leader.read_index(b"ctx")
    ready = read_ready(leader)
    assert ready.read_states == (ReadState(leader.raft.log.committed, b"ctx"),)
    assert not any(m.type is MessageType.HEARTBEAT for m in ready.messages)


def test_learner_read_forwarded() -> None:
    """A learner serves reads too: it forwards them to the leader like a follower."""
    network = settled_leader(("1",), learners=("2",))
    network.nodes["2"].read_index(b"ctx")
    network.deliver()
    assert network.read_states["2"] == [ReadState(network.nodes["1"].raft.log.committed, b"ctx")]


def test_follower_read_index_forwarded() -> None:
    """Thesis §6.4: a follower asks the leader for the read index; the leader confirms
    its leadership as for its own reads and answers, and the follower hands the read
    state to its host (the leader's host sees nothing)."""
    network = settled_leader(node_ids(3))
    follower = network.nodes["2"]
    follower.read_index(b"ctx")
    assert [(m.type, m.to) for m in follower.raft.messages] == [(MessageType.READ_INDEX, "1")]
    network.deliver()
    assert network.read_states["2"] == [ReadState(network.nodes["1"].raft.log.committed, b"ctx")]
    assert network.read_states["1"] == []
    kinds = [m.type for m in network.delivered]
    assert kinds.index(MessageType.HEARTBEAT_RESPONSE) < kinds.index(
        MessageType.READ_INDEX_RESPONSE
    )


def test_follower_read_waits_for_new_leader_commit() -> None:
    """A read forwarded to a leader that has not yet committed an entry of its term
    waits for that, as the leader's own reads do."""
    network = Network.of(node_ids(3))
    network.drop = lambda m: m.type is MessageType.APPEND_RESPONSE
    leader = network.elect("1")
    assert leader.raft.log.committed < leader.raft.log.last_index()
    assert network.nodes["2"].raft.lead == "1"
    network.nodes["2"].read_index(b"ctx")
    network.deliver()
    assert network.read_states["2"] == []
    network.drop = None
    network.tick()
    assert network.read_states["2"] == [ReadState(leader.raft.log.last_index(), b"ctx")]


def test_read_index_without_leader_raises() -> None:
    """A node that knows no leader cannot serve or forward a read."""
    node = new_node("2", node_ids(3))
    with pytest.raises(NotLeaderError):
        node.read_index(b"ctx")
    assert not node.has_ready()


@pytest.mark.parametrize("check_quorum", [True, False])
def test_partitioned_leader_never_answers_read(check_quorum: bool) -> None:
    """Thesis §6.4: a leader cut off from the majority may already have been replaced and
    cannot know the latest writes, so its read is never answered: not while cut off
    (nobody confirms it), and not after, when it learns of the new term."""
    network = Network.of(node_ids(3), check_quorum=check_quorum)
    old = network.elect("1")
    network.propose(b"a")
    network.drop = isolate("1")
    old.read_index(b"ctx")
    new = network.tick_until_leader(["2", "3"])
    assert new.raft.term > old.raft.term
    write = network.propose(b"b")
    assert new.raft.log.committed == write
    network.tick(ELECTION_TICK)
    assert network.read_states["1"] == []
    network.drop = None
    network.tick(3 * ELECTION_TICK)
    assert old.raft.state is StateType.FOLLOWER
    assert network.read_states["1"] == []


def test_leader_removing_itself_needs_confirmation_for_reads() -> None:
    """A leader that has appended its own removal is not part of the new majority, so a
    read needs the confirmation of the remaining voters even if only one is left; cut off
    from it, the leader must not answer."""
    network = settled_leader(("1", "2"))
    leader = network.nodes["1"]
    network.drop = isolate("2")
    leader.propose_conf_change(ConfChange(ConfChangeType.REMOVE, "1"))
    leader.read_index(b"ctx")
    network.deliver()
    network.tick(ELECTION_TICK // 2)
    assert leader.raft.state is StateType.LEADER
    assert network.read_states["1"] == []


def test_read_contexts_are_issued_by_the_core() -> None:
    """Read contexts are unique by construction: a host reusing its context cannot have a
    delayed heartbeat answer for an earlier read confirm a later one on a stale leader."""
    network = settled_leader(node_ids(3))
    leader = network.nodes["1"]
    leader.read_index(b"same")
    (first,) = {m.context for m in read_messages(leader)}
    leader.step(heartbeat_answer(leader, "2", first))
    assert [r.context for r in read_ready(leader).read_states] == [b"same"]
    leader.read_index(b"same")
    (second,) = {m.context for m in read_messages(leader)}
    assert second != first
    leader.step(heartbeat_answer(leader, "3", first))
    assert read_ready(leader).read_states == ()
    leader.step(heartbeat_answer(leader, "3", second))
    assert [r.context for r in read_ready(leader).read_states] == [b"same"]


def test_follower_ignores_answers_to_reads_it_did_not_send() -> None:
    """A follower hands out a read state only for a read it forwarded and has not been
    answered yet: a duplicated or delayed answer, or one for a reused context, is dropped."""
    network = settled_leader(node_ids(3))
    follower = network.nodes["2"]
    follower.read_index(b"ctx")
    network.deliver()
    answer = next(m for m in network.delivered if m.type is MessageType.READ_INDEX_RESPONSE)
    assert len(network.read_states["2"]) == 1
    follower.read_index(b"ctx")
    follower.step(answer)
    assert read_ready(follower).read_states == ()
    assert follower.dropped["unknown_read"] == 1
