"""Client sessions in the state machine: a command of a session runs at most once, its
retries get the recorded outcome, sessions and locks expire by log time only, and they
travel in snapshots."""

from __future__ import annotations

import hashlib
import json
import struct
import time
from collections.abc import Iterator
from typing import Any

import pytest

from demo_project.kv.models import KeyValue
from django_raft import commands, replicated
from django_raft.client.locks import check_token
from django_raft.core import Entry, EntryType
from django_raft.models import ClientSession, Lock
from django_raft.node import sessions, statemachine
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

    def outstanding(
        self,
        client: str,
        sequence: int,
        floor: int,
        at: int = 0,
        name: str = "kv.incr",
        /,
        **arguments: Any,
    ) -> Entry:
        """An entry of a client with many commands outstanding: it sends its ack floor."""
        self.index += 1
        data = encode_command(name, arguments or {"key": "c"}, client, sequence, at, floor)
        return Entry(self.index, 1, EntryType.NORMAL, data)

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


# -- one session per process: many commands outstanding (thesis §6.3) -----------------


def kept(client: str) -> dict[str, Any]:
    """The outcomes a session keeps besides its last one."""
    return dict(json.loads(ClientSession.objects.get(pk=client).outcomes))


def test_outstanding_commands_applied_out_of_order_each_run_once_however_often_sent(
    log: Log,
) -> None:
    """Threads of one process send 1..5 at once (floor 1): they reach the log in any
    order, and each arrives twice more (retries, duplicate delivery)."""
    client = log.open()
    order = [3, 1, 5, 2, 4]
    first = log.apply(*[log.outstanding(client, number, 1) for number in order])
    assert all(outcome.ok for outcome in first)
    assert sorted(outcome.value for outcome in first) == [1, 2, 3, 4, 5]
    assert counter() == 5
    by_number = dict(zip(order, first, strict=True))
    for _ in range(2):
        again = [4, 2, 5, 1, 3]
        retries = log.apply(*[log.outstanding(client, number, 1) for number in again])
        assert retries == [by_number[number] for number in again]
    assert counter() == 5


def test_runs_cut_anywhere_give_the_same_outcomes_with_many_outstanding(db: Any) -> None:
    def entries(log: Log) -> list[Entry]:
        opened = log.entry(sessions.OPEN_SESSION, "", 0, 0, timeout_ms=60_000)
        return [
            opened,
            log.outstanding("1", 2, 1, 10, "kv.set", key="a", value="2"),
            log.outstanding("1", 1, 1, 20, "kv.set", key="a", value="1"),
            log.outstanding("1", 2, 1, 30, "kv.set", key="a", value="x"),  # a retry
            log.outstanding("1", 3, 3, 40, "kv.set", key="b", value="3"),
            log.outstanding("1", 1, 1, 50, "kv.set", key="a", value="y"),  # below the floor
            log.outstanding("1", 3, 3, 60, "kv.set", key="b", value="z"),  # a retry
        ]

    together = Log(StateMachine("default", "n1"))
    at_once = together.apply(*entries(together))
    state = dict(KeyValue.objects.values_list("key", "value"))
    from django_raft.models import AppliedState, LogClock

    for model in (KeyValue, ClientSession, AppliedState, LogClock):
        model.objects.all().delete()
    apart = Log(StateMachine("default", "n1"))
    one_by_one = [apart.apply(entry)[0] for entry in entries(apart)]
    assert at_once == one_by_one
    assert state == dict(KeyValue.objects.values_list("key", "value")) == {"a": "1", "b": "3"}
    assert [outcome.ok for outcome in at_once] == [True, True, True, True, True, False, True]
    assert at_once[5].error.startswith(sessions.REPLAYED)


def test_a_sequence_below_the_floor_is_refused_and_one_above_it_answered_again(log: Log) -> None:
    client = log.open()
    log.apply(*[log.outstanding(client, number, 1) for number in (1, 2, 3)])
    # 1 and 2 answered; 3 not yet seen by the client when it sends 4.
    assert log.apply(log.outstanding(client, 4, 3))[0].value == 4
    for number in (1, 2):
        refused = log.apply(log.outstanding(client, number, 1))[0]
        assert not refused.ok and refused.error.startswith(sessions.REPLAYED)
    assert log.apply(log.outstanding(client, 3, 3))[0] == Outcome(ok=True, value=3)
    assert counter() == 4


def test_outcomes_below_the_floor_are_forgotten_so_a_session_does_not_grow(log: Log) -> None:
    client = log.open()
    # Four threads: each number is sent while the three before it are still outstanding.
    for number in range(1, 401):
        log.apply(log.outstanding(client, number, max(1, number - 3)))
        assert len(kept(client)) <= 3
    assert sorted(map(int, kept(client))) == [397, 398, 399]
    # One command slow to be answered holds the floor; the others are kept until it moves.
    for number in range(401, 451):
        log.apply(log.outstanding(client, number, 400))
    assert len(kept(client)) == 50  # 400 to 449; 450 is the last
    log.apply(log.outstanding(client, 451, 451))
    assert kept(client) == {}
    assert counter() == 451


def test_one_at_a_time_keeps_nothing_but_the_last_outcome(log: Log) -> None:
    client = log.open()
    for number in range(1, 6):
        assert log.run("kv.incr", client, number, key="c").value == number  # no floor sent
        assert kept(client) == {}
    session = ClientSession.objects.get(pk=client)
    assert (session.last_sequence, session.floor) == (5, 5)


def test_a_session_holds_at_most_max_outstanding_outcomes(log: Log) -> None:
    client = log.open()
    limit = sessions.MAX_OUTSTANDING
    assert log.apply(log.outstanding(client, limit, 1))[0].ok  # limit - 1 above the floor
    refused = log.apply(log.outstanding(client, limit + 1, 1))[0]
    assert not refused.ok and refused.error.startswith(sessions.OVERLOADED)
    assert outcome_answer(refused)["error_type"] == "OverloadedError"
    assert counter() == 1  # not applied, nor recorded: sent again once the floor moved,
    assert log.apply(log.outstanding(client, limit + 1, 2))[0] == Outcome(ok=True, value=2)


def test_outstanding_outcomes_travel_in_snapshots(log: Log) -> None:
    client = log.open(at=100)
    first = log.apply(*[log.outstanding(client, number, 1, 200) for number in (1, 2, 3)])
    index, data = log.machine.save_applied()
    assert data.startswith(b"django-raft-state/3\n")
    ClientSession.objects.all().delete()
    KeyValue.objects.all().delete()
    log.machine.restore(data, index, 1)
    again = log.apply(*[log.outstanding(client, number, 1, 300) for number in (3, 1, 2)])
    assert again == [first[2], first[0], first[1]]
    assert counter() == 3


def test_a_snapshot_of_one_outcome_per_session_is_still_restored(log: Log) -> None:
    """Version 2 snapshots: sessions of seven fields, their floor their last number."""
    client = log.open(at=100)
    log.run("kv.incr", client, 1, 200, key="c")
    last = log.run("kv.incr", client, 2, 300, key="c")
    index, data = log.machine.save_applied()
    members, tracked, state = statemachine._split_snapshot(data)
    old = json.loads(tracked)
    old["sessions"] = [row[:7] for row in old["sessions"]]
    header = json.dumps(members, separators=(",", ":")).encode()
    tracked = json.dumps(old).encode()
    length = struct.Struct(">Q")
    body = b"".join(
        (b"django-raft-state/2\n", length.pack(len(header)), header, length.pack(len(tracked)))
    )
    body += tracked + state
    ClientSession.objects.all().delete()
    log.machine.restore(body + hashlib.sha256(body).digest(), index, 1)
    assert ClientSession.objects.get(pk=client).floor == 2
    assert log.run("kv.incr", client, 2, 400, key="c") == last
    assert log.run("kv.incr", client, 1, 400, key="c").error.startswith(sessions.REPLAYED)


def test_two_owners_of_one_session_exclude_each_other_and_expire_with_it(log: Log) -> None:
    """Two threads of one process (one session) with a lock object each."""
    client = log.open(at=0, timeout_ms=1_000)
    other = log.open(at=0, timeout_ms=60_000)

    def acquire(owner: str, sequence: int, at: int) -> Any:
        entry = log.outstanding(
            client, sequence, 1, at, sessions.LOCK_ACQUIRE, name="job", ttl_ms=60_000, owner=owner
        )
        return log.apply(entry)[0].value

    taken = acquire("a", 1, 0)
    assert taken["acquired"]
    assert not acquire("b", 2, 10)["acquired"]  # the same session, another owner
    assert acquire("a", 3, 20)["token"] == taken["token"]  # the owner renews
    released = log.outstanding(
        client, 4, 1, 30, sessions.LOCK_RELEASE, name="job", token=taken["token"], owner="b"
    )
    assert log.apply(released)[0].value is False  # not b's to give back
    # The session expires: the lock its owner held is free for another session.
    assert log.run(sessions.LOCK_ACQUIRE, other, 1, 2_000, name="job", ttl_ms=1000).value[
        "acquired"
    ]
    bad = log.outstanding(client, 5, 1, 0, sessions.LOCK_ACQUIRE, name="j", ttl_ms=1, owner="a/b")
    assert not log.apply(bad)[0].ok


def test_a_batch_of_one_session_s_commands_sees_each_one_s_floor_and_expiry(db: Any) -> None:
    """Commands of one session in one call of a batch handler are admitted as they would
    be one by one: each moves the floor and the expiry for the next."""

    def entries(log: Log) -> list[Entry]:
        opened = log.entry(sessions.OPEN_SESSION, "", 0, 0, timeout_ms=100)
        return [
            opened,
            log.outstanding("1", 1, 1, 90, "kv.set", key="a", value="1"),  # expires at 190
            log.outstanding("1", 2, 2, 150, "kv.set", key="b", value="2"),
            log.outstanding("1", 1, 1, 160, "kv.set", key="a", value="x"),  # below floor 2
            log.outstanding("1", 3, 2, 240, "kv.set", key="c", value="3"),  # 150 + 100 > 240
            log.outstanding("1", 3, 3, 250, "kv.set", key="c", value="y"),  # a retry
        ]

    together = Log(StateMachine("default", "n1"))
    at_once = together.apply(*entries(together))
    from django_raft.models import AppliedState, LogClock

    for model in (KeyValue, ClientSession, AppliedState, LogClock):
        model.objects.all().delete()
    apart = Log(StateMachine("default", "n1"))
    one_by_one = [apart.apply(entry)[0] for entry in entries(apart)]
    assert at_once == one_by_one
    assert [outcome.ok for outcome in at_once] == [True, True, True, False, True, True]
    assert at_once[5] == at_once[4]
    assert dict(KeyValue.objects.values_list("key", "value")) == {"a": "1", "b": "2", "c": "3"}


def test_a_floor_above_its_sequence_never_reaches_the_log() -> None:
    from django_raft.protocol.request import command_fields
    from django_raft.protocol.wire import WireError, decode_envelope

    body = {"name": "kv.incr", "arguments": {}, "client_id": "1", "sequence": 3}
    assert command_fields({**body, "first_unanswered": 2}) == ("kv.incr", {}, "1", 3)
    for bad in (4, -1, "2", True):
        assert isinstance(command_fields({**body, "first_unanswered": bad}), str)
    with pytest.raises(WireError):
        encode_command("kv.incr", {}, "1", 3, 0, 4)
    assert decode_envelope(encode_command("kv.incr", {}, "1", 3, 0, 2)).first_unanswered == 2
