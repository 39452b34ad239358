"""A node measures its round trip to each peer and warns when it does not fit the
election timeout.

Three real nodes; the third is reached through a TCP proxy written here that delays
every byte, each way. With the delay, the others find their round trip to it too large
(log, metric, status, the admin's verdict); without it, nobody warns.
"""

from __future__ import annotations

import contextlib
import heapq
import re
import socket
import threading
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest
import requests

from django_raft.client import monitor
from django_raft.node.rtt import MIN_SAMPLES

from .cluster import Cluster, Node, free_port, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ELECTION_TIMEOUT = 2.0
"""The rule's limit is a tenth of it: 200 ms of round trip (the median)."""


class DelayingProxy:
    """Forwards 127.0.0.1:``port`` to ``target``, holding every chunk ``delay`` seconds
    in each direction (so a round trip takes ``2 * delay`` more)."""

    def __init__(self, target: int, delay: float) -> None:
        self.target = target
        self.delay = delay
        self.port = free_port()
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._stopped = threading.Event()
        self._sockets: list[socket.socket] = [self._listener]
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def _accept(self) -> None:
        while not self._stopped.is_set():
            try:
                client, _ = self._listener.accept()
                upstream = socket.create_connection(("127.0.0.1", self.target), timeout=5)
            except OSError:
                continue
            upstream.settimeout(None)
            with self._lock:
                self._sockets += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                thread = threading.Thread(target=self._pump, args=(source, sink), daemon=True)
                thread.start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        """Read from ``source``; a writer sends each chunk once it is ``delay`` old."""
        due: list[tuple[float, int, bytes]] = []
        ready = threading.Condition()
        order = iter(range(1 << 62))

        def write() -> None:
            while True:
                with ready:
                    while not due:
                        ready.wait()
                    at, _, data = due[0]
                    wait = at - time.monotonic()
                    if wait > 0:
                        ready.wait(wait)
                        continue
                    heapq.heappop(due)
                if not data:
                    with contextlib.suppress(OSError):
                        sink.shutdown(socket.SHUT_WR)
                    return
                try:
                    sink.sendall(data)
                except OSError:
                    return

        writer = threading.Thread(target=write, daemon=True)
        writer.start()
        while True:
            try:
                data = source.recv(65536)
            except OSError:
                data = b""
            with ready:
                heapq.heappush(due, (time.monotonic() + self.delay, next(order), data))
                ready.notify()
            if not data:
                return

    def close(self) -> None:
        self._stopped.set()
        with self._lock:
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.close()


@pytest.fixture
def proxied(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[tuple[Cluster, Node]]:
    """Three nodes; n3 is reached (by everyone, n3 included) through a delaying proxy."""
    cluster = Cluster(tmp_path, size=3, ELECTION_TIMEOUT=ELECTION_TIMEOUT)
    far = cluster.founders[2]
    real_port = far.port
    proxy = DelayingProxy(real_port, request.param)
    far.port = proxy.port
    far.address = f"http://127.0.0.1:{proxy.port}"
    try:
        for node in cluster.founders:
            node.migrate()
        for node in cluster.founders:
            extra = ["--bind", f"127.0.0.1:{real_port}"] if node is far else []
            node.start("--bootstrap", *extra)
        cluster.leader(timeout=30)
        yield cluster, far
    finally:
        cluster.close()
        proxy.close()


def _samples(node: Node, peer: str) -> int:
    peers = node.status().get("round_trips", {}).get("peers", {})
    return int(peers.get(peer, {}).get("samples", 0))


def _probed(node: Node, peers: list[str], samples: int) -> bool:
    return all(_samples(node, peer) >= samples for peer in peers)


def _overview(node: Node) -> dict[str, object]:
    answer = node.post("overview", {})
    assert answer["ok"], answer
    value: dict[str, object] = answer["value"]
    return value


@pytest.mark.parametrize("proxied", [0.15], indirect=True)
def test_a_round_trip_too_large_for_the_election_timeout_is_reported(
    proxied: tuple[Cluster, Node],
) -> None:
    cluster, far = proxied
    near = cluster.founders[0]
    status = wait_for(
        lambda: "n3" in near.status()["round_trips"]["too_slow"] and near.status(),
        30,
        "n1 to find its round trip to n3 too large",
    )
    trips = status["round_trips"]
    assert trips["limit_ms"] == ELECTION_TIMEOUT * 100
    assert trips["peers"]["n3"]["p50_ms"] >= 300  # two delays of 150 ms
    assert not trips["peers"]["n2"]["too_slow"]
    assert trips["peers"]["n2"]["p50_ms"] < 200
    # The log says so, naming the peer and the rule.
    logged = wait_for(
        lambda: (
            "too large for the election timeout" in near.log_path.read_text()
            and near.log_path.read_text()
        ),
        10,
        "the warning in n1's log",
    )
    line = next(x for x in logged.splitlines() if "too large for the election timeout" in x)
    assert "n3" in line and "200 ms" in line
    # So do the metrics and the admin's verdict.
    text = requests.get(f"{near.address}/raft/metrics", timeout=10).text
    assert re.search(r'django_raft_network_peer_round_trip_too_slow\{peer="n3"\} 1\.0', text)
    assert re.search(r'django_raft_network_peer_round_trip_too_slow\{peer="n2"\} 0\.0', text)
    problems = monitor._slow_links({"n1": _overview(near)})
    assert len(problems) == 1 and "n1 to n3" in problems[0], problems
    # n3 reaches the others directly: it finds nothing too slow.
    assert far.status()["round_trips"]["too_slow"] == []


@pytest.mark.parametrize("proxied", [0.0], indirect=True)
def test_without_the_delay_nobody_warns(proxied: tuple[Cluster, Node]) -> None:
    cluster, _ = proxied
    for node in cluster.founders:
        peers = [other.node_id for other in cluster.founders if other is not node]
        wait_for(partial(_probed, node, peers, MIN_SAMPLES + 2), 30, f"{node.node_id} to probe")
    for node in cluster.founders:
        assert node.status()["round_trips"]["too_slow"] == []
        assert "too large for the election timeout" not in node.log_path.read_text()
        assert monitor._slow_links({node.node_id: _overview(node)}) == []
