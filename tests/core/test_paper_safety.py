"""Safety: §5.4 of the Raft paper (the election restriction and the commit rule)."""

from __future__ import annotations

import pytest

from django_raft.core import NONE, Entry, EntryType, Message, MessageType, StateType
from tests.core.helpers import (
    cluster,
    deliver_all,
    elect,
    isolate,
    leaders,
    log_entries,
    make_entries,
    new_leader,
    new_node,
    node_ids,
    read_messages,
    read_ready,
    run,
)

ELECTION_TICK = 10


@pytest.mark.parametrize("pre_vote", [False, True])
@pytest.mark.parametrize(("terms", "new_term"), [([1], 2), ([1, 2], 3)])
def test_vote_request(pre_vote: bool, terms: list[int], new_term: int) -> None:
    """§5.4.1: RequestVote carries the index and term of the candidate's last log entry,
    so that voters can tell whether its log is at least as up to date as theirs."""
    node = new_node("1", node_ids(3), pre_vote=pre_vote)
    node.step(
        Message(
            type=MessageType.APPEND,
            to="1",
            sender="2",
            term=new_term - 1,
            entries=tuple(make_entries(terms)),
        )
    )
    read_messages(node)
    for _ in range(2 * ELECTION_TICK - 1):
        node.tick()
    kind = MessageType.PRE_VOTE if pre_vote else MessageType.REQUEST_VOTE
    requests = sorted(read_messages(node), key=lambda m: m.to)
    assert [(m.type, m.to, m.term, m.index, m.log_term) for m in requests] == [
        (kind, peer, new_term, len(terms), terms[-1]) for peer in ("2", "3")
    ]


@pytest.mark.parametrize("kind", [MessageType.REQUEST_VOTE, MessageType.PRE_VOTE])
@pytest.mark.parametrize(
    ("terms", "log_term", "index", "granted"),
    [
        # Same last term: the log at least as long is as up to date.
        ([1], 1, 1, True),
        ([1], 1, 2, True),
        ([1, 1], 1, 1, False),
        # The candidate's last term is later: up to date, whatever the lengths.
        ([1], 2, 1, True),
        ([1], 2, 2, True),
        ([1, 1], 2, 1, True),
        # The voter's last term is later: not up to date, whatever the lengths.
        ([2], 1, 1, False),
        ([2], 1, 2, False),
        ([1, 2], 1, 5, False),
    ],
)
def test_voter(
    kind: MessageType, terms: list[int], log_term: int, index: int, granted: bool
) -> None:
    """§5.4.1: a voter denies its vote when its own log is more up to date: compare the
    last terms first, then, for equal terms, the lengths."""
    node = new_node("1", node_ids(3), terms=terms, term=3)
    node.step(Message(type=kind, to="1", sender="2", term=4, index=index, log_term=log_term))
    (answer,) = read_messages(node)
    assert answer.reject is not granted
    raft = node.raft
    if kind is MessageType.REQUEST_VOTE:
        assert answer.type is MessageType.REQUEST_VOTE_RESPONSE
        assert (answer.term, raft.term, raft.vote) == (4, 4, "2" if granted else NONE)
    else:
        # A pre-vote changes nothing here, granted or not.
        assert answer.type is MessageType.PRE_VOTE_RESPONSE
        assert (answer.term, raft.term, raft.vote) == (4 if granted else 3, 3, NONE)


@pytest.mark.parametrize(("acknowledged", "commit"), [(1, 0), (2, 0), (3, 3), (4, 4)])
def test_leader_only_commits_log_from_current_term(acknowledged: int, commit: int) -> None:
    """§5.4.2: a leader never commits an entry from an earlier term by counting replicas;
    once an entry of its own term is committed that way, all before it are too."""
    leader = new_leader("1", node_ids(3), terms=[1, 2])
    assert leader.raft.term == 3
    leader.propose(b"x")
    read_messages(leader)
    leader.step(
        Message(type=MessageType.APPEND_RESPONSE, to="1", sender="2", term=3, index=acknowledged)
    )
    assert leader.raft.log.committed == commit


def test_new_leader_appends_noop() -> None:
    """§5.4.2 and §8: a new leader appends a blank no-op entry of its own term, which it
    persists and sends like any other entry."""
    node = new_node("1", node_ids(3), terms=[1, 1])
    node.raft.become_candidate()
    node.raft.become_leader()
    noop = Entry(index=3, term=2, type=EntryType.NORMAL, data=b"")
    assert read_ready(node).entries == (noop,)
    node.propose(b"x")
    sent = [m for m in read_messages(node) if m.to == "2"]
    assert [m.entries[0] for m in sent] == [noop]


def test_noop_commits_entries_of_earlier_terms() -> None:
    """§5.4.2: the no-op lets a new leader commit the entries it inherited from earlier
    terms without waiting for a client command."""
    nodes = {node_id: new_node(node_id, node_ids(3), terms=[1, 1]) for node_id in node_ids(3)}
    leader = elect(nodes, "1")
    assert leader.raft.log.committed == 3
    assert [node.raft.log.committed for node in nodes.values()] == [3, 3, 3]


def test_candidate_with_stale_log_cannot_win() -> None:
    """§5.4.1: a candidate whose log lacks committed entries cannot collect a majority,
    so every later leader holds all committed entries (Leader Completeness)."""
    nodes = cluster(3)
    elect(nodes, "1")
    for n in range(3):
        nodes["1"].propose(b"%d" % n)
        deliver_all(nodes, drop=isolate("3"))
    committed = log_entries(nodes["1"])[: nodes["1"].raft.log.committed]
    assert len(committed) == 4
    survivors = {node_id: nodes[node_id] for node_id in ("2", "3")}
    for _ in range(20):
        survivors["3"].campaign()
        run(survivors, 1)
        assert survivors["3"].raft.state is not StateType.LEADER
    run(survivors, 4 * ELECTION_TICK)
    assert leaders(survivors) == ["2"]
    for node in survivors.values():
        assert log_entries(node)[: len(committed)] == committed
