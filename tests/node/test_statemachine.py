"""Committed entries are applied through the registered handlers, exactly once, and the
replicated state survives a snapshot round trip."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.db import connection
from django.db.backends.signals import connection_created
from django.test.utils import CaptureQueriesContext

from demo_project.kv.models import KeyValue
from django_raft import commands
from django_raft.core import (
    ConfChange,
    ConfChangeType,
    ConfState,
    Entry,
    EntryType,
    Snapshot,
    SnapshotMetadata,
    bootstrap,
)
from django_raft.models import AppliedState, Member
from django_raft.node import storage as storage_module
from django_raft.node.statemachine import Outcome, StateMachine, describe_error
from django_raft.node.storage import DjangoStorage, make_durable
from django_raft.protocol.wire import encode_command

pytestmark = [pytest.mark.django_db, pytest.mark.postgres]


@pytest.fixture(autouse=True)
def registry() -> Iterator[None]:
    """Let a test register handlers; put back what the apps registered afterwards."""
    with commands.preserved():
        yield


@pytest.fixture
def machine() -> StateMachine:
    return StateMachine("default", "node-1")


def command(index: int, name: str, term: int = 1, **arguments: Any) -> Entry:
    return Entry(index, term, EntryType.NORMAL, encode_command(name, arguments))


def conf(index: int, kind: ConfChangeType, node_id: str, context: str = "") -> Entry:
    change = ConfChange(kind, node_id, context)
    return Entry(index, 1, EntryType.CONF_CHANGE, change.encode())


def values() -> dict[str, tuple[str, int]]:
    return {row.key: (row.value, row.version) for row in KeyValue.objects.all()}


# -- handlers mutate models ----------------------------------------------------------------


def test_the_demo_commands_are_registered_by_the_app() -> None:
    assert {"kv.set", "kv.delete", "kv.incr", "kv.get"} <= set(commands.names())


def test_handlers_mutate_models_and_return_their_result(machine: StateMachine) -> None:
    outcomes = machine.apply(
        [
            command(1, "kv.set", key="a", value="x"),
            command(2, "kv.set", key="a", value="y"),
            command(3, "kv.incr", key="n", by=5),
            command(4, "kv.incr", key="n"),
            command(5, "kv.get", key="a"),
            command(6, "kv.get", key="missing"),
            command(7, "kv.delete", key="a"),
            command(8, "kv.delete", key="a"),
        ]
    )
    assert outcomes == {
        1: Outcome(True, 1),
        2: Outcome(True, 2),
        3: Outcome(True, 5),
        4: Outcome(True, 6),
        5: Outcome(True, "y"),
        6: Outcome(True, None),
        7: Outcome(True, True),
        8: Outcome(True, False),
    }
    assert values() == {"n": ("6", 2)}
    assert machine.applied() == (8, 1)


def test_a_handler_gets_the_entry_context(machine: StateMachine) -> None:
    seen: list[commands.Context] = []

    @commands.command("test.context")
    def remember(context: commands.Context) -> None:
        seen.append(context)

    machine.apply([command(1, "test.context", term=3)])
    assert seen == [commands.Context("node-1", 1, 3, "default")]


def test_a_leader_no_op_changes_nothing_but_the_applied_index(machine: StateMachine) -> None:
    assert machine.apply([Entry(1, 2)]) == {1: Outcome(True)}
    assert machine.applied() == (1, 2)
    assert values() == {}


# -- failures are rolled back and become the outcome ----------------------------------------


def test_a_raising_handler_is_rolled_back_and_the_next_entry_applies(
    machine: StateMachine,
) -> None:
    @commands.command("test.half")
    def half(context: commands.Context, key: str) -> None:
        KeyValue.objects.using(context.using).create(key=key, value="partial", version=1)
        raise RuntimeError(f"failed after writing {key}")

    outcomes = machine.apply(
        [
            command(1, "kv.set", key="before", value="1"),
            command(2, "test.half", key="half"),
            command(3, "kv.set", key="after", value="3"),
        ]
    )
    assert outcomes[2] == Outcome(False, None, "RuntimeError: failed after writing half")
    assert outcomes[1].ok and outcomes[3].ok
    assert values() == {"before": ("1", 1), "after": ("3", 1)}
    assert machine.applied() == (3, 1)


def test_a_database_error_in_a_handler_is_rolled_back(machine: StateMachine) -> None:
    """A failed statement aborts only the savepoint (PostgreSQL aborts the transaction)."""

    @commands.command("test.duplicate")
    def duplicate(context: commands.Context, key: str) -> None:
        KeyValue.objects.using(context.using).create(key=key, value="again", version=9)

    outcomes = machine.apply(
        [
            command(1, "kv.set", key="k", value="v"),
            command(2, "test.duplicate", key="k"),
            command(3, "kv.incr", key="n"),
        ]
    )
    assert not outcomes[2].ok and outcomes[2].error.startswith("IntegrityError")
    assert values() == {"k": ("v", 1), "n": ("1", 1)}


def test_a_handler_error_is_described_the_same_on_every_node(machine: StateMachine) -> None:
    machine.apply([command(1, "kv.set", key="k", value="not a number")])
    outcome = machine.apply([command(2, "kv.incr", key="k")])[2]
    assert outcome == Outcome(
        False, None, "ValueError: the value of 'k' is not an integer: 'not a number'"
    )
    assert values() == {"k": ("not a number", 1)}


def test_error_messages_carry_no_traceback_or_memory_address() -> None:
    message = describe_error(ValueError(f"bad {object()!r}"))
    assert message == "ValueError: bad <object object>"
    assert not re.search("0x[0-9a-f]", message)
    assert describe_error(KeyError()) == "KeyError"
    assert len(describe_error(ValueError("x" * 10_000))) == 2000


def test_an_unknown_command_is_an_error_outcome(machine: StateMachine) -> None:
    outcomes = machine.apply([command(1, "no.such"), command(2, "kv.set", key="k", value="v")])
    assert outcomes[1] == Outcome(
        False, None, "UnknownCommandError: no handler is registered for command 'no.such'"
    )
    assert outcomes[2].ok
    assert machine.applied() == (2, 1)


def test_a_result_that_is_not_json_is_rolled_back(machine: StateMachine) -> None:
    @commands.command("test.object")
    def not_json(context: commands.Context) -> object:
        KeyValue.objects.using(context.using).create(key="written", value="", version=1)
        return object()

    @commands.command("test.nan")
    def nan(context: commands.Context) -> float:
        return float("nan")

    @commands.command("test.infinity")
    def infinity(context: commands.Context) -> list[float]:
        return [float("inf")]

    @commands.command("test.tuple")
    def as_tuple(context: commands.Context) -> tuple[int, dict[int, str]]:
        return (1, {2: "two"})

    outcomes = machine.apply(
        [
            command(1, "test.object"),
            command(2, "test.nan"),
            command(3, "test.tuple"),
            command(4, "test.infinity"),
        ]
    )
    assert outcomes[1] == Outcome(
        False, None, "TypeError: Object of type object is not JSON serializable"
    )
    assert not outcomes[2].ok and outcomes[2].error.startswith("ValueError: Out of range float")
    # The caller gets what crosses the wire, on every node: JSON.
    assert outcomes[3] == Outcome(True, [1, {"2": "two"}])
    assert not outcomes[4].ok and outcomes[4].error.startswith("ValueError: Out of range float")
    assert values() == {}


def test_undecodable_data_and_bad_arguments_are_error_outcomes(machine: StateMachine) -> None:
    outcomes = machine.apply(
        [
            Entry(1, 1, EntryType.NORMAL, b"\xff\xfe not protobuf"),
            command(2, "kv.set", key="k"),
            command(3, "kv.set", key="k", value=3),
        ]
    )
    assert outcomes[1].error.startswith("WireError: ")
    assert outcomes[2].error.startswith("TypeError: ") and "value" in outcomes[2].error
    assert outcomes[3] == Outcome(False, None, "TypeError: value must be a string, not int")
    assert machine.applied() == (3, 1)


# -- exactly once ------------------------------------------------------------------------------


def test_entries_at_or_below_the_applied_index_are_skipped(machine: StateMachine) -> None:
    entries = [command(i, "kv.incr", key="n") for i in range(1, 4)]
    assert len(machine.apply(entries)) == 3
    assert machine.apply(entries) == {}
    assert values() == {"n": ("3", 3)}
    more = [command(i, "kv.incr", key="n") for i in range(2, 6)]
    assert set(machine.apply(more)) == {4, 5}
    assert values() == {"n": ("5", 5)}
    assert machine.applied() == (5, 1)


def test_a_new_state_machine_resumes_after_the_applied_index(machine: StateMachine) -> None:
    machine.apply([command(1, "kv.incr", key="n"), command(2, "kv.incr", key="n", term=2)])
    restarted = StateMachine("default", "node-1")
    assert restarted.applied() == (2, 2)
    assert restarted.apply([command(2, "kv.incr", key="n", term=2)]) == {}
    assert values() == {"n": ("2", 2)}


def test_a_gap_after_the_applied_index_is_refused(machine: StateMachine) -> None:
    machine.apply([command(1, "kv.incr", key="n")])
    with pytest.raises(ValueError, match="the next one is 2"):
        machine.apply([command(3, "kv.incr", key="n"), command(4, "kv.incr", key="n")])
    with pytest.raises(ValueError, match="the next one is 3"):
        machine.apply([command(2, "kv.incr", key="n"), command(4, "kv.incr", key="n")])
    assert values() == {"n": ("1", 1)}
    assert machine.applied() == (1, 1)


@pytest.mark.django_db(transaction=True)
def test_applying_commits_without_waiting_for_the_disk() -> None:
    """The log is durable and redoes a lost apply: one disk sync per Ready, not two."""

    @commands.command("test.sync")
    def sync_setting(context: commands.Context) -> Any:
        with connection.cursor() as cursor:
            cursor.execute(sql)
            return cursor.fetchone()[0]

    sql = "PRAGMA synchronous" if connection.vendor == "sqlite" else "SHOW synchronous_commit"
    durable, relaxed = (2, 1) if connection.vendor == "sqlite" else ("on", "off")
    make_durable("default")
    try:
        outcomes = StateMachine("default", "n").apply([command(1, "test.sync")])
        assert outcomes[1] == Outcome(True, relaxed)
        with connection.cursor() as cursor:
            cursor.execute(sql)
            assert cursor.fetchone()[0] == durable
    finally:
        connection_created.disconnect(dispatch_uid="django_raft.make_durable")
        storage_module._durable_aliases.discard("default")


# -- membership ---------------------------------------------------------------------------------


def test_membership_changes_update_members(machine: StateMachine) -> None:
    machine.apply(
        [
            conf(1, ConfChangeType.ADD_VOTER, "a", "http://a.test"),
            conf(2, ConfChangeType.ADD_VOTER, "b", "http://b.test"),
            conf(3, ConfChangeType.ADD_LEARNER, "c", "http://c.test"),
        ]
    )
    assert list(Member.objects.values_list("node_id", "address", "role")) == [
        ("a", "http://a.test", "voter"),
        ("b", "http://b.test", "voter"),
        ("c", "http://c.test", "learner"),
    ]
    outcomes = machine.apply(
        [
            conf(4, ConfChangeType.ADD_VOTER, "c"),  # promoted: the address stays
            conf(5, ConfChangeType.REMOVE, "a"),
            conf(6, ConfChangeType.ADD_VOTER, "b", "https://b.example:8443"),
        ]
    )
    assert all(outcome == Outcome(True) for outcome in outcomes.values())
    assert list(Member.objects.values_list("node_id", "address", "role")) == [
        ("b", "https://b.example:8443", "voter"),
        ("c", "http://c.test", "voter"),
    ]
    assert machine.addresses() == {"b": "https://b.example:8443", "c": "http://c.test"}
    assert [str(member) for member in Member.objects.all()] == ["b (voter)", "c (voter)"]
    assert machine.applied() == (6, 1)


def test_a_bootstrapped_log_applies_to_the_founding_members(machine: StateMachine) -> None:
    storage = DjangoStorage()
    hard_state, entries = storage.bootstrap(["a", "b"], {"a": "http://a:1", "b": "http://b:2"})
    machine.apply(storage.entries(1, hard_state.commit + 1, 100))
    assert machine.addresses() == {"a": "http://a:1", "b": "http://b:2"}
    assert set(Member.objects.values_list("role", flat=True)) == {"voter"}
    assert len(entries) == len(bootstrap(["a", "b"])[1])


# -- snapshots --------------------------------------------------------------------------------


def test_save_and_restore_round_trip_the_replicated_state(machine: StateMachine) -> None:
    machine.apply(
        [
            conf(1, ConfChangeType.ADD_VOTER, "a", "http://a.test"),
            conf(2, ConfChangeType.ADD_LEARNER, "b", "http://b.test"),
            *[command(i, "kv.set", key=f"k{i}", value=f"v{i}") for i in range(3, 50)],
            command(50, "kv.set", key="k3", value="é \u2603 \n"),
        ]
    )
    expected_values = values()
    expected_members = list(Member.objects.values_list("node_id", "address", "role"))
    data = machine.save()
    assert isinstance(data, bytes)

    other = StateMachine("default", "node-2")
    KeyValue.objects.all().delete()
    KeyValue.objects.create(key="stale", value="gone after restore", version=1)
    Member.objects.all().delete()
    Member.objects.create(node_id="z", address="http://z", role="voter")
    AppliedState.objects.update(applied_index=7, applied_term=1)

    other.restore(data, 50, 3)
    assert values() == expected_values
    assert list(Member.objects.values_list("node_id", "address", "role")) == expected_members
    assert other.applied() == (50, 3)
    assert other.apply([command(50, "kv.set", key="k3", value="again")]) == {}
    assert other.apply([command(51, "kv.set", key="k3", value="after")])[51] == Outcome(True, 3)


def test_catch_up_restores_a_snapshot_the_state_is_behind(machine: StateMachine) -> None:
    """A crash between persisting a received snapshot and restoring it."""
    machine.apply([command(i, "kv.incr", key="n") for i in range(1, 6)])
    snapshot = Snapshot(SnapshotMetadata(5, 1, ConfState(("a",))), machine.save())
    assert not machine.catch_up(snapshot)
    assert not machine.catch_up(Snapshot())
    follower = StateMachine("default", "node-2")
    KeyValue.objects.all().delete()
    AppliedState.objects.update(applied_index=2, applied_term=1)
    assert follower.catch_up(snapshot)
    assert values() == {"n": ("5", 5)}
    assert follower.applied() == (5, 1)


def test_restore_refuses_what_is_not_a_snapshot(machine: StateMachine) -> None:
    machine.apply([command(1, "kv.set", key="k", value="v")])
    for data in (b"", b"garbage", machine.save()[:25]):
        with pytest.raises(ValueError, match="snapshot"):
            machine.restore(data, 9, 9)
    assert values() == {"k": ("v", 1)}
    assert machine.applied() == (1, 1)


def test_state_hooks_replace_the_model_dump(machine: StateMachine) -> None:
    restored: list[tuple[bytes, str]] = []
    commands.state_hooks(
        save=lambda using: f"custom state of {using}".encode(),
        restore=lambda data, using: restored.append((data, using)),
    )
    machine.apply(
        [
            conf(1, ConfChangeType.ADD_VOTER, "a", "http://a.test"),
            command(2, "kv.set", key="k", value="v"),
        ]
    )
    data = machine.save()
    assert data[:-32].endswith(b"custom state of default")  # then the SHA-256 of it all
    Member.objects.all().delete()
    machine.restore(data, 10, 2)
    assert restored == [(b"custom state of default", "default")]
    assert machine.addresses() == {"a": "http://a.test"}
    assert values() == {"k": ("v", 1)}  # the hooks own the state: the model dump is not used
    assert machine.applied() == (10, 2)


# -- the registry -------------------------------------------------------------------------------


def test_the_registry_registers_and_finds_handlers() -> None:
    commands.reset()
    assert commands.names() == []

    @commands.command("b.second")
    def second(context: commands.Context) -> None: ...

    def first(context: commands.Context) -> None: ...

    commands.register("a.first", first)
    commands.register("a.first", first)  # the same handler again: no-op
    assert commands.names() == ["a.first", "b.second"]
    assert commands.get("a.first") is first and commands.get("b.second") is second
    with pytest.raises(commands.UnknownCommandError, match="'c'"):
        commands.get("c")
    commands.reset()
    assert commands.names() == []


@pytest.mark.parametrize("name", ["", None, 3, b"kv.set"])
def test_a_command_name_must_be_a_non_empty_string(name: Any) -> None:
    with pytest.raises(ImproperlyConfigured, match="non-empty string"):
        commands.register(name, lambda context: None)


def test_a_second_handler_for_a_name_is_refused() -> None:
    with pytest.raises(ImproperlyConfigured, match=r"'kv\.set' is already handled by"):

        @commands.command("kv.set")
        def another(context: commands.Context) -> None: ...

    with pytest.raises(ImproperlyConfigured, match="callable"):
        commands.register("test.nothing", "not callable")  # type: ignore[arg-type]


def test_state_hooks_are_set_once() -> None:
    def save(using: str) -> bytes:
        return b""

    def restore(data: bytes, using: str) -> None: ...

    commands.state_hooks(save, restore)
    commands.state_hooks(save, restore)
    with pytest.raises(ImproperlyConfigured, match="already set"):
        commands.state_hooks(save, lambda data, using: None)
    commands.reset()
    assert commands.get_state_hooks() is None


def test_a_run_that_is_interrupted_leaves_nothing(machine: StateMachine) -> None:
    """The whole run is one transaction: only exceptions are outcomes; anything else
    (an interrupt, a crash) undoes the run, which is applied again after a restart."""

    @commands.command("test.interrupt")
    def interrupt(context: commands.Context) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        machine.apply([command(1, "kv.set", key="k", value="v"), command(2, "test.interrupt")])
    assert values() == {}
    assert machine.applied() == (0, 0)


# -- bulk apply and batch handlers ----------------------------------------------------------


def savepoints(captured: CaptureQueriesContext) -> int:
    return sum(query["sql"].upper().startswith("SAVEPOINT") for query in captured.captured_queries)


def test_a_run_of_commands_is_applied_without_a_savepoint_per_entry(
    machine: StateMachine,
) -> None:
    entries = [command(i, "kv.set", key=f"k{i % 5}", value=str(i)) for i in range(1, 101)]
    entries[50] = command(51, "kv.incr", key="n")  # a per-call handler among batch calls
    with CaptureQueriesContext(connection) as captured:
        outcomes = machine.apply(entries)
    assert all(outcome.ok for outcome in outcomes.values())
    assert savepoints(captured) <= 1  # the test's own transaction makes the transaction one
    assert values()["k0"] == ("100", 20) and values()["n"] == ("1", 1)


def test_a_batch_handler_receives_consecutive_calls_together(machine: StateMachine) -> None:
    runs: list[list[int]] = []

    @commands.command("tests.double", batch=True)
    def double(context: commands.Context, calls: list[commands.Call]) -> list[Any]:
        runs.append([call.index for call in calls])
        assert context.index == calls[0].index and context.using == "default"
        return [
            call.arguments["x"] * 2 if call.arguments["x"] >= 0 else ValueError("negative")
            for call in calls
        ]

    outcomes = machine.apply(
        [
            command(1, "tests.double", x=1),
            command(2, "tests.double", x=-1),
            command(3, "tests.double", x=3),
            command(4, "kv.set", key="a", value="b"),
            command(5, "tests.double", x=5),
        ]
    )
    assert runs == [[1, 2, 3], [5]]
    assert outcomes == {
        1: Outcome(True, 2),
        2: Outcome(False, None, "ValueError: negative"),
        3: Outcome(True, 6),
        4: Outcome(True, 1),
        5: Outcome(True, 10),
    }
    assert commands.is_batch("tests.double") and not commands.is_batch("kv.delete")
    with pytest.raises(ImproperlyConfigured):
        commands.register("tests.double", double)  # the same function, not as a batch


def mixed_run() -> list[Entry]:
    """A run where handlers raise midway, after writing: the fast path cannot keep it."""
    return [
        command(1, "tests.poison_batch", key="d"),
        command(2, "tests.poison_batch", key="poison"),
        command(3, "tests.poison_batch", key="e"),
        command(4, "kv.set", key="a", value="x"),
        command(5, "kv.set", key="b", value=1),  # bad argument: the batch handler's error
        command(6, "tests.write_then_fail", key="c"),
        command(7, "kv.set", key="a", value="y"),
        command(8, "kv.incr", key="a"),  # raises: "y" is not an integer
        command(9, "kv.incr", key="n", by=2),
    ]


def register_failing_handlers() -> list[list[str]]:
    batches: list[list[str]] = []

    @commands.command("tests.write_then_fail")
    def write_then_fail(context: commands.Context, key: str) -> None:
        KeyValue.objects.using(context.using).create(key=key, value="written", version=1)
        raise ValueError(f"refusing {key!r}")

    @commands.command("tests.poison_batch", batch=True)
    def poison_batch(context: commands.Context, calls: list[commands.Call]) -> list[Any]:
        keys = [call.arguments["key"] for call in calls]
        batches.append(keys)
        for key in keys:
            KeyValue.objects.using(context.using).create(key=key, value="batch", version=1)
        if "poison" in keys:
            raise RuntimeError("poisoned batch")
        return keys

    return batches


def test_a_raising_handler_in_a_run_gives_the_outcomes_of_applying_entry_by_entry(
    machine: StateMachine,
) -> None:
    batches = register_failing_handlers()
    together = machine.apply(mixed_run())
    state_together = values()
    assert batches[0] == ["d", "poison", "e"]  # tried together, then redone one by one
    assert batches[1:] == [["d"], ["poison"], ["e"]]
    KeyValue.objects.all().delete()
    AppliedState.objects.all().delete()
    one_by_one: dict[int, Outcome] = {}
    for entry in mixed_run():
        one_by_one.update(machine.apply([entry]))
    assert together == one_by_one
    assert values() == state_together
    assert state_together == {
        "a": ("y", 2),
        "d": ("batch", 1),
        "e": ("batch", 1),
        "n": ("2", 1),
    }
    assert together[2] == Outcome(False, None, "RuntimeError: poisoned batch")
    assert not together[5].ok and together[5].error.startswith("TypeError: value must be")
    assert together[6] == Outcome(False, None, "ValueError: refusing 'c'")
    assert not together[8].ok and together[9] == Outcome(True, 2)


def registrations() -> dict[str, tuple[Any, bool, bool, Any]]:
    """Every registered command: its handler, kinds and argument check."""
    return {
        name: (
            commands.get(name),
            commands.is_batch(name),
            commands.is_read_only(name),
            commands.get_arguments(name),
        )
        for name in commands.names()
    }


def test_preserved_puts_back_every_registration() -> None:
    """What a test registers or resets inside it is undone: kinds and checks included."""
    before = registrations()
    assert any(batch for _, batch, _, _ in before.values())  # kv.set, a batch handler
    assert any(read_only for _, _, read_only, _ in before.values())
    with commands.preserved():
        commands.reset()
        commands.register("t.only", lambda context: None)
    assert registrations() == before


# -- a failing database is not a command's outcome ----------------------------------------


@pytest.mark.parametrize("batch", [False, True])
def test_a_database_lock_is_not_recorded_as_the_commands_outcome(
    machine: StateMachine, batch: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lock held too long is this node's trouble, not the command's: the run is rolled
    back and applied again, and every node records the same outcome."""
    from django.db import OperationalError

    from django_raft.node import statemachine

    monkeypatch.setattr(statemachine, "ENVIRONMENT_RETRY_DELAYS", (0.0, 0.0))
    failures = [OperationalError("database table is locked: test")] * 2

    def write(key: str) -> str:
        if failures:
            raise failures.pop()
        KeyValue.objects.create(key=key, value="v", version=1)
        return key

    if batch:

        @commands.command("test.write", batch=True)
        def write_many(context: commands.Context, calls: Any) -> list[Any]:
            return [write(**call.arguments) for call in calls]

    else:

        @commands.command("test.write")
        def write_one(context: commands.Context, key: str) -> str:
            return write(key)

    outcomes = machine.apply([command(1, "test.write", key="a"), command(2, "test.write", key="b")])
    assert outcomes == {1: Outcome(True, "a"), 2: Outcome(True, "b")}
    assert values() == {"a": ("v", 1), "b": ("v", 1)}
    assert machine.applied()[0] == 2


def test_a_database_that_keeps_failing_stops_the_apply_with_nothing_recorded(
    machine: StateMachine, monkeypatch: pytest.MonkeyPatch
) -> None:
    from django.db import OperationalError

    from django_raft.exceptions import ApplyError
    from django_raft.node import statemachine

    monkeypatch.setattr(statemachine, "ENVIRONMENT_RETRY_DELAYS", (0.0,))
    machine.apply([command(1, "kv.set", key="kept", value="v")])

    @commands.command("test.disk")
    def disk(context: commands.Context) -> None:
        KeyValue.objects.create(key="lost", value="v", version=1)
        raise OperationalError("disk I/O error")

    with pytest.raises(ApplyError, match="entries 2-3 could not be applied"):
        machine.apply([command(2, "kv.set", key="x", value="v"), command(3, "test.disk")])
    assert machine.applied()[0] == 1
    assert values() == {"kept": ("v", 1)}


def test_an_error_of_the_statement_itself_is_the_commands_outcome(
    machine: StateMachine,
) -> None:
    """A statement's own error is the same on every node, so it is the command's
    outcome. SQLite reports those as ``OperationalError`` too, PostgreSQL with others."""
    from django.db import OperationalError, ProgrammingError

    error_class = OperationalError if connection.vendor == "sqlite" else ProgrammingError

    @commands.command("test.typo")
    def typo(context: commands.Context) -> None:
        raise error_class("no such table: kv_nothing")

    outcomes = machine.apply([command(1, "test.typo")])
    assert not outcomes[1].ok and "no such table" in outcomes[1].error
    assert machine.applied()[0] == 1
