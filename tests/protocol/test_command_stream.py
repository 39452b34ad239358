"""Command streams: a client process's commands on one connection to a node.

A real node serves them (``running``, real sockets on 127.0.0.1); the client is
``CommandStream`` itself, or a hand-made one whose frames can be bent.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from django.db.models import Max

from django_raft import commands
from django_raft.client import Client
from django_raft.conf import raft_settings
from django_raft.exceptions import ClusterUnreachableError
from django_raft.node import flow, submit
from django_raft.node.http import command_streams
from django_raft.node.http import server as node_server
from django_raft.protocol import command_stream, send
from django_raft.protocol.auth import CLIENT, NODE, NONCE_HEADER, Signer, derive_keys
from django_raft.protocol.command_stream import CommandStream, StreamBroken, Streams, stream_keys
from django_raft.protocol.connection import NodeConnection
from django_raft.protocol.request import READ_INDEX
from django_raft.protocol.stream import FrameParser, FrameWriter
from tests.integration.cluster import wait_for
from tests.node.test_node import NODE_ID, SECRET, Running, running, start
from tests.protocol.streams import OpenedByHand
from tests.signing import signed

__all__ = ["running", "start"]  # fixtures

pytestmark = pytest.mark.django_db(transaction=True)

KEYS = derive_keys(SECRET)
PATH = "/raft/command/stream"


def client_signer(sender: str = "web-1") -> Signer:
    return Signer(KEYS.client, CLIENT, sender)


def kv_set(key: str, value: str, **extra: Any) -> dict[str, Any]:
    return {"name": "kv.set", "arguments": {"key": key, "value": value}, "timeout": 5, **extra}


@pytest.fixture
def streams() -> Iterator[list[CommandStream]]:
    opened: list[CommandStream] = []
    yield opened
    for found in opened:
        found._break("test over", set())


def open_stream(running: Running, streams: list[CommandStream], sender: str = "web-1") -> Any:
    opened = CommandStream(running.address, client_signer(sender), "raft/")
    streams.append(opened)
    return opened


class HandMade(OpenedByHand):
    """A command stream opened by hand, as client ``sender``, so frames can be bent."""

    def __init__(self, running: Running, kind: str = CLIENT, sender: str = "web-1") -> None:
        self.headers = signed(running.url("command/stream"), b"", SECRET, sender, kind)
        self.connection = NodeConnection(running.address, 10, None)
        self.status, self.answer = self.connection.post(PATH, b"", self.headers, 4096)
        self.sock: socket.socket | None = None
        if self.status == 200:
            self.sock = self.connection.detach()
            self.sock.settimeout(10)
            key = KEYS.node if kind == NODE else KEYS.client
            up, down = stream_keys(key, self.headers[NONCE_HEADER], sender, NODE_ID)
            self.writer, self.parser = FrameWriter(up), FrameParser(down)

    def send(self, requests: Any) -> bytes:
        assert self.sock is not None
        data = self.writer.frame(json.dumps(requests).encode())
        self.sock.sendall(data)
        return data

    def answers(self, count: int) -> dict[int, dict[str, Any]]:
        """The next ``count`` answers, by id."""
        assert self.sock is not None
        found: dict[int, dict[str, Any]] = {}
        while len(found) < count:
            data = self.sock.recv(1 << 16)
            assert data, "the node closed the stream"
            for payload in self.parser.feed(data):
                found.update({number: answer for number, answer in json.loads(payload)})
        return found

    def received(self, data: bytes) -> None:
        self.parser.feed(data)


@pytest.fixture
def hand_made() -> Iterator[list[HandMade]]:
    opened: list[HandMade] = []
    yield opened
    for found in opened:
        found.close()


def log_end() -> int:
    """The last index in the node's log, as stored (written before any answer)."""
    from django_raft.models import LogEntry

    return int(LogEntry.objects.aggregate(end=Max("index"))["end"] or 0)


def test_commands_on_a_stream_are_applied_and_answered(
    running: Running, streams: list[CommandStream]
) -> None:
    opened = open_stream(running, streams)
    assert opened.call(kv_set("a", "1"), 5) == {
        "ok": True,
        "value": 1,
        "error": "",
        "error_type": "",
        "leader": NODE_ID,
    }
    assert opened.call(kv_set("a", "2"), 5)["value"] == 2
    from demo_project.kv.models import KeyValue

    assert KeyValue.objects.get(key="a").value == "2"


def test_threads_share_a_stream_and_their_commands_share_frames(
    running: Running, streams: list[CommandStream], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Forty threads, ten commands each, on one stream: every answer is its own
    command's, and commands sent at once arrive in one frame."""
    sizes: list[int] = []
    read = command_streams.requests_of

    def counting(payload: bytes) -> list[tuple[int, Any]]:
        found = read(payload)
        sizes.append(len(found))
        return found

    monkeypatch.setattr(command_streams, "requests_of", counting)
    opened = open_stream(running, streams)
    results: dict[str, list[int]] = {}

    def client(number: int) -> None:
        results[f"t{number}"] = [
            opened.call(kv_set(f"t{number}", str(i)), 10)["value"] for i in range(10)
        ]

    threads = [threading.Thread(target=client, args=(n,)) for n in range(40)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == {f"t{n}": list(range(1, 11)) for n in range(40)}
    assert sum(sizes) == 400
    assert max(sizes) > 1  # batched
    assert len(sizes) < 400


def test_bad_requests_get_typed_answers_and_the_stream_goes_on(
    running: Running, hand_made: list[HandMade]
) -> None:
    client = HandMade(running)
    hand_made.append(client)
    before = log_end()
    client.send(
        [
            [1, "not an object"],
            [2, {**kv_set("a", "1"), "timeout": 0}],
            [3, {"name": "no.such", "arguments": {}}],
            [4, {"name": "kv.set", "arguments": {"key": "a", "value": float("inf")}}],
            [5, {**kv_set("a", "1"), "client_id": "s" * 65, "sequence": 1}],
            [6, {"name": "kv.set", "arguments": {"key": "a"}}],
        ]
    )
    answers = client.answers(6)
    assert {number: answer["error_type"] for number, answer in answers.items()} == {
        number: "InvalidRequestError" for number in range(1, 7)
    }
    assert not any(answer["ok"] for answer in answers.values())
    assert log_end() == before  # nothing reached the log
    client.send([[7, kv_set("a", "fine")]])
    assert client.answers(1)[7]["ok"]


@pytest.mark.parametrize(
    "spoil",
    [
        "wrong key",
        "replayed frame",
        "frame of another stream",
        "not JSON",
        "not an array",
        "negative id",
        "text id",
        "oversized",
    ],
)
def test_a_frame_that_cannot_be_trusted_closes_the_stream_and_runs_nothing(
    running: Running, hand_made: list[HandMade], spoil: str
) -> None:
    client, other, third = HandMade(running), HandMade(running), HandMade(running)
    hand_made.extend([client, other, third])
    first = client.send([[1, kv_set("a", "1")]])
    assert client.answers(1)[1]["ok"]
    before = log_end()
    assert client.sock is not None
    good = json.dumps([[2, kv_set("a", "2")]]).encode()
    if spoil == "wrong key":
        client.sock.sendall(FrameWriter(b"k" * 32).frame(good))
    elif spoil == "replayed frame":
        client.sock.sendall(first)
    elif spoil == "frame of another stream":
        client.sock.sendall(third.writer.frame(good))
    elif spoil == "not JSON":
        client.sock.sendall(client.writer.frame(b"[[2, {"))
    elif spoil == "not an array":
        client.send({"2": kv_set("a", "2")})
    elif spoil == "negative id":
        client.send([[-2, kv_set("a", "2")]])
    elif spoil == "text id":
        client.send([["2", kv_set("a", "2")]])
    else:
        client.sock.sendall(struct.pack(">I16s", command_stream.MAX_REQUEST_FRAME + 1, b"t" * 16))
    assert client.closed_by_node()
    time.sleep(0.1)
    assert log_end() == before
    other.send([[1, kv_set("b", "1")]])  # the node goes on
    assert other.answers(1)[1]["ok"]


@pytest.mark.parametrize("kind", [CLIENT, NODE])
def test_clients_and_nodes_may_open_a_stream(
    running: Running, hand_made: list[HandMade], kind: str
) -> None:
    client = HandMade(running, kind=kind)
    hand_made.append(client)
    accepted = command_stream.PROTOCOL + b" " + NODE_ID.encode()
    assert (client.status, client.answer) == (200, accepted)
    client.send([[9, kv_set("k", "v")]])
    assert client.answers(1)[9]["ok"]


def test_a_handshake_with_a_bad_signature_or_replayed_is_refused(
    running: Running, hand_made: list[HandMade]
) -> None:
    first = HandMade(running)
    hand_made.append(first)
    again = NodeConnection(running.address, 10, None)
    status, answer = again.post(PATH, b"", first.headers, 4096)
    assert status == 403 and b"replayed" in answer
    forged = {**signed(running.url("command/stream"), b"", "another-secret-" + "x" * 32)}
    status, answer = again.post(PATH, b"", forged, 4096)
    again.close()
    assert status == 403


def test_over_tls_a_node_refuses_the_handshake(running: Running) -> None:
    """A TLS connection is not read and written by two threads at once: over TLS,
    clients send one request per command."""
    answer = node_server._accept_command_stream(
        CLIENT, "web-1", "n" * 32, {"wsgi.url_scheme": "https"}
    )
    assert answer.status == 400 and b"plain HTTP" in answer.body


def test_open_streams_are_a_metric(running: Running, hand_made: list[HandMade]) -> None:
    def served() -> float:
        answer = requests.get(running.url("metrics"), timeout=10)
        for line in answer.text.splitlines():
            if line.startswith('django_raft_network_streams_open{kind="command"}'):
                return float(line.split()[-1])
        raise AssertionError("no django_raft_network_streams_open{kind=command}")

    assert served() == 0
    clients = [HandMade(running), HandMade(running)]
    hand_made.extend(clients)
    wait_for(lambda: served() == 2, 10, "both streams to count")
    clients[0].close()
    wait_for(lambda: served() == 1, 10, "the closed stream to leave the count")


def test_a_read_index_on_a_stream_needs_no_thread_of_the_node(
    running: Running, hand_made: list[HandMade], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``read()`` asks for its index on the stream; the node answers it from the loop's
    round, not from one of the few threads that run read-only commands: with every one
    of those busy, a read index is still answered at once."""
    release = threading.Event()
    started: list[int] = []

    def wait(context: commands.Context, n: int) -> int:
        started.append(n)
        release.wait(10)
        return n

    commands.register("tests.hold", wait, read_only=True)
    monkeypatch.setattr(command_streams, "SLOW_THREADS", 2)
    monkeypatch.setattr(command_streams, "_slow", None)  # a pool of the patched size
    client = HandMade(running)
    hand_made.append(client)
    try:
        for n in range(2):
            client.send([[n, {"name": "tests.hold", "arguments": {"n": n}, "read": True}]])
        wait_for(lambda: len(started) == 2, 10, "the threads to be taken")
        client.send([[7, {"name": READ_INDEX, "arguments": {}, "read": True, "timeout": 5}]])
        answer = client.answers(1)[7]
        assert answer["ok"] and answer["value"] >= 1, answer
        assert len(started) == 2
    finally:
        release.set()
    assert set(client.answers(2)) == {0, 1}


def test_read_indexes_are_bounded_like_the_other_reads(
    running: Running, hand_made: list[HandMade], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each read index is a heartbeat round for the core: beyond the reads' lane a
    stream's read index is refused at once (``OverloadedError``), like a read-only
    command, instead of piling up on the loop."""
    one = flow.Limits(node=1, client=1, stream=1, peer=1, floor=0, reserve=0)
    monkeypatch.setattr(command_streams, "_slow_lane", flow.Budget(one))
    release = threading.Event()
    started: list[int] = []

    def hold(context: commands.Context) -> int:
        started.append(1)
        release.wait(10)
        return 1

    commands.register("tests.hold_lane", hold, read_only=True)
    client = HandMade(running)
    hand_made.append(client)
    try:
        client.send([[0, {"name": "tests.hold_lane", "arguments": {}, "read": True}]])
        wait_for(lambda: started == [1], 10, "the lane's one place to be taken")
        client.send([[1, {"name": READ_INDEX, "arguments": {}, "read": True, "timeout": 5}]])
        refused = client.answers(1)[1]
        assert refused["error_type"] == "OverloadedError", refused
    finally:
        release.set()
    assert client.answers(1)[0]["ok"]
    client.send([[2, {"name": READ_INDEX, "arguments": {}, "read": True, "timeout": 5}]])
    assert client.answers(1)[2]["ok"]


def test_a_read_index_the_core_never_gives_fails_at_its_deadline(
    running: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ReadIndex round that never ends (the core dropped the request: leadership
    lost) answers ``CommandTimeoutError`` by the caller's deadline, not never."""
    monkeypatch.setattr(running.node.raw, "read_index", lambda context: None)
    started = time.monotonic()
    found = running.node.read_index_async(0.3)
    error = found.exception(timeout=5)
    assert type(error).__name__ == "CommandTimeoutError", error
    assert 0.3 <= time.monotonic() - started < 2


def test_a_client_asks_for_a_read_index_on_its_stream(
    running: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_post(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a read index went as an HTTP request")

    monkeypatch.setattr(send, "post", no_post)
    body = {"name": READ_INDEX, "arguments": {}, "read": True}
    answer = send.send_command(running.address, body, 5)
    assert answer["ok"] and answer["value"] >= 1, answer


def test_a_stream_runs_at_most_max_in_flight_commands_at_once(
    running: Running, hand_made: list[HandMade], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Beyond the bound the node reads no more of the stream until one is answered."""
    release = threading.Event()
    started: list[int] = []

    def wait(context: commands.Context, n: int) -> int:
        started.append(n)
        release.wait(10)
        return n

    commands.register("tests.wait", wait, read_only=True)
    monkeypatch.setattr(command_streams, "MAX_IN_FLIGHT", 2)
    client = HandMade(running)
    hand_made.append(client)
    reads = [[n, {"name": "tests.wait", "arguments": {"n": n}, "read": True}] for n in range(5)]
    for pair in reads:
        client.send([pair])
    wait_for(lambda: len(started) == 2, 10, "two reads to start")
    time.sleep(0.3)
    assert len(started) == 2
    release.set()
    answers = client.answers(5)
    assert {number: answer["value"] for number, answer in answers.items()} == {
        n: n for n in range(5)
    }


def test_answers_a_slow_reader_leaves_unread_arrive_whole_and_in_order(
    running: Running, hand_made: list[HandMade]
) -> None:
    """Answers are written as commands are applied, by the applier when the socket takes
    them at once; the rest wait for the stream's writer. A client that reads nothing for
    a while (megabytes of answers pile up) still gets every answer, in frames whose
    numbers and tags check out (the parser refuses a frame out of order)."""
    commands.register("tests.big", lambda context, n: f"{n}:" + "x" * 200_000)
    client = HandMade(running)
    hand_made.append(client)
    assert client.sock is not None
    for n in range(60):  # 12 MB of answers, far beyond the sockets' buffers
        client.send([[n, {"name": "tests.big", "arguments": {"n": n}, "timeout": 20}]])
    time.sleep(1.0)
    answers = client.answers(60)
    assert sorted(answers) == list(range(60))
    assert all(answers[n]["value"] == f"{n}:" + "x" * 200_000 for n in range(60))


def test_command_streams_beyond_the_bound_are_closed_at_once(
    running: Running, hand_made: list[HandMade], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(node_server, "MAX_COMMAND_STREAMS", 2)
    # Both kept stay busy (not idle) however slowly a loaded machine opens the third.
    monkeypatch.setattr(node_server, "STREAM_IDLE", 60.0)
    kept = [HandMade(running), HandMade(running)]  # same sender: two streams all the same
    refused = HandMade(running)  # both kept are busy: refused at once
    hand_made.extend(kept)
    assert refused.status == 503 and b"OverloadedError" in refused.answer
    refused.connection.close()
    for client in kept:
        client.send([[1, kv_set("a", "1")]])
        assert client.answers(1)[1]["ok"]


def test_a_stream_opens_when_the_keep_alive_pool_is_full(
    running: Running, hand_made: list[HandMade], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stream leaves the pool for a thread of its own: the bound on idle keep-alive
    connections does not apply to it."""
    monkeypatch.setattr(running.server, "keep_alive_conn_limit", 0)
    client = HandMade(running)
    hand_made.append(client)
    assert client.status == 200 and client.sock is not None
    client.send([[1, kv_set("a", "1")]])
    assert client.answers(1)[1]["ok"]


def test_a_silent_stream_is_closed_and_a_used_one_is_kept_alive(
    running: Running,
    streams: list[CommandStream],
    hand_made: list[HandMade],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(node_server, "CONNECTION_TIMEOUT", 0.5)
    monkeypatch.setattr(command_stream, "KEEPALIVE", 0.1)
    silent = HandMade(running)
    hand_made.append(silent)
    kept = open_stream(running, streams)
    assert silent.closed_by_node(timeout=5)
    time.sleep(1.0)
    assert not kept.closed
    assert kept.call(kv_set("a", "1"), 5)["ok"]


def test_a_client_closes_its_stream_when_idle(
    running: Running, streams: list[CommandStream], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(command_stream, "KEEPALIVE", 0.05)
    monkeypatch.setattr(command_stream, "IDLE_CLOSE", 0.3)
    opened = open_stream(running, streams)
    assert opened.call(kv_set("a", "1"), 5)["ok"]
    wait_for(lambda: opened.closed, 5, "the idle stream to close")
    assert not opened.never_answered  # it answered: streams stay in use
    with pytest.raises(StreamBroken) as broken:
        opened.call(kv_set("a", "2"), 5)
    assert broken.value.sent is False


def test_stopping_the_server_ends_command_streams(
    running: Running, hand_made: list[HandMade]
) -> None:
    client = HandMade(running)
    hand_made.append(client)
    running.server.stop()
    assert client.closed_by_node(timeout=5)


# -- the client: what a broken stream means, refusals, forks ------------------------------


EMPTY_FRAME = len(FrameWriter(b"k" * 32).frame(b""))


class FakeNode:
    """Accepts one command stream, reads ``reads`` frames of commands (pings aside),
    then closes it unanswered."""

    def __init__(self, reads: int, stalled: bool = False) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.read_frames = 0
        self.stalled = stalled
        self.thread = threading.Thread(target=self._serve, args=(reads,), daemon=True)
        self.thread.start()

    def _serve(self, reads: int) -> None:
        conn, _ = self.listener.accept()
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                data += conn.recv(4096)
            if self.stalled:  # like a stopped process: never answers
                conn.recv(1)
                return
            body = command_stream.PROTOCOL + b" n1"
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            while self.read_frames < reads:
                data = conn.recv(1 << 16)
                if not data:
                    return
                if len(data) > EMPTY_FRAME:  # not only the client's ping
                    self.read_frames += 1

    def close(self) -> None:
        self.listener.close()


def test_an_answer_lost_after_the_command_was_written_may_have_been_applied() -> None:
    fake = FakeNode(reads=1)
    try:
        opened = CommandStream(fake.address, client_signer(), "raft/")
        with pytest.raises(StreamBroken) as broken:
            opened.call(kv_set("a", "1"), 5)
        assert broken.value.sent is True
    finally:
        fake.close()


def test_a_node_whose_stream_broke_before_any_answer_gets_requests() -> None:
    """Something between client and node that does not pass a stream on (a proxy) must
    not fail every command: the client falls back to requests for a while."""
    registry = Streams()
    fake = FakeNode(reads=1)
    try:
        opened = registry.get(fake.address, client_signer(), "raft/")
        assert opened is not None
        with pytest.raises(StreamBroken):
            opened.call(kv_set("a", "1"), 5)
        assert opened.never_answered
        assert registry.get(fake.address, client_signer(), "raft/") is None
        assert min(registry._refused.values()) > time.monotonic() + 50
    finally:
        fake.close()


def test_a_closed_node_port_is_not_sent_and_a_lost_answer_is_unreachable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``send_command`` turns a stream's failures into the client's errors: never
    reached (retrying is always safe), or reached without an answer."""
    closed = socket.create_server(("127.0.0.1", 0))
    address = f"http://127.0.0.1:{closed.getsockname()[1]}"
    closed.close()
    monkeypatch.setattr(send, "_streams", Streams())
    with pytest.raises(send.Unsent):
        send.send_command(address, kv_set("a", "1"), 1)
    fake = FakeNode(reads=1)
    try:
        with pytest.raises(ClusterUnreachableError) as lost:
            send.send_command(fake.address, kv_set("a", "1"), 5)
        assert not isinstance(lost.value, send.Unsent)
    finally:
        fake.close()


def test_opening_a_stream_to_a_stalled_node_gives_up_within_the_callers_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(send, "_streams", Streams())
    fake = FakeNode(reads=0, stalled=True)
    try:
        started = time.monotonic()
        with pytest.raises(send.Unsent):
            send.send_command(fake.address, kv_set("a", "1"), 0.5)
        assert time.monotonic() - started < 1.5
    finally:
        fake.close()


def test_a_node_that_serves_no_stream_gets_requests(
    running: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An older node (or a route served by Django) answers 404: the client sends the
    command as a request, and asks for a stream again only a minute later."""
    monkeypatch.setattr(send, "_streams", Streams())
    monkeypatch.setattr(command_stream, "PATH", "command/no-stream")
    answer = send.send_command(running.address, kv_set("a", "1"), 5)
    assert answer["ok"] and answer["value"] == 1
    refused = send._streams._refused
    assert len(refused) == 1 and min(refused.values()) > time.monotonic() + 50
    assert not send._streams._open


def test_a_forked_process_opens_streams_of_its_own(
    running: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = Streams()
    first = registry.get(running.address, client_signer(), "raft/")
    assert first is not None and registry.get(running.address, client_signer(), "raft/") is first
    monkeypatch.setattr(os, "getpid", lambda: registry._pid + 1)
    second = registry.get(running.address, client_signer(), "raft/")
    assert second is not None and second is not first
    first._break("test over", set())
    second._break("test over", set())


def test_do_from_another_process_goes_on_a_stream(
    running: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ``Client`` sends writes to another process's node on its stream, reads as
    requests (``localhost``: an address that is not this process's node's own)."""
    monkeypatch.setattr(send, "_streams", Streams())
    client = Client(timeout=5)
    client._leader = running.address.replace("127.0.0.1", "localhost")
    assert client.do("kv.set", key="a", value="1") == 1
    assert len(send._streams._open) == 1
    assert client.read(READ_INDEX) > 0
    assert len(send._streams._open) == 1


def test_a_client_cuts_frames_to_the_limit_and_refuses_a_larger_command(
    running: Running, streams: list[CommandStream], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(command_stream, "MAX_REQUEST_FRAME", 400)
    opened = open_stream(running, streams)
    results: list[dict[str, Any]] = []
    threads = [
        threading.Thread(target=lambda n=n: results.append(opened.call(kv_set(f"k{n}", "v"), 10)))
        for n in range(20)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 20 and all(answer["ok"] for answer in results)
    answer = opened.call(kv_set("big", "x" * 500), 5)
    assert answer["error_type"] == "InvalidRequestError" and "over 400 bytes" in answer["error"]
    assert opened.call(kv_set("small", "y"), 5)["ok"]


class SilentLeader:
    """Accepts a command stream, answers the client's first ping as a node does, then
    reads commands and never answers (a paused process, as far as the client sees)."""

    def __init__(self, signer: Signer | None = None) -> None:
        self.signer = signer or client_signer()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.listener.accept()
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                data += conn.recv(4096)
            head = data.split(b"\r\n\r\n", 1)[0].decode()
            nonce = next(
                line.split(":", 1)[1].strip()
                for line in head.split("\r\n")
                if line.lower().startswith(NONCE_HEADER.lower() + ":")
            )
            body = command_stream.PROTOCOL + b" n1"
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            down = stream_keys(self.signer.key, nonce, self.signer.sender, "n1")[1]
            conn.recv(1 << 16)  # the client's first ping (then it reads frames itself)
            conn.sendall(FrameWriter(down).frame(b""))  # the pong: this node can be probed
            while conn.recv(1 << 16):
                pass

    def close(self) -> None:
        self.listener.close()


class StubNode:
    """What ``submit.forward`` asks of the node it runs on: who leads, where."""

    def __init__(self, leader: str) -> None:
        self.node_id = "n2"
        self.address = "http://127.0.0.1:1"
        self.leader = leader

    def leader_address(self) -> str:
        return self.leader

    def status(self) -> dict[str, Any]:
        return {"state": "follower", "leader": "n1" if self.leader else ""}


def test_a_stream_whose_node_falls_silent_breaks_within_the_probe(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A node that answered pings and then stops (SIGSTOP, a cut cable) costs a waiting
    command ``PROBE`` seconds, not the caller's deadline; it may have been applied."""
    silent = SilentLeader()
    try:
        opened = CommandStream(silent.address, client_signer(), "raft/")
        started = time.monotonic()
        with pytest.raises(StreamBroken) as broken:
            opened.call(kv_set("a", "1"), 10)
        assert broken.value.sent is True
        assert time.monotonic() - started < command_stream.PROBE + 1.5
        assert not opened.never_answered  # it answered pings: a paused node, not a proxy
    finally:
        silent.close()


def test_a_node_that_never_accepts_the_stream_costs_the_handshake_not_the_deadline(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A paused node still completes TCP connections (the kernel does): a sender must
    not wait for its handshake answer until the caller's deadline. Nothing was sent."""
    monkeypatch.setattr(send, "_streams", Streams())
    listener = socket.create_server(("127.0.0.1", 0))
    try:
        address = f"http://127.0.0.1:{listener.getsockname()[1]}"
        started = time.monotonic()
        with pytest.raises(send.Unsent):
            send.send_command(address, kv_set("a", "1"), 10)
        assert time.monotonic() - started < command_stream.HANDSHAKE_TIMEOUT + 1.5
    finally:
        listener.close()


def test_a_forwarded_command_lost_after_the_write_may_have_applied(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The stream to the leader broke after the command was written: the follower
    answers ``CommandTimeoutError`` (it may have been applied), never "unreachable"."""
    monkeypatch.setattr(send, "_streams", Streams())
    fake = FakeNode(reads=1)
    try:
        node: Any = StubNode(fake.address)
        body = kv_set("a", "1")
        answer = submit.forward(node, "command", body, time.monotonic() + 5)
        assert answer["error_type"] == "CommandTimeoutError", answer
        assert "may have been applied" in answer["error"]
    finally:
        fake.close()


@pytest.mark.parametrize("session", [True, False], ids=["session", "no-session"])
def test_a_forwarded_command_follows_a_new_leader(
    running: Running, monkeypatch: pytest.MonkeyPatch, session: bool
) -> None:
    """The leader a follower forwarded to stops answering and the follower learns of a
    newer one: with a session the command is sent there (applied once all the same);
    without one the caller is told at once that it may have been applied."""
    monkeypatch.setattr(send, "_streams", Streams())
    monkeypatch.setattr(command_stream, "PROBE", 30.0)  # only the new leader may end the wait
    keys = derive_keys(raft_settings.SECRET, raft_settings.CLIENT_SECRET)
    silent = SilentLeader(Signer(keys.client, CLIENT, raft_settings.NODE_ID or "client"))
    node: Any = StubNode(silent.address)
    body = kv_set("f", "1")
    if session:
        opened = Client(timeout=5).open_session()
        body.update(client_id=opened, sequence=1)
    timer = threading.Timer(0.3, lambda: setattr(node, "leader", running.address))
    timer.start()
    try:
        started = time.monotonic()
        answer = submit.forward(node, "command", body, time.monotonic() + 10)
        assert time.monotonic() - started < 3
    finally:
        timer.cancel()
        silent.close()
    if session:
        assert answer["ok"] and answer["value"] == 1, answer
    else:
        assert answer["error_type"] == "CommandTimeoutError", answer
        assert "newer leader" in answer["error"]
