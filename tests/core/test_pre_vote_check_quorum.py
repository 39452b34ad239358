"""Pre-vote (thesis §9.6) and check-quorum with leader leases (thesis §6.2, §4.2.3)."""

from __future__ import annotations

import pytest

from django_raft.core import NONE, Message, MessageType, RawNode, StateType
from tests.core.helpers import (
    cluster,
    deliver_all,
    elect,
    isolate,
    leaders,
    log_entries,
    read_messages,
    run,
)

ELECTION_TICK = 10


class LatestTimeout:
    """A ``RandomSource`` that always picks the longest election timeout."""

    def randrange(self, start: int, stop: int) -> int:
        return stop - 1


def test_pre_vote_does_not_raise_terms() -> None:
    """Thesis §9.6: a partitioned server never wins a pre-vote, so its term does not grow
    while it is cut off, and when it comes back it rejoins the stable leader instead of
    forcing an election."""
    nodes = cluster(3)
    leader = elect(nodes, "1")
    for n in range(10 * ELECTION_TICK):
        if n % ELECTION_TICK == 0:
            leader.propose(b"%d" % n)
        run(nodes, 1, drop=isolate("3"))
        assert nodes["3"].raft.term == 1
    assert nodes["3"].raft.state is StateType.PRE_CANDIDATE
    run(nodes, 2 * ELECTION_TICK)
    assert leaders(nodes) == ["1"]
    assert [(n.raft.term, n.raft.lead) for n in nodes.values()] == [(1, "1")] * 3
    assert log_entries(nodes["3"]) == log_entries(leader)


def test_without_pre_vote_rejoining_node_raises_terms() -> None:
    """Thesis §9.6, the problem pre-vote solves: without it the cut-off server's term
    grows with every timeout, and on its return the stable leader is deposed."""
    nodes = cluster(3, pre_vote=False)
    elect(nodes, "1")
    run(nodes, 10 * ELECTION_TICK, drop=isolate("3"))
    assert nodes["3"].raft.term > 5
    run(nodes, 2 * ELECTION_TICK)
    assert nodes["1"].raft.term > 1


def cut_off_after_quorum_check(check_quorum: bool = True) -> RawNode:
    """Elect "1" of 3, run until it has just passed a quorum check, and cut it off then
    (the heartbeat sent in that same tick is lost too)."""
    nodes = cluster(3, check_quorum=check_quorum)
    leader = elect(nodes, "1")
    run(nodes, ELECTION_TICK - 1)
    leader.tick()
    read_messages(leader)
    assert leader.raft.state is StateType.LEADER
    assert leader.raft.election_elapsed == 0
    return leader


def tick_cut_off(node: RawNode, ticks: int) -> None:
    for _ in range(ticks):
        node.tick()
        read_messages(node)


def test_check_quorum_leader_steps_down() -> None:
    """Thesis §6.2: with check-quorum, a leader steps down (keeping its term) when an
    election timeout passes without hearing from a majority, so clients can find the
    real leader."""
    leader = cut_off_after_quorum_check()
    tick_cut_off(leader, ELECTION_TICK - 1)
    assert leader.raft.state is StateType.LEADER
    leader.tick()
    raft = leader.raft
    assert (raft.state, raft.term, raft.lead) == (StateType.FOLLOWER, 1, NONE)


@pytest.mark.parametrize("offset", [0, 1, ELECTION_TICK // 2, ELECTION_TICK - 1])
def test_check_quorum_step_down_bound(offset: int) -> None:
    """Thesis §6.2: wherever in the quorum-check period the leader is cut off, it steps
    down within two election timeouts (checks run every election_tick, and an answer
    heard just after one check counts towards the next)."""
    nodes = cluster(3)
    leader = elect(nodes, "1")
    run(nodes, ELECTION_TICK + offset)
    ticks = 0
    while leader.raft.state is StateType.LEADER and ticks < 2 * ELECTION_TICK:
        tick_cut_off(leader, 1)
        ticks += 1
    assert leader.raft.state is StateType.FOLLOWER


def test_without_check_quorum_cut_off_leader_stays() -> None:
    """Without check-quorum a cut-off leader never notices on its own (the paper's
    behaviour: it learns only when it sees a higher term)."""
    leader = cut_off_after_quorum_check(check_quorum=False)
    tick_cut_off(leader, 10 * ELECTION_TICK)
    assert leader.raft.state is StateType.LEADER


def test_leader_with_quorum_stays_leader() -> None:
    """Thesis §6.2: a leader that keeps hearing from a majority is not disturbed by
    check-quorum, even with one follower cut off."""
    nodes = cluster(3)
    elect(nodes, "1")
    run(nodes, 10 * ELECTION_TICK, drop=isolate("3"))
    assert leaders(nodes) == ["1"]
    assert nodes["1"].raft.term == 1


@pytest.mark.parametrize("kind", [MessageType.REQUEST_VOTE, MessageType.PRE_VOTE])
@pytest.mark.parametrize("receiver", ["1", "2"], ids=["leader", "follower"])
def test_vote_ignored_in_lease(kind: MessageType, receiver: str) -> None:
    """Thesis §4.2.3: a server that heard from a current leader within the minimum
    election timeout (or is that leader) ignores requests for votes: it neither updates
    its term nor answers. Once that time passes it considers them."""
    nodes = cluster(3, rng=LatestTimeout())
    elect(nodes, "1")
    node = nodes[receiver]
    last = node.raft.log.last_index()
    request = Message(type=kind, to=receiver, sender="3", term=2, index=last, log_term=1)
    before = (node.raft.term, node.raft.vote, node.raft.lead, node.raft.state)
    node.step(request)
    assert (node.raft.term, node.raft.vote, node.raft.lead, node.raft.state) == before
    assert read_messages(node) == []
    if receiver == "1":
        return
    for _ in range(ELECTION_TICK):  # no heartbeat arrives; the timeout is 2T - 1
        node.tick()
    assert node.raft.state is StateType.FOLLOWER
    node.step(request)
    (answer,) = read_messages(node)
    assert (answer.to, answer.reject, answer.term) == ("3", False, 2)
    expected = (2, "3") if kind is MessageType.REQUEST_VOTE else (1, "1")
    assert (node.raft.term, node.raft.vote) == expected


def test_vote_not_ignored_without_check_quorum() -> None:
    """Without check-quorum there is no lease: a higher term in a vote request is adopted
    at once (§5.1) and the vote granted to an up-to-date candidate."""
    nodes = cluster(3, check_quorum=False)
    elect(nodes, "1")
    follower = nodes["2"]
    follower.step(
        Message(type=MessageType.REQUEST_VOTE, to="2", sender="3", term=2, index=1, log_term=1)
    )
    (answer,) = read_messages(follower)
    assert (answer.reject, follower.raft.term, follower.raft.vote) == (False, 2, "3")


@pytest.mark.parametrize(
    ("pre_vote", "check_quorum"), [(True, True), (True, False), (False, False)]
)
def test_stale_leader_learns_new_term(pre_vote: bool, check_quorum: bool) -> None:
    """§5.1 (and thesis §9.6 for pre-vote): a leader cut off while the others elect a new
    one steps down once it can talk to them again; what it appended meanwhile never
    commits and is replaced by the new leader's log."""
    nodes = cluster(3, pre_vote=pre_vote, check_quorum=check_quorum)
    old = elect(nodes, "1")
    stale_index = old.propose(b"lost")
    read_messages(old)
    others = {node_id: nodes[node_id] for node_id in ("2", "3")}
    run(others, 4 * ELECTION_TICK)
    (new_leader_id,) = leaders(others)
    new_term = nodes[new_leader_id].raft.term
    assert new_term > 1
    assert old.raft.log.committed < stale_index

    run(nodes, 2)
    assert (old.raft.state, old.raft.term) == (StateType.FOLLOWER, new_term)
    deliver_all(nodes)
    run(nodes, 2)
    assert leaders(nodes) == [new_leader_id]
    assert old.raft.lead == new_leader_id
    assert log_entries(old) == log_entries(nodes[new_leader_id])
    assert b"lost" not in [entry.data for entry in log_entries(old)]
