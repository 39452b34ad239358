"""Rules an independent randomized harness found the core breaking, one test each."""

from __future__ import annotations

import pytest

from django_raft.core import (
    ConfChange,
    ConfChangeType,
    Config,
    Entry,
    EntryType,
    HardState,
    Message,
    MessageType,
    RawNode,
)
from tests.core.helpers import (
    Network,
    founding_storage,
    make_entries,
    new_node,
    node_ids,
    read_messages,
    read_ready,
)


def remove(node_id: str) -> ConfChange:
    return ConfChange(ConfChangeType.REMOVE, node_id)


@pytest.mark.parametrize("pre_vote", [False, True])
@pytest.mark.parametrize("check_quorum", [False, True])
@pytest.mark.parametrize(
    "kind",
    [MessageType.APPEND, MessageType.HEARTBEAT, MessageType.REQUEST_VOTE, MessageType.PRE_VOTE],
)
def test_server_answers_a_stale_request_with_its_current_term(
    pre_vote: bool, check_quorum: bool, kind: MessageType
) -> None:
    """Figure 2: a request from an older term is answered with the current term, whatever
    pre-vote and check-quorum say, so a superseded leader or candidate steps down (with
    both off, a leader that never heard the higher term kept its office for good while a
    removed server and a lagging member raised terms among themselves)."""
    node = new_node("1", node_ids(3), term=3, pre_vote=pre_vote, check_quorum=check_quorum)
    node.step(Message(type=kind, to="1", sender="2", term=2))
    answers = read_messages(node)
    assert [(m.to, m.term) for m in answers] == [("2", 3)]
    assert node.raft.term == 3


def test_replies_of_an_older_term_are_not_sent_once_a_newer_term_arrives() -> None:
    """Every message in a Ready is backed by what it persists: an acknowledgement queued
    for a term-1 leader must not survive a term-2 AppendEntries that truncates the entry
    it acknowledged in the same batch."""
    node = new_node("3", node_ids(3), terms=[1], commit=1)
    node.step(
        Message(
            type=MessageType.APPEND,
            to="3",
            sender="1",
            term=1,
            index=1,
            log_term=1,
            entries=tuple(make_entries([1], first=2)),
        )
    )
    node.step(
        Message(
            type=MessageType.APPEND,
            to="3",
            sender="2",
            term=2,
            index=1,
            log_term=1,
            entries=tuple(make_entries([2], first=2)),
        )
    )
    ready = read_ready(node)
    assert ready.hard_state == HardState(term=2, commit=1)
    assert [(e.index, e.term) for e in ready.entries] == [(2, 2)]
    assert [(m.to, m.term, m.index) for m in ready.messages] == [("2", 2, 2)]


def test_a_granted_vote_of_an_older_term_is_not_sent_after_a_newer_term() -> None:
    """A vote granted in term 2 and superseded in the same batch by term 3 is no longer
    what the Ready persists (term 3, no vote): it is not sent."""
    node = new_node("1", node_ids(3), term=1, pre_vote=False, check_quorum=False)
    node.step(Message(type=MessageType.REQUEST_VOTE, to="1", sender="2", term=2))
    node.step(Message(type=MessageType.HEARTBEAT, to="1", sender="3", term=3))
    ready = read_ready(node)
    assert ready.hard_state == HardState(term=3, vote="", commit=0)
    assert [(m.type, m.to) for m in ready.messages] == [(MessageType.HEARTBEAT_RESPONSE, "3")]


def test_a_node_its_own_log_removes_campaigns_with_a_pre_vote_whatever_the_settings() -> None:
    """A server removed by a change not yet committed may still campaign (its log may be
    the only up-to-date one), but with pre-vote off its real votes raised the term of a
    lagging voter that still counted it a member, which then lost its vote to it in every
    term and the cluster its leader (seen with pre-vote and check-quorum off). It asks
    with a pre-vote first, which changes nobody's term."""
    storage = founding_storage(node_ids(3))
    storage.persist(
        HardState(term=2, commit=3),
        [Entry(index=4, term=2, type=EntryType.CONF_CHANGE, data=remove("3").encode())],
    )
    node = RawNode(Config(id="3", pre_vote=False, check_quorum=False), storage)
    assert node.raft.promotable()
    node.campaign()
    ready = read_ready(node)
    assert node.raft.term == 2
    assert {(m.type, m.term) for m in ready.messages} == {(MessageType.PRE_VOTE, 3)}


def test_a_leader_removing_itself_never_sends_to_itself() -> None:
    """When its removal commits, the leader tells the removed members, not itself."""
    network = Network.of(node_ids(3))
    leader = network.elect("1")
    network.change(remove("1"))
    network.tick()
    assert not any(m.to == m.sender for m in network.delivered)
    assert leader.dropped == {}


def test_a_non_member_cannot_depose_a_leader_heard_from_even_without_check_quorum() -> None:
    """Thesis §4.2.3: a server that heard from a current leader within the minimum
    election timeout disregards a vote request from outside its membership (a removed
    server that never learned of its removal), with check-quorum off too; a fresh
    member that knows nobody otherwise gave it its vote in every term, deposing each
    leader before it could send that member the log. Members' requests still count."""
    node = new_node("2", node_ids(3), term=1, pre_vote=False, check_quorum=False)
    node.step(Message(type=MessageType.HEARTBEAT, to="2", sender="1", term=1))
    read_ready(node)
    node.step(
        Message(type=MessageType.REQUEST_VOTE, to="2", sender="9", term=5, index=9, log_term=5)
    )
    assert (node.raft.term, node.raft.lead) == (1, "1")
    assert not node.has_ready()
    node.step(
        Message(type=MessageType.REQUEST_VOTE, to="2", sender="3", term=5, index=9, log_term=5)
    )
    assert (node.raft.term, node.raft.vote) == (5, "3")


def test_only_a_leader_or_a_granted_vote_resets_the_election_timer() -> None:
    """Figure 2: a follower converts to candidate when its election timeout elapses
    without hearing from the current leader or granting a vote; merely hearing of a
    newer term does not restart the timeout (a node that did stayed one step behind a
    disruptive candidate in every term)."""
    node = new_node("1", node_ids(3), terms=[1, 1], term=1, pre_vote=False)
    for _ in range(5):
        node.tick()
    node.step(
        Message(type=MessageType.REQUEST_VOTE, to="1", sender="2", term=2, index=1, log_term=1)
    )
    assert node.raft.term == 2
    assert node.raft.election_elapsed == 5
