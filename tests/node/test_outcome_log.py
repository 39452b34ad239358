"""The state machine records each entry's outcome worth showing (an error, a result other
than None) in the applying transaction, in one INSERT per run, the same however runs are
cut; the rows leave with the log (compaction) and with the state (a snapshot restored)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.test.utils import CaptureQueriesContext

from demo_project.kv.models import KeyValue
from django_raft import commands
from django_raft.core import (
    ConfChangeType,
    ConfState,
    Entry,
    HardState,
    Snapshot,
    SnapshotMetadata,
)
from django_raft.models import MAX_RESULT_LENGTH, AppliedState, EntryOutcome
from django_raft.node.statemachine import StateMachine
from django_raft.node.storage import DjangoStorage
from tests.node.test_statemachine import command, conf

pytestmark = [pytest.mark.django_db, pytest.mark.postgres]


@pytest.fixture(autouse=True)
def registry() -> Iterator[None]:
    with commands.preserved():
        yield


def rows() -> list[tuple[int, bool, str, bool]]:
    return list(EntryOutcome.objects.order_by("pk").values_list("pk", "ok", "text", "truncated"))


@contextmanager
def outcome_inserts() -> Iterator[list[str]]:
    """The INSERT statements into the outcome table run inside the block."""
    table = EntryOutcome._meta.db_table
    seen: list[str] = []
    if connection.vendor == "sqlite":
        connection.ensure_connection()
        raw = connection.connection
        raw.set_trace_callback(seen.append)
        try:
            yield seen
        finally:
            raw.set_trace_callback(None)
        seen[:] = [sql for sql in seen if sql.startswith("INSERT") and table in sql]
        return
    with CaptureQueriesContext(connection) as captured:
        yield seen
    seen[:] = [q["sql"] for q in captured.captured_queries if q["sql"].startswith("INSERT")]
    seen[:] = [sql for sql in seen if table in sql]


def mixed_log() -> list[Entry]:
    """Results, Nones, errors, a membership change and a no-op, in batch runs and not."""
    return [
        conf(1, ConfChangeType.ADD_VOTER, "a", "http://a.test"),
        Entry(2, 1),  # a new leader's no-op
        command(3, "kv.set", key="a", value="x"),  # result: version 1
        command(4, "kv.set", key="a", value="y"),  # version 2
        command(5, "kv.set", key="b", value=7),  # error (value not a string)
        command(6, "kv.incr", key="a"),  # error (not an integer)
        command(7, "kv.get", key="missing"),  # None: not recorded
        command(8, "kv.delete", key="missing"),  # False: recorded
        command(9, "no.such.command"),  # error
        command(10, "kv.get", key="a"),  # "y"
    ]


EXPECTED = [
    (3, True, "1", False),
    (4, True, "2", False),
    (5, False, "TypeError: value must be a string, not int", False),
    (6, False, "ValueError: the value of 'a' is not an integer: 'y'", False),
    (8, True, "false", False),
    (
        9,
        False,
        "UnknownCommandError: no handler is registered for command 'no.such.command'",
        False,
    ),
    (10, True, '"y"', False),
]


def reset_state() -> None:
    """Forget what was applied, as a fresh node's database would."""
    KeyValue.objects.all().delete()
    EntryOutcome.objects.all().delete()
    AppliedState.objects.all().delete()


def test_errors_and_results_other_than_none_are_recorded_with_the_apply() -> None:
    machine = StateMachine("default", "node-1")
    outcomes = machine.apply(mixed_log())
    assert rows() == EXPECTED
    for index, ok, text, _ in rows():
        outcome = outcomes[index]
        assert outcome.ok is ok
        assert text == (json.dumps(outcome.value) if ok else outcome.error)
    assert all(outcomes[i].ok and outcomes[i].value is None for i in (1, 2, 7))


def test_the_rows_are_the_same_however_the_runs_are_cut() -> None:
    """What two nodes whose loops cut the log differently would record."""
    log = mixed_log()
    StateMachine("default", "node-1").apply(log)
    whole = rows()
    reset_state()
    other = StateMachine("default", "node-2")
    for entry in log:
        other.apply([entry])
    assert rows() == whole == EXPECTED


def test_one_insert_per_run_and_none_when_nothing_is_worth_recording() -> None:
    machine = StateMachine("default", "node-1")
    with outcome_inserts() as inserts:
        machine.apply([command(i, "kv.set", key=f"k{i % 7}", value="v") for i in range(1, 129)])
    assert len(inserts) == 1
    assert len(rows()) == 128
    with outcome_inserts() as inserts:
        machine.apply([command(i, "kv.get", key="absent") for i in range(129, 200)])
    assert inserts == []
    assert len(rows()) == 128


def test_the_rows_roll_back_with_a_run_that_fails_to_commit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Recorded straight through sqlite3 on SQLite, they are still in the run's transaction."""
    machine = StateMachine("default", "node-1")

    def crash(index: int, term: int) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(machine, "_set_applied", crash)
    with pytest.raises(KeyboardInterrupt):
        machine.apply([command(1, "kv.set", key="k", value="v")])
    assert rows() == [] and KeyValue.objects.count() == 0


def test_a_long_result_is_cut_and_marked_truncated() -> None:
    machine = StateMachine("default", "node-1")
    machine.apply(
        [
            command(1, "kv.set", key="big", value="é" * 3000),
            command(2, "kv.get", key="big"),
        ]
    )
    ((_, ok, text, truncated),) = [row for row in rows() if row[0] == 2]
    assert ok and truncated
    assert text == '"' + "é" * (MAX_RESULT_LENGTH - 1)


def test_a_failing_run_redone_entry_by_entry_records_each_outcome_once() -> None:
    @commands.command("test.fails")
    def fails(context: commands.Context, key: str) -> None:
        KeyValue.objects.using(context.using).create(key=key, value="partial", version=1)
        raise RuntimeError(f"failed after writing {key}")

    StateMachine("default", "node-1").apply(
        [
            command(1, "kv.set", key="a", value="x"),
            command(2, "test.fails", key="half"),
            command(3, "kv.set", key="a", value="y"),
        ]
    )
    assert rows() == [
        (1, True, "1", False),
        (2, False, "RuntimeError: failed after writing half", False),
        (3, True, "2", False),
    ]


def test_compaction_discards_the_outcomes_of_the_compacted_entries() -> None:
    storage = DjangoStorage("default")
    entries = [command(i, "kv.set", key="k", value=str(i)) for i in range(1, 7)]
    storage.persist(HardState(1, "", 6), entries, None)
    machine = StateMachine("default", "node-1")
    machine.apply(entries)
    storage.create_snapshot(Snapshot(SnapshotMetadata(4, 1, ConfState(("node-1",))), b"x"))
    storage.compact(4)
    assert len(rows()) == 6  # the log is in its own tables (LOG_DATABASE may be another file)
    machine.forget_outcomes(4)  # the node's applier does this after each compaction
    assert [row[0] for row in rows()] == [5, 6]


def test_restoring_a_snapshot_discards_every_outcome() -> None:
    machine = StateMachine("default", "node-1")
    machine.apply([command(i, "kv.set", key="k", value=str(i)) for i in range(1, 6)])
    data = machine.save()
    machine.apply([command(6, "kv.incr", key="k")])
    assert len(rows()) == 6
    machine.restore(data, 5, 1)
    assert rows() == []
    machine.apply([command(6, "kv.get", key="k")])
    assert rows() == [(6, True, '"5"', False)]


@pytest.mark.django_db(transaction=True)
def test_the_migration_creates_and_drops_the_table() -> None:
    table = EntryOutcome._meta.db_table
    executor = MigrationExecutor(connection)
    executor.migrate([("django_raft", "0004_snapshot_removed_ids")])
    try:
        assert table not in connection.introspection.table_names()
    finally:
        executor = MigrationExecutor(connection)
        executor.migrate(executor.loader.graph.leaf_nodes("django_raft"))
    assert table in connection.introspection.table_names()
    StateMachine("default", "node-1").apply([command(1, "kv.set", key="k", value="v")])
    assert rows() == [(1, True, "1", False)]
