"""``RaftLog``: stable entries in storage, unstable ones in memory, and §5.3's checks."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from django_raft.core import Entry, HardState, MemoryStorage, RaftLog, Snapshot, SnapshotMetadata
from tests.core.helpers import make_entries


def new_log(stable: Sequence[int], unstable: Sequence[int] = (), committed: int = 0) -> RaftLog:
    """A log whose storage holds ``stable`` and whose memory holds ``unstable`` after it."""
    storage = MemoryStorage()
    storage.persist(entries=make_entries(stable))
    log = RaftLog(storage)
    log.append(make_entries(unstable, first=len(stable) + 1))
    log.committed = committed
    return log


def pairs(entries: Sequence[Entry]) -> list[tuple[int, int]]:
    return [(e.index, e.term) for e in entries]


def all_terms(log: RaftLog) -> list[int]:
    first = log.first_index()
    return [e.term for e in log.entries(first, log.last_index() + 1 - first)]


def stamped(entries: Sequence[tuple[int, int]]) -> tuple[Entry, ...]:
    return tuple(Entry(index=index, term=term) for index, term in entries)


def test_new_log_starts_from_storage() -> None:
    """A log built over storage starts with nothing unstable, the stored commit index,
    and applied at least up to the compaction point."""
    storage = MemoryStorage()
    storage.persist(HardState(term=2, commit=3), make_entries([1, 1, 2, 2]))
    storage.create_snapshot(Snapshot(SnapshotMetadata(1, storage.term(1))))
    storage.compact(1)
    log = RaftLog(storage)
    assert (log.first_index(), log.last_index(), log.last_term()) == (2, 4, 2)
    assert (log.committed, log.applied, log.offset, log.unstable) == (3, 1, 5, [])
    assert RaftLog(storage, applied=2).applied == 2


def test_unstable_entries_follow_stable() -> None:
    log = new_log([1, 1], [2, 2])
    assert log.offset == 3
    assert pairs(log.unstable) == [(3, 2), (4, 2)]
    assert (log.last_index(), log.last_term(), log.storage.last_index()) == (4, 2, 2)
    assert [log.term(i) for i in range(6)] == [0, 1, 1, 2, 2, 0]


@pytest.mark.parametrize(
    ("lo", "max_count", "indexes"),
    [
        (1, 10, [1, 2, 3, 4]),
        (1, 2, [1, 2]),
        (2, 2, [2, 3]),
        (1, 3, [1, 2, 3]),
        (3, 1, [3]),
        (3, 10, [3, 4]),
        (4, 5, [4]),
        (5, 1, []),
    ],
)
def test_entries_across_storage_unstable_boundary(
    lo: int, max_count: int, indexes: list[int]
) -> None:
    log = new_log([1, 1], [2, 2])
    entries = log.entries(lo, max_count)
    assert [e.index for e in entries] == indexes
    assert all(e.term == (1 if e.index <= 2 else 2) for e in entries)


def test_append_replacing_stored_tail() -> None:
    """Entries that replace part of the stored log hide the stored ones until the host
    persists them."""
    log = new_log([1, 1, 1])
    assert log.append(stamped([(2, 2)])) == 2
    assert (log.offset, pairs(log.unstable)) == (2, [(2, 2)])
    assert (log.last_index(), log.term(3)) == (2, 0)
    assert all_terms(log) == [1, 2]


def test_append_replacing_unstable_tail() -> None:
    log = new_log([1], [1, 1, 1])
    log.append(stamped([(3, 2)]))
    assert (log.offset, pairs(log.unstable)) == (2, [(2, 1), (3, 2)])


def test_append_refuses_to_overwrite_committed_entries() -> None:
    log = new_log([1, 1], committed=2)
    with pytest.raises(AssertionError):
        log.append(stamped([(2, 2)]))
    assert all_terms(log) == [1, 1]


@pytest.mark.parametrize(
    ("index", "term", "unstable", "offset"),
    [
        (2, 2, [(3, 2)], 3),
        (3, 2, [], 4),
        (2, 1, [(2, 2), (3, 2)], 2),  # another term at 2: those entries were replaced
        (4, 2, [(2, 2), (3, 2)], 2),  # not in the log
        (1, 1, [(2, 2), (3, 2)], 2),  # already stable
    ],
)
def test_stable_to(index: int, term: int, unstable: list[tuple[int, int]], offset: int) -> None:
    """Persisted entries stop being unstable, but only if they are still the log's."""
    log = new_log([1], [2, 2])
    log.stable_to(index, term)
    assert (pairs(log.unstable), log.offset) == (unstable, offset)


def test_stable_to_ignores_entries_replaced_meanwhile() -> None:
    """If the log was rewritten between ready() and advance(), persisting the old
    entries does not mark the new ones stable."""
    log = new_log([1], [1, 1])
    handed_out = list(log.unstable)
    log.append(stamped([(2, 2)]))
    assert isinstance(log.storage, MemoryStorage)
    log.storage.persist(entries=handed_out)
    log.stable_to(3, 1)
    assert pairs(log.unstable) == [(2, 2)]
    assert log.last_index() == 2


@pytest.mark.parametrize(
    ("entries", "conflict"),
    [
        ([], 0),
        ([(1, 1), (2, 2), (3, 3)], 0),
        ([(2, 2), (3, 3)], 0),
        ([(3, 3)], 0),
        # New entries past the end.
        ([(1, 1), (2, 2), (3, 3), (4, 4), (5, 4)], 4),
        ([(2, 2), (3, 3), (4, 4), (5, 4)], 4),
        ([(3, 3), (4, 4), (5, 4)], 4),
        ([(4, 4), (5, 4)], 4),
        # Conflicting terms.
        ([(1, 4), (2, 4)], 1),
        ([(2, 1), (3, 4), (4, 4)], 2),
        ([(3, 1), (4, 2), (5, 4), (6, 4)], 3),
    ],
)
def test_find_conflict(entries: list[tuple[int, int]], conflict: int) -> None:
    """The first entry that is new or has another term than ours; 0 when all match."""
    assert new_log([1, 2, 3]).find_conflict(stamped(entries)) == conflict


@pytest.mark.parametrize(
    ("index", "term", "expected"),
    [
        (6, 5, (6, 5)),
        (6, 4, (5, 3)),
        (6, 3, (5, 3)),
        (6, 2, (2, 1)),
        (4, 2, (2, 1)),
        (6, 1, (2, 1)),
        (6, 0, (0, 0)),
        (2, 9, (2, 1)),
        (9, 9, (9, 0)),  # past the end: nothing there can conflict
    ],
)
def test_find_conflict_by_term(index: int, term: int, expected: tuple[int, int]) -> None:
    """The last entry at or before ``index`` whose term is at most ``term``."""
    assert new_log([1, 1, 3, 3, 3, 5]).find_conflict_by_term(index, term) == expected


def test_find_conflict_by_term_stops_at_compaction() -> None:
    log = new_log([1, 1, 3, 3, 3, 5])
    assert isinstance(log.storage, MemoryStorage)
    log.storage.create_snapshot(Snapshot(SnapshotMetadata(2, log.storage.term(2))))
    log.storage.compact(2)
    assert log.find_conflict_by_term(6, 2) == (2, 1)
    assert log.find_conflict_by_term(6, 4) == (5, 3)


@pytest.mark.parametrize(
    ("prev", "commit", "entries", "result", "committed", "terms"),
    [
        # The consistency check fails: nothing changes.
        ((3, 2), 3, [(4, 4)], None, 1, [1, 2, 3]),
        ((4, 3), 3, [(5, 4)], None, 1, [1, 2, 3]),
        # Commit = min(leaderCommit, index of the last new entry), never backwards.
        ((3, 3), 3, [], 3, 3, [1, 2, 3]),
        ((3, 3), 4, [], 3, 3, [1, 2, 3]),
        ((3, 3), 2, [], 3, 2, [1, 2, 3]),
        ((3, 3), 0, [], 3, 1, [1, 2, 3]),
        ((2, 2), 3, [], 2, 2, [1, 2, 3]),
        ((3, 3), 4, [(4, 4)], 4, 4, [1, 2, 3, 4]),
        ((3, 3), 5, [(4, 4)], 4, 4, [1, 2, 3, 4]),
        ((3, 3), 5, [(4, 4), (5, 4)], 5, 5, [1, 2, 3, 4, 4]),
        # Conflicts are replaced from the first conflicting entry on.
        ((2, 2), 3, [(3, 4)], 3, 3, [1, 2, 4]),
        ((1, 1), 3, [(2, 4)], 2, 2, [1, 4]),
        ((1, 1), 3, [(2, 4), (3, 4)], 3, 3, [1, 4, 4]),
        # Entries we hold already are kept, even those the message does not cover.
        ((0, 0), 3, [(1, 1)], 1, 1, [1, 2, 3]),
        ((1, 1), 3, [(2, 2)], 2, 2, [1, 2, 3]),
    ],
)
def test_maybe_append(
    prev: tuple[int, int],
    commit: int,
    entries: list[tuple[int, int]],
    result: int | None,
    committed: int,
    terms: list[int],
) -> None:
    """§5.3's AppendEntries receiver rules 2 to 5, on a log [1, 2, 3] committed to 1."""
    log = new_log([1, 2, 3], committed=1)
    assert log.maybe_append(prev[0], prev[1], commit, stamped(entries)) == result
    assert log.committed == committed
    assert all_terms(log) == terms


def test_maybe_append_conflicting_with_committed_raises() -> None:
    """A conflict at a committed index means safety was already lost: refuse loudly."""
    log = new_log([1, 2, 3], committed=2)
    with pytest.raises(AssertionError):
        log.maybe_append(1, 1, 3, stamped([(2, 4)]))
    assert all_terms(log) == [1, 2, 3]


def test_commit_to_never_decreases_nor_passes_the_end() -> None:
    log = new_log([1, 1, 1], committed=2)
    log.commit_to(1)
    assert log.committed == 2
    log.commit_to(3)
    assert log.committed == 3
    with pytest.raises(AssertionError):
        log.commit_to(4)


def test_maybe_commit_only_entries_of_the_given_term() -> None:
    log = new_log([1, 2])
    assert not log.maybe_commit(2, 3)
    assert not log.maybe_commit(1, 2)
    assert log.committed == 0
    assert log.maybe_commit(2, 2)
    assert log.committed == 2
    assert not log.maybe_commit(1, 1)
    assert log.committed == 2


@pytest.mark.parametrize(
    ("last_index", "last_term", "up_to_date"),
    [(3, 3, True), (2, 3, False), (4, 3, True), (1, 4, True), (5, 2, False)],
)
def test_is_up_to_date(last_index: int, last_term: int, up_to_date: bool) -> None:
    """§5.4.1: later last term wins; with equal last terms the longer log wins."""
    assert new_log([1, 2, 3]).is_up_to_date(last_index, last_term) is up_to_date


def test_next_committed_and_applied_to() -> None:
    log = new_log([1, 1], [1, 1], committed=3)
    assert [e.index for e in log.next_committed(10)] == [1, 2, 3]
    assert [e.index for e in log.next_committed(2)] == [1, 2]
    log.handed_over(log.next_committed(2))
    log.applied_to(2)
    assert [e.index for e in log.next_committed(10)] == [3]
    log.handed_over(log.next_committed(10))
    log.applied_to(3)
    assert log.next_committed(10) == []
    with pytest.raises(AssertionError):
        log.applied_to(4)  # not committed, never handed over
    with pytest.raises(AssertionError):
        log.applied_to(1)  # backwards


def test_entries_handed_over_wait_to_be_applied_within_a_byte_bound() -> None:
    storage = MemoryStorage()
    storage.persist(entries=[Entry(index=i, term=1, data=b"x" * 10) for i in range(1, 5)])
    log = RaftLog(storage)
    log.committed = 4
    sizes = [10, 10]
    first = log.next_committed(10, max_bytes=sizes[0] + sizes[1])
    assert [e.index for e in first] == [1, 2]
    log.handed_over(first)
    assert log.applying == 2 and log.applied == 0
    assert log.next_committed(10, max_bytes=sizes[0] + sizes[1]) == []
    assert not log.has_room_to_apply(sizes[0] + sizes[1])
    with pytest.raises(AssertionError):
        log.handed_over(log.entries(4, 5))  # not the next ones
    log.applied_to(1)  # part of a batch: the batch still counts
    assert log.next_committed(10, max_bytes=sizes[0] + sizes[1]) == []
    log.applied_to(2)
    assert log.applying_bytes == 0
    assert [e.index for e in log.next_committed(10, max_bytes=1)] == [3]  # one always goes
    log.handed_over(log.next_committed(10, max_bytes=1))
    assert log.next_committed(10, max_bytes=1) == []
    assert not log.has_room_to_apply(1)
    with pytest.raises(AssertionError):
        log.applied_to(4)  # committed but not handed over
