"""The builtin commands (sessions, locks, beat claims) are registered like an
application's: their names are taken, a reset keeps them, the listings leave them out,
and applying any command looks its handler up once."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured

from django_raft import commands
from django_raft.core import Entry, EntryType
from django_raft.node import sessions
from django_raft.node.statemachine import Outcome, StateMachine
from django_raft.protocol.request import (
    ANNOUNCE,
    ANNOUNCE_RENEW,
    ANNOUNCE_WITHDRAW,
    BEAT_CLAIM,
    CLOCK,
    KEEP_ALIVE,
    LOCK_ACQUIRE,
    LOCK_RELEASE,
    OPEN_SESSION,
)
from django_raft.protocol.wire import encode_command

pytestmark = [pytest.mark.django_db, pytest.mark.postgres]

BUILTINS = (
    OPEN_SESSION,
    KEEP_ALIVE,
    LOCK_ACQUIRE,
    LOCK_RELEASE,
    BEAT_CLAIM,
    ANNOUNCE,
    ANNOUNCE_RENEW,
    ANNOUNCE_WITHDRAW,
    CLOCK,
)


@pytest.fixture(autouse=True)
def registry() -> Iterator[None]:
    with commands.preserved():
        yield


class Log:
    """Entries for one state machine, numbered in order, each applied in a run of its own."""

    def __init__(self) -> None:
        self.machine = StateMachine("default", "n1")
        self.index = 0

    def run(
        self, name: str, client: str = "", sequence: int = 0, at: int = 0, /, **arguments: Any
    ) -> Outcome:
        self.index += 1
        data = encode_command(name, arguments, client, sequence, at)
        return self.machine.apply([Entry(self.index, 1, EntryType.NORMAL, data)])[self.index]

    def open(self, at: int = 100) -> str:
        outcome = self.run(OPEN_SESSION, "", 0, at, timeout_ms=60_000)
        assert outcome.ok, outcome
        return str(outcome.value)


@pytest.fixture
def log() -> Log:
    return Log()


def handlers() -> dict[str, commands.Handler]:
    return {name: commands.get(name) for name in BUILTINS}


def test_a_reset_keeps_the_builtins_registered_and_flagged(log: Log) -> None:
    registered = handlers()
    commands.reset()
    assert commands.names() == []
    assert handlers() == registered
    assert all(commands.is_builtin(name) for name in BUILTINS)
    with commands.preserved():
        commands.reset()
    assert handlers() == registered
    client = log.open()  # they still apply, with nothing else registered
    assert log.run(KEEP_ALIVE, client, 1, 200) == Outcome(ok=True)


@pytest.mark.parametrize("name", BUILTINS)
def test_an_application_cannot_register_a_builtin_s_name(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    builtin = commands.get(name)

    def handler(context: commands.Context) -> None: ...

    with pytest.raises(ImproperlyConfigured, match="one of django_raft's builtin commands"):
        commands.register(name, handler)
    with pytest.raises(ImproperlyConfigured, match="one of django_raft's builtin commands"):
        commands.command(name, batch=True)(handler)
    commands.reset()
    with pytest.raises(ImproperlyConfigured, match="one of django_raft's builtin commands"):
        commands.register(name, handler)
    assert commands.get(name) is builtin
    assert not commands.is_batch(name) and not commands.is_read_only(name)
    monkeypatch.delitem(commands._handlers, name)  # a web process: the node's handlers not loaded
    with pytest.raises(ImproperlyConfigured, match="one of django_raft's builtin commands"):
        commands.register(name, handler)


def test_only_a_builtin_s_name_takes_a_builtin_handler() -> None:
    commands._register_builtin(KEEP_ALIVE, commands.get(KEEP_ALIVE))  # the same again: no-op
    with pytest.raises(ImproperlyConfigured, match="already handled by"):
        commands._register_builtin(KEEP_ALIVE, lambda context, **arguments: Outcome(ok=True))
    with pytest.raises(ImproperlyConfigured, match="not the name of a builtin"):
        commands._register_builtin("kv.other", lambda context, **arguments: Outcome(ok=True))
    assert not commands.is_builtin("kv.set") and "kv.other" not in commands.names()


def test_the_listing_of_commands_leaves_the_builtins_out() -> None:
    listed = commands.names()
    assert "kv.set" in listed
    assert not set(BUILTINS) & set(listed)


def test_applying_a_command_looks_its_handler_up_once(
    log: Log, monkeypatch: pytest.MonkeyPatch
) -> None:
    looked_up: Counter[str] = Counter()
    get = commands.get

    def counting(name: str) -> commands.Handler:
        looked_up[name] += 1
        return get(name)

    commands.register("tests.plain", lambda context, key: key)
    monkeypatch.setattr(commands, "get", counting)
    client = log.open()
    granted = log.run(LOCK_ACQUIRE, client, 1, 200, name="job", ttl_ms=1000)
    assert granted.ok and granted.value["acquired"]
    outcomes = [
        log.run(KEEP_ALIVE, client, 2, 300),
        log.run(LOCK_RELEASE, client, 3, 400, name="job", token=granted.value["token"]),
        log.run(BEAT_CLAIM, client, 4, 500, task="t", slots=[1, 2]),
        log.run("tests.plain", client, 5, 600, key="a"),
        log.run("tests.plain", "", 0, 0, key="b"),
        log.run("kv.set", client, 6, 700, key="k", value="v"),  # a batch handler
        log.run("kv.set", "", 0, 0, key="k", value="w"),
        log.run("no.such", client, 7, 800),
        log.run("no.such"),
    ]
    assert [outcome.ok for outcome in outcomes] == [True] * 7 + [False] * 2
    assert looked_up == Counter(
        {name: 1 for name in (OPEN_SESSION, LOCK_ACQUIRE, KEEP_ALIVE, LOCK_RELEASE, BEAT_CLAIM)}
        | {"tests.plain": 2, "kv.set": 2, "no.such": 2}
    )


@pytest.mark.parametrize(
    ("name", "arguments"),
    [
        (KEEP_ALIVE, {}),
        (LOCK_ACQUIRE, {"name": "job", "ttl_ms": 1000}),
        (LOCK_RELEASE, {"name": "job", "token": 2}),
        (BEAT_CLAIM, {"task": "t", "slots": [1]}),
    ],
)
def test_each_builtin_applies_through_the_registry(
    log: Log, monkeypatch: pytest.MonkeyPatch, name: str, arguments: dict[str, Any]
) -> None:
    seen: list[tuple[int, str, int, str, dict[str, Any]]] = []
    builtin = commands.get(name)

    def spy(context: sessions.BuiltinContext, /, **given: Any) -> Outcome:
        seen.append((context.index, context.client_id, context.now, context.using, given))
        return builtin(context, **given)

    client = log.open(at=100)
    monkeypatch.setitem(commands._handlers, name, spy)
    outcome = log.run(name, client, 1, 250, **arguments)
    assert outcome.ok, outcome
    assert seen == [(2, client, 250, "default", arguments)]
    assert log.run(name, client, 1, 300, **arguments) == outcome  # a retry: not run again
    assert len(seen) == 1


def test_a_session_s_opening_applies_through_the_registry(
    log: Log, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened: list[tuple[int, int]] = []
    builtin = commands.get(OPEN_SESSION)

    def spy(context: sessions.BuiltinContext, /, **given: Any) -> Outcome:
        opened.append((context.index, context.now))
        return builtin(context, **given)

    monkeypatch.setitem(commands._handlers, OPEN_SESSION, spy)
    assert log.open(at=100) == "1"
    assert opened == [(1, 100)]
    assert log.run(KEEP_ALIVE, "1", 1, 200) == Outcome(ok=True)  # the session it opened
