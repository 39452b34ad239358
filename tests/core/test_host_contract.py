"""The host's side of the Ready contract: batches, cheap status, sending while persisting,
commit news, and restarting with an applied index above the stored commit."""

from __future__ import annotations

import pytest

from django_raft.core import (
    BasicStatus,
    Config,
    ConfigError,
    HardState,
    Message,
    MessageType,
    NotLeaderError,
    RawNode,
    SoftState,
    StateType,
)
from tests.core.helpers import (
    cluster,
    elect,
    make_entries,
    new_leader,
    new_storage,
    node_ids,
    persist,
    read_messages,
    read_ready,
)


def ack(leader: RawNode, sender: str, index: int) -> None:
    leader.step(
        Message(
            type=MessageType.APPEND_RESPONSE,
            to=leader.id,
            sender=sender,
            term=leader.raft.term,
            index=index,
        )
    )


def replicate_all(leader: RawNode, followers: tuple[str, ...]) -> None:
    """Bring every follower of a fresh leader to replicate mode, matching its log."""
    for follower in followers:
        ack(leader, follower, leader.raft.log.last_index())
    read_ready(leader)


def test_propose_batch_is_one_append_and_one_message_per_follower() -> None:
    leader = new_leader("1", node_ids(3), terms=[1])
    replicate_all(leader, ("2", "3"))
    first, last = leader.propose_batch([b"a", b"b", b"c"])
    assert (first, last) == (3, 5)
    ready = read_ready(leader)
    assert [e.data for e in ready.entries] == [b"a", b"b", b"c"]
    appends = [m for m in ready.messages if m.type is MessageType.APPEND]
    assert sorted(m.to for m in appends) == ["2", "3"]
    assert all([e.index for e in m.entries] == [3, 4, 5] for m in appends)


def test_propose_batch_respects_the_entry_cap_per_message() -> None:
    leader = new_leader("1", node_ids(3), terms=[1], max_entries_per_message=2)
    replicate_all(leader, ("2", "3"))
    leader.propose_batch([b"%d" % i for i in range(5)])
    to_2 = [m for m in read_messages(leader) if m.to == "2"]
    assert [[e.index for e in m.entries] for m in to_2] == [[3, 4], [5, 6], [7]]


def test_propose_batch_errors_like_propose() -> None:
    follower = cluster(3)["2"]
    with pytest.raises(NotLeaderError):
        follower.propose_batch([b"x"])
    leader = new_leader("1", node_ids(3), terms=[1])
    with pytest.raises(ValueError, match="at least one"):
        leader.propose_batch([])
    assert leader.raft.log.last_index() == 2


def test_basic_status_and_status() -> None:
    nodes = cluster(3)
    leader = elect(nodes, "1")
    status = leader.basic_status()
    assert status == BasicStatus(
        id="1",
        state=StateType.LEADER,
        term=leader.raft.term,
        lead="1",
        commit=1,
        applied=1,
        last_index=1,
    )
    full = leader.status()
    assert full["snapshot_index"] == 0
    progress = full["progress"]
    assert isinstance(progress, dict)
    assert set(progress) == {"2", "3"}
    assert progress["2"] == {
        "match": 1,
        "next": 2,
        "state": "replicate",
        "inflight": 0,
        "recent_active": True,
    }
    assert nodes["2"].status()["progress"] == {}


def test_soft_state_carries_the_term() -> None:
    nodes = cluster(3)
    nodes["1"].campaign()
    ready = nodes["1"].ready()
    assert ready.soft_state == SoftState(leader="", state=StateType.PRE_CANDIDATE, term=0)


def test_leader_sends_replication_before_persisting() -> None:
    """Thesis §10.2.1: the leader's AppendEntries may go out while it persists."""
    leader = new_leader("1", node_ids(3), terms=[1])
    leader.propose(b"x")
    ready = leader.ready()
    early, late = ready.partition_messages()
    assert {m.type for m in early} == {MessageType.APPEND}
    assert late == ()
    assert not ready.term_or_vote_changed


def test_votes_and_acknowledgements_wait_for_persistence() -> None:
    """Figure 2: a vote or an acknowledgement is sent only once what backs it is durable;
    so is anything in a Ready that changes the term or the vote."""
    candidate = cluster(3, pre_vote=False)["1"]
    candidate.campaign()
    ready = candidate.ready()
    assert ready.term_or_vote_changed
    assert ready.partition_messages() == ((), ready.messages)

    follower = cluster(3)["2"]
    follower.step(
        Message(
            type=MessageType.APPEND, to="2", sender="1", term=1, entries=tuple(make_entries([1]))
        )
    )
    ready = follower.ready()
    assert ready.partition_messages() == ((), ready.messages)
    assert [m.type for m in ready.messages] == [MessageType.APPEND_RESPONSE]


def test_leader_counts_itself_only_for_persisted_entries() -> None:
    """Thesis §10.2.1: acknowledgements from followers alone must reach the quorum for
    entries the leader has not persisted yet."""
    leader = new_leader("1", node_ids(5), terms=[1])
    replicate_all(leader, ("2", "3", "4", "5"))
    index = leader.propose(b"x")
    ready = leader.ready()
    ack(leader, "2", index)
    ack(leader, "3", index)
    assert leader.raft.log.committed < index
    persist(leader, ready)
    leader.advance(ready)
    assert leader.raft.log.committed == index


def test_commit_rides_on_appends_already_going() -> None:
    """A commit index that advances does not cost an empty AppendEntries per follower
    when entries are going to that follower anyway; the others are told at once."""
    leader = new_leader("1", node_ids(3), terms=[1])
    replicate_all(leader, ("2", "3"))
    index = leader.propose(b"x")
    read_ready(leader)
    ack(leader, "2", index)
    leader.propose(b"y")
    messages = read_messages(leader)
    to_2 = [m for m in messages if m.to == "2"]
    to_3 = [m for m in messages if m.to == "3"]
    assert [(len(m.entries), m.commit) for m in to_2] == [(1, index)]
    assert [(len(m.entries), m.commit) for m in to_3] == [(1, index)]
    ack(leader, "3", index + 1)
    messages = read_messages(leader)
    assert sorted((m.to, len(m.entries), m.commit) for m in messages) == [
        ("2", 0, index + 1),
        ("3", 0, index + 1),
    ]


def test_restart_with_applied_above_the_stored_commit() -> None:
    """commitIndex is volatile (Figure 2): a host that did not sync a commit-only hard
    state restarts with ``applied`` above the stored commit; nothing is applied twice."""
    storage = new_storage(node_ids(3), terms=[1, 1, 1], commit=1)
    node = RawNode(Config(id="1", applied=3), storage)
    assert (node.raft.log.committed, node.raft.log.applied) == (3, 3)
    assert read_ready(node).committed_entries == ()
    with pytest.raises(ConfigError, match="applied"):
        RawNode(Config(id="1", applied=4), storage)
    assert storage.hard_state == HardState(term=1, commit=1)
