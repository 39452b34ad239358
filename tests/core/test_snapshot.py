"""Log compaction and InstallSnapshot (§7 of the Raft paper, Figure 13), sent in chunks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from django_raft.core import (
    ConfChange,
    ConfChangeType,
    ConfState,
    Entry,
    Message,
    MessageType,
    RawNode,
    Snapshot,
    SnapshotMetadata,
    StateType,
)
from tests.core.helpers import (
    Network,
    isolate,
    log_entries,
    log_terms,
    new_leader,
    new_node,
    node_ids,
    persist,
    read_messages,
    read_ready,
    storage_of,
)

ELECTION_TICK = 10
VOTERS = node_ids(3)


def commands(count: int, prefix: str = "c") -> list[bytes]:
    return [f"{prefix}{n}".encode() for n in range(count)]


def snapshot_message(
    metadata: SnapshotMetadata,
    data: bytes,
    *,
    offset: int = 0,
    done: bool = True,
    term: int | None = None,
) -> Message:
    """One InstallSnapshot chunk from the leader "1" to the follower "2"."""
    return Message(
        type=MessageType.SNAPSHOT,
        to="2",
        sender="1",
        term=metadata.term if term is None else term,
        snapshot=metadata,
        offset=offset,
        data=data,
        done=done,
    )


def follower(terms: Sequence[int], commit: int, *, term: int | None = None) -> RawNode:
    """Return "2" with a log of ``terms`` committed up to ``commit`` and applied."""
    node = new_node("2", VOTERS, terms=terms, term=term, commit=commit)
    read_ready(node)
    assert node.raft.log.applied == commit
    return node


def lagging_network(*, entries_after_snapshot: int = 5, **settings: Any) -> Network:
    """Return three nodes where "3" missed 30 commands and the leader "1" compacted them."""
    network = Network.of(VOTERS, entries_after_snapshot=entries_after_snapshot, **settings)
    network.elect("1")
    network.drop = isolate("3")
    network.propose(*commands(30))
    network.take_snapshot("1")
    network.propose(*commands(10, "d"))
    network.drop = None
    network.delivered.clear()
    return network


def sent_to(network: Network, node_id: str, kind: MessageType) -> list[Message]:
    return [m for m in network.delivered if m.to == node_id and m.type is kind]


# -- taking snapshots -------------------------------------------------------------------


def test_create_snapshot_records_index_term_and_membership() -> None:
    """§7: a snapshot records the last included index and term, and (thesis §5.1) the
    latest membership as of that index, not any change after it."""
    network = Network.of(VOTERS, pre_vote=False, check_quorum=False)
    network.elect("1")
    first = network.propose(b"a")
    network.elect("2")
    network.change(ConfChange(ConfChangeType.ADD_LEARNER, "4"))
    last = network.propose(b"b")
    node = network.nodes["3"]
    assert (node.raft.log.term(first), node.raft.log.term(last)) == (1, 2)
    snapshot = node.create_snapshot(first, b"state at first")
    assert snapshot == Snapshot(
        SnapshotMetadata(first, 1, ConfState(voters=VOTERS)), b"state at first"
    )
    snapshot = node.create_snapshot(last, b"state at last")
    assert snapshot.metadata == SnapshotMetadata(last, 2, ConfState(voters=VOTERS, learners=("4",)))


def test_snapshot_of_unapplied_index_refused() -> None:
    """A snapshot describes applied state; an index the host has not applied cannot be
    described."""
    network = Network.of(VOTERS)
    leader = network.elect("1")
    network.drop = isolate("2", "3")
    index = network.propose(b"uncommitted")
    assert leader.raft.log.applied == index - 1
    with pytest.raises(ValueError):
        leader.create_snapshot(index, b"")


def test_snapshot_due_after_threshold() -> None:
    """``snapshot_due`` says yes once ``snapshot_threshold`` entries were applied since the
    latest snapshot, and no again after the host took one."""
    network = Network.of(("1",), snapshot_threshold=5)
    leader = network.elect("1")
    network.take_snapshot("1")
    network.propose(*commands(4))
    assert not leader.snapshot_due()
    network.propose(b"x")
    assert leader.snapshot_due()
    network.take_snapshot("1")
    assert not leader.snapshot_due()
    network.propose(*commands(4))
    assert not leader.snapshot_due()
    network.propose(b"y")
    assert leader.snapshot_due()


@pytest.mark.parametrize("kept", [3, 0, 200])
def test_compaction_keeps_entries_after_snapshot(kept: int) -> None:
    """``compact_index`` keeps ``entries_after_snapshot`` entries up to the snapshot index
    (go-raft's default 200), so a follower only slightly behind can still be sent
    entries."""
    network = Network.of(("1",), entries_after_snapshot=kept)
    leader = network.elect("1")
    last = network.propose(*commands(10))
    snapshot = network.take_snapshot("1")
    assert snapshot.metadata.index == last
    first_index = max(1, last - kept + 1)
    assert leader.compact_index(snapshot) == first_index - 1
    assert storage_of(leader).first_index() == leader.raft.log.first_index() == first_index
    assert leader.raft.log.last_index() == last
    assert len(log_entries(leader)) == min(kept, last)


# -- sending snapshots ------------------------------------------------------------------


def test_lagging_follower_gets_snapshot_then_entries() -> None:
    """§7: a follower that needs entries the leader has discarded is sent the snapshot
    once, then the entries after it; it does not go round asking again."""
    network = lagging_network(max_snapshot_chunk=64)
    leader, lagging = network.nodes["1"], network.nodes["3"]
    snapshot = storage_of(leader).snapshot()
    assert leader.raft.log.first_index() > lagging.raft.log.last_index() + 1
    network.tick()
    installs = [m for m in sent_to(network, "3", MessageType.SNAPSHOT) if m.done]
    assert len(installs) == 1
    assert installs[0].snapshot == snapshot.metadata
    appends = [m for m in sent_to(network, "3", MessageType.APPEND) if m.entries]
    assert appends[0].index == snapshot.metadata.index
    assert network.commands("3") == network.commands("1") == commands(30) + commands(10, "d")
    assert log_entries(lagging) == log_entries(leader)[-len(log_entries(lagging)) :]
    assert storage_of(lagging).snapshot() == snapshot
    assert lagging.raft.log.first_index() == snapshot.metadata.index + 1

    network.delivered.clear()
    network.propose(b"more")
    network.tick(3 * ELECTION_TICK)
    assert sent_to(network, "3", MessageType.SNAPSHOT) == []
    assert network.commands("3") == network.commands("1")


def test_slightly_behind_follower_gets_entries_not_snapshot() -> None:
    """The entries kept after a snapshot (``entries_after_snapshot``) let a follower that
    is only a little behind catch up with entries, without a snapshot."""
    network = Network.of(VOTERS, entries_after_snapshot=20)
    network.elect("1")
    network.propose(*commands(15))
    network.drop = isolate("3")
    network.propose(*commands(10, "d"))
    network.take_snapshot("1")
    assert 1 < network.nodes["1"].raft.log.first_index() <= network.machines["3"].index
    network.drop = None
    network.delivered.clear()
    network.tick()
    assert sent_to(network, "3", MessageType.SNAPSHOT) == []
    assert network.commands("3") == commands(15) + commands(10, "d")


def test_snapshot_chunks_bounded_by_max_snapshot_chunk() -> None:
    """InstallSnapshot sends the data in chunks of at most ``max_snapshot_chunk`` bytes at
    consecutive offsets, ``done`` on the last one only; each acknowledgement names the
    next offset the follower expects."""
    network = lagging_network(max_snapshot_chunk=7)
    snapshot = storage_of(network.nodes["1"]).snapshot()
    network.tick()
    chunks = sent_to(network, "3", MessageType.SNAPSHOT)
    assert len(chunks) >= len(snapshot.data) // 7
    assert all(0 < len(m.data) <= 7 for m in chunks)
    assert [m.offset for m in chunks] == list(range(0, len(snapshot.data), 7))
    assert b"".join(m.data for m in chunks) == snapshot.data
    assert [m.done for m in chunks] == [False] * (len(chunks) - 1) + [True]
    assert all(m.snapshot == snapshot.metadata for m in chunks)
    answers = [m for m in network.delivered if m.type is MessageType.SNAPSHOT_RESPONSE]
    assert [m.offset for m in answers] == [m.offset + 7 for m in chunks[:-1]]
    assert not any(m.reject for m in answers)
    assert network.commands("3") == network.commands("1")


def test_empty_snapshot_sent_in_one_chunk() -> None:
    """A snapshot with no data still goes out, as one chunk marked ``done``."""
    leader = new_leader("1", VOTERS, terms=[1, 1, 1, 1])
    storage = storage_of(leader)
    metadata = SnapshotMetadata(4, 1, ConfState(voters=VOTERS))
    storage.create_snapshot(Snapshot(metadata, b""))
    storage.compact(4)
    leader.step(Message(type=MessageType.HEARTBEAT_RESPONSE, to="1", sender="2", term=2))
    (probe,) = [m for m in read_messages(leader) if m.to == "2"]
    assert probe.type is MessageType.APPEND
    leader.step(
        Message(
            type=MessageType.APPEND_RESPONSE,
            to="1",
            sender="2",
            term=2,
            index=probe.index,
            reject=True,
        )
    )
    chunks = [m for m in read_messages(leader) if m.to == "2"]
    assert [(m.type, m.snapshot, m.offset, m.data, m.done) for m in chunks] == [
        (MessageType.SNAPSHOT, metadata, 0, b"", True)
    ]


def test_lost_snapshot_chunk_is_resent() -> None:
    """A lost chunk is sent again after the next heartbeat answer, from where the
    follower stopped, not from the start."""
    network = lagging_network(max_snapshot_chunk=16)
    lost: list[Message] = []

    def lose_second_chunk(message: Message) -> bool:
        if message.type is MessageType.SNAPSHOT and message.offset == 16 and not lost:
            lost.append(message)
            return True
        return False

    network.drop = lose_second_chunk
    network.tick()
    assert lost
    assert network.nodes["3"].raft.log.committed < network.nodes["1"].raft.log.committed
    network.tick()
    chunks = sent_to(network, "3", MessageType.SNAPSHOT)
    assert [m.offset for m in chunks].count(0) == 1
    assert [m.offset for m in chunks].count(16) == 1
    assert network.commands("3") == network.commands("1")


def test_lost_install_acknowledgement_recovers() -> None:
    """If the answer to the last chunk is lost, the leader resends that chunk; the
    follower, which already installed the snapshot, says how far it is instead of
    installing it twice, and replication resumes."""
    network = lagging_network(max_snapshot_chunk=64)
    index = storage_of(network.nodes["1"]).snapshot().metadata.index
    lost: list[Message] = []

    def lose_install_answer(message: Message) -> bool:
        if (
            message.sender == "3"
            and message.type is MessageType.APPEND_RESPONSE
            and message.index == index
            and not lost
        ):
            lost.append(message)
            return True
        return False

    network.drop = lose_install_answer
    network.tick(3)
    assert lost
    assert len([m for m in sent_to(network, "3", MessageType.SNAPSHOT) if m.done]) == 2
    assert network.commands("3") == network.commands("1")
    assert network.nodes["1"].raft.progress["3"].match == network.nodes["1"].raft.log.last_index()


def test_transfer_goes_on_with_its_snapshot_when_a_newer_one_is_taken() -> None:
    """A newer snapshot taken during a transfer does not restart it (a slow follower
    would otherwise loop on ever newer snapshots): the transfer finishes with the
    snapshot it started with, the log is not compacted past that snapshot, and the
    follower continues from it with entries."""
    network = lagging_network(max_snapshot_chunk=16, entries_after_snapshot=0)
    old = storage_of(network.nodes["1"]).snapshot()
    network.drop = lambda m: m.type is MessageType.SNAPSHOT_RESPONSE
    network.tick()
    assert [m.offset for m in sent_to(network, "3", MessageType.SNAPSHOT)] == [0]
    network.drop = isolate("3")
    network.propose(*commands(5, "e"))
    new = network.take_snapshot("1")
    assert new.metadata.index > old.metadata.index
    assert storage_of(network.nodes["1"]).first_index() <= old.metadata.index + 1
    network.drop = None
    network.delivered.clear()
    network.tick()
    chunks = sent_to(network, "3", MessageType.SNAPSHOT)
    assert chunks and {m.snapshot for m in chunks} == {old.metadata}
    assert storage_of(network.nodes["3"]).snapshot() == old
    assert network.commands("3") == network.commands("1")


def test_new_node_gets_snapshot_with_membership() -> None:
    """A server added after the log was compacted starts from the leader's snapshot, which
    carries the membership as of its index; the changes after it come as entries."""
    network = Network.of(VOTERS, entries_after_snapshot=0)
    leader = network.elect("1")
    network.propose(*commands(5))
    network.take_snapshot("1")
    network.add("4")
    network.change(ConfChange(ConfChangeType.ADD_VOTER, "4"))
    network.tick()
    new = network.nodes["4"]
    assert new.conf_state() == leader.conf_state() == ConfState(voters=("1", "2", "3", "4"))
    assert network.commands("4") == commands(5)
    assert storage_of(new).snapshot().metadata == storage_of(leader).snapshot().metadata


# -- installing snapshots ---------------------------------------------------------------


def test_snapshot_install_keeps_matching_entries() -> None:
    """Figure 13, step 6: if the follower's log holds the snapshot's last entry with the
    same term, it keeps the entries after it; the snapshot only moves its commit index,
    and the host applies the follower's own entries instead of restoring the snapshot."""
    node = follower([1, 1, 1, 1, 1], commit=2, term=1)
    node.step(snapshot_message(SnapshotMetadata(3, 1, ConfState(voters=VOTERS)), b"state"))
    ready = read_ready(node)
    assert ready.snapshot is None
    assert [e.index for e in ready.committed_entries] == [3]
    assert log_terms(node) == [1, 1, 1, 1, 1]
    assert node.raft.log.committed == 3
    assert storage_of(node).snapshot().metadata.index == 0
    assert [(m.type, m.index, m.reject) for m in ready.messages] == [
        (MessageType.APPEND_RESPONSE, 3, False)
    ]


@pytest.mark.parametrize(
    ("terms", "commit", "index", "term"),
    [
        ([1, 1, 2, 2], 1, 3, 3),  # the follower's entry 3 has another term
        ([1], 1, 10, 2),  # the follower's log ends before the snapshot
    ],
)
def test_snapshot_install_replaces_conflicting_log(
    terms: list[int], commit: int, index: int, term: int
) -> None:
    """Figure 13, step 7: otherwise the whole log is discarded; the host persists the
    snapshot and restores its state machine from it (no committed entries come with it),
    and applied jumps to the snapshot's index. Its membership is the snapshot's."""
    node = follower(terms, commit=commit, term=terms[-1])
    conf = ConfState(voters=VOTERS, learners=("5",))
    snapshot = Snapshot(SnapshotMetadata(index, term, conf), b"state")
    node.step(snapshot_message(snapshot.metadata, b"sta", done=False))
    assert not any(m.type is MessageType.APPEND_RESPONSE for m in read_messages(node))
    assert node.raft.log.committed == commit
    node.step(snapshot_message(snapshot.metadata, b"te", offset=3))
    ready = node.ready()
    assert ready.snapshot == snapshot
    assert ready.committed_entries == ()
    assert ready.hard_state is not None
    assert (ready.hard_state.term, ready.hard_state.commit) == (term, index)
    assert [(m.type, m.index, m.reject) for m in ready.messages] == [
        (MessageType.APPEND_RESPONSE, index, False)
    ]
    persist(node, ready)
    node.advance(ready)
    log = node.raft.log
    assert (log.applied, log.committed) == (index, index)
    assert (log.first_index(), log.last_index(), log.term(index)) == (index + 1, index, term)
    assert node.conf_state() == conf
    assert storage_of(node).snapshot() == snapshot
    assert not node.has_ready()


def test_entries_after_snapshot_wait_for_it() -> None:
    """Entries that arrive after a snapshot, before the host persisted it, are handed out
    with it, to be persisted after it, and are applied only once it was restored."""
    node = follower([1], commit=1, term=1)
    metadata = SnapshotMetadata(3, 1, ConfState(voters=VOTERS))
    node.step(snapshot_message(metadata, b"state"))
    entry = Entry(index=4, term=1, data=b"x")
    node.step(
        Message(
            type=MessageType.APPEND,
            to="2",
            sender="1",
            term=1,
            index=3,
            log_term=1,
            entries=(entry,),
            commit=4,
        )
    )
    ready = node.ready()
    assert ready.snapshot == Snapshot(metadata, b"state")
    assert ready.entries == (entry,)
    assert ready.committed_entries == ()
    persist(node, ready)
    node.advance(ready)
    assert (storage_of(node).first_index(), storage_of(node).last_index()) == (4, 4)
    assert read_ready(node).committed_entries == (entry,)


@pytest.mark.parametrize("index", [3, 5])
def test_stale_snapshot_ignored(index: int) -> None:
    """A snapshot that covers no more than the follower already committed is ignored: the
    follower keeps its log and tells the leader how far it has committed."""
    node = follower([1, 1, 1, 1, 1], commit=5, term=1)
    node.step(snapshot_message(SnapshotMetadata(index, 1, ConfState(voters=VOTERS)), b"old"))
    ready = read_ready(node)
    assert ready.snapshot is None
    assert ready.committed_entries == ()
    assert [(m.type, m.index, m.reject) for m in ready.messages] == [
        (MessageType.APPEND_RESPONSE, 5, False)
    ]
    assert log_terms(node) == [1, 1, 1, 1, 1]
    assert storage_of(node).snapshot().metadata.index == 0


def test_out_of_order_chunk_rejected_with_resume_offset() -> None:
    """A chunk that does not start where the received data ends is refused, and the answer
    names the offset to resume from (0 when no transfer is under way)."""
    node = follower([1], commit=1, term=1)
    metadata = SnapshotMetadata(5, 1, ConfState(voters=VOTERS))

    def answer(message: Message) -> tuple[int, bool]:
        node.step(message)
        (reply,) = read_messages(node)
        assert reply.type is MessageType.SNAPSHOT_RESPONSE
        assert reply.snapshot == metadata
        return reply.offset, reply.reject

    assert answer(snapshot_message(metadata, b"fghij", offset=5, done=False)) == (0, True)
    assert answer(snapshot_message(metadata, b"abcde", done=False)) == (5, False)
    assert answer(snapshot_message(metadata, b"klmno", offset=10, done=False)) == (5, True)
    assert answer(snapshot_message(metadata, b"abcde", done=False)) == (5, False)
    node.step(snapshot_message(metadata, b"fghij", offset=5))
    ready = read_ready(node)
    assert ready.snapshot == Snapshot(metadata, b"abcdefghij")


def test_no_campaign_while_snapshot_unpersisted() -> None:
    """A follower may not campaign with a log it has not made durable: until the host
    persisted the received snapshot, an election timeout starts nothing."""
    node = follower([1], commit=1, term=1)
    node.step(snapshot_message(SnapshotMetadata(5, 1, ConfState(voters=VOTERS)), b"s"))
    node.campaign()
    ready = node.ready()
    assert {m.type for m in ready.messages} == {MessageType.APPEND_RESPONSE}
    assert node.raft.state is StateType.FOLLOWER
    persist(node, ready)
    node.advance(ready)
    node.campaign()
    assert {m.type for m in read_messages(node)} == {MessageType.PRE_VOTE}


def test_restart_after_snapshot_install() -> None:
    """A server restarted after installing a snapshot finds its index, term and membership
    in storage and hands out no entry the snapshot covers."""
    network = lagging_network()
    network.tick()
    snapshot = storage_of(network.nodes["3"]).snapshot()
    assert snapshot.metadata.index > 0
    node = RawNode(network.nodes["3"].raft.config, storage_of(network.nodes["3"]))
    assert node.raft.log.applied == snapshot.metadata.index
    assert node.raft.log.committed >= snapshot.metadata.index
    assert node.conf_state() == snapshot.metadata.conf_state
    ready = node.ready()
    assert ready.snapshot is None
    assert ready.committed_entries[0].index == snapshot.metadata.index + 1


def test_transfer_resumes_from_start_after_follower_restart() -> None:
    """A follower that restarted mid-transfer has lost the chunks it held; it refuses the
    next one with offset 0 and the leader starts the snapshot over."""
    network = lagging_network(max_snapshot_chunk=16)
    network.drop = lambda m: m.type is MessageType.SNAPSHOT and m.offset == 32
    network.tick()
    assert [m.offset for m in sent_to(network, "3", MessageType.SNAPSHOT)] == [0, 16]
    network.restart("3")
    network.drop = None
    network.delivered.clear()
    network.tick()
    refusals = [
        m for m in network.delivered if m.type is MessageType.SNAPSHOT_RESPONSE and m.reject
    ]
    assert [(m.sender, m.offset) for m in refusals] == [("3", 0)]
    offsets = [m.offset for m in sent_to(network, "3", MessageType.SNAPSHOT)]
    assert offsets[:3] == [32, 0, 16]
    assert network.commands("3") == network.commands("1")
