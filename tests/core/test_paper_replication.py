"""Log replication: §5.3 of the Raft paper, with etcd-io/raft's flow control."""

from __future__ import annotations

from typing import Any

import pytest

from django_raft.core import (
    MAX_ENTRIES_PER_MESSAGE,
    Config,
    Entry,
    Message,
    MessageType,
    ProgressState,
)
from tests.core.helpers import (
    cluster,
    deliver_all,
    elect,
    isolate,
    log_entries,
    log_terms,
    new_leader,
    new_node,
    node_ids,
    read_messages,
    read_ready,
    storage_of,
)


def append(
    term: int,
    index: int,
    log_term: int,
    entries: list[tuple[int, int]] | tuple[Entry, ...] = (),
    commit: int = 0,
) -> Message:
    """AppendEntries from "2" to "1"; ``entries`` may be given as (index, term) pairs."""
    stamped = tuple(e if isinstance(e, Entry) else Entry(index=e[0], term=e[1]) for e in entries)
    return Message(
        type=MessageType.APPEND,
        to="1",
        sender="2",
        term=term,
        index=index,
        log_term=log_term,
        entries=stamped,
        commit=commit,
    )


def acknowledge(sender: str, term: int, index: int) -> Message:
    """A successful AppendEntries answer from ``sender`` to the leader "1"."""
    return Message(type=MessageType.APPEND_RESPONSE, to="1", sender=sender, term=term, index=index)


def test_leader_start_replication() -> None:
    """§5.3: the leader appends the command to its log as a new entry, then sends
    AppendEntries to every other server with that entry, the index and term of the entry
    just before it, and the leader's commit index."""
    nodes = cluster(3)
    leader = elect(nodes, "1")
    last, commit = leader.raft.log.last_index(), leader.raft.log.committed
    index = leader.propose(b"some data")
    ready = read_ready(leader)
    entry = Entry(index=last + 1, term=1, data=b"some data")
    assert index == last + 1
    assert ready.entries == (entry,)
    expected = [
        Message(
            type=MessageType.APPEND,
            to=peer,
            sender="1",
            term=1,
            index=last,
            log_term=1,
            entries=(entry,),
            commit=commit,
        )
        for peer in ("2", "3")
    ]
    assert sorted(ready.messages, key=lambda m: m.to) == expected


@pytest.mark.parametrize("max_inflight", [1, 256])
def test_replication_starts_without_waiting_for_heartbeat(max_inflight: int) -> None:
    """§5.3: a proposal is sent to the followers at once (no tick needed), and the entry
    commits as soon as their answers arrive."""
    nodes = cluster(3, max_inflight_messages=max_inflight)
    leader = elect(nodes, "1")
    for n in range(3):
        index = leader.propose(b"command %d" % n)
        appends = [m for m in read_messages(leader) if m.type is MessageType.APPEND]
        carried_to = [m.to for m in appends if index in [e.index for e in m.entries]]
        assert sorted(carried_to) == ["2", "3"], f"proposal {n} was not sent"
        for message in appends:
            nodes[message.to].step(message)
        deliver_all(nodes)
        assert [node.raft.log.committed for node in nodes.values()] == [index] * 3


def test_leader_commit_entry() -> None:
    """§5.3: once the leader has replicated an entry on a majority it commits it, hands it
    to its state machine, and tells followers the new commit index in later
    AppendEntries, so they apply it too."""
    nodes = cluster(3)
    leader = elect(nodes, "1")
    index = leader.propose(b"x")
    for message in read_messages(leader):
        nodes[message.to].step(message)
    for follower in ("2", "3"):
        for message in read_messages(nodes[follower]):
            leader.step(message)
    assert leader.raft.log.committed == index
    ready = read_ready(leader)
    assert [(e.index, e.data) for e in ready.committed_entries] == [(index, b"x")]
    commits = {m.to: m.commit for m in ready.messages if m.type is MessageType.APPEND}
    assert commits == {"2": index, "3": index}
    for message in ready.messages:
        nodes[message.to].step(message)
    deliver_all(nodes)
    assert [nodes[f].raft.log.committed for f in ("2", "3")] == [index, index]


@pytest.mark.parametrize(
    ("size", "acceptors", "committed"),
    [
        (1, set(), True),
        (3, set(), False),
        (3, {"2"}, True),
        (3, {"2", "3"}, True),
        (5, set(), False),
        (5, {"2"}, False),
        (5, {"2", "3"}, True),
        (5, {"2", "3", "4"}, True),
        (5, {"2", "3", "4", "5"}, True),
    ],
)
def test_leader_acknowledge_commit(size: int, acceptors: set[str], committed: bool) -> None:
    """§5.3: an entry is committed once the leader that created it has replicated it on a
    majority of the servers (the leader counting itself)."""
    leader = new_leader("1", node_ids(size))
    index = leader.propose(b"x")
    read_messages(leader)
    for acceptor in sorted(acceptors):
        leader.step(acknowledge(acceptor, 1, index))
    assert (leader.raft.log.committed == index) is committed


@pytest.mark.parametrize("terms", [[], [2], [1, 1], [1, 2], [1, 1, 2, 3]])
def test_leader_commit_preceding_entries(terms: list[int]) -> None:
    """§5.3: committing an entry also commits every entry before it in the leader's log,
    including entries created by earlier leaders."""
    leader = new_leader("1", node_ids(3), terms=terms)
    term = leader.raft.term
    index = leader.propose(b"x")
    read_messages(leader)
    for acceptor in ("2", "3"):
        leader.step(acknowledge(acceptor, term, index))
    applied = read_ready(leader).committed_entries
    expected = [*enumerate(terms, start=1), (index - 1, term), (index, term)]
    assert [(e.index, e.term) for e in applied] == expected


@pytest.mark.parametrize(("count", "commit"), [(1, 1), (2, 2), (2, 1), (3, 0)])
def test_follower_commit_entry(count: int, commit: int) -> None:
    """§5.3: a follower that learns from leaderCommit that entries are committed applies
    them to its state machine in log order, and no further than leaderCommit."""
    node = new_node("1", node_ids(3), term=1)
    entries = tuple(Entry(index=i, term=1, data=b"cmd %d" % i) for i in range(1, count + 1))
    node.step(append(1, 0, 0, entries, commit=commit))
    assert node.raft.log.committed == commit
    assert read_ready(node).committed_entries == entries[:commit]


@pytest.mark.parametrize(
    ("log_term", "index", "reject", "answer_index", "hint", "hint_term"),
    [
        # Below the follower's commit index: those entries are known to match.
        (0, 0, False, 1, 0, 0),
        (1, 1, False, 1, 0, 0),
        (2, 2, False, 2, 0, 0),
        # Entry 2 has another term: refuse, and point at entry 1 (term 1 ≤ 1).
        (1, 2, True, 2, 1, 1),
        # No entry 3: refuse, and point at our last entry.
        (2, 3, True, 3, 2, 2),
    ],
)
def test_follower_check_append(
    log_term: int, index: int, reject: bool, answer_index: int, hint: int, hint_term: int
) -> None:
    """§5.3: a follower refuses AppendEntries unless its log holds an entry at
    prevLogIndex whose term is prevLogTerm; a refusal tells the leader where the logs
    may agree (the last entry at or before prevLogIndex with a term ≤ prevLogTerm)."""
    node = new_node("1", node_ids(3), terms=[1, 2], commit=1)
    node.step(append(2, index, log_term, commit=1))
    (answer,) = read_messages(node)
    assert (answer.type, answer.to, answer.term) == (MessageType.APPEND_RESPONSE, "2", 2)
    assert (answer.reject, answer.index, answer.reject_hint, answer.log_term) == (
        reject,
        answer_index,
        hint,
        hint_term,
    )
    assert log_terms(node) == [1, 2]


@pytest.mark.parametrize(
    ("index", "log_term", "entries", "want_terms", "want_unstable"),
    [
        (2, 2, [(3, 3)], [1, 2, 3], [(3, 3)]),
        (1, 1, [(2, 3), (3, 4)], [1, 3, 4], [(2, 3), (3, 4)]),
        (0, 0, [(1, 1)], [1, 2], []),
        (0, 0, [(1, 3)], [3], [(1, 3)]),
    ],
)
def test_follower_append_entries(
    index: int,
    log_term: int,
    entries: list[tuple[int, int]],
    want_terms: list[int],
    want_unstable: list[tuple[int, int]],
) -> None:
    """§5.3: when an existing entry conflicts with a new one (same index, different term)
    the follower deletes it and everything after it, then appends the new entries; entries
    it already holds are left alone."""
    node = new_node("1", node_ids(3), terms=[1, 2])
    node.step(append(4, index, log_term, entries))
    assert log_terms(node) == want_terms
    assert [(e.index, e.term) for e in node.raft.log.unstable] == want_unstable
    read_messages(node)
    assert [e.term for e in log_entries(node)] == want_terms
    assert storage_of(node).last_index() == len(want_terms)


@pytest.mark.parametrize(
    ("index", "log_term", "entries"),
    [(0, 0, [(1, 1)]), (1, 1, [(2, 1)]), (0, 0, [(1, 1), (2, 1)]), (2, 1, [])],
)
def test_follower_does_not_truncate_matching_entries_on_stale_append(
    index: int, log_term: int, entries: list[tuple[int, int]]
) -> None:
    """§5.3: only conflicting entries are deleted. A delayed AppendEntries carrying a
    prefix of what the follower already acknowledged must not shorten its log (the
    leader may already count those entries towards a commit)."""
    node = new_node("1", node_ids(3), terms=[1, 1, 1], term=1)
    node.step(append(1, index, log_term, entries))
    assert log_terms(node) == [1, 1, 1]
    assert node.raft.log.unstable == []
    (answer,) = read_messages(node)
    assert (answer.reject, answer.index) == (False, index + len(entries))
    assert storage_of(node).last_index() == 3


LEADER_LOG = [1, 1, 1, 4, 4, 5, 5, 6, 6, 6]
FIGURE_7 = {
    "a": [1, 1, 1, 4, 4, 5, 5, 6, 6],
    "b": [1, 1, 1, 4],
    "c": [1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 6],
    "d": [1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 7, 7],
    "e": [1, 1, 1, 4, 4, 4, 4],
    "f": [1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 3],
}


@pytest.mark.parametrize("follower_log", FIGURE_7.values(), ids=FIGURE_7.keys())
def test_leader_sync_follower_log(follower_log: list[int]) -> None:
    """§5.3, Figure 7: whatever a follower is missing or holds in excess, the leader of
    term 8 brings its log into agreement with the leader's own."""
    voters = node_ids(3)
    nodes = {
        "1": new_node("1", voters, terms=LEADER_LOG, term=7),
        "2": new_node("2", voters, terms=follower_log, term=7),
        "3": new_node("3", voters, term=7),
    }
    leader = elect(nodes, "1")
    assert leader.raft.term == 8
    assert log_terms(nodes["2"]) == [*LEADER_LOG, 8]
    assert log_entries(nodes["2"]) == log_entries(leader)
    assert nodes["2"].raft.log.committed == leader.raft.log.committed == len(LEADER_LOG) + 1


@pytest.mark.parametrize(
    ("leader_terms", "follower_terms"),
    [
        # The follower holds many entries from terms the leader never saw.
        ([1] + [5] * 60, [1] + [2] * 20 + [3] * 20 + [4] * 20),
        # The follower is far behind.
        ([1] * 3 + [2] * 60, [1] * 3),
        # Both: the leader's hint skips its own terms 7 and 5 in one step.
        ([1] * 10 + [3] * 10 + [5] * 10 + [7] * 10, [1] * 10 + [3] * 10 + [4] * 25),
    ],
)
def test_fast_backtracking_uses_conflict_hint(
    leader_terms: list[int], follower_terms: list[int]
) -> None:
    """§5.3: a refusal names the conflicting term and where the follower's entries of
    that term begin, so the leader skips whole terms: it finds the point where the logs
    agree in about one round trip per term, not one per entry."""
    voters = node_ids(3)
    nodes = {
        "1": new_node("1", voters, terms=leader_terms),
        "2": new_node("2", voters, terms=follower_terms),
        "3": new_node("3", voters, terms=leader_terms),
    }
    nodes["1"].campaign()
    delivered = deliver_all(nodes)
    assert log_entries(nodes["2"]) == log_entries(nodes["1"])
    refusals = [
        m
        for m in delivered
        if m.type is MessageType.APPEND_RESPONSE and m.sender == "2" and m.reject
    ]
    assert 1 <= len(refusals) <= len(set(follower_terms))


@pytest.mark.parametrize(("limit", "count"), [(4, 25), (None, MAX_ENTRIES_PER_MESSAGE + 500)])
def test_max_entries_per_message(limit: int | None, count: int) -> None:
    """No AppendEntries carries more than max_entries_per_message entries (go-raft's
    MaxLogEntriesPerRequest, 2000 by default); a longer log is sent in several."""
    assert Config(id="1").max_entries_per_message == MAX_ENTRIES_PER_MESSAGE == 2000
    settings: dict[str, Any] = {} if limit is None else {"max_entries_per_message": limit}
    cap = limit or MAX_ENTRIES_PER_MESSAGE
    voters = node_ids(3)
    nodes = {
        "1": new_node("1", voters, terms=[1] * count, **settings),
        "2": new_node("2", voters),
        "3": new_node("3", voters, terms=[1] * count),
    }
    nodes["1"].campaign()
    delivered = deliver_all(nodes)
    sizes = [len(m.entries) for m in delivered if m.type is MessageType.APPEND and m.to == "2"]
    assert max(sizes) == cap
    assert sum(sizes) >= count + 1
    assert log_entries(nodes["2"]) == log_entries(nodes["1"])


def test_max_bytes_per_message() -> None:
    """No AppendEntries carries more than max_bytes_per_message bytes of entry data
    (etcd's MaxSizePerMsg), so a follower catching up gets a long log in several; an
    entry larger than the limit still goes, alone."""
    assert Config(id="1").max_bytes_per_message == 8 << 20
    voters = node_ids(3)
    nodes = {node_id: new_node(node_id, voters, max_bytes_per_message=100) for node_id in voters}
    nodes["1"].campaign()
    deliver_all(nodes)
    for size in [40] * 6 + [300] + [40] * 3:
        nodes["1"].propose(b"x" * size)
    deliver_all(nodes, drop=lambda m: "2" in (m.to, m.sender))  # 2 misses all of it
    for _ in range(nodes["1"].raft.config.heartbeat_tick):
        nodes["1"].tick()
    delivered = deliver_all(nodes)
    carried = [
        [len(entry.data) for entry in m.entries]
        for m in delivered
        if m.type is MessageType.APPEND and m.to == "2" and m.entries
    ]
    assert carried and all(sum(sizes) <= 100 or sizes == [300] for sizes in carried)
    assert [300] in carried and max(len(sizes) for sizes in carried) == 2
    assert log_entries(nodes["2"]) == log_entries(nodes["1"])


def test_probe_then_replicate() -> None:
    """A new leader probes each follower, one AppendEntries at a time, until it learns
    where their logs agree; it then streams entries without waiting for answers. A
    refusal sends it back to probing from just past the last known match."""
    leader = new_leader("1", node_ids(3), terms=[1, 1])
    progress = leader.raft.progress["2"]
    assert (progress.state, progress.next, progress.match) == (ProgressState.PROBE, 3, 0)
    leader.propose(b"a")
    leader.propose(b"b")
    probes = [m for m in read_messages(leader) if m.to == "2"]
    assert [(m.index, [e.index for e in m.entries]) for m in probes] == [(2, [3, 4])]

    leader.step(acknowledge("2", 2, 4))
    assert (progress.state, progress.match) == (ProgressState.REPLICATE, 4)
    follow_up = [m for m in read_messages(leader) if m.to == "2" and m.entries]
    assert [[e.index for e in m.entries] for m in follow_up] == [[5]]
    leader.propose(b"c")
    leader.propose(b"d")
    streamed = [m for m in read_messages(leader) if m.to == "2"]
    assert [[e.index for e in m.entries] for m in streamed] == [[6], [7]]
    assert progress.next == 8

    leader.step(
        Message(
            type=MessageType.APPEND_RESPONSE,
            to="1",
            sender="2",
            term=2,
            index=5,
            reject=True,
            reject_hint=4,
            log_term=2,
        )
    )
    assert (progress.state, progress.next) == (ProgressState.PROBE, 5)
    retry = [m for m in read_messages(leader) if m.to == "2"]
    assert [(m.index, [e.index for e in m.entries]) for m in retry] == [(4, [5, 6, 7])]


def test_pipelined_replication_respects_inflight_limit() -> None:
    """In steady state the leader sends each new entry at once without waiting for the
    previous answer, but leaves at most max_inflight_messages AppendEntries unanswered
    per follower; an answer frees a slot."""
    nodes = cluster(3, max_inflight_messages=3)
    leader = elect(nodes, "1")
    sent = []
    for n in range(6):
        leader.propose(b"%d" % n)
        sent += [m for m in read_messages(leader) if m.to == "2" and m.entries]
    assert [[e.index for e in m.entries] for m in sent] == [[2], [3], [4]]

    nodes["2"].step(sent[0])
    for answer in read_messages(nodes["2"]):
        leader.step(answer)
    more = [m for m in read_messages(leader) if m.to == "2" and m.entries]
    assert [[e.index for e in m.entries] for m in more] == [[5, 6, 7]]


def test_commit_only_append_takes_no_inflight_slot() -> None:
    """An AppendEntries with no entries (it only carries a new commit index) is not part
    of the pipeline and must not use one of the max_inflight_messages slots: otherwise a
    follower that is fully caught up looks busy."""
    nodes = cluster(3)
    leader = elect(nodes, "1")
    # The election ended with the no-op committed and the commit index broadcast.
    assert leader.raft.log.committed == 1
    for peer in ("2", "3"):
        progress = leader.raft.progress[peer]
        assert (progress.state, progress.match) == (ProgressState.REPLICATE, 1)
        assert len(progress.inflights) == 0


def test_heartbeat_never_commits_past_follower_log() -> None:
    """The commit index sent to a follower never passes what that follower is known to
    hold, so a lagging follower is not told to commit entries it lacks."""
    nodes = cluster(3)
    leader = elect(nodes, "1")
    for n in range(3):
        leader.propose(b"%d" % n)
        deliver_all(nodes, drop=isolate("3"))
    assert leader.raft.log.committed == 4
    leader.tick()
    beats = [m for m in read_messages(leader) if m.type is MessageType.HEARTBEAT]
    assert {m.to: m.commit for m in beats} == {"2": 4, "3": 1}
    for beat in beats:
        nodes[beat.to].step(beat)
    assert nodes["3"].raft.log.committed == 1
