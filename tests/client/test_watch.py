"""Watches without a cluster: what applying records, what a watch reads, the route's parameters.

The node's side is driven through a real ``StateMachine`` on the test database (the
entries written to ``LogEntry`` as the node's storage would). The client's decisions
and its parser are tests/client/test_watch_cursor.py; its I/O, blocking and async,
tests/client/test_watch_io.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from demo_project.kv.models import KeyValue
from django_raft import commands
from django_raft.client.watch import watch
from django_raft.core import Entry, EntryType
from django_raft.exceptions import InvalidRequestError
from django_raft.models import SINGLETON, EntryOutcome, LogEntry, Snapshot
from django_raft.node import watch as node_watch
from django_raft.node.http.watches import parse
from django_raft.node.statemachine import StateMachine
from django_raft.protocol.request import ANNOUNCE, ANNOUNCE_WITHDRAW, OPEN_SESSION
from django_raft.protocol.wire import encode_command


@pytest.fixture
def registry() -> Iterator[None]:
    with commands.preserved():
        yield


class Log:
    """Entries numbered in order, stored in ``LogEntry`` as the node's storage does."""

    def __init__(self) -> None:
        self.index = 0

    def __call__(
        self, name: str, client: str = "", sequence: int = 0, /, **arguments: Any
    ) -> Entry:
        self.index += 1
        data = encode_command(name, arguments, client, sequence, 1000)
        LogEntry.objects.create(index=self.index, term=1, command=name, data=data)
        return Entry(self.index, 1, EntryType.NORMAL, data)


def read(after: int = 0, **wanted: Any) -> list[dict[str, Any]]:
    applied = node_watch.applied("default")
    events, through = node_watch.read(
        "default", "default", after, applied, node_watch.Filter(**wanted)
    )
    assert through == min(applied, after + node_watch.PAGE)
    return events


# -- what applying records ---------------------------------------------------------------


@pytest.mark.django_db
def test_each_entry_carries_the_rows_its_handler_changed_saved_deleted_or_declared(
    registry: None,
) -> None:
    log = Log()
    machine = StateMachine("default", "n1")
    machine.apply([log("kv.set", key="a", value="1")])  # batch handler: declared per call
    machine.apply([log("kv.set", key="b", value="2"), log("kv.set", key="c", value="3")])
    machine.apply([log("kv.delete", key="b")])  # a queryset delete: post_delete
    machine.apply([log("kv.set", key="d", value=4)])  # fails: no change
    changes = {e["index"]: e["changes"] for e in read()}
    assert changes == {
        1: [["kv.keyvalue", "a"]],
        2: [["kv.keyvalue", "b"]],
        3: [["kv.keyvalue", "c"]],
        4: [["kv.keyvalue", "b"]],
        5: [],
    }
    failed = read(4)[0]
    assert (failed["ok"], failed["error"]) == (False, "TypeError: value must be a string, not int")
    assert [e["result"] for e in read()][:4] == [1, 1, 1, True]


@pytest.mark.django_db
def test_a_handler_that_raises_leaves_no_change_and_a_declared_one_is_kept(
    registry: None,
) -> None:
    def bulk(context: commands.Context, key: str) -> None:
        KeyValue.objects.using(context.using).filter(pk=key).update(value="x")
        context.changed("kv.KeyValue", key)

    def broken(context: commands.Context) -> None:
        KeyValue.objects.using(context.using).create(key="z", value="1")
        raise RuntimeError("no")

    commands.register("test.bulk", bulk)
    commands.register("test.broken", broken)
    log = Log()
    StateMachine("default", "n1").apply([log("test.bulk", key="k"), log("test.broken")])
    events = read()
    assert [(e["index"], e["ok"], e["changes"]) for e in events] == [
        (1, True, [["kv.keyvalue", "k"]]),
        (2, False, []),
    ]
    assert not KeyValue.objects.filter(pk="z").exists()


@pytest.mark.django_db
def test_a_retry_answered_from_its_session_is_no_event(registry: None) -> None:
    log = Log()
    machine = StateMachine("default", "n1")
    opened = machine.apply([log(OPEN_SESSION, timeout_ms=60_000)])
    client = opened[1].value
    first = log("kv.incr", client, 1, key="n")
    retry = log("kv.incr", client, 1, key="n")  # the same (client, sequence): not run again
    machine.apply([first])
    machine.apply([retry])
    assert KeyValue.objects.get(pk="n").value == "1"
    assert [e["index"] for e in read(commands=frozenset({"kv.incr"}))] == [2]
    assert EntryOutcome.objects.get(pk=3).ran is False


@pytest.mark.django_db
def test_registrations_are_seen_by_a_watch_of_their_model(registry: None) -> None:
    log = Log()
    machine = StateMachine("default", "n1")
    client = machine.apply([log(OPEN_SESSION, timeout_ms=60_000)])[1].value
    put = log(ANNOUNCE, client, 1, key="web/1", value='{"port": 80}', ttl_ms=5000)
    outcome = machine.apply([put])[put.index]
    assert outcome.ok, outcome
    token = outcome.value["token"]
    machine.apply([log(ANNOUNCE_WITHDRAW, client, 2, key="web/1", token=token)])
    events = read(models=frozenset({"django_raft.registration"}))
    assert [(e["command"], e["changes"]) for e in events] == [
        (ANNOUNCE, [["django_raft.registration", "web/1"]]),
        (ANNOUNCE_WITHDRAW, [["django_raft.registration", "web/1"]]),
    ]
    assert read() == []  # django_raft's own commands: only when asked


# -- what a watch reads --------------------------------------------------------------------


@pytest.mark.django_db
def test_filters_narrow_and_django_raft_s_own_commands_come_only_when_asked(
    registry: None,
) -> None:
    log = Log()
    machine = StateMachine("default", "n1")
    client = machine.apply([log(OPEN_SESSION, timeout_ms=60_000)])[1].value
    machine.apply([log("kv.set", client, 1, key="a", value="1")])
    machine.apply([log("django_raft.lock.acquire", client, 2, name="L", ttl_ms=5000)])
    machine.apply([log("kv.set", client, 3, key="b", value="2")])
    machine.apply([log("kv.delete", client, 4, key="a")])

    def indices(**wanted: Any) -> list[int]:
        return [e["index"] for e in read(**wanted)]

    assert indices() == [2, 4, 5]
    assert indices(commands=frozenset({"kv.delete"})) == [5]
    assert indices(models=frozenset({"kv.keyvalue"}), pk="a") == [2, 5]
    assert indices(models=frozenset({"kv.keyvalue"}), commands=frozenset({"kv.set"})) == [2, 4]
    assert indices(models=frozenset({"django_raft.lock"})) == [3]
    assert indices(commands=frozenset({OPEN_SESSION})) == [1]
    assert indices(after=2) == [4, 5]


@pytest.mark.django_db
def test_reading_entries_the_log_no_longer_holds_raises(registry: None) -> None:
    log = Log()
    StateMachine("default", "n1").apply([log("kv.set", key=str(i), value="v") for i in range(6)])
    LogEntry.objects.filter(index__lte=4).delete()
    Snapshot.objects.create(pk=SINGLETON, index=4, term=1, compacted_index=4, compacted_term=1)
    with pytest.raises(node_watch.WatchCompacted) as raised:
        read(after=3)
    assert raised.value.first_index == 5
    assert [e["index"] for e in read(after=4)] == [5, 6]


# -- the route's parameters ----------------------------------------------------------------


@pytest.mark.parametrize(
    "query",
    [
        "after=-1",
        "after=x",
        "after=1&after=2",
        "after=99999999999999999999",
        "model=nope.Nothing",
        "model=kv",
        "pk=1",
        "model=kv.KeyValue&pk=1&pk=2",
        "colour=red",
        "command=",
        "command=" + "x" * 201,
        "&&=",
    ],
)
def test_bad_parameters_are_refused_with_a_reason(query: str) -> None:
    assert isinstance(parse(query), str)


def test_good_parameters_parse() -> None:
    assert parse("") == (None, node_watch.Filter())
    after, wanted = parse("after=7&command=a&command=b&model=kv.KeyValue&pk=x")  # type: ignore[misc]
    assert after == 7
    assert wanted == node_watch.Filter(frozenset({"a", "b"}), frozenset({"kv.keyvalue"}), "x")


def test_watch_refuses_bad_arguments_before_anything_is_sent() -> None:
    for call in (
        lambda: watch(-1),
        lambda: watch("3"),  # type: ignore[arg-type]
        lambda: watch(pk=3),
        lambda: watch(timeout=0),
    ):
        with pytest.raises(InvalidRequestError):
            call()
