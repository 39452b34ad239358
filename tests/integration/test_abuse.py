"""Abuse of a live node by a client holding the client key, or by anyone who can connect.

Command-stream slots are shared fairly: one client holds a bounded share, and streams
kept open by keep-alives alone are closed to make room before a legitimate stream is
refused. Request lines and headers are bounded: a huge header is refused, not read.
"""

from __future__ import annotations

import contextlib
import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from django_raft.node.http.server import (
    MAX_COMMAND_STREAMS,
    MAX_COMMAND_STREAMS_PER_CLIENT,
    MAX_REQUEST_HEADERS,
    STREAM_IDLE,
)
from django_raft.protocol.auth import CLIENT, Signer, derive_keys
from django_raft.protocol.command_stream import CommandStream, StreamRefused

from .cluster import SECRET, Cluster, Node

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SLOW_NODE = "tests/integration/slow_node.py"
"""A node whose application has a slow command (``test.sleep``)."""


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    cluster = Cluster(tmp_path_factory.mktemp("abuse"), size=1)
    try:
        cluster.start(program=(SLOW_NODE,))
        yield cluster.leader()
    finally:
        cluster.close()


def _stream(node: Node, client: str) -> CommandStream:
    signer = Signer(derive_keys(SECRET).client, CLIENT, client)
    return CommandStream(node.address, signer, "raft/")


def _open_command_streams(node: Node) -> int:
    text = requests.get(f"{node.address}/raft/metrics", timeout=10).text
    found = re.search(r'django_raft_network_streams_open\{kind="command"\} (\S+)', text)
    assert found is not None
    return int(float(found.group(1)))


def _try_stream(node: Node, client: str, opened: list[CommandStream]) -> bool:
    try:
        opened.append(_stream(node, client))
    except StreamRefused as refused:
        assert "OverloadedError" in str(refused), refused  # refused before it was accepted
        return False
    return True


def test_idle_streams_cannot_squat_the_slots_and_one_client_holds_a_fair_share(
    node: Node,
) -> None:
    squatters: list[CommandStream] = []
    busy = _stream(node, "busy")  # a command that runs for a while: never idle meanwhile
    slow: dict[str, object] = {}
    sleeper = threading.Thread(
        target=lambda: slow.update(
            busy.call({"name": "test.sleep", "arguments": {"seconds": 6, "tag": "b"}}, 30)
        )
    )
    sleeper.start()
    try:
        # One client tries to open every slot there is: it gets its share.
        for _ in range(MAX_COMMAND_STREAMS):
            _try_stream(node, "squatter", squatters)
        assert _open_command_streams(node) == MAX_COMMAND_STREAMS_PER_CLIENT + 1
        # Then, once those are idle (a keep-alive a second does not count), many
        # clients take every slot: the idle ones make room, the busy one stays.
        time.sleep(STREAM_IDLE + 0.5)
        for n in range(MAX_COMMAND_STREAMS - 1):
            assert _try_stream(node, f"squatter-{n % 8}", squatters)
        assert _open_command_streams(node) == MAX_COMMAND_STREAMS
        sleeper.join(30)
        assert slow.get("ok") and slow.get("value") == "b", slow
        assert not busy.closed
        # Once they sit idle too, a legitimate client still gets a stream, and its
        # command runs on it.
        time.sleep(STREAM_IDLE + 0.5)
        legitimate = _stream(node, "web")
        try:
            answer = legitimate.call(
                {"name": "kv.set", "arguments": {"key": "k", "value": "v"}}, 10
            )
            assert answer["ok"], answer
            assert not legitimate.closed
        finally:
            legitimate._break("done", set())
        assert _open_command_streams(node) <= MAX_COMMAND_STREAMS
    finally:
        sleeper.join(30)
        busy._break("done", set())
        for squatter in squatters:
            squatter._break("done", set())


def test_a_stream_with_a_command_running_is_never_closed_to_make_room(node: Node) -> None:
    """Its client at its share, the stream whose command runs is the one idle the
    longest by its last start: an idle one of the same client makes room instead."""
    busy = _stream(node, "worker")
    slow: dict[str, object] = {}
    sleeper = threading.Thread(
        target=lambda: slow.update(
            busy.call({"name": "test.sleep", "arguments": {"seconds": 4, "tag": "w"}}, 30)
        )
    )
    sleeper.start()
    others: list[CommandStream] = []
    try:
        time.sleep(0.5)  # the command has started
        for _ in range(MAX_COMMAND_STREAMS_PER_CLIENT - 1):
            assert _try_stream(node, "worker", others)
        time.sleep(STREAM_IDLE + 0.5)
        assert _try_stream(node, "worker", others)  # at its share: an idle one goes
        sleeper.join(30)
        assert slow.get("ok") and slow.get("value") == "w", slow
        assert not busy.closed
        assert sum(stream.closed for stream in others) == 1
    finally:
        sleeper.join(30)
        busy._break("done", set())
        for other in others:
            other._break("done", set())


@pytest.mark.parametrize(
    ("request_head", "status"),
    [
        (b"GET /raft/metrics?" + b"a" * (1 << 20) + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
        (b"GET /raft/metrics HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (1 << 20) + b"\r\n\r\n", 413),
        (
            b"GET /raft/metrics HTTP/1.1\r\nHost: x\r\n"
            + b"".join(b"X-%d: %s\r\n" % (n, b"a" * 1000) for n in range(64))
            + b"\r\n",
            413,
        ),
    ],
    ids=["request-line", "one-header", "many-headers"],
)
def test_request_line_and_headers_are_bounded(node: Node, request_head: bytes, status: int) -> None:
    assert len(request_head) > MAX_REQUEST_HEADERS
    with socket.create_connection(("127.0.0.1", node.port), timeout=10) as sock:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(request_head)  # may be refused before all of it is sent
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except ConnectionResetError:
            pass
    assert answer.startswith(b"HTTP/1.1 %d" % status), answer[:200]
    # The node is unharmed and a request of ordinary size is served.
    assert node.status()["state"] == "leader"


def test_the_metrics_route_can_be_made_private(tmp_path: Path) -> None:
    token = "metrics-token-" + "t" * 24
    cluster = Cluster(tmp_path, size=1, METRICS_TOKEN=token)
    try:
        cluster.start()
        (node,) = cluster.founders
        url = f"{node.address}/raft/metrics"
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": token}):
            refused = requests.get(url, headers=headers, timeout=10)
            assert refused.status_code == 401, refused.text
            assert refused.json()["error_type"] == "InvalidRequestError"
            assert "django_raft_server_term" not in refused.text and token not in refused.text
        served = requests.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=10)
        assert served.status_code == 200
        assert "django_raft_server_term" in served.text
    finally:
        cluster.close()


def test_the_metrics_route_is_public_by_default(node: Node) -> None:
    served = requests.get(f"{node.address}/raft/metrics", timeout=10)
    assert served.status_code == 200 and "django_raft_server_term" in served.text
