"""One session per client process: every thread shares it with many commands outstanding,
it is opened once and reopened once for all, and a forked child opens its own.

The first tests run against a real ``raftnode`` process and count the session openings
in its log; the last ones fake the cluster to watch what the client sends."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from django.test import override_settings

from django_raft.client import Client, client
from django_raft.client.locks import Lock
from django_raft.exceptions import OverloadedError
from django_raft.protocol.request import OPEN_SESSION
from tests.integration.cluster import SECRET, Cluster, Node

pytestmark = [pytest.mark.integration]


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    """One real node, which this process reaches as a web process does."""
    cluster = Cluster(tmp_path_factory.mktemp("sessions"), size=1)
    try:
        cluster.start()
        leader = cluster.leader()
        settings = {"SECRET": SECRET, "ADDRESS": leader.address, "COMMAND_TIMEOUT": 20}
        with override_settings(DJANGO_RAFT=settings):
            yield leader
    finally:
        cluster.close()


def openings(node: Node) -> int:
    """Session openings in the node's log."""
    rows = node.query(f"SELECT count(*) FROM django_raft_logentry WHERE command = '{OPEN_SESSION}'")
    return int(rows[0][0])


def value(node: Node, key: str) -> int:
    rows = node.query(f"SELECT value FROM kv_keyvalue WHERE key = '{key}'")
    return int(rows[0][0]) if rows else 0


def in_threads(count: int, work: Any) -> list[Any]:
    """Run ``work(number)`` in ``count`` threads started together; their results."""
    start = threading.Barrier(count)
    results: list[Any] = [None] * count

    def run(number: int) -> None:
        start.wait()
        try:
            results[number] = work(number)
        except Exception as error:  # reported by the assertion on results
            results[number] = error

    threads = [threading.Thread(target=run, args=(n,)) for n in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return results


def test_the_threads_of_a_process_open_one_session_and_share_it(node: Node) -> None:
    before = openings(node)
    shared = Client()

    def work(number: int) -> str:
        for _ in range(5):
            shared.do("kv.incr", key="threads")
        return shared.client_id

    ids = in_threads(16, work)
    assert set(ids) == {shared.client_id}, ids
    assert openings(node) == before + 1  # not one per thread
    assert value(node, "threads") == 80
    # The next command tells the node every answer was seen: it keeps only its own.
    assert shared.do("kv.incr", key="threads") == 81
    kept = node.query(
        f"SELECT outcomes FROM django_raft_clientsession WHERE client_id = '{shared.client_id}'"
    )
    assert json.loads(kept[0][0]) == {}


def test_an_expired_session_is_reopened_once_for_every_thread(node: Node) -> None:
    shared = Client(session_timeout=0.3)
    shared.do("kv.incr", key="expiry")
    first = shared.client_id
    time.sleep(0.6)
    Client().do("kv.incr", key="other")  # log time moves on with another session's command
    before = openings(node)
    results = in_threads(8, lambda number: shared.do("kv.incr", key="expiry"))
    assert sorted(results) == list(range(2, 10)), results  # each applied once
    assert shared.client_id != first
    assert openings(node) == before + 1  # one thread reopened it for all


def test_a_forked_child_opens_its_own_session(node: Node) -> None:
    parent = Client()
    assert parent.do("kv.incr", key="fork") == 1
    before = openings(node)
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never back into pytest
        code = 1
        try:
            result = parent.do("kv.incr", key="fork")
            os.write(writer, json.dumps([parent.client_id, result]).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(writer)
    with os.fdopen(reader) as pipe:
        child_id, result = json.loads(pipe.read() or '["", 0]')
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert result == 2
    assert child_id and child_id != parent.client_id
    assert parent.do("kv.incr", key="fork") == 3  # the parent's session goes on
    assert openings(node) == before + 1


def test_lock_objects_of_one_process_exclude_each_other(node: Node) -> None:
    """Every thread shares the session: a lock's holder is its ``Lock`` object."""
    shared = Client()
    first = Lock("shared-session", ttl=30, client=shared)
    token = first.acquire()
    other = Lock("shared-session", ttl=30, client=shared)
    assert in_threads(1, lambda number: other.acquire(blocking=False)) == [0]
    assert other.acquire(blocking=False) == 0
    assert first.renew() == token
    assert first.release()
    assert other.acquire(blocking=False) > token
    assert other.release()


# -- what the client sends (a fake cluster) ---------------------------------------------


class FakeCluster:
    """Answers a client's attempts: opens sessions, and holds the commands ``held`` names
    until released, recording every body."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.held: dict[int, threading.Event] = {}
        self.opened = 0
        self.lock = threading.Lock()

    def attempts(self, body: dict[str, Any], deadline: float, **options: Any) -> dict[str, Any]:
        if body["name"] == OPEN_SESSION:
            with self.lock:
                self.opened += 1
                return {"ok": True, "value": f"s{self.opened}"}
        with self.lock:
            self.bodies.append(body)
        gate = self.held.get(body["sequence"])
        if gate is not None:
            gate.wait(10)
        return {"ok": True, "value": body["sequence"]}


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeCluster:
    cluster = FakeCluster()
    monkeypatch.setattr(Client, "_attempts", lambda self, *a, **o: cluster.attempts(*a, **o))
    return cluster


def hold_the_first(fake: FakeCluster, shared: Client) -> threading.Thread:
    """Send number 1 from a thread and keep it unanswered (``fake.held[1]``)."""
    fake.held[1] = threading.Event()
    slow = threading.Thread(target=shared.do, args=("kv.incr",), kwargs={"key": "a"})
    slow.start()
    while not fake.bodies:
        time.sleep(0.001)
    return slow


def test_each_command_carries_the_first_unanswered_number(fake: FakeCluster) -> None:
    shared = Client(timeout=5)
    slow = hold_the_first(fake, shared)
    assert shared.do("kv.incr", key="b") == 2
    assert shared.do("kv.incr", key="c") == 3
    fake.held[1].set()
    slow.join(5)
    assert shared.do("kv.incr", key="d") == 4
    sent = [(body["sequence"], body["first_unanswered"]) for body in fake.bodies]
    assert sent == [(1, 1), (2, 1), (3, 1), (4, 4)]
    assert fake.opened == 1


def test_a_thread_waits_while_max_outstanding_are_unanswered(
    fake: FakeCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(client, "MAX_OUTSTANDING", 3)
    shared = Client(timeout=5)
    slow = hold_the_first(fake, shared)
    assert shared.do("kv.incr", key="b") == 2
    assert shared.do("kv.incr", key="c") == 3
    # 1 is still unanswered: 4 would be 3 above it. Nothing is sent until it is answered.
    shared.timeout = 0.2
    with pytest.raises(OverloadedError):
        shared.do("kv.incr", key="x")
    shared.timeout = 5
    assert [body["sequence"] for body in fake.bodies] == [1, 2, 3]
    threading.Timer(0.2, fake.held[1].set).start()
    assert shared.do("kv.incr", key="d") == 4  # waited for 1's answer
    slow.join(5)
    assert [(b["sequence"], b["first_unanswered"]) for b in fake.bodies][-1] == (4, 4)
