"""Watches against three real raftnode processes: exactly once across a leader kill,
compaction, filters, bad requests, the bounds on watches (the node's and each client's
share), a watcher that never reads, the cache helper and the recipes of docs/recipes.md.

The failover test prints its figures (acknowledged, applied, delivered) with ``-s``.
"""

from __future__ import annotations

import re
import signal
import socket
import statistics
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import pytest
import requests
from django.core.cache import cache
from django.test import override_settings

import django_raft
from django_raft.client import Client
from django_raft.contrib.cache import invalidate_on_change, invalidator
from django_raft.exceptions import RaftError, WatchCompactedError
from django_raft.node.http.watches import MAX_WATCHES, MAX_WATCHES_PER_CLIENT
from django_raft.protocol.auth import ANY_NODE, CLIENT, Signer, derive_keys
from tests.recipes import recipe

from .cluster import SECRET, Cluster, Node, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    cluster = Cluster(tmp_path_factory.mktemp("watch"))
    try:
        cluster.start()
        cluster.leader()
        yield cluster
    finally:
        cluster.close()


def client_settings(cluster: Cluster, address: str = "", **extra: Any) -> override_settings:
    """This process as a web process of one server: ``ADDRESS`` and ``CLUSTER`` known."""
    members = {node.node_id: node.address for node in cluster.founders}
    return override_settings(
        DJANGO_RAFT={
            "SECRET": SECRET,
            "ADDRESS": address or cluster.founders[0].address,
            "CLUSTER": members,
            "COMMAND_TIMEOUT": 20,
            **extra,
        }
    )


def watch_url(node: Node, **parameters: Any) -> str:
    return f"{node.address}/raft/watch" + ("?" + urlencode(parameters) if parameters else "")


def signed_get(url: str, secret: str = SECRET, sender: str = "test") -> dict[str, str]:
    parts = urlsplit(url)
    path = parts.path + ("?" + parts.query if parts.query else "")
    signer = Signer(derive_keys(secret).client, CLIENT, sender)
    return signer.headers("GET", path, ANY_NODE, b"")


def open_raw(
    node: Node, *, sender: str = "test", http: str = "1.1", **parameters: Any
) -> tuple[socket.socket, bytes]:
    """A watch request of ``sender`` on a socket of its own: the socket, and the answer's
    first bytes."""
    url = watch_url(node, **parameters)
    parts = urlsplit(url)
    path = parts.path + ("?" + parts.query if parts.query else "")
    sock = socket.create_connection(("127.0.0.1", node.port), timeout=5)
    head = [f"GET {path} HTTP/{http}", f"Host: 127.0.0.1:{node.port}"]
    head += [f"{k}: {v}" for k, v in signed_get(url, sender=sender).items()]
    sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
    return sock, sock.recv(4096)


def test_every_change_comes_once_in_order_across_a_leader_kill(cluster: Cluster) -> None:
    leader = cluster.leader()
    key = "failover"
    delivered: list[django_raft.Event] = []
    acknowledged, uncertain = [0], [0]
    writing, watching = threading.Event(), threading.Event()
    writing.set()
    watching.set()
    with client_settings(cluster, address=leader.address):
        changes = django_raft.watch(models="kv.KeyValue", pk=key, timeout=0.5)

        def write() -> None:
            client = Client(timeout=20)
            while writing.is_set():
                try:
                    client.do("kv.incr", key=key)
                    acknowledged[0] += 1
                except RaftError:
                    uncertain[0] += 1

        def collect() -> None:
            while watching.is_set():
                delivered.extend(changes)

        threads = [threading.Thread(target=write), threading.Thread(target=collect)]
        for thread in threads:
            thread.start()
        try:
            wait_for(lambda: len(delivered) >= 50, 20, "events before the kill")
            leader.kill(signal.SIGKILL)  # the member the watch reads from
            before = acknowledged[0]
            wait_for(lambda: acknowledged[0] >= before + 100, 30, "writes after the kill")
        finally:
            writing.clear()
            threads[0].join(30)
        survivors = cluster.running()
        cluster.wait_applied(survivors)
        applied = int(survivors[0].kv()[key])
        try:
            wait_for(lambda: len(delivered) >= applied, 20, "every applied change delivered")
        finally:
            watching.clear()
            threads[1].join(10)
            changes.close()
    print(
        f"\nwatch across a leader kill: {acknowledged[0]} acknowledged, {uncertain[0]} "
        f"uncertain, {applied} applied, {len(delivered)} delivered"
    )
    assert len(delivered) == applied >= acknowledged[0]
    assert [event.result for event in delivered] == list(range(1, applied + 1))
    indices = [event.index for event in delivered]
    assert indices == sorted(set(indices))
    leader.start()
    cluster.wait_applied()


def test_filters_by_command_and_by_row(cluster: Cluster) -> None:
    with client_settings(cluster):
        client = Client()
        with django_raft.watch(timeout=0.1) as now:
            start = now.last_index
        client.do("kv.set", key="f1", value="a")
        client.do("kv.set", key="f2", value="b")
        client.do("kv.delete", key="f1")
        with django_raft.lock("watched", ttl=5):
            pass

        def seen(**wanted: Any) -> list[tuple[str, dict[str, Any]]]:
            with django_raft.watch(start, timeout=1, **wanted) as changes:
                return [(event.command, event.arguments) for event in changes]

        assert seen(models="kv.KeyValue", pk="f1") == [
            ("kv.set", {"key": "f1", "value": "a"}),
            ("kv.delete", {"key": "f1"}),
        ]
        assert seen(commands=["kv.delete"]) == [("kv.delete", {"key": "f1"})]
        every = seen()
        assert [name for name, _ in every] == ["kv.set", "kv.set", "kv.delete"]
        locks = seen(models="django_raft.Lock")
        assert [name for name, arguments in locks if arguments["name"] == "watched"] == [
            "django_raft.lock.acquire",
            "django_raft.lock.release",
        ]


def test_bad_requests_are_refused_and_change_nothing(cluster: Cluster) -> None:
    node = cluster.founders[1]
    applied = node.status()["applied"]
    for parameters in ({"after": "-3"}, {"model": "no.Such"}, {"pk": "1"}, {"x": "1"}):
        url = watch_url(node, **parameters)
        answer = requests.get(url, headers=signed_get(url), timeout=5)
        assert answer.status_code == 400, parameters
        assert answer.json()["error_type"] == "InvalidRequestError"
    url = watch_url(node, after=0)
    for headers in ({}, signed_get(url, secret="another-secret-" + "x" * 32)):
        answer = requests.get(url, headers=headers, timeout=5)
        assert answer.status_code == 403
        assert answer.json()["error_type"] == "InvalidRequestError"
    replayed = signed_get(url)
    requests.get(url, headers=replayed, timeout=5, stream=True).close()
    assert requests.get(url, headers=replayed, timeout=5).status_code == 403
    assert node.status()["applied"] == applied


def refused_watch(node: Node, sender: str) -> str:
    """The message of the 503 (``OverloadedError``) that refuses a watch of ``sender``."""
    url = watch_url(node)
    headers = signed_get(url, sender=sender)
    with requests.get(url, headers=headers, timeout=5, stream=True) as refused:
        assert refused.status_code == 503  # a stream, were it accepted, would never end
        assert refused.json()["error_type"] == "OverloadedError"
        return str(refused.json()["error"])


def test_the_watches_past_the_bound_are_refused(cluster: Cluster) -> None:
    node = cluster.founders[2]
    before = open_watches(node)
    opened: list[socket.socket] = []
    try:
        for number in range(MAX_WATCHES - before):  # from as many clients as shares take
            sock, head = open_raw(node, sender=f"test-{number // MAX_WATCHES_PER_CLIENT}")
            opened.append(sock)
            assert head.startswith(b"HTTP/1.1 200"), head
        assert f"serves {MAX_WATCHES} watches" in refused_watch(node, "another")
        assert node.do("kv.set", key="bound", value="1")["ok"]  # commands go on
        assert open_watches(node) == MAX_WATCHES
    finally:
        close_all(node, opened, before)


def open_watches(node: Node) -> int:
    """The watches ``node`` serves, as its metrics say."""
    text = requests.get(f"{node.address}/raft/metrics", timeout=10).text
    found = re.search(r'django_raft_network_streams_open\{kind="watch"\} (\S+)', text)
    assert found is not None
    return int(float(found.group(1)))


def close_all(node: Node, opened: list[socket.socket], before: int) -> None:
    """Close the watches ``opened`` and wait until the node has freed their slots."""
    for sock in opened:
        sock.close()
    wait_for(lambda: open_watches(node) <= before, 15, "the closed watches' slots to be free")


def open_until_refused(node: Node, sender: str, opened: list[socket.socket]) -> bytes:
    """Watches of ``sender`` opened (into ``opened``) until one is refused: its answer."""
    for _ in range(MAX_WATCHES + 1):
        sock, head = open_raw(node, sender=sender)
        if not head.startswith(b"HTTP/1.1 200"):
            sock.close()
            return head
        opened.append(sock)
    raise AssertionError(f"more than {MAX_WATCHES} watches were accepted")


def test_a_client_past_its_share_is_refused_while_another_is_served(cluster: Cluster) -> None:
    """One client takes every slot but the last share's worth, which another still gets
    (without the share, the first would fill the node)."""
    node = cluster.founders[2]
    before = open_watches(node)
    opened: list[socket.socket] = []
    try:
        head = open_until_refused(node, "greedy", opened)
        assert head.startswith(b"HTTP/1.1 503"), head
        assert "past its share" in refused_watch(node, "greedy")
        assert MAX_WATCHES_PER_CLIENT <= len(opened) <= MAX_WATCHES - MAX_WATCHES_PER_CLIENT
        assert open_watches(node) == before + len(opened)
        sock, head = open_raw(node, sender="modest")  # the same host, another name
        opened.append(sock)
        assert head.startswith(b"HTTP/1.1 200"), head
    finally:
        close_all(node, opened, before)


def test_a_closed_watch_frees_its_clients_share(cluster: Cluster) -> None:
    node = cluster.founders[2]
    before = open_watches(node)
    opened: list[socket.socket] = []

    def accepted(http: str = "1.1") -> bool:
        sock, head = open_raw(node, sender="leaving", http=http)
        ok = head.split(b"\r\n")[0].endswith(b" 200 OK")
        if ok and http == "1.1":
            opened.append(sock)
            return True
        with sock:
            # HTTP/1.0 gets no stream: the node frees the slot, then closes the connection.
            while http == "1.0" and sock.recv(4096):
                pass
        return ok

    try:
        while accepted():
            assert len(opened) <= MAX_WATCHES - MAX_WATCHES_PER_CLIENT
        assert "past its share" in refused_watch(node, "leaving")
        opened.pop().close()
        wait_for(accepted, 10, "the slot of the closed watch to be free")
        assert "past its share" in refused_watch(node, "leaving")  # one came back, no more
        opened.pop().close()
        wait_for(lambda: accepted("1.0"), 10, "the slot of the closed watch to be free")
        for _ in range(3):  # each HTTP/1.0 watch gave its slot back before closing
            assert accepted("1.0")
        assert accepted()
        assert "past its share" in refused_watch(node, "leaving")
    finally:
        close_all(node, opened, before)


def test_a_watcher_that_never_reads_slows_nothing_and_is_dropped(cluster: Cluster) -> None:
    leader = cluster.leader()

    def timed(count: int) -> list[float]:
        spent = []
        for number in range(count):
            started = time.perf_counter()
            assert leader.do("kv.set", key="small", value=str(number))["ok"]
            spent.append(time.perf_counter() - started)
        return spent

    before = statistics.median(timed(30))
    stuck = [open_raw(leader)[0] for _ in range(4)]  # never read again
    try:
        big = "x" * 60_000
        for number in range(100):  # 6 MB of events each: far past the sockets' buffers
            assert leader.do("kv.set", key=f"big{number % 5}", value=big)["ok"]
        during = statistics.median(timed(30))
        print(f"\none command, median: {before * 1e3:.1f} ms alone, {during * 1e3:.1f} ms with")
        assert during < max(3 * before, before + 0.02)
        wait_for(
            lambda: leader.log_path.read_text().count("read nothing for") >= len(stuck),
            20,
            "the node to drop the watches that do not read",
        )
    finally:
        for sock in stuck:
            sock.close()


def test_a_compacted_index_raises_and_the_present_resumes(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, SNAPSHOT_THRESHOLD=40, ENTRIES_AFTER_SNAPSHOT=5)
    try:
        cluster.start()
        with client_settings(cluster):
            client = Client()
            for number in range(120):
                client.do("kv.set", key="compacted", value=str(number))
            cluster.wait_applied()
            with pytest.raises(WatchCompactedError) as raised:
                django_raft.watch(1, commands="kv.set")
            gone = raised.value
            assert 1 < gone.first_index <= gone.applied_index
            url = watch_url(cluster.founders[0], after=1)
            answer = requests.get(url, headers=signed_get(url), timeout=5)
            assert answer.status_code == 410
            assert answer.json()["error_type"] == "WatchCompactedError"
            assert answer.json()["first_index"] > 1
            with django_raft.watch(gone.applied_index, commands="kv.set", timeout=10) as changes:
                client.do("kv.set", key="compacted", value="after")
                assert next(changes).arguments["value"] == "after"
    finally:
        cluster.close()


def test_caches_forget_the_rows_that_changed(cluster: Cluster) -> None:
    with client_settings(cluster):
        try:
            invalidate_on_change("kv.KeyValue", lambda pk: f"row:{pk}")
            invalidate_on_change("kv.KeyValue", "rows")
            assert invalidator().ready.wait(10)
            cache.set_many({"row:c1": 1, "row:c2": 2, "rows": [1, 2]})
            with django_raft.watch(models="kv.KeyValue", pk="c1", timeout=10) as changes:
                django_raft.do("kv.set", key="c1", value="new")
                index = next(changes).index
            assert invalidator().wait(index, 10)
            assert cache.get_many(["row:c1", "row:c2", "rows"]) == {"row:c2": 2}
        finally:
            invalidator().stop()
            invalidator()._rules.clear()
            cache.clear()


@pytest.mark.django_db  # watch-compacted reads this process's own database
@pytest.mark.parametrize(
    "name", ["watch-changes", "watch-resume", "watch-compacted", "watch-cache"]
)
def test_the_recipes_run(cluster: Cluster, name: str) -> None:
    with client_settings(cluster):
        try:
            exec(compile(recipe(name), name, "exec"), {"__name__": "recipe"})
        finally:
            invalidator().stop()
            invalidator()._rules.clear()
