"""Client sessions in the state machine: a command of a session runs at most once, its
retries get the recorded outcome, sessions and locks expire by log time only, and they
travel in snapshots."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from demo_project.kv.models import KeyValue
from django_raft import commands, replicated
from django_raft.client.locks import check_token
from django_raft.core import Entry, EntryType
from django_raft.models import ClientSession, Lock
from django_raft.node import sessions
from django_raft.node.statemachine import Outcome, StateMachine
from django_raft.node.submit import outcome_answer
from django_raft.protocol.wire import encode_command

pytestmark = [pytest.mark.django_db, pytest.mark.postgres]


@pytest.fixture(autouse=True)
def registry() -> Iterator[None]:
    with commands.preserved():
        yield


class Log:
    """Entries for one state machine, numbered in order, stamped with a log time."""

    def __init__(self, machine: StateMachine) -> None:
        self.machine = machine
        self.index = 0

    def entry(
        self, name: str, client: str = "", sequence: int = 0, at: int = 0, /, **arguments: Any
    ) -> Entry:
        self.index += 1
        data = encode_command(name, arguments, client, sequence, at)
        return Entry(self.index, 1, EntryType.NORMAL, data)

    def apply(self, *entries: Entry) -> list[Outcome]:
        outcomes = self.machine.apply(entries)
        return [outcomes[entry.index] for entry in entries]

    def run(
        self, name: str, client: str = "", sequence: int = 0, at: int = 0, /, **arguments: Any
    ) -> Outcome:
        return self.apply(self.entry(name, client, sequence, at, **arguments))[0]

    def open(self, at: int = 0, timeout_ms: int = 10_000) -> str:
        outcome = self.run(sessions.OPEN_SESSION, "", 0, at, timeout_ms=timeout_ms)
        assert outcome.ok, outcome
        return str(outcome.value)


@pytest.fixture
def log() -> Log:
    return Log(StateMachine("default", "n1"))


def counter() -> int:
    row = KeyValue.objects.filter(pk="c").first()
    return int(row.value) if row else 0


def test_a_session_id_is_the_index_of_its_opening_entry(log: Log) -> None:
    log.run("kv.set", key="x", value="1")
    assert log.open() == "2"
    assert log.open() == "3"  # a replayed opening makes a new session, never an old one


def test_a_retried_command_returns_the_recorded_result_without_running_again(log: Log) -> None:
    client = log.open()
    first = log.run("kv.incr", client, 1, key="c")
    assert first == Outcome(ok=True, value=1)
    # Replayed six times (as a captured request, or retries that all reached the log):
    replays = log.apply(*[log.entry("kv.incr", client, 1, key="c") for _ in range(6)])
    assert replays == [first] * 6
    assert counter() == 1
    assert log.run("kv.incr", client, 2, key="c").value == 2
    assert counter() == 2


def test_a_recorded_failure_is_returned_again_too(log: Log) -> None:
    client = log.open()
    KeyValue.objects.create(key="c", value="not a number", version=1)
    failed = log.run("kv.incr", client, 1, key="c")
    assert not failed.ok and failed.error.startswith("ValueError")
    assert log.run("kv.incr", client, 1, key="c") == failed


def test_an_older_sequence_is_refused_and_changes_nothing(log: Log) -> None:
    client = log.open()
    log.run("kv.incr", client, 1, key="c")
    log.run("kv.incr", client, 2, key="c")
    old = log.run("kv.incr", client, 1, key="c")
    assert not old.ok and old.error.startswith(sessions.REPLAYED)
    assert counter() == 2


def test_a_command_of_an_unknown_session_is_not_applied(log: Log) -> None:
    outcome = log.run("kv.incr", "999", 1, key="c")
    assert not outcome.ok and outcome.error.startswith(sessions.EXPIRED)
    assert outcome_answer(outcome)["error_type"] == "SessionExpiredError"
    assert counter() == 0


def test_sessions_expire_by_log_time_never_by_the_node_s_clock(
    log: Log, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(time, "time", lambda: 4e9)  # a node clock far in the future
    idle = log.open(at=1_000, timeout_ms=5_000)
    busy = log.open(at=1_000, timeout_ms=5_000)
    assert log.run("kv.incr", idle, 1, 2_000, key="c").ok
    # Log time moves on only with the stamps of session-tracked commands:
    assert log.run("kv.incr", busy, 1, 5_500, key="d").ok
    assert log.run("kv.incr", idle, 2, 6_900, key="c").ok  # 2,000 + 5,000 > 6,900
    assert log.run("kv.incr", busy, 2, 10_000, key="d").ok
    assert log.run("kv.incr", busy, 3, 12_000, key="d").ok  # idle: 6,900 + 5,000 <= 12,000
    expired = log.run("kv.incr", idle, 3, 12_001, key="c")
    assert not expired.ok and expired.error.startswith(sessions.EXPIRED)
    assert counter() == 2
    # A stamp earlier than the log time (a leader with a slow clock) does not move it back.
    assert log.run("kv.incr", busy, 4, 1, key="d").ok
    assert replicated.log_time("default") == 12_001


def test_expiry_is_the_same_however_the_entries_are_cut_into_runs(db: Any) -> None:
    def entries(log: Log) -> list[Entry]:
        first = log.entry(sessions.OPEN_SESSION, "", 0, 0, timeout_ms=1000)
        second = log.entry(sessions.OPEN_SESSION, "", 0, 0, timeout_ms=1000)
        return [
            first,
            second,
            log.entry("kv.incr", "1", 1, 500, key="c"),
            log.entry("kv.set", key="plain", value="x"),
            log.entry("kv.incr", "2", 1, 900, key="c"),
            log.entry("kv.incr", "1", 2, 1_600, key="c"),
            log.entry("kv.incr", "2", 2, 1_800, key="c"),
        ]

    together = Log(StateMachine("default", "n1"))
    at_once = together.apply(*entries(together))
    KeyValue.objects.all().delete()
    ClientSession.objects.all().delete()
    from django_raft.models import AppliedState, LogClock

    AppliedState.objects.all().delete()
    LogClock.objects.all().delete()
    apart = Log(StateMachine("default", "n1"))
    one_by_one = [apart.apply(entry)[0] for entry in entries(apart)]
    assert at_once == one_by_one
    assert [outcome.ok for outcome in at_once] == [True, True, True, True, True, False, True]


def test_sessions_and_locks_travel_in_snapshots(log: Log) -> None:
    client = log.open(at=100)
    log.run("kv.incr", client, 1, 200, key="c")
    granted = log.run(sessions.LOCK_ACQUIRE, client, 2, 300, name="job", ttl_ms=1000)
    index, data = log.machine.save_applied()
    ClientSession.objects.all().delete()
    Lock.objects.all().delete()
    KeyValue.objects.all().delete()
    log.machine.restore(data, index, 1)
    assert ClientSession.objects.get(pk=client).last_sequence == 2
    assert Lock.objects.get(pk="job").token == granted.value["token"]
    assert replicated.log_time("default") == 300
    # After the restore (a new node, a restart from a snapshot), a retry is still a retry.
    assert log.run(sessions.LOCK_ACQUIRE, client, 2, 400, name="job", ttl_ms=1000) == granted


def test_a_lock_s_token_is_its_index_and_grows_from_holder_to_holder(log: Log) -> None:
    one, two = log.open(at=0), log.open(at=0)
    first = log.run(sessions.LOCK_ACQUIRE, one, 1, 10, name="job", ttl_ms=1000)
    assert first.value == {"acquired": True, "token": log.index, "expires_ms": 1010}
    refused = log.run(sessions.LOCK_ACQUIRE, two, 1, 500, name="job", ttl_ms=1000)
    assert refused.value["acquired"] is False
    renewed = log.run(sessions.LOCK_ACQUIRE, one, 2, 600, name="job", ttl_ms=1000)
    assert renewed.value["token"] == first.value["token"]  # the holder renews: same token
    taken = log.run(sessions.LOCK_ACQUIRE, two, 2, 1_600, name="job", ttl_ms=1000)  # expired
    assert taken.value["acquired"] and taken.value["token"] > first.value["token"]
    released = log.run(sessions.LOCK_RELEASE, one, 3, 1_700, name="job", token=first.value["token"])
    assert released.value is False  # no longer its lock
    assert log.run(
        sessions.LOCK_RELEASE, two, 3, 1_700, name="job", token=taken.value["token"]
    ).value


def test_a_stale_token_s_write_is_refused_by_the_fence(log: Log) -> None:
    @commands.command("fenced.write")
    def write(context: commands.Context, token: int, value: str) -> str:
        check_token(context, "job", token)
        KeyValue.objects.using(context.using).update_or_create(key="f", defaults={"value": value})
        return value

    one, two = log.open(at=0), log.open(at=0)
    old = log.run(sessions.LOCK_ACQUIRE, one, 1, 0, name="job", ttl_ms=1000).value["token"]
    assert log.run("fenced.write", one, 2, 100, token=old, value="one").ok
    # The holder pauses past its TTL; another client takes the lock and writes.
    new = log.run(sessions.LOCK_ACQUIRE, two, 1, 2_000, name="job", ttl_ms=1000).value["token"]
    assert log.run("fenced.write", two, 2, 2_100, token=new, value="two").ok
    late = log.run("fenced.write", one, 3, 2_200, token=old, value="late")
    assert not late.ok and outcome_answer(late)["error_type"] == "StaleTokenError"
    # Even with nobody else taking it, a token past its TTL in log time is refused.
    expired = log.run("fenced.write", two, 3, 3_500, token=new, value="too late")
    assert not expired.ok and expired.error.startswith("StaleTokenError")
    assert KeyValue.objects.get(pk="f").value == "two"


def test_an_expired_session_releases_its_locks(log: Log) -> None:
    one = log.open(at=0, timeout_ms=1_000)
    two = log.open(at=0, timeout_ms=60_000)
    log.run(sessions.LOCK_ACQUIRE, one, 1, 0, name="job", ttl_ms=60_000)
    assert (
        log.run(sessions.LOCK_ACQUIRE, two, 1, 500, name="job", ttl_ms=1000).value["acquired"]
        is False
    )
    taken = log.run(sessions.LOCK_ACQUIRE, two, 2, 2_000, name="job", ttl_ms=1000)
    assert taken.value["acquired"]  # the TTL is a minute, but its holder's session ended
    assert not ClientSession.objects.filter(pk=one).exists()


def test_session_commands_of_a_batch_handler_run_one_by_one(log: Log) -> None:
    client = log.open()
    outcomes = log.apply(
        log.entry("kv.set", client, 1, key="a", value="1"),
        log.entry("kv.set", client, 1, key="a", value="2"),
        log.entry("kv.set", key="b", value="3"),
    )
    assert outcomes[0] == outcomes[1] == Outcome(ok=True, value=1)
    assert dict(KeyValue.objects.values_list("key", "value")) == {"a": "1", "b": "3"}


def test_a_beat_slot_is_granted_once_and_travels_in_snapshots(log: Log) -> None:
    one, two = log.open(), log.open()
    first = log.run(sessions.BEAT_CLAIM, one, 1, 0, task="t", slots=[1000, 2000])
    assert first.value == {"granted": [1000, 2000], "last": 2000}
    # A second beat, behind, asks for the same slots and one more: only the new one.
    second = log.run(sessions.BEAT_CLAIM, two, 1, 0, task="t", slots=[1000, 2000, 3000])
    assert second.value == {"granted": [3000], "last": 3000}
    index, data = log.machine.save_applied()
    log.run(sessions.BEAT_CLAIM, two, 2, 0, task="t", slots=[4000])
    log.machine.restore(data, index, 1)
    log.index = index  # the log goes on from the snapshot
    assert log.run(sessions.BEAT_CLAIM, one, 2, 0, task="t", slots=[3000]).value["granted"] == []
    bad = log.run(sessions.BEAT_CLAIM, one, 3, 0, task="t", slots=[2, 1])
    assert not bad.ok
