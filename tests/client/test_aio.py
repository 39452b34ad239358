"""The async client against one real ``raftnode`` process: ``ado`` shares the process's
session with ``do``, waits on no thread per call, raises ``do``'s errors; ``aread``
never yields below the read index; ``alock`` keeps ``Lock``'s lease.

The uvicorn side (concurrent requests, a paused leader) is tests/integration/test_asgi.py.
"""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from collections.abc import Coroutine, Iterator
from typing import Any

import pytest
from django.conf import settings
from django.test import override_settings

import django_raft
from django_raft.client import Client, aio, watch
from django_raft.client.client import default_client
from django_raft.conf import raft_settings
from django_raft.exceptions import (
    ClusterUnreachableError,
    CommandFailedError,
    InvalidRequestError,
    LockNotHeldError,
    RaftError,
    StaleReadError,
)
from django_raft.models import SINGLETON, AppliedState
from django_raft.protocol import asend, send
from tests.integration.cluster import SECRET, Cluster, Node, free_port, wait_for

pytestmark = [pytest.mark.integration]


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    """One real node, which this process reaches as a web process does."""
    cluster = Cluster(tmp_path_factory.mktemp("aio"), size=1)
    try:
        cluster.start()
        leader = cluster.leader()
        settings = {"SECRET": SECRET, "ADDRESS": leader.address, "COMMAND_TIMEOUT": 20}
        with override_settings(DJANGO_RAFT=settings):
            yield leader
    finally:
        cluster.close()


def run(coroutine: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(coroutine)


def value(node: Node, key: str) -> int:
    rows = node.query(f"SELECT value FROM kv_keyvalue WHERE key = '{key}'")
    return int(rows[0][0]) if rows else 0


def sessions(node: Node) -> set[str]:
    """The sessions the node holds (the log's entries may be compacted away)."""
    return {row[0] for row in node.query("SELECT client_id FROM django_raft_clientsession")}


def test_ado_runs_commands_in_the_session_do_uses(node: Node) -> None:
    before = sessions(node)

    async def many() -> list[Any]:
        return await asyncio.gather(*(django_raft.ado("kv.incr", key="a") for _ in range(200)))

    with override_settings(DJANGO_RAFT={**settings.DJANGO_RAFT}):  # a new default client
        client = default_client()
        assert not client.client_id
        results = run(many())
        assert sorted(results) == list(range(1, 201))  # each applied once, each answered
        assert django_raft.do("kv.incr", key="a") == 201  # the blocking API, its session
        assert run(django_raft.ado("kv.incr", key="a")) == 202
        assert sessions(node) - before == {client.client_id}  # one, opened once
    assert value(node, "a") == 202


def test_ado_waits_on_no_thread_per_call(node: Node) -> None:
    """200 commands in flight: the process's thread count stays what it was (the
    stream's reader thread answers them all), and the loop keeps turning."""
    run(django_raft.ado("kv.incr", key="warm"))
    before = threading.active_count()
    most = 0
    turns = 0

    async def watch(done: asyncio.Event) -> None:
        nonlocal most, turns
        while not done.is_set():
            most = max(most, threading.active_count())
            turns += 1
            await asyncio.sleep(0.001)

    async def many() -> None:
        done = asyncio.Event()
        watcher = asyncio.create_task(watch(done))
        await asyncio.gather(*(django_raft.ado("kv.incr", key="t") for _ in range(200)))
        done.set()
        await watcher

    run(many())
    assert most <= before + 1, (before, most)  # +1: asyncio's resolver, if it ran
    assert turns > 1
    assert value(node, "t") == 200


def error_of(call: Any) -> type[BaseException]:
    try:
        call()
    except RaftError as error:
        return type(error)
    raise AssertionError("no error")


@pytest.mark.parametrize(
    ("command", "arguments", "expected"),
    [
        ("kv.nope", {}, InvalidRequestError),  # no such command: not applied
        ("", {}, InvalidRequestError),
        ("kv.incr", {"key": object()}, InvalidRequestError),  # not JSON: nothing sent
        ("kv.set", {"key": "k", "value": 3}, CommandFailedError),  # the handler raised
    ],
)
def test_ado_raises_what_do_raises(
    node: Node, command: str, arguments: dict[str, Any], expected: type[RaftError]
) -> None:
    assert error_of(lambda: django_raft.do(command, **arguments)) is expected
    assert error_of(lambda: run(django_raft.ado(command, **arguments))) is expected


def test_ado_to_no_node_says_nothing_was_applied(node: Node) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}"
    with override_settings(DJANGO_RAFT={"SECRET": SECRET, "ADDRESS": nowhere}):
        client = Client(timeout=0.5)
        assert error_of(lambda: client.do("kv.incr", key="x")) is ClusterUnreachableError
        assert error_of(lambda: run(client.ado("kv.incr", key="x"))) is ClusterUnreachableError
    assert value(node, "x") == 0


def test_a_request_on_asyncio_streams_answers_as_the_blocking_one(node: Node) -> None:
    """What goes as a request (https nodes, read-only commands, the members)."""
    mine = run(asend.post(node.address, "status", {"addresses": True}, 2.0))
    theirs = send.post(node.address, "status", {"addresses": True}, 2.0)
    assert mine["ok"] and mine["value"]["addresses"] == theirs["value"]["addresses"]
    refused = run(asend.post(node.address, "command", {"name": 3}, 2.0))
    assert refused == send.post(node.address, "command", {"name": 3}, 2.0)
    assert refused["error_type"] == "InvalidRequestError"


@pytest.mark.django_db(transaction=True)
def test_aread_waits_for_this_servers_database_and_never_yields_below_it(node: Node) -> None:
    """This process's database stands for the server's: it holds the applied index
    ``aread`` waits for (the node's is elsewhere, so the test moves it by hand)."""
    run(django_raft.ado("kv.incr", key="r"))
    AppliedState.objects.create(pk=SINGLETON, applied_index=0, applied_term=1)

    async def stale_read() -> int:
        """The read fails after its timeout; the loop turned all along."""
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        ticker = asyncio.create_task(tick())
        started = time.monotonic()
        with pytest.raises(StaleReadError, match="nothing was read"):
            async with django_raft.aread(timeout=0.4):
                raise AssertionError("entered a read its database cannot serve")
        assert 0.4 <= time.monotonic() - started < 2
        ticker.cancel()
        return ticks

    assert run(stale_read()) >= 10

    async def caught_up() -> int:
        async def catch_up() -> None:  # the local node applies it 0.2 s later
            await asyncio.sleep(0.2)
            await asyncio.to_thread(
                AppliedState.objects.filter(pk=SINGLETON).update, applied_index=10**9
            )

        mover = asyncio.create_task(catch_up())
        async with django_raft.aread(timeout=5) as read_index:
            assert mover.done()
            return read_index

    index = run(caught_up())
    assert index >= value(node, "r") > 0
    assert run(aread_stale()) == 0


async def aread_stale() -> int:
    async with django_raft.aread(stale=True) as index:
        return index


def test_alock_holds_excludes_and_releases(node: Node) -> None:
    async def scenario() -> list[int]:
        tokens = []
        async with django_raft.alock("job", ttl=5) as token:
            tokens.append(token)
            other = aio.AsyncLock("job", ttl=5)
            assert await other.acquire(blocking=False) == 0  # held by the block
            with pytest.raises(LockNotHeldError, match="held by another"):
                await other.acquire(timeout=0.2)
        other = aio.AsyncLock("job", ttl=5)
        tokens.append(await other.acquire(timeout=2))  # released by the block
        assert 0 < other.remaining() <= 5
        assert await other.renew() == tokens[-1]
        assert await other.release()
        assert not await other.release()
        return tokens

    first, second = run(scenario())
    assert second > first > 0


class SlowClient(Client):
    """A client whose answers reach the caller ``delay`` seconds late."""

    delay = 0.0

    async def ado(self, command: str, /, **arguments: Any) -> Any:
        answer = await super().ado(command, **arguments)
        await asyncio.sleep(self.delay)
        return answer


def test_alock_granted_after_its_ttl_is_not_entered(node: Node) -> None:
    late = SlowClient()
    late.delay = 0.3

    async def scenario() -> int:
        with pytest.raises(LockNotHeldError, match="past its TTL"):
            async with django_raft.alock("late", ttl=0.2, client=late):
                raise AssertionError("entered a lock whose lease had ended")
        late.delay = 0.0  # the late grant was given back: the lock is free at once
        return await aio.AsyncLock("late", ttl=5, client=late).acquire(blocking=False)

    assert run(scenario()) > 0


# -- awatch -----------------------------------------------------------------------------


def test_awatch_yields_each_command_applied_after_an_index_once_in_order(node: Node) -> None:
    start = int(node.status()["applied"])

    async def scenario() -> tuple[list[Any], list[Any]]:
        await asyncio.gather(*(django_raft.ado("kv.set", key=f"w{n}", value="v") for n in range(5)))
        await django_raft.ado("kv.incr", key="other")
        seen = []
        async with django_raft.awatch(start, commands="kv.set", timeout=1) as events:
            async for event in events:
                seen.append(event)
            # The iteration stopped at its timeout; the next goes on from there.
            await django_raft.ado("kv.set", key="w5", value="later")
            later = [event async for event in events]
        return seen, later

    seen, later = run(scenario())
    assert sorted(event.arguments["key"] for event in seen) == [f"w{n}" for n in range(5)]
    assert [event.index for event in seen] == sorted({event.index for event in seen})
    assert all(event.ok and event.command == "kv.set" and event.index > start for event in seen)
    assert [(event.arguments, event.result) for event in later] == [
        ({"key": "w5", "value": "later"}, 1)
    ]
    assert later[0].index > seen[-1].index


def test_awatch_refuses_bad_arguments_before_anything_is_sent() -> None:
    for bad in ({"after": -1}, {"after": "3"}, {"timeout": 0}, {"pk": 3}):
        with pytest.raises(InvalidRequestError):
            django_raft.awatch(**bad)


def test_the_event_parser_reads_events_however_the_bytes_are_cut() -> None:
    events = [
        b'id: 7\nevent: entry\ndata: {"index": 7}\n\n',
        b'event: progress\ndata: {"index": 9}\n\n',
    ]
    body = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in events)
    for cut in range(len(body) + 1):
        parser = watch.EventParser()
        found = []
        for piece in (body[:cut], body[cut:]):
            parser.feed(piece)
            while (message := parser.next()) is not None:
                found.append(message)
        assert found == [("entry", '{"index": 7}'), ("progress", '{"index": 9}')], cut
    with pytest.raises(watch.Lost, match="ended"):
        watch.EventParser().feed(b"0\r\n\r\n")


def test_a_stream_call_awaited_past_its_timeout_may_have_applied(node: Node) -> None:
    """On a paused node: the awaited call ends at its timeout with the answer that says
    the command may still be applied, and a cancelled one is no longer awaited."""
    run(django_raft.ado("kv.incr", key="s"))  # the stream is open
    signer = asend.signer()
    stream = send._streams.peek(node.address, signer, raft_settings.URL_PREFIX)
    assert stream is not None
    body = {"name": "kv.incr", "arguments": {"key": "s"}, "timeout": 5}
    assert node.process is not None
    node.process.send_signal(signal.SIGSTOP)
    try:

        async def paused() -> dict[str, Any]:
            answer = await stream.acall(body, 0.3)
            cancelled = asyncio.create_task(stream.acall(body, 5))
            await asyncio.sleep(0.05)
            cancelled.cancel()
            with pytest.raises(asyncio.CancelledError):
                await cancelled
            return answer

        answer = run(paused())
        assert answer["error_type"] == "CommandTimeoutError" and "may still" in answer["error"]
        assert not stream._waiting
    finally:
        node.process.send_signal(signal.SIGCONT)
    # Both were sent: applied once each after the resume (no session: never resent).
    wait_for(lambda: value(node, "s") == 3, 10, "the paused node to apply them")
