"""Terms and leader election: §5.1 and §5.2 of the Raft paper.

Pre-vote (thesis §9.6) is on by default; tests of the paper's own election run with
``pre_vote=False`` and, where the rule differs, again with it on.
"""

from __future__ import annotations

import random

import pytest

from django_raft.core import NONE, Entry, Message, MessageType, RawNode, StateType
from tests.core.helpers import new_leader, new_node, node_ids, read_messages

ELECTION_TICK = 10
"""``Config.election_tick``'s default."""

FOLLOWER = StateType.FOLLOWER
PRE_CANDIDATE = StateType.PRE_CANDIDATE
CANDIDATE = StateType.CANDIDATE
LEADER = StateType.LEADER


def become(node: RawNode, state: StateType) -> None:
    """Move a follower into ``state`` and discard what it sent on the way."""
    raft = node.raft
    if state is PRE_CANDIDATE:
        raft.become_pre_candidate()
    elif state is CANDIDATE:
        raft.become_candidate()
    elif state is LEADER:
        raft.become_candidate()
        raft.become_leader()
    read_messages(node)


def tick(node: RawNode, times: int) -> None:
    for _ in range(times):
        node.tick()


def test_start_as_follower() -> None:
    """§5.2: when servers start up, they begin as followers (in term 0, with no leader)."""
    raft = new_node("1", node_ids(3)).raft
    assert (raft.state, raft.term, raft.lead, raft.vote) == (FOLLOWER, 0, NONE, NONE)


@pytest.mark.parametrize("state", list(StateType))
@pytest.mark.parametrize(
    ("kind", "new_lead"),
    [
        (MessageType.APPEND, "2"),
        (MessageType.HEARTBEAT, "2"),
        (MessageType.APPEND_RESPONSE, NONE),
    ],
)
def test_follower_updates_term_from_message(
    state: StateType, kind: MessageType, new_lead: str
) -> None:
    """§5.1: a server that sees a larger term adopts it and reverts to follower; its
    vote in the older term is forgotten."""
    node = new_node("1", node_ids(3), term=1, vote="1")
    become(node, state)
    term = node.raft.term + 1
    node.raft.step(Message(type=kind, to="1", sender="2", term=term))
    raft = node.raft
    assert (raft.state, raft.term, raft.lead, raft.vote) == (FOLLOWER, term, new_lead, NONE)


@pytest.mark.parametrize(
    "stale",
    [
        Message(
            type=MessageType.APPEND,
            to="1",
            sender="2",
            term=2,
            index=1,
            log_term=1,
            entries=(Entry(index=2, term=2),),
            commit=2,
        ),
        Message(type=MessageType.HEARTBEAT, to="1", sender="2", term=2, commit=1),
        Message(type=MessageType.REQUEST_VOTE, to="1", sender="2", term=2, index=1, log_term=1),
    ],
    ids=["append", "heartbeat", "request_vote"],
)
def test_reject_stale_term_message(stale: Message) -> None:
    """§5.1: a request with a stale term is rejected: the log, commit index, term, leader
    and vote stay as they were, and any answer carries the current term."""
    node = new_node("1", node_ids(3), terms=[1], term=3)
    node.raft.become_follower(3, "3")
    node.step(stale)
    raft = node.raft
    assert (raft.term, raft.lead, raft.vote, raft.state) == (3, "3", NONE, FOLLOWER)
    assert (raft.log.last_index(), raft.log.committed) == (1, 0)
    answers = read_messages(node)
    assert all(answer.term == 3 for answer in answers)
    assert all(answer.reject for answer in answers if answer.type in _VOTE_ANSWERS)
    if stale.type is not MessageType.REQUEST_VOTE:
        # The stale leader must be able to learn the new term from the answer.
        assert [(a.to, a.term) for a in answers] == [("2", 3)]


_VOTE_ANSWERS = (MessageType.REQUEST_VOTE_RESPONSE, MessageType.PRE_VOTE_RESPONSE)


def test_leader_bcast_beat() -> None:
    """§5.2: the leader sends periodic heartbeats to all followers to keep its authority,
    every heartbeat_tick ticks."""
    node = new_leader("1", node_ids(3), heartbeat_tick=3)
    tick(node, 2)
    assert read_messages(node) == []
    node.tick()
    beats = read_messages(node)
    assert sorted(beat.to for beat in beats) == ["2", "3"]
    for beat in beats:
        assert (beat.type, beat.sender, beat.term) == (MessageType.HEARTBEAT, "1", 1)


def test_follower_stays_follower_while_hearing_from_leader() -> None:
    """§5.2: a server remains a follower as long as it receives valid RPCs from a leader."""
    node = new_node("1", node_ids(3), term=1)
    for _ in range(10):
        tick(node, ELECTION_TICK - 1)
        node.step(Message(type=MessageType.HEARTBEAT, to="1", sender="2", term=1))
    assert (node.raft.state, node.raft.term, node.raft.lead) == (FOLLOWER, 1, "2")


@pytest.mark.parametrize("pre_vote", [False, True])
def test_follower_start_election(pre_vote: bool) -> None:
    """§5.2: a follower that hears nothing for an election timeout increments its term,
    votes for itself and asks every other server for its vote. With pre-vote it first
    asks whether it could win, without changing its term or vote."""
    node = new_node("1", node_ids(3), term=1, pre_vote=pre_vote)
    tick(node, ELECTION_TICK - 1)
    assert node.raft.state is FOLLOWER
    assert read_messages(node) == []
    # Every timeout is below 2 * election_tick, and a second one cannot end before then.
    tick(node, ELECTION_TICK)
    raft = node.raft
    if pre_vote:
        assert (raft.state, raft.term, raft.vote) == (PRE_CANDIDATE, 1, NONE)
        kind = MessageType.PRE_VOTE
    else:
        assert (raft.state, raft.term, raft.vote) == (CANDIDATE, 2, "1")
        kind = MessageType.REQUEST_VOTE
    requests = sorted(read_messages(node), key=lambda m: m.to)
    assert [(m.type, m.to, m.term) for m in requests] == [(kind, "2", 2), (kind, "3", 2)]


@pytest.mark.parametrize("pre_vote", [False, True])
def test_candidate_start_new_election(pre_vote: bool) -> None:
    """§5.2: a candidate that neither wins nor loses within an election timeout starts a
    new election (with pre-vote: a new pre-vote round for the next term)."""
    node = new_node("1", node_ids(3), term=1, pre_vote=pre_vote)
    become(node, CANDIDATE)
    assert node.raft.term == 2
    tick(node, 2 * ELECTION_TICK - 1)
    raft = node.raft
    if pre_vote:
        assert (raft.state, raft.term) == (PRE_CANDIDATE, 2)
        kind = MessageType.PRE_VOTE
    else:
        assert (raft.state, raft.term, raft.vote) == (CANDIDATE, 3, "1")
        kind = MessageType.REQUEST_VOTE
    requests = sorted(read_messages(node), key=lambda m: m.to)
    assert [(m.type, m.to, m.term) for m in requests] == [(kind, "2", 3), (kind, "3", 3)]


ROUND_OUTCOMES = [
    (1, {}, LEADER),
    (3, {"2": True, "3": True}, LEADER),
    (3, {"2": True}, LEADER),
    (5, {"2": True, "3": True, "4": True, "5": True}, LEADER),
    (5, {"2": True, "3": True, "4": True}, LEADER),
    (5, {"2": True, "3": True}, LEADER),
    # A majority refused: the election is lost.
    (3, {"2": False, "3": False}, FOLLOWER),
    (5, {"2": False, "3": False, "4": False, "5": False}, FOLLOWER),
    (5, {"2": True, "3": False, "4": False, "5": False}, FOLLOWER),
    # Neither a majority for nor against: still waiting.
    (3, {}, CANDIDATE),
    (5, {"2": True}, CANDIDATE),
    (5, {"2": False, "3": False}, CANDIDATE),
    (5, {}, CANDIDATE),
]


@pytest.mark.parametrize(("size", "votes", "outcome"), ROUND_OUTCOMES)
def test_leader_election_in_one_round_rpc(
    size: int, votes: dict[str, bool], outcome: StateType
) -> None:
    """§5.2: a candidate wins when it holds votes from a majority of the full cluster in
    its term, and loses when a majority refuses."""
    node = new_node("1", node_ids(size), pre_vote=False)
    node.campaign()
    requests = read_messages(node)
    assert {m.to for m in requests if m.type is MessageType.REQUEST_VOTE} == set(node_ids(size)[1:])
    for voter, granted in votes.items():
        node.step(
            Message(
                type=MessageType.REQUEST_VOTE_RESPONSE,
                to="1",
                sender=voter,
                term=1,
                reject=not granted,
            )
        )
    assert node.raft.state is outcome
    assert node.raft.term == 1


@pytest.mark.parametrize(("size", "votes", "outcome"), ROUND_OUTCOMES)
def test_pre_vote_round_outcome(size: int, votes: dict[str, bool], outcome: StateType) -> None:
    """Thesis §9.6: only a majority of pre-votes starts the real election (term + 1);
    losing or waiting leaves the term alone."""
    node = new_node("1", node_ids(size))
    node.campaign()
    read_messages(node)
    for voter, granted in votes.items():
        # A granted pre-vote answers in the term asked about; a refusal in the voter's own.
        term = 1 if granted else 0
        node.step(
            Message(
                type=MessageType.PRE_VOTE_RESPONSE,
                to="1",
                sender=voter,
                term=term,
                reject=not granted,
            )
        )
    expected = {
        LEADER: (CANDIDATE, 1) if size > 1 else (LEADER, 1),
        FOLLOWER: (FOLLOWER, 0),
        CANDIDATE: (PRE_CANDIDATE, 0),
    }[outcome]
    assert (node.raft.state, node.raft.term) == expected


@pytest.mark.parametrize(
    ("vote", "candidate", "granted"),
    [
        (NONE, "2", True),
        (NONE, "3", True),
        ("2", "2", True),
        ("3", "3", True),
        ("2", "3", False),
        ("3", "2", False),
    ],
)
def test_follower_vote(vote: str, candidate: str, granted: bool) -> None:
    """§5.2: each server votes for at most one candidate in a term; asking again for the
    same vote gets the same answer."""
    node = new_node("1", node_ids(3), term=1, vote=vote)
    node.step(Message(type=MessageType.REQUEST_VOTE, to="1", sender=candidate, term=1))
    (answer,) = read_messages(node)
    assert (answer.type, answer.to, answer.term) == (
        MessageType.REQUEST_VOTE_RESPONSE,
        candidate,
        1,
    )
    assert answer.reject is not granted
    assert node.raft.vote == (candidate if granted else vote)


def test_follower_vote_first_come_first_served() -> None:
    """§5.2: votes are granted first-come-first-served: the first candidate of a term
    gets the vote, a second one in that term is refused."""
    node = new_node("1", node_ids(3), term=1)
    answers: list[tuple[str, bool]] = []
    for candidate in ("3", "2", "3"):
        node.step(Message(type=MessageType.REQUEST_VOTE, to="1", sender=candidate, term=2))
        answers.extend((m.to, m.reject) for m in read_messages(node))
    assert answers == [("3", False), ("2", True), ("3", False)]
    assert (node.raft.term, node.raft.vote) == (2, "3")


@pytest.mark.parametrize("state", [PRE_CANDIDATE, CANDIDATE])
@pytest.mark.parametrize("term_ahead", [0, 1])
def test_candidate_fallback(state: StateType, term_ahead: int) -> None:
    """§5.2: a candidate that receives AppendEntries from a leader whose term is at least
    its own recognizes that leader and returns to follower."""
    node = new_node("1", node_ids(3), term=1)
    become(node, state)
    term = node.raft.term + term_ahead
    node.step(Message(type=MessageType.APPEND, to="1", sender="2", term=term))
    raft = node.raft
    assert (raft.state, raft.term, raft.lead) == (FOLLOWER, term, "2")
    assert [(m.type, m.reject) for m in read_messages(node)] == [
        (MessageType.APPEND_RESPONSE, False)
    ]


def ticks_to_campaign(node: RawNode) -> int:
    """Restart the node's election timer and count the ticks until it campaigns."""
    raft = node.raft
    raft.become_follower(raft.term, NONE)
    raft.messages.clear()
    for elapsed in range(1, 2 * ELECTION_TICK + 1):
        raft.tick()
        if raft.state is not FOLLOWER:
            return elapsed
    raise AssertionError("no election within 2 * election_tick")


def test_election_timeout_randomized() -> None:
    """§5.2: election timeouts are chosen at random from a fixed interval, here
    [election_tick, 2 * election_tick), drawn from the injected generator."""
    seed = 20140619
    node = new_node("1", node_ids(3), rng=random.Random(seed))
    timeouts = [ticks_to_campaign(node) for _ in range(50 * ELECTION_TICK)]
    assert set(timeouts) == set(range(ELECTION_TICK, 2 * ELECTION_TICK))
    # One draw when the node starts, then one per restart of the timer.
    replay = random.Random(seed)
    replay.randrange(ELECTION_TICK, 2 * ELECTION_TICK)
    assert timeouts == [replay.randrange(ELECTION_TICK, 2 * ELECTION_TICK) for _ in timeouts]


def test_election_timeout_nonconflict() -> None:
    """§5.2: randomized timeouts spread the servers out, so in most rounds a single server
    times out first (each node's default generator differs)."""
    nodes = [new_node(node_id, node_ids(5)) for node_id in node_ids(5)]
    rounds = 1000
    conflicts = 0
    for _ in range(rounds):
        for node in nodes:
            node.raft.become_follower(node.raft.term, NONE)
            node.raft.messages.clear()
        started = 0
        while not started:
            for node in nodes:
                node.raft.tick()
            started = sum(node.raft.state is not FOLLOWER for node in nodes)
        conflicts += started > 1
    assert conflicts / rounds <= 0.3
