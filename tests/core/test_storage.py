"""``MemoryStorage``: the persisted log the core reads back."""

from __future__ import annotations

import pytest

from django_raft.core import (
    CompactedError,
    ConfState,
    Entry,
    HardState,
    MemoryStorage,
    Snapshot,
    SnapshotMetadata,
    StorageError,
    UnavailableError,
)
from tests.core.helpers import make_entries


def stored(terms: list[int]) -> MemoryStorage:
    storage = MemoryStorage()
    storage.append(make_entries(terms))
    return storage


def terms_of(storage: MemoryStorage) -> list[int]:
    first, last = storage.first_index(), storage.last_index()
    return [e.term for e in storage.entries(first, last + 1, last + 1 - first)]


def test_new_storage_is_empty() -> None:
    storage = MemoryStorage(ConfState(voters=("1", "2")))
    assert (storage.first_index(), storage.last_index(), storage.term(0)) == (1, 0, 0)
    assert storage.entries(1, 1, 10) == []
    assert storage.initial_state() == (HardState(), ConfState(voters=("1", "2")))


def test_initial_state_returns_what_was_set() -> None:
    storage = MemoryStorage()
    storage.set_hard_state(HardState(term=3, vote="2", commit=1))
    assert storage.initial_state()[0] == HardState(term=3, vote="2", commit=1)


@pytest.mark.parametrize(
    ("appended", "expected"),
    [
        ([(1, 1), (2, 2), (3, 3)], [1, 2, 3]),
        ([(1, 1), (2, 2), (3, 4)], [1, 2, 4]),
        ([(2, 2), (3, 5), (4, 5)], [1, 2, 5, 5]),
        ([(4, 3)], [1, 2, 3, 3]),
        ([(2, 4)], [1, 4]),
        ([(1, 6), (2, 6)], [6, 6]),
        ([], [1, 2, 3]),
    ],
)
def test_append_replaces_from_first_new_index(
    appended: list[tuple[int, int]], expected: list[int]
) -> None:
    """Appending writes the entries and drops every stored entry from the first one's
    index on (the host writes exactly what a Ready hands it)."""
    storage = stored([1, 2, 3])
    storage.append([Entry(index=i, term=t) for i, t in appended])
    assert terms_of(storage) == expected
    assert storage.last_index() == len(expected)


def test_append_with_gap_raises() -> None:
    storage = stored([1, 2, 3])
    with pytest.raises(ValueError, match="gap"):
        storage.append([Entry(index=5, term=3)])
    assert terms_of(storage) == [1, 2, 3]


def test_compact_keeps_term_of_last_compacted_entry() -> None:
    """Compaction discards entries up to an index; that index's term stays readable so
    the entry after it can still be checked against prevLogTerm."""
    storage = stored([1, 2, 3, 4])
    storage.create_snapshot(Snapshot(SnapshotMetadata(2, storage.term(2))))
    storage.compact(2)
    assert (storage.first_index(), storage.last_index()) == (3, 4)
    assert storage.term(2) == 2
    assert terms_of(storage) == [3, 4]
    with pytest.raises(CompactedError) as raised:
        storage.term(1)
    assert raised.value.index == 1
    with pytest.raises(CompactedError):
        storage.entries(2, 4, 10)
    storage.compact(1)  # already compacted: nothing to do
    assert storage.first_index() == 3
    with pytest.raises(UnavailableError):
        storage.compact(5)


def test_append_after_compaction_skips_compacted_part() -> None:
    storage = stored([1, 2, 3])
    storage.create_snapshot(Snapshot(SnapshotMetadata(2, storage.term(2))))
    storage.compact(2)
    storage.append(make_entries([1, 2, 9, 9]))
    assert (storage.first_index(), storage.term(2)) == (3, 2)
    assert terms_of(storage) == [9, 9]
    storage.append(make_entries([1]))
    assert terms_of(storage) == [9, 9]


def test_reads_past_the_end_raise_unavailable() -> None:
    storage = stored([1, 2, 3])
    with pytest.raises(UnavailableError) as raised:
        storage.term(4)
    assert raised.value.index == 4
    assert isinstance(raised.value, StorageError)
    with pytest.raises(UnavailableError):
        storage.entries(2, 5, 10)


@pytest.mark.parametrize(
    ("lo", "hi", "max_count", "indexes"),
    [
        (1, 4, 10, [1, 2, 3]),
        (1, 4, 2, [1, 2]),
        (2, 4, 1, [2]),
        (2, 4, 0, [2]),  # at least one entry
        (3, 3, 5, []),
    ],
)
def test_entries_bounds_and_max_count(lo: int, hi: int, max_count: int, indexes: list[int]) -> None:
    storage = stored([1, 2, 3])
    assert [e.index for e in storage.entries(lo, hi, max_count)] == indexes
