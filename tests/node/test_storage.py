"""``DjangoStorage`` keeps the core's storage contract, durably and without loading the log.

The contract tests run against ``MemoryStorage`` (the reference) and ``DjangoStorage``
(with its default tail cache, and with a tiny one so that reads cross from the database
into the cache); the rest is what only a database-backed storage must do.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.db import connection
from django.db.backends.signals import connection_created
from django.test.utils import CaptureQueriesContext

from django_raft import models
from django_raft.core import (
    CompactedError,
    ConfChange,
    ConfChangeType,
    ConfState,
    Entry,
    EntryType,
    HardState,
    MemoryStorage,
    Snapshot,
    SnapshotMetadata,
    Storage,
    StorageError,
    UnavailableError,
    bootstrap,
)
from django_raft.node import storage as storage_module
from django_raft.node.storage import (
    SQLITE_ROWS_PER_INSERT,
    DjangoStorage,
    LogNotEmptyError,
    make_durable,
)
from django_raft.protocol.wire import encode_command
from tests.core.helpers import make_entries

pytestmark = pytest.mark.postgres

Store = MemoryStorage | DjangoStorage


def as_core_storage(storage: DjangoStorage) -> Storage:
    """Type-checked: ``DjangoStorage`` is a ``Storage`` the core can read."""
    return storage


@pytest.fixture(params=["memory", "django", "django-tiny-cache"])
def storage(request: pytest.FixtureRequest) -> Store:
    if request.param == "memory":
        return MemoryStorage()
    request.getfixturevalue("db")
    return DjangoStorage(tail_size=2 if request.param == "django-tiny-cache" else 4096)


def persist(
    storage: Store,
    hard_state: HardState | None = None,
    entries: Sequence[Entry] = (),
    snapshot: Snapshot | None = None,
) -> None:
    """Write a Ready's worth: both storages take it in one call."""
    storage.persist(hard_state, entries, snapshot)


def stored(storage: Store, terms: list[int]) -> Store:
    persist(storage, entries=make_entries(terms))
    return storage


def terms_of(storage: Store) -> list[int]:
    first, last = storage.first_index(), storage.last_index()
    return [e.term for e in storage.entries(first, last + 1, last + 1 - first)]


def snapshot_at(storage: Store, index: int, data: bytes = b"state") -> Snapshot:
    return Snapshot(SnapshotMetadata(index, storage.term(index), ConfState(("1",))), data)


def conf_entry(index: int, term: int, node_id: str) -> Entry:
    change = ConfChange(ConfChangeType.ADD_VOTER, node_id, f"http://{node_id}.test")
    return Entry(index, term, EntryType.CONF_CHANGE, change.encode())


def everything(storage: Store) -> tuple[Any, ...]:
    """All a storage shows the core, for comparing two of them."""
    first, last = storage.first_index(), storage.last_index()
    return (
        storage.initial_state(),
        storage.snapshot(),
        first,
        last,
        storage.term(first - 1),
        storage.entries(first, last + 1, last + 1),
        storage.conf_entries(first, last + 1),
    )


# -- the contract, on both storages ------------------------------------------------------


def test_new_storage_is_empty(storage: Store) -> None:
    assert (storage.first_index(), storage.last_index(), storage.term(0)) == (1, 0, 0)
    assert storage.entries(1, 1, 10) == []
    assert storage.conf_entries(1, 10) == []
    assert storage.initial_state() == (HardState(), ConfState())
    assert storage.snapshot() == Snapshot()


def test_initial_state_returns_the_persisted_hard_state(storage: Store) -> None:
    persist(storage, HardState(term=3, vote="2", commit=0))
    persist(storage, HardState(term=4, vote="", commit=0))
    assert storage.initial_state()[0] == HardState(term=4, vote="", commit=0)


def test_entries_keep_their_type_and_data(storage: Store) -> None:
    entries = [
        Entry(1, 1, EntryType.CONF_CHANGE, ConfChange(ConfChangeType.ADD_VOTER, "a").encode()),
        Entry(2, 1),
        Entry(3, 1, EntryType.NORMAL, encode_command("kv.set", {"key": "k", "value": "v"})),
        Entry(4, 2, EntryType.NORMAL, bytes(range(256))),
    ]
    persist(storage, entries=entries)
    assert storage.entries(1, 5, 10) == entries
    assert all(isinstance(entry.data, bytes) for entry in storage.entries(1, 5, 10))


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
    storage: Store, appended: list[tuple[int, int]], expected: list[int]
) -> None:
    stored(storage, [1, 2, 3])
    persist(storage, entries=[Entry(index=i, term=t) for i, t in appended])
    assert terms_of(storage) == expected
    assert storage.last_index() == len(expected)
    assert storage.term(len(expected)) == expected[-1]


def test_append_with_gap_raises(storage: Store) -> None:
    stored(storage, [1, 2, 3])
    with pytest.raises(ValueError, match="gap"):
        persist(storage, entries=[Entry(index=5, term=3)])
    assert terms_of(storage) == [1, 2, 3]


def test_reads_past_the_end_raise_unavailable(storage: Store) -> None:
    stored(storage, [1, 2, 3])
    with pytest.raises(UnavailableError) as raised:
        storage.term(4)
    assert raised.value.index == 4
    assert isinstance(raised.value, StorageError)
    with pytest.raises(UnavailableError) as raised:
        storage.entries(2, 5, 10)
    assert raised.value.index == 4


@pytest.mark.parametrize(
    ("lo", "hi", "max_count", "indexes"),
    [
        (1, 4, 10, [1, 2, 3]),
        (1, 4, 2, [1, 2]),
        (2, 4, 1, [2]),
        (2, 4, 0, [2]),  # at least one entry
        (3, 3, 5, []),
        (3, 2, 5, []),
        (4, 4, 5, []),
    ],
)
def test_entries_bounds_and_max_count(
    storage: Store, lo: int, hi: int, max_count: int, indexes: list[int]
) -> None:
    stored(storage, [1, 2, 3])
    assert [e.index for e in storage.entries(lo, hi, max_count)] == indexes


def test_entries_of_a_longer_log_in_every_range(storage: Store) -> None:
    """Ranges below, across and inside the cached tail read the same entries."""
    terms = [1] * 5 + [2] * 5 + [3] * 5
    stored(storage, terms)
    expected = make_entries(terms)
    for lo in range(1, 16):
        for hi in range(lo, 17):
            assert storage.entries(lo, hi, 100) == expected[lo - 1 : hi - 1], (lo, hi)
            assert storage.entries(lo, hi, 3) == expected[lo - 1 : min(hi, lo + 3) - 1]
    assert [storage.term(i) for i in range(16)] == [0, *terms]


def test_compact_keeps_term_of_last_compacted_entry(storage: Store) -> None:
    stored(storage, [1, 2, 3, 4])
    storage.create_snapshot(snapshot_at(storage, 2))
    storage.compact(2)
    assert (storage.first_index(), storage.last_index()) == (3, 4)
    assert storage.term(2) == 2
    assert terms_of(storage) == [3, 4]
    with pytest.raises(CompactedError) as raised:
        storage.term(1)
    assert raised.value.index == 1
    with pytest.raises(CompactedError) as raised:
        storage.entries(2, 4, 10)
    assert raised.value.index == 2
    storage.compact(1)  # already compacted: nothing to do
    assert storage.first_index() == 3
    with pytest.raises(UnavailableError):
        storage.compact(5)


def test_compact_refuses_to_go_past_the_snapshot(storage: Store) -> None:
    stored(storage, [1, 2, 3, 4])
    with pytest.raises(ValueError, match="snapshot covers only up to 0"):
        storage.compact(1)
    storage.create_snapshot(snapshot_at(storage, 2))
    with pytest.raises(ValueError, match="snapshot covers only up to 2"):
        storage.compact(3)
    assert terms_of(storage) == [1, 2, 3, 4]


def test_compact_the_whole_log(storage: Store) -> None:
    stored(storage, [1, 2, 2])
    storage.create_snapshot(snapshot_at(storage, 3))
    storage.compact(3)
    assert (storage.first_index(), storage.last_index(), storage.term(3)) == (4, 3, 2)
    assert storage.entries(4, 4, 10) == []
    persist(storage, entries=make_entries([3, 3], first=4))
    assert terms_of(storage) == [3, 3]


def test_append_after_compaction_skips_compacted_part(storage: Store) -> None:
    stored(storage, [1, 2, 3])
    storage.create_snapshot(snapshot_at(storage, 2))
    storage.compact(2)
    persist(storage, entries=make_entries([1, 2, 9, 9]))
    assert (storage.first_index(), storage.term(2)) == (3, 2)
    assert terms_of(storage) == [9, 9]
    persist(storage, entries=make_entries([1]))
    assert terms_of(storage) == [9, 9]


def test_create_snapshot_records_it_and_leaves_the_log(storage: Store) -> None:
    stored(storage, [1, 1, 2])
    snapshot = snapshot_at(storage, 2, b"at two")
    storage.create_snapshot(snapshot)
    assert storage.snapshot() == snapshot
    assert storage.initial_state()[1] == ConfState(("1",))
    assert terms_of(storage) == [1, 1, 2]
    storage.create_snapshot(snapshot_at(storage, 1, b"older"))  # not newer: ignored
    assert storage.snapshot() == snapshot
    with pytest.raises(UnavailableError):
        storage.create_snapshot(Snapshot(SnapshotMetadata(4, 2), b"beyond"))
    assert storage.snapshot() == snapshot


def test_installing_a_snapshot_keeps_the_entries_that_follow_a_match(storage: Store) -> None:
    """Figure 13, step 6: the log holds the snapshot's last entry with its term."""
    stored(storage, [1, 1, 2, 2, 3])
    membership = ConfState(("a", "b"), ("c",), removed=("d",))
    snapshot = Snapshot(SnapshotMetadata(3, 2, membership), b"from leader")
    persist(storage, HardState(term=3, commit=3), snapshot=snapshot)
    assert storage.snapshot() == snapshot
    assert storage.initial_state() == (HardState(term=3, commit=3), membership)
    assert (storage.first_index(), storage.last_index(), storage.term(3)) == (4, 5, 2)
    assert terms_of(storage) == [2, 3]
    with pytest.raises(CompactedError):
        storage.term(2)


@pytest.mark.parametrize(
    ("index", "term"),
    [
        (3, 3),  # the log has index 3, in another term
        (5, 9),  # past the end of the log
        (9, 4),
    ],
)
def test_installing_a_snapshot_replaces_a_log_that_does_not_match(
    storage: Store, index: int, term: int
) -> None:
    """Figure 13, step 7: otherwise the whole log is discarded."""
    stored(storage, [1, 1, 2, 2])
    snapshot = Snapshot(SnapshotMetadata(index, term, ConfState(("a",))), b"state")
    persist(storage, snapshot=snapshot)
    assert (storage.first_index(), storage.last_index(), storage.term(index)) == (
        index + 1,
        index,
        term,
    )
    assert storage.entries(index + 1, index + 1, 10) == []
    assert storage.conf_entries(0, 100) == []
    with pytest.raises(CompactedError):
        storage.term(index - 1)
    persist(storage, entries=make_entries([term, term + 1], first=index + 1))
    assert terms_of(storage) == [term, term + 1]


def test_installing_a_snapshot_with_entries_after_it(storage: Store) -> None:
    stored(storage, [1, 1])
    snapshot = Snapshot(SnapshotMetadata(5, 2, ConfState(("a",))), b"state")
    persist(storage, HardState(2, "a", 6), make_entries([2, 2], first=6), snapshot)
    assert (storage.first_index(), storage.last_index()) == (6, 7)
    assert terms_of(storage) == [2, 2]
    assert storage.initial_state()[0] == HardState(2, "a", 6)


def test_an_older_snapshot_is_not_installed(storage: Store) -> None:
    stored(storage, [1, 1, 2, 2])
    newer = snapshot_at(storage, 3)
    storage.create_snapshot(newer)
    persist(storage, snapshot=Snapshot(SnapshotMetadata(2, 5), b"old"))
    assert storage.snapshot() == newer
    assert terms_of(storage) == [1, 1, 2, 2]


def test_conf_entries_returns_membership_changes_in_range(storage: Store) -> None:
    entries = [
        conf_entry(1, 1, "a"),
        Entry(2, 1),
        conf_entry(3, 1, "b"),
        Entry(4, 2, data=b"x"),
        conf_entry(5, 2, "c"),
    ]
    persist(storage, entries=entries)
    assert storage.conf_entries(1, 6) == [entries[0], entries[2], entries[4]]
    assert storage.conf_entries(2, 5) == [entries[2]]
    assert storage.conf_entries(3, 100) == [entries[2], entries[4]]
    assert storage.conf_entries(4, 3) == []
    storage.create_snapshot(snapshot_at(storage, 3))
    storage.compact(3)
    assert storage.conf_entries(0, 6) == [entries[4]]


# -- what the Django storage must also do -------------------------------------------------


@pytest.mark.django_db
def test_persist_writes_nothing_when_a_write_fails() -> None:
    """One transaction: a snapshot and hard state handed with a bad append are not kept."""
    storage = DjangoStorage(tail_size=2)
    storage.persist(HardState(1, "a", 0), make_entries([1, 1, 1]))
    before = everything(storage)
    snapshot = Snapshot(SnapshotMetadata(2, 1, ConfState(("a",))), b"state")
    with pytest.raises(ValueError, match="gap"):
        storage.persist(HardState(2, "b", 2), [Entry(9, 2)], snapshot)
    assert everything(storage) == before
    assert everything(DjangoStorage()) == before


@pytest.mark.django_db(transaction=True)
def test_a_restarted_storage_sees_exactly_what_was_persisted() -> None:
    storage = DjangoStorage(tail_size=3)
    storage.persist(HardState(2, "b", 4), [conf_entry(1, 1, "a"), *make_entries([1, 2, 2], 2)])
    storage.create_snapshot(snapshot_at(storage, 3, b"three"))
    storage.compact(2)
    storage.persist(entries=make_entries([2, 3, 3, 3, 3], first=5))
    restarted = DjangoStorage(tail_size=3)
    assert everything(restarted) == everything(storage)
    assert restarted.term(2) == storage.term(2) == 1
    assert restarted.snapshot() == Snapshot(SnapshotMetadata(3, 2, ConfState(("1",))), b"three")
    installed = Snapshot(SnapshotMetadata(20, 7, ConfState(("x",), removed=("a",))), b"twenty")
    storage.persist(HardState(7, "x", 20), snapshot=installed)
    assert everything(DjangoStorage()) == everything(storage)
    assert DjangoStorage().snapshot() == installed
    assert DjangoStorage().initial_state()[1].removed == ("a",)  # removed ids never rejoin


@pytest.mark.django_db
def test_the_tail_cache_never_serves_truncated_entries() -> None:
    storage = DjangoStorage(tail_size=4)
    storage.persist(entries=make_entries([1] * 10))
    assert [e.term for e in storage.entries(7, 11, 10)] == [1, 1, 1, 1]
    storage.persist(entries=make_entries([2, 2], first=8))  # inside the tail
    assert [e.term for e in storage.entries(5, 10, 10)] == [1, 1, 1, 2, 2]
    assert storage.last_index() == 9
    storage.persist(entries=make_entries([3], first=3))  # below the tail
    assert [e.term for e in storage.entries(1, 4, 10)] == [1, 1, 3]
    assert (storage.last_index(), storage.term(3)) == (3, 3)
    with pytest.raises(UnavailableError):
        storage.entries(3, 5, 10)
    storage.persist(entries=make_entries([4] * 9, first=4))
    assert everything(storage) == everything(DjangoStorage(tail_size=4))
    assert [e.term for e in storage.entries(1, 13, 20)] == [1, 1, 3, *[4] * 9]


@pytest.mark.django_db
def test_the_tail_cache_holds_at_most_tail_bytes_of_entry_data() -> None:
    """Large commands must not keep ``TAIL_SIZE`` times their size in memory."""
    storage = DjangoStorage(tail_size=100, tail_bytes=1000)
    storage.persist(entries=[Entry(i, 1, data=b"x" * 300) for i in range(1, 11)])
    state = storage._state
    assert [e.index for e in state.tail] == [8, 9, 10]
    assert state.cached_bytes == 900
    storage.persist(entries=[Entry(i, 2, data=b"y" * 10) for i in range(9, 13)])
    assert [e.index for e in storage._state.tail] == [8, 9, 10, 11, 12]
    assert storage._state.cached_bytes == 340
    storage.persist(entries=[Entry(13, 2, data=b"z" * 5000)])  # one entry always stays
    assert [e.index for e in storage._state.tail] == [13]
    assert storage._state.cached_bytes == 5000
    assert [e.term for e in storage.entries(1, 14, 20)] == [1] * 8 + [2] * 5
    restarted = DjangoStorage(tail_size=100, tail_bytes=1000)
    assert [e.index for e in restarted._state.tail] == [13]
    assert everything(restarted) == everything(storage)


@pytest.mark.django_db
def test_reads_from_the_tail_cache_make_no_query(
    django_assert_num_queries: Any,
) -> None:
    storage = DjangoStorage(tail_size=100)
    storage.persist(HardState(1, "a", 0), make_entries([1] * 150))
    with django_assert_num_queries(0):
        assert len(storage.entries(51, 151, 200)) == 100
        assert storage.term(60) == 1
        assert storage.term(0) == 0
        storage.initial_state()
        storage.first_index(), storage.last_index()
    with django_assert_num_queries(1):
        assert len(storage.entries(1, 151, 200)) == 150
    with django_assert_num_queries(1):
        assert storage.term(10) == 1


@pytest.mark.django_db
def test_persisting_many_entries_is_batched(django_assert_max_num_queries: Any) -> None:
    storage = DjangoStorage()
    entries = [Entry(i, 1, data=b"x" * 10) for i in range(1, 10_001)]
    # A transaction (a savepoint under the test's), the rows (one COPY on PostgreSQL,
    # 500 rows per INSERT on SQLite), the hard state: not a statement per entry.
    inserts = 1 if connection.vendor == "postgresql" else 10_000 // SQLITE_ROWS_PER_INSERT
    with django_assert_max_num_queries(4 + inserts):
        storage.persist(HardState(1, "a", 0), entries)
    assert storage.last_index() == 10_000
    assert models.LogEntry.objects.count() == 10_000
    with django_assert_max_num_queries(4 + inserts):
        storage.persist(entries=[Entry(i, 2) for i in range(5_001, 15_001)])
    assert models.LogEntry.objects.filter(term=2).count() == 10_000


@pytest.mark.django_db
def test_a_long_log_is_read_by_range_without_loading_it() -> None:
    count = 200_000
    writer = DjangoStorage()
    for first in range(1, count + 1, 20_000):
        writer.persist(entries=[Entry(i, 1 + i // 50_000) for i in range(first, first + 20_000)])
    with CaptureQueriesContext(connection) as loading:
        storage = DjangoStorage(tail_size=1000)
    with CaptureQueriesContext(connection) as reading:
        entries = storage.entries(1_000, 3_000, 2_000)
        assert storage.term(150_000) == 4
    assert [e.index for e in entries] == list(range(1_000, 3_000))
    assert storage.last_index() == count
    assert len(storage._state.tail) == 1000
    log_queries = [
        query["sql"]
        for query in [*loading.captured_queries, *reading.captured_queries]
        if "django_raft_logentry" in query["sql"]
    ]
    assert len(log_queries) == 3
    for sql in log_queries:
        # Every read of the log is bounded: by a LIMIT, or by the index it asks for.
        assert "LIMIT" in sql or ('"index" =' in sql), sql
    assert '"index" >= 1000' in log_queries[1] and '"index" < 3000' in log_queries[1]


@pytest.mark.django_db
def test_the_command_name_is_stored_for_the_admin() -> None:
    storage = DjangoStorage()
    storage.persist(
        entries=[
            conf_entry(1, 1, "a"),
            Entry(2, 1),
            Entry(3, 1, data=encode_command("kv.set", {"key": "k", "value": "v"})),
            Entry(4, 1, data=b"\xff not a command"),
        ]
    )
    names = dict(models.LogEntry.objects.values_list("index", "command"))
    assert names == {1: "", 2: "", 3: "kv.set", 4: ""}
    assert [str(row) for row in models.LogEntry.objects.all()] == [
        "#1 (term 1) membership change",
        "#2 (term 1) no-op",
        "#3 (term 1) kv.set",
        "#4 (term 1) command",
    ]


@pytest.mark.django_db
def test_bootstrap_writes_the_founding_membership_with_addresses() -> None:
    storage = DjangoStorage()
    addresses = {"b": "http://b.test:8000", "a": "http://a.test:8000"}
    hard_state, entries = storage.bootstrap(["b", "a"], addresses)
    core_hard_state, core_entries = bootstrap(["b", "a"])
    assert hard_state == core_hard_state == storage.initial_state()[0]
    assert [(e.index, e.term, e.type) for e in entries] == [
        (e.index, e.term, e.type) for e in core_entries
    ]
    changes = [ConfChange.decode(e.data) for e in storage.entries(1, 3, 10)]
    assert changes == [
        ConfChange(ConfChangeType.ADD_VOTER, "a", "http://a.test:8000"),
        ConfChange(ConfChangeType.ADD_VOTER, "b", "http://b.test:8000"),
    ]
    assert storage.conf_entries(1, 3) == entries
    with pytest.raises(LogNotEmptyError, match="already holds Raft state"):
        storage.bootstrap(["a", "b"], addresses)
    with pytest.raises(LogNotEmptyError):
        DjangoStorage().bootstrap(["c"], {"c": "http://c.test"})


@pytest.mark.django_db
def test_bootstrap_refuses_a_node_with_state_or_without_addresses() -> None:
    storage = DjangoStorage()
    with pytest.raises(ValueError, match="no address for 'b'"):
        storage.bootstrap(["a", "b"], {"a": "http://a.test"})
    assert models.LogEntry.objects.count() == 0
    storage.persist(HardState(term=2))
    with pytest.raises(LogNotEmptyError):
        storage.bootstrap(["a"], {"a": "http://a.test"})
    assert storage.last_index() == 0


@pytest.mark.django_db
def test_persist_refuses_to_run_inside_another_transaction() -> None:
    """A write returns only once committed: nesting it would make that a lie."""
    from django.db import transaction

    storage = DjangoStorage()
    with pytest.raises(RuntimeError, match="durable"), transaction.atomic():
        storage.persist(HardState(term=1))
    assert storage.initial_state()[0] == HardState()


@pytest.fixture
def restore_durability() -> Iterator[None]:
    yield
    connection_created.disconnect(dispatch_uid="django_raft.make_durable")
    storage_module._durable_aliases.discard("default")


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("restore_durability")
def test_make_durable_syncs_every_commit() -> None:
    if connection.vendor == "sqlite":
        with connection.cursor() as cursor:
            cursor.execute("PRAGMA synchronous=OFF")
        make_durable("default")
        with connection.cursor() as cursor:
            cursor.execute("PRAGMA synchronous")
            assert cursor.fetchone()[0] == 2  # FULL
            cursor.execute("PRAGMA synchronous=OFF")
        # Connections opened later are made durable too.
        connection_created.send(sender=type(connection), connection=connection)
        with connection.cursor() as cursor:
            cursor.execute("PRAGMA synchronous")
            assert cursor.fetchone()[0] == 2
    else:
        make_durable("default")


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("restore_durability")
def test_make_durable_refuses_postgresql_without_synchronous_commit() -> None:
    if connection.vendor != "postgresql":
        pytest.skip("PostgreSQL only")
    with connection.cursor() as cursor:
        cursor.execute("SET synchronous_commit = off")
    try:
        with pytest.raises(ImproperlyConfigured, match="synchronous_commit=off"):
            make_durable("default")
    finally:
        with connection.cursor() as cursor:
            cursor.execute("SET synchronous_commit = on")


def relaxed(captured: CaptureQueriesContext) -> bool:
    """Whether a write was committed without waiting for the disk."""
    return any(
        "synchronous=NORMAL" in query["sql"] or "synchronous_commit = off" in query["sql"]
        for query in captured.captured_queries
    )


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("restore_durability")
def test_a_commit_index_that_moved_alone_is_written_later_and_never_synced() -> None:
    """commitIndex is volatile (Figure 2): a Ready that moves only it writes nothing; the
    next write stores it, and ``write_commit`` stores it without a sync."""
    make_durable("default")
    storage = DjangoStorage()

    def stored_commit() -> int:
        return DjangoStorage().initial_state()[0].commit

    writes = [
        (HardState(term=1, vote="a"), make_entries([1, 1]), 1),
        (HardState(term=1, vote="a", commit=1), (), 0),
        (HardState(term=1, vote="a", commit=2), (), 0),
        (HardState(term=2, vote="a", commit=2), (), 1),  # a new term is synced, with it
    ]
    for hard_state, entries, queries in writes:
        with CaptureQueriesContext(connection) as captured:
            storage.persist(hard_state, entries)
        assert bool(captured.captured_queries) is bool(queries), hard_state
        assert not relaxed(captured)
        assert storage.initial_state()[0] == hard_state  # in memory at once
    assert stored_commit() == 2
    storage.persist(HardState(term=2, vote="a", commit=3))
    storage.persist(None, make_entries([2], first=3))  # entries alone: the commit goes with them
    assert stored_commit() == 3
    storage.persist(HardState(term=2, vote="a", commit=4))
    assert stored_commit() == 3
    with CaptureQueriesContext(connection) as captured:
        storage.write_commit()
    assert relaxed(captured) and stored_commit() == 4
    with CaptureQueriesContext(connection) as captured:
        storage.write_commit()  # nothing moved since
    assert not captured.captured_queries
