"""Registrations in the state machine: announced, renewed, withdrawn and expired in log
time, the same on every node; refused when taken or malformed; carried by snapshots; and
the leader's clock entries that make them expire while nobody writes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import Future
from typing import Any

import pytest
from django.db.models.signals import post_delete, post_save

from django_raft import commands, replicated
from django_raft.client import registrations as client_registrations
from django_raft.core import Entry, EntryType
from django_raft.exceptions import InvalidRequestError
from django_raft.models import Registration
from django_raft.node import clock, registrations
from django_raft.node.statemachine import Outcome, StateMachine
from django_raft.protocol.request import (
    ANNOUNCE,
    ANNOUNCE_RENEW,
    ANNOUNCE_WITHDRAW,
    CLOCK,
    LOCK_ACQUIRE,
    OPEN_SESSION,
)
from django_raft.protocol.wire import decode_envelope, encode_command

pytestmark = [pytest.mark.django_db]


@pytest.fixture(autouse=True)
def registry(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # What earlier tests published, their transactions since rolled back, is not known.
    monkeypatch.setattr(registrations, "_summaries", {})
    monkeypatch.setattr(registrations, "_log_times", {})
    with commands.preserved():
        yield


class Log:
    """Entries for one state machine, numbered in order, each applied in a run of its own."""

    def __init__(self) -> None:
        self.machine = StateMachine("default", "n1")
        self.index = 0
        self.sequences: dict[str, int] = {}

    def run(self, name: str, client: str = "", at: int = 0, /, **arguments: Any) -> Outcome:
        self.index += 1
        sequence = 0
        if client:
            sequence = self.sequences[client] = self.sequences.get(client, 0) + 1
        data = encode_command(name, arguments, client, sequence, at)
        return self.machine.apply([Entry(self.index, 1, EntryType.NORMAL, data)])[self.index]

    def open(self, at: int = 0, timeout_ms: int = 3_600_000) -> str:
        outcome = self.run(OPEN_SESSION, "", at, timeout_ms=timeout_ms)
        assert outcome.ok, outcome
        return str(outcome.value)


@pytest.fixture
def log() -> Log:
    return Log()


@pytest.fixture
def changes() -> Iterator[list[tuple[str, str]]]:
    """What the ORM's signals report of the registrations: ("saved"|"deleted", key)."""
    seen: list[tuple[str, str]] = []

    def saved(instance: Registration, **kwargs: Any) -> None:
        seen.append(("saved", instance.key))

    def deleted(instance: Registration, **kwargs: Any) -> None:
        seen.append(("deleted", instance.key))

    post_save.connect(saved, sender=Registration)
    post_delete.connect(deleted, sender=Registration)
    try:
        yield seen
    finally:
        post_save.disconnect(saved, sender=Registration)
        post_delete.disconnect(deleted, sender=Registration)


def rows() -> dict[str, tuple[Any, str, int, int]]:
    return {
        row.key: (json.loads(row.value), row.holder, row.token, row.expires_ms)
        for row in Registration.objects.all()
    }


def test_an_announcement_lives_its_ttl_in_log_time_and_a_clock_entry_ends_it(
    log: Log, changes: list[tuple[str, str]]
) -> None:
    client = log.open(at=1_000)
    announced = log.run(ANNOUNCE, client, 1_000, key="w/a", value={"port": 80}, ttl_ms=2_000)
    assert announced.value == {"announced": True, "token": 2, "expires_ms": 3_000}
    assert rows() == {"w/a": ({"port": 80}, client, 2, 3_000)}
    assert log.run(CLOCK, "", 2_999).ok  # not yet
    assert rows() and replicated.log_time("default") == 2_999
    assert log.run(CLOCK, "", 3_000).ok  # its expiry: gone, through the ORM
    assert rows() == {}
    assert changes == [("saved", "w/a"), ("deleted", "w/a")]


def test_renewals_extend_without_a_change_and_never_revive_an_expired_key(
    log: Log, changes: list[tuple[str, str]]
) -> None:
    client = log.open(at=1_000)  # an expiry sweep at 1,000, then one per second of log time
    log.run(ANNOUNCE, client, 1_000, key="a", value=1, ttl_ms=1_000)
    log.run(ANNOUNCE, client, 1_000, key="b", value=2, ttl_ms=5_000)
    renewed = log.run(ANNOUNCE_RENEW, client, 1_900, keys=["a", "b", "c"], locks=[])
    assert renewed.value == {"lost": ["c"], "lost_locks": []}
    assert {key: row[3] for key, row in rows().items()} == {"a": 2_900, "b": 6_900}
    log.run(ANNOUNCE_RENEW, client, 2_000, keys=["b"], locks=[])  # a sweep: nothing expired
    # The log time passes a's expiry before its next renewal reaches the log: lost, even
    # though no sweep deleted it yet.
    late = log.run(ANNOUNCE_RENEW, client, 2_950, keys=["a", "b"], locks=[])
    assert late.value == {"lost": ["a"], "lost_locks": []}
    assert rows()["a"][3] == 2_900
    assert changes == [("saved", "a"), ("saved", "b")]  # renewals are no changes
    assert log.run(CLOCK, "", 3_000).ok  # a clock entry deletes what expired
    assert set(rows()) == {"b"}
    assert changes[2:] == [("deleted", "a")]


def test_a_key_held_by_another_live_session_is_refused_and_its_own_is_updated(
    log: Log,
) -> None:
    one, two = log.open(), log.open()
    first = log.run(ANNOUNCE, one, 10, key="k", value="one", ttl_ms=1_000)
    refused = log.run(ANNOUNCE, two, 20, key="k", value="two", ttl_ms=1_000)
    assert refused.value == {"announced": False, "holder": one, "token": first.value["token"]}
    again = log.run(ANNOUNCE, one, 30, key="k", value="one again", ttl_ms=1_000)
    assert again.value["token"] == first.value["token"]  # the same registration
    assert rows()["k"][:3] == ("one again", one, first.value["token"])
    taken = log.run(ANNOUNCE, two, 1_030, key="k", value="two", ttl_ms=1_000)  # expired
    assert taken.value["announced"] and taken.value["token"] == log.index
    assert rows()["k"][:2] == ("two", two)


def test_a_withdrawal_takes_only_the_session_s_own_registration(
    log: Log, changes: list[tuple[str, str]]
) -> None:
    one, two = log.open(), log.open()
    token = log.run(ANNOUNCE, one, 0, key="k", value=1, ttl_ms=10_000).value["token"]
    assert log.run(ANNOUNCE_WITHDRAW, two, 1, key="k", token=token).value is False
    assert log.run(ANNOUNCE_WITHDRAW, one, 2, key="k", token=token + 1).value is False
    assert rows()
    assert log.run(ANNOUNCE_WITHDRAW, one, 3, key="k", token=token).value is True
    assert rows() == {}
    assert changes == [("saved", "k"), ("deleted", "k")]


def test_an_expired_session_takes_its_registrations_with_it(log: Log) -> None:
    short = log.open(at=0, timeout_ms=1_000)
    other = log.open(at=0)
    log.run(ANNOUNCE, short, 0, key="short", value=1, ttl_ms=60_000)
    log.run(ANNOUNCE, other, 0, key="other", value=1, ttl_ms=60_000)
    log.run(ANNOUNCE_RENEW, other, 1_500, keys=["other"], locks=[])  # sweeps: short expired
    assert set(rows()) == {"other"}


def test_a_lock_holder_takes_the_key_with_its_token_and_a_stale_token_is_refused(
    log: Log,
) -> None:
    one, two = log.open(), log.open()
    lock = log.run(LOCK_ACQUIRE, one, 0, name="election/e", ttl_ms=1_000, owner="1")
    first = log.run(
        ANNOUNCE, one, 0, key="election/e", value="one", ttl_ms=1_000,
        lock="election/e", owner="1", token=lock.value["token"],
    )  # fmt: skip
    assert first.value["token"] == lock.value["token"]
    # The leader stops renewing; the other takes the lock once it expired, then the key.
    newer = log.run(LOCK_ACQUIRE, two, 1_000, name="election/e", ttl_ms=1_000, owner="2")
    assert newer.value["acquired"]
    renew = log.run(
        ANNOUNCE_RENEW, one, 1_000, keys=[], locks=[["election/e", "1", lock.value["token"], 1_000]]
    )
    assert renew.value["lost_locks"] == ["election/e"]
    taken = log.run(
        ANNOUNCE, two, 1_000, key="election/e", value="two", ttl_ms=1_000,
        lock="election/e", owner="2", token=newer.value["token"],
    )  # fmt: skip
    assert taken.value == {"announced": True, "token": newer.value["token"], "expires_ms": 2_000}
    stale = log.run(
        ANNOUNCE, one, 1_100, key="election/e", value="one", ttl_ms=1_000,
        lock="election/e", owner="1", token=lock.value["token"],
    )  # fmt: skip
    assert not stale.ok and stale.error.startswith("StaleTokenError:")
    assert rows()["election/e"][:3] == ("two", two, newer.value["token"])


@pytest.mark.parametrize(
    "arguments",
    [
        {"key": "k" * 201, "value": 1, "ttl_ms": 1_000},
        {"key": "", "value": 1, "ttl_ms": 1_000},
        {"key": "k", "value": 1, "ttl_ms": 999},
        {"key": "k", "value": 1, "ttl_ms": 86_400_001},
        {"key": "k", "value": 1, "ttl_ms": 1.5},
        {"key": "k", "value": "x" * 20_000, "ttl_ms": 1_000},
        {"key": "k", "value": 1, "ttl_ms": 1_000, "lock": "l", "token": "1"},
    ],
)
def test_a_malformed_announcement_changes_nothing(log: Log, arguments: dict[str, Any]) -> None:
    client = log.open()
    outcome = log.run(ANNOUNCE, client, 0, **arguments)
    assert not outcome.ok and outcome.error.startswith("ValueError:")
    assert rows() == {}
    bad = log.run(ANNOUNCE_RENEW, client, 0, keys="k", locks=[])
    assert not bad.ok and bad.error.startswith("ValueError:")


def test_registrations_travel_in_snapshots_and_an_older_snapshot_has_none(log: Log) -> None:
    client = log.open(at=0)
    log.run(ANNOUNCE, client, 0, key="k", value={"a": [1]}, ttl_ms=5_000)
    index, data = log.machine.save_applied()
    Registration.objects.all().delete()
    log.machine.restore(data, index, 1)
    assert rows() == {"k": ({"a": [1]}, client, 2, 5_000)}
    assert registrations.summary("default") == registrations.Summary(1, 5_000, 5_000)
    from django_raft.node import sessions

    older = json.loads(sessions.dump("default"))
    del older["registrations"]
    sessions.load(json.dumps(older).encode(), "default")
    assert rows() == {} and registrations.summary("default") == registrations.Summary(0, 0, 0)


def test_the_summary_follows_the_runs_that_change_registrations(log: Log) -> None:
    client = log.open(at=0)
    log.run(ANNOUNCE, client, 0, key="a", value=1, ttl_ms=4_000)
    log.run(ANNOUNCE, client, 0, key="b", value=1, ttl_ms=2_000)
    assert registrations.summary("default") == registrations.Summary(2, 2_000, 2_000)
    log.run(ANNOUNCE_RENEW, client, 1_000, keys=["a", "b"], locks=[])
    assert registrations.summary("default") == registrations.Summary(2, 2_000, 3_000)
    assert registrations.log_time("default") == 1_000
    log.run(CLOCK, "", 3_000)
    assert registrations.summary("default") == registrations.Summary(1, 4_000, 5_000)


class Proposals:
    """A stand-in for ``RaftNode.propose_async``: records the clock entries' stamps."""

    def __init__(self) -> None:
        self.stamps: list[int] = []
        self.futures: list[Future[Outcome]] = []

    def __call__(self, data: bytes) -> Future[Outcome]:
        command = decode_envelope(data)
        assert command.name == CLOCK and not command.client_id
        self.stamps.append(command.time_ms)
        future: Future[Outcome] = Future()
        self.futures.append(future)
        return future


def test_the_leader_proposes_clock_entries_only_while_registrations_exist(
    log: Log, monkeypatch: pytest.MonkeyPatch
) -> None:
    wall = [10_000.0]
    monkeypatch.setattr(clock.time, "time", lambda: wall[0])  # seconds
    proposals = Proposals()
    proposer = clock.ClockProposer("default", proposals)
    log.run(CLOCK, "", 10_000_000)  # log time 10,000 s, no registration
    assert not proposer.tick(True, 100.0)
    wall[0] = 10_100.0  # the log lags by 100 s: still nothing to expire
    assert not proposer.tick(True, 101.0)
    client = log.open(at=10_100_000)
    log.run(ANNOUNCE, client, 10_100_000, key="k", value=1, ttl_ms=4_000)
    assert not proposer.tick(True, 102.0)  # the log is within a quarter TTL of the clock
    wall[0] = 10_101.001  # a quarter TTL and a ms behind
    assert not proposer.tick(False, 103.0)  # a follower proposes nothing
    assert proposer.tick(True, 103.0)
    assert proposals.stamps == [10_101_001]
    assert not proposer.tick(True, 103.5)  # one in flight
    proposals.futures[-1].set_result(Outcome(ok=True))
    assert not proposer.tick(True, 103.1)  # at most one per MIN_INTERVAL
    assert proposer.tick(True, 103.6)
    log.run(CLOCK, "", 10_104_000)  # what the leader proposed, applied: k expired
    proposals.futures[-1].set_result(Outcome(ok=True))
    wall[0] = 10_200.0
    assert not proposer.tick(True, 110.0)  # no registrations: no clock entries
    assert registrations.summary("default") == registrations.Summary(0, 0, 0)


def test_the_clock_proposes_when_the_earliest_expiry_passed(
    log: Log, monkeypatch: pytest.MonkeyPatch
) -> None:
    wall = [0.0]
    monkeypatch.setattr(clock.time, "time", lambda: wall[0])
    proposals = Proposals()
    proposer = clock.ClockProposer("default", proposals)
    client = log.open(at=0)
    log.run(ANNOUNCE, client, 0, key="k", value=1, ttl_ms=1_000)
    log.run(ANNOUNCE, client, 900, key="long", value=1, ttl_ms=86_400_000)
    wall[0] = 0.999
    assert not proposer.tick(True, 1.0)  # lag 99 ms, under a quarter of 1 s
    wall[0] = 1.0
    assert proposer.tick(True, 2.0) and proposals.stamps == [1_000]


def test_announce_refuses_bad_input_before_sending() -> None:
    for key, value, ttl in [
        ("k" * 201, 1, 10),
        ("", 1, 10),
        ("k", 1, 0.5),
        ("k", 1, 86_401),
        ("k", 1, True),
        ("k", float("nan"), 10),
        ("k", object(), 10),
        ("k", "x" * 20_000, 10),
    ]:
        with pytest.raises(InvalidRequestError):
            client_registrations.announce(key, value, ttl)
    assert not client_registrations._keeper._held


def test_the_admin_lists_who_is_alive_read_only(log: Log, admin_client: Any) -> None:
    from django.urls import reverse

    client = log.open(at=1_000)
    log.run(ANNOUNCE, client, 1_000, key="workers/a", value={"port": 80}, ttl_ms=2_500)
    log.run(ANNOUNCE, client, 1_000, key="workers/b", value=1, ttl_ms=1_000)
    log.run(CLOCK, "", 1_500)
    page = admin_client.get(reverse("admin:django_raft_registration_changelist"))
    assert page.status_code == 200
    text = page.content.decode()
    assert "workers/a" in text and "{&quot;port&quot;:80}" in text and "2.0" in text
    assert "0.5" in text  # b: 500 ms of log time left
    assert reverse("admin:django_raft_registration_add") not in text
    assert admin_client.get(reverse("admin:django_raft_registration_add")).status_code == 403


def test_the_api_lists_who_is_alive(
    log: Log, admin_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from contextlib import contextmanager

    from django.urls import reverse

    @contextmanager
    def local_read(**options: Any) -> Iterator[int]:
        yield 0  # the test database is no node's: read it as it is

    monkeypatch.setattr(client_registrations, "read", local_read)
    client = log.open(at=0)
    log.run(ANNOUNCE, client, 0, key="workers/a", value={"port": 80}, ttl_ms=2_000)
    log.run(ANNOUNCE, client, 0, key="other", value=1, ttl_ms=2_000)
    answer = admin_client.get(reverse("django_raft_api:registrations"), {"prefix": "workers/"})
    assert answer.status_code == 200
    assert answer.json() == {
        "ok": True,
        "value": [
            {
                "key": "workers/a",
                "value": {"port": 80},
                "holder": client,
                "token": 2,
                "ttl": 2.0,
                "expires_ms": 2_000,
            }
        ],
    }
