"""A run of committed entries applied at once gives what applying them one at a time
gives: the same outcomes and the same state (sessions, locks, log clock, rows, outcome
rows), however the log is cut into runs. The state machine reads the sessions of a run
once, writes them once, and hands a batch handler the session commands of a run
together; these tests hold it to entry-by-entry application."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator, Sequence
from typing import Any

import pytest

from demo_project.kv.models import KeyValue
from django_raft import commands, replicated
from django_raft.core import Entry, EntryType
from django_raft.models import AppliedState, BeatTask, ClientSession, EntryOutcome, Lock, LogClock
from django_raft.node import sessions
from django_raft.node.statemachine import Outcome, StateMachine
from django_raft.protocol.wire import encode_command

pytestmark = [pytest.mark.django_db, pytest.mark.postgres]

OPEN = sessions.OPEN_SESSION


@pytest.fixture(autouse=True)
def registry() -> Iterator[None]:
    with commands.preserved():
        yield


@pytest.fixture
def batches() -> list[list[int]]:
    """Register test handlers; return the indexes of each call of the batch handlers."""
    calls: list[list[int]] = []

    @commands.command("tests.when", batch=True)
    def when(context: commands.Context, calls_: Sequence[commands.Call]) -> list[Any]:
        """Returns the log time: only the same on every node if read call by call."""
        calls.append([call.index for call in calls_])
        return [replicated.log_time(context.using) for _ in calls_]

    @commands.command("tests.poison", batch=True)
    def poison(context: commands.Context, calls_: Sequence[commands.Call]) -> list[Any]:
        """Writes every key, then raises for the key "poison" (a broken batch handler)."""
        calls.append([call.index for call in calls_])
        rows = KeyValue.objects.using(context.using)
        for call in calls_:
            rows.update_or_create(key=call.arguments["key"], defaults={"value": "p"})
        if any(call.arguments["key"] == "poison" for call in calls_):
            raise RuntimeError("poisoned")
        return [call.arguments["key"] for call in calls_]

    @commands.command("tests.write_then_fail")
    def write_then_fail(context: commands.Context, key: str) -> None:
        KeyValue.objects.using(context.using).update_or_create(key=key, defaults={"value": "w"})
        raise RuntimeError(f"failed after writing {key}")

    return calls


class Log:
    """Numbers entries in order."""

    def __init__(self) -> None:
        self.index = 0

    def __call__(
        self, name: str, client: str = "", sequence: int = 0, at: int = 0, /, **arguments: Any
    ) -> Entry:
        self.index += 1
        data = encode_command(name, arguments, client, sequence, at)
        return Entry(self.index, 1, EntryType.NORMAL, data)


def state() -> dict[str, Any]:
    """Everything applying entries may change, as plain values."""
    return {
        "sessions": json.loads(sessions.dump("default")),
        "kv": list(KeyValue.objects.order_by("key").values_list("key", "value", "version")),
        "outcomes": list(
            EntryOutcome.objects.order_by("pk").values_list("pk", "ok", "text", "truncated")
        ),
        "applied": StateMachine("default").applied(),
    }


def reset() -> None:
    for model in (KeyValue, ClientSession, Lock, LogClock, AppliedState, EntryOutcome, BeatTask):
        model.objects.all().delete()


def compare(entries: list[Entry], cuts: int = 0, seed: int = 0) -> dict[int, Outcome]:
    """Apply ``entries`` as one run, then one by one, then in ``cuts`` random runs, from
    the same empty state; assert the outcomes and the states match; return the outcomes."""
    machine = StateMachine("default", "n1")
    together = machine.apply(entries)
    expected = state()
    reset()
    apart: dict[int, Outcome] = {}
    for entry in entries:
        apart.update(machine.apply([entry]))
    assert apart == together
    assert state() == expected
    chooser = random.Random(seed)
    for _ in range(cuts):
        reset()
        bounds = sorted(chooser.sample(range(1, len(entries)), min(5, len(entries) - 1)))
        pieces: dict[int, Outcome] = {}
        for start, end in zip([0, *bounds], [*bounds, len(entries)], strict=True):
            pieces.update(machine.apply(entries[start:end]))
        assert pieces == together
        assert state() == expected
    return together


def test_two_commands_of_one_session_in_one_run_see_each_other(batches: list[list[int]]) -> None:
    log = Log()
    entries = [
        log(OPEN, timeout_ms=10_000),  # 1: the session opens in the run it is used in
        log("kv.set", "1", 1, 10, key="a", value="x"),
        log("kv.set", "1", 2, 10, key="a", value="y"),
        log("kv.incr", "1", 3, 10, key="n"),
        log("kv.incr", "1", 4, 10, key="n", by=5),
    ]
    outcomes = compare(entries)
    assert [outcomes[i].value for i in range(1, 6)] == ["1", 1, 2, 1, 6]
    assert ClientSession.objects.get(pk="1").last_sequence == 4


def test_a_retry_in_the_same_run_gets_the_recorded_outcome(batches: list[list[int]]) -> None:
    log = Log()
    entries = [
        log(OPEN, timeout_ms=10_000),
        log("kv.incr", "1", 1, 5, key="n"),
        log("kv.incr", "1", 1, 6, key="n"),  # the same command again: not run twice
        log("kv.set", "1", 2, 7, key="a", value="x"),
        log("kv.set", "1", 2, 7, key="a", value="x"),
        log("kv.incr", "1", 1, 8, key="n"),  # older than the last: refused
        log("kv.incr", "1", 3, 9, key="n"),
    ]
    outcomes = compare(entries, cuts=3)
    assert outcomes[2] == outcomes[3] == Outcome(True, 1)
    assert outcomes[4] == outcomes[5] == Outcome(True, 1)
    assert not outcomes[6].ok and outcomes[6].error.startswith(sessions.REPLAYED)
    assert outcomes[7] == Outcome(True, 2)


def test_session_commands_of_a_batch_command_share_one_handler_call(
    batches: list[list[int]],
) -> None:
    log = Log()
    entries = [log(OPEN, timeout_ms=10_000) for _ in range(3)]
    entries += [
        log("tests.when", "1", 1, 50),
        log("tests.when", "2", 1, 50),
        log("tests.when"),  # a plain call joins too
        log("tests.when", "3", 1, 50),
        log("tests.when", "1", 2, 50),  # session 1's next number joins: many may be in flight
        log("tests.when", "2", 1, 50),  # a retry: must see its first's outcome
        log("tests.when", "3", 2, 50),
    ]
    outcomes = StateMachine("default", "n1").apply(entries)
    assert batches == [[4, 5, 6, 7, 8], [10]]  # the retry was answered from the session
    assert {outcomes[i].value for i in range(4, 11)} == {50}


def test_a_batch_handler_that_reads_the_log_time_sees_each_call_s(
    batches: list[list[int]],
) -> None:
    log = Log()
    entries = [log(OPEN, timeout_ms=10_000) for _ in range(2)]
    entries += [
        log("tests.when", "1", 1, 100),
        log("tests.when", "2", 1, 200),
        log("tests.when"),
        log("tests.when", "1", 2, 150),  # an earlier stamp does not move the log time back
        log("tests.when", "2", 2, 300),
    ]
    outcomes = compare(entries, cuts=3)
    assert [outcomes[i].value for i in range(3, 8)] == [100, 200, 200, 200, 300]


def test_a_failing_handler_midway_through_session_commands(batches: list[list[int]]) -> None:
    log = Log()
    entries = [log(OPEN, timeout_ms=10_000) for _ in range(3)]
    entries += [
        log("kv.set", "1", 1, 10, key="s", value="not a number"),
        log("kv.incr", "2", 1, 11, key="n"),
        log("kv.incr", "3", 1, 12, key="s"),  # a value that is not an integer
        log("tests.write_then_fail", "1", 2, 13, key="w"),  # raises: the run is redone
        log("tests.poison", "2", 2, 14, key="p"),
        log("tests.poison", "3", 2, 15, key="poison"),  # a batch handler that raises
        log("tests.write_then_fail", "1", 2, 16, key="w"),  # retry: the recorded error
        log("kv.incr", "2", 3, 17, key="n"),
        log("kv.incr", key="n", by="x"),  # bad arguments, no session
        log("kv.set", "3", 3, 18, key="s", value="1"),
    ]
    outcomes = compare(entries, cuts=4)
    assert outcomes[6].error == "ValueError: the value of 's' is not an integer: 'not a number'"
    assert (
        outcomes[7] == outcomes[10] == Outcome(False, None, "RuntimeError: failed after writing w")
    )
    assert outcomes[8] == Outcome(True, "p")
    assert outcomes[9] == Outcome(False, None, "RuntimeError: poisoned")
    assert outcomes[11] == Outcome(True, 2)
    assert outcomes[12].error == "TypeError: by must be an integer, not str"
    assert not KeyValue.objects.filter(key__in=["w", "poison"]).exists()
    assert ClientSession.objects.get(pk="1").last_error == "RuntimeError: failed after writing w"


def test_expiry_sweeps_and_locks_in_one_run(batches: list[list[int]]) -> None:
    log = Log()
    entries = [
        log(OPEN, "", 0, 0, timeout_ms=1_000),  # 1: expires unless used
        log(OPEN, "", 0, 0, timeout_ms=5_000),  # 2
        log(sessions.LOCK_ACQUIRE, "1", 1, 100, name="job", ttl_ms=60_000),  # 3
        log(sessions.LOCK_ACQUIRE, "2", 1, 200, name="job", ttl_ms=60_000),  # held by 1
        log("kv.fenced_set", "1", 2, 300, key="f", value="1", lock="job", token=3),
        log("kv.set", "2", 2, 1_200, key="a", value="x"),  # sweeps (nothing expired yet)
        log("kv.set", "1", 3, 1_250, key="a", value="y"),  # session 1 lives on to 2,250
        log("kv.set", "2", 3, 2_400, key="a", value="z"),  # sweeps session 1 and its lock
        log("kv.set", "1", 4, 2_400, key="a", value="w"),  # session 1 is gone
        log(sessions.LOCK_ACQUIRE, "2", 4, 2_500, name="job", ttl_ms=60_000),  # 10
        log("kv.fenced_set", "2", 5, 2_600, key="f", value="2", lock="job", token=3),
        log(sessions.LOCK_RELEASE, "2", 6, 2_700, name="job", token=10),
        log(sessions.KEEP_ALIVE, "2", 7, 2_800),
    ]
    outcomes = compare(entries, cuts=4)
    assert outcomes[4].value["acquired"] is False
    assert outcomes[5] == Outcome(True, 1)
    assert not outcomes[9].ok and outcomes[9].error.startswith(sessions.EXPIRED)
    assert outcomes[10].value == {"acquired": True, "token": 10, "expires_ms": 62_500}
    assert outcomes[11].error.startswith("StaleTokenError")
    assert outcomes[12] == Outcome(True, True)
    assert list(ClientSession.objects.values_list("pk", flat=True)) == ["2"]
    assert replicated.log_time("default") == 2_800


KINDS = (
    *("kv.set", "kv.set", "kv.incr", "kv.incr", "kv.delete", "tests.when", "tests.poison"),
    *("tests.write_then_fail", "kv.fenced_set", "lock", "release", "keep", "kv.incr!"),
)


def test_a_sweep_after_a_session_command_sees_that_command(batches: list[list[int]]) -> None:
    log = Log()
    entries = [
        log(OPEN, "", 0, 0, timeout_ms=1_000),  # 1: would expire at 1,100 ...
        log(OPEN, "", 0, 0, timeout_ms=5_000),  # 2
        log(sessions.LOCK_ACQUIRE, "1", 1, 100, name="job", ttl_ms=60_000),
        log("kv.set", "1", 2, 900, key="a", value="x"),  # ... lives on to 1,900
        log("kv.set", "2", 1, 1_500, key="b", value="y"),  # the first sweep
        log(sessions.KEEP_ALIVE, "1", 3, 1_600),
    ]
    outcomes = compare(entries, cuts=3)
    assert all(outcome.ok for outcome in outcomes.values())
    assert Lock.objects.get(pk="job").holder == "1"


def random_log(seed: int, size: int) -> list[Entry]:
    """A log mixing sessions opening and expiring, retries, replays, locks, failures."""
    chooser = random.Random(seed)
    log = Log()
    clients: dict[str, int] = {}  # client id -> last sequence sent
    tokens = [0]
    at = 0
    entries = []
    for _ in range(size):
        at = max(0, at + chooser.choice([0, 0, 1, 50, 400, 900, -30]))
        kind = chooser.random()
        if kind < 0.08 or not clients:
            entries.append(log(OPEN, "", 0, at, timeout_ms=chooser.choice([700, 3_000])))
            clients[str(log.index)] = 0
            continue
        client = chooser.choice([*clients, "999"])
        last = clients.get(client, 0)
        sequence = chooser.choice([last + 1, last + 1, last + 1, last, max(last - 1, 1)])
        clients[client] = max(last, sequence)
        tracked = chooser.random() < 0.8
        who = (client, sequence, at) if tracked else ("", 0, 0)
        key = chooser.choice(["a", "b", "c", "text"])
        name = chooser.choice(KINDS)
        if name == "kv.set":
            value = "text" if key == "text" else str(chooser.randint(0, 9))
            entries.append(log(name, *who, key=key, value=value))
        elif name == "kv.incr":
            entries.append(log(name, *who, key=key, by=chooser.randint(-3, 3)))
        elif name == "kv.incr!":
            entries.append(log("kv.incr", *who, key=key, by="1"))
        elif name in ("kv.delete", "tests.write_then_fail"):
            entries.append(log(name, *who, key=key))
        elif name == "tests.poison":
            entries.append(log(name, *who, key=chooser.choice(["p", "q", "poison"])))
        elif name == "tests.when":
            entries.append(log(name, *who))
        elif name == "kv.fenced_set":
            token = chooser.choice(tokens)
            entries.append(log(name, *who, key=key, value="f", lock="job", token=token))
        elif name == "lock":
            entries.append(log(sessions.LOCK_ACQUIRE, client, sequence, at, name="job", ttl_ms=500))
            tokens.append(log.index)
        elif name == "release":
            token = chooser.choice(tokens)
            entries.append(
                log(sessions.LOCK_RELEASE, client, sequence, at, name="job", token=token)
            )
        else:
            entries.append(log(sessions.KEEP_ALIVE, client, sequence, at))
    return entries


@pytest.mark.parametrize("seed", range(6))
def test_random_logs_give_the_same_outcomes_however_they_are_cut(
    seed: int, batches: list[list[int]]
) -> None:
    entries = random_log(seed, 150)
    outcomes = compare(entries, cuts=2, seed=seed)
    failed = [outcome for outcome in outcomes.values() if not outcome.ok]
    assert outcomes and failed and len(failed) < len(outcomes)  # the log tries both


def test_kv_incr_on_a_run_gives_what_incr_gives_call_by_call() -> None:
    from django.db import transaction

    from demo_project.kv import commands as kv

    arguments: list[dict[str, Any]] = [
        {"key": "n"},
        {"key": "n", "by": 41},
        {"key": "s"},  # holds text
        {"key": "n", "by": True},
        {"key": 3},
        {"key": "m", "by": -2},
        {"key": "n", "by": "1"},
        {"key": "m"},
    ]

    def fresh() -> commands.Context:
        KeyValue.objects.all().delete()
        KeyValue.objects.create(key="s", value="text", version=1)
        return commands.Context("n1", 1, 1)

    one_by_one: list[Any] = []
    context = fresh()
    for call in arguments:
        try:
            with transaction.atomic():
                one_by_one.append(kv.incr(context, **call))
        except (TypeError, ValueError) as error:
            one_by_one.append(f"{type(error).__name__}: {error}")
    expected = list(KeyValue.objects.order_by("key").values_list("key", "value", "version"))
    context = fresh()
    results = kv.incr_values(context, [commands.Call(i, 1, a) for i, a in enumerate(arguments)])
    together = [
        f"{type(result).__name__}: {result}" if isinstance(result, Exception) else result
        for result in results
    ]
    assert together == one_by_one
    assert one_by_one[:3] == [1, 42, "ValueError: the value of 's' is not an integer: 'text'"]
    assert list(KeyValue.objects.order_by("key").values_list("key", "value", "version")) == expected
