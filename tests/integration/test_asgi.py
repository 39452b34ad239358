"""The async client under a real ASGI server: uvicorn serving async views that call
``ado``, ``aread`` and ``alock`` (tests/integration/asgi_app.py) as a web process of one
server, against three real raftnode processes.

Concurrent requests are all answered right; the event loop keeps serving while commands
wait on a paused leader, and they complete after the election; a lock excludes the
requests of one process; reads on a server whose node is down fail typed, never stale;
errors are ``do()``'s, each saying truthfully whether the command may have applied.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import requests
from django.test import override_settings

import django_raft
from tests.recipes import recipe

from .asgi_server import AsgiServer
from .cluster import ROOT, SECRET, Cluster, Node, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    cluster = Cluster(tmp_path_factory.mktemp("asgi"))
    try:
        cluster.start()
        cluster.leader(timeout=20)
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
def web(cluster: Cluster) -> Iterator[AsgiServer]:
    """uvicorn as the web process of the first server (its node and its database)."""
    server = AsgiServer(cluster.founders[0], COMMAND_TIMEOUT=20)
    try:
        yield server
    finally:
        server.close()


def counter(node: Node, key: str) -> int:
    rows = node.query(f"SELECT value FROM kv_keyvalue WHERE key = '{key}'")
    return int(rows[0][0]) if rows else 0


def in_parallel(count: int, workers: int, call: Any) -> list[Any]:
    """``call(number)`` for ``count`` numbers, ``workers`` at a time; the results."""
    local = threading.local()

    def run(number: int) -> Any:
        if not hasattr(local, "session"):
            local.session = requests.Session()
        return call(local.session, number)

    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(run, range(count)))


def test_concurrent_requests_are_all_answered_right(cluster: Cluster, web: AsgiServer) -> None:
    """200 increments, 32 at a time: each answered with its own value, applied once."""

    def incr(session: requests.Session, number: int) -> Any:
        return session.get(f"{web.url}/incr", params={"key": "c"}, timeout=30).json()

    answers = in_parallel(200, 32, incr)
    assert all(answer["ok"] for answer in answers), [a for a in answers if not a["ok"]][:3]
    assert sorted(answer["value"] for answer in answers) == list(range(1, 201))
    assert web.get("read", key="c") == {"ok": True, "value": "200"}  # aread, then the ORM
    cluster.wait_applied()
    assert [counter(node, "c") for node in cluster.founders] == [200, 200, 200]


def test_the_loop_serves_while_commands_wait_on_a_paused_leader(
    cluster: Cluster, web: AsgiServer
) -> None:
    """SIGSTOP the leader with 32 commands on their way to it: ``/ping`` (an async view)
    answers at once meanwhile; the commands complete after the election, each once."""
    assert web.get("incr", key="p")["ok"]  # the client knows the leader
    leader = cluster.leader()
    before = counter(leader, "p")
    assert leader.process is not None
    leader.process.send_signal(signal.SIGSTOP)
    try:
        results: list[Any] = []
        pool = ThreadPoolExecutor(32)
        futures = [
            pool.submit(lambda: requests.get(f"{web.url}/incr", params={"key": "p"}, timeout=30))
            for _ in range(32)
        ]
        pings = []
        waited = time.monotonic() + 0.6  # the commands wait for the stream's probe
        while time.monotonic() < waited:
            started = time.monotonic()
            assert web.get("ping", timeout=2)["ok"]
            pings.append(time.monotonic() - started)
        waiting = sum(not future.done() for future in futures)
        started = time.monotonic()
        results = [future.result(timeout=30).json() for future in futures]
        took = time.monotonic() - started
        pool.shutdown()
    finally:
        leader.process.send_signal(signal.SIGCONT)
    assert waiting >= 16, waiting  # most were still waiting on the paused leader
    assert max(pings) < 0.5, sorted(pings)[-5:]  # a blocked loop: a second or more
    assert len(pings) >= 5
    assert all(answer["ok"] for answer in results), [a for a in results if not a["ok"]][:3]
    assert took < 10  # after the election, not at the 20 s deadline
    values = sorted(answer["value"] for answer in results)
    assert values == list(range(before + 1, before + 33))
    new_leader = cluster.leader(timeout=20)
    cluster.wait_applied()
    assert counter(new_leader, "p") == before + 32


def test_a_lock_excludes_the_requests_of_one_process(cluster: Cluster, web: AsgiServer) -> None:
    def hold(session: requests.Session, number: int) -> Any:
        return session.get(f"{web.url}/locked", params={"name": "L"}, timeout=30).json()

    answers = in_parallel(8, 8, hold)
    assert all(answer["ok"] for answer in answers), answers
    tokens = [answer["value"]["token"] for answer in answers]
    assert len(set(tokens)) == 8  # each holder had a token of its own
    assert max(answer["value"]["most_holders"] for answer in answers) == 1


def test_calls_in_flight_take_no_thread_each(cluster: Cluster, web: AsgiServer) -> None:
    """One request sends 128 commands at once: the web process's thread count stays
    what it was while they are in flight (their answers complete futures from the
    command stream's reader thread)."""
    web.get("incr", key="warm")
    answer = web.get("burst", key="t", count=128)
    assert sorted(answer["value"]) == list(range(1, 129))
    before, most = answer["threads"]
    assert most <= before + 1, answer["threads"]  # +1: asyncio's resolver, if it ran


def test_awatch_delivers_every_change_once_across_the_kill_of_its_member(
    cluster: Cluster,
) -> None:
    """A watch on the first server's node; that node is SIGKILLed halfway through 60
    writes: the watch moves to another member and yields each of them once, in order."""
    watched = cluster.founders[0]
    members = {node.node_id: node.address for node in cluster.founders}
    settings = {"SECRET": SECRET, "ADDRESS": watched.address, "CLUSTER": members}

    async def scenario() -> tuple[list[Any], int]:
        start = int(cluster.leader().status()["applied"])
        seen: list[Any] = []
        async with django_raft.awatch(start, commands="kv.set", timeout=15) as events:

            async def write() -> None:
                for number in range(60):
                    if number == 30:
                        await asyncio.to_thread(watched.kill)
                    await django_raft.ado("kv.set", key=f"f{number}", value=str(number))

            writer = asyncio.create_task(write())
            async for event in events:
                seen.append(event)
                if len(seen) == 60:
                    break
            await writer
        return seen, start

    with override_settings(DJANGO_RAFT=settings):
        seen, start = asyncio.run(scenario())
    indexes = [event.index for event in seen]
    print(f"\nawatch across a member's kill: {len(seen)} events of 60 writes")
    assert [event.arguments["key"] for event in seen] == [f"f{n}" for n in range(60)]
    assert indexes == sorted(set(indexes)) and indexes[0] > start
    watched.start()


RECIPE_DRIVER = """
import asyncio, json
from django.test import RequestFactory

def body(response):
    return json.loads(response.content)

async def main():
    get = RequestFactory().get
    assert body(await set_motd(get("/", {"text": "hello"})))["version"] >= 1
    assert body(await motd(get("/"))) == {"text": "hello"}
    assert body(await publish(get("/")))["token"] > 0
    after = django_raft.status()["applied"]
    waiting = asyncio.create_task(next_change(get("/", {"after": after, "key": "motd"})))
    await asyncio.sleep(0.3)
    await set_motd(get("/", {"text": "again"}))
    change = body(await asyncio.wait_for(waiting, 20))
    assert change["arguments"] == {"key": "motd", "value": "again"}, change
    print("ok", change["index"])

asyncio.run(main())
"""


def test_the_recipe_runs(cluster: Cluster) -> None:
    """docs/recipes.md's async views, called in a web process of the first server."""
    env = cluster.founders[0].env()
    env.pop("RAFT_NODE_ID")
    code = "import django\ndjango.setup()\n" + recipe("async-views") + RECIPE_DRIVER
    run = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0 and run.stdout.startswith("ok"), run.stderr


@pytest.fixture
def impatient(cluster: Cluster) -> Iterator[AsgiServer]:
    """The first server's web process, with a deadline of 2 s."""
    server = AsgiServer(cluster.founders[0], COMMAND_TIMEOUT=2)
    try:
        yield server
    finally:
        server.close()


def test_reads_on_a_server_whose_node_is_down_fail_typed_and_errors_are_do_s(
    cluster: Cluster, impatient: AsgiServer
) -> None:
    """The server's own node killed: writes go on through the others, a read cannot be
    fresh and says so. Every node killed: ``ado`` and ``do`` raise the same error, which
    says nothing was applied."""
    local, *others = cluster.founders
    assert impatient.get("put", key="r", value="1")["ok"]
    assert impatient.get("read", key="r") == {"ok": True, "value": "1"}
    local.kill()
    assert impatient.get("put", key="r", value="2")["ok"]
    stale = impatient.get("read", key="r", within=1)
    assert stale["error"] == "StaleReadError" and not stale["may_have_applied"], stale
    for node in others:
        node.kill()
    time.sleep(0.3)  # the streams to the killed nodes close
    asynchronous = impatient.get("put", key="u", value="1")
    synchronous = impatient.get("sync/put", key="u", value="1")
    assert asynchronous["error"] == synchronous["error"] == "ClusterUnreachableError"
    assert not asynchronous["may_have_applied"] and not synchronous["may_have_applied"]
    for node in cluster.founders:
        assert "u" not in node.kv()
    for node in cluster.founders:
        node.start()
    wait_for(lambda: impatient.get("put", key="u", value="2")["ok"], 30, "the cluster back")
