"""Streams between nodes: the handshake, the frames' tags, and the sender's lanes.

A real node serves the streams (``running``); the peer is played by hand, over a real
socket, so that every frame can be bent: wrong tags, replays, lies about the sender,
sizes past the limit, silence.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from django_raft.core import Entry, Message, MessageType
from django_raft.node import transport as transport_module
from django_raft.node.http import server as node_server
from django_raft.node.transport import Transport, frame, unframe
from django_raft.protocol import stream
from django_raft.protocol.auth import CLIENT, NODE, NONCE_HEADER, derive_keys
from django_raft.protocol.connection import NodeConnection
from django_raft.protocol.stream import FrameReader, FrameWriter, stream_key
from tests.integration.cluster import wait_for
from tests.node.test_node import NODE_ID, SECRET, Running, rpc_message, running, start
from tests.protocol.streams import OpenedByHand
from tests.signing import signed

__all__ = ["running", "start"]  # fixtures

pytestmark = pytest.mark.django_db(transaction=True)

NODE_KEY = derive_keys(SECRET).node


class Peer(OpenedByHand):
    """A stream opened by hand to the running node, as node ``sender`` (the node never
    writes on it)."""

    def __init__(
        self,
        running: Running,
        sender: str = "n2",
        lane: str = "data",
        kind: str = NODE,
        address: str = "",
    ) -> None:
        path = "/raft/rpc/stream"
        self.body = f"{lane}\n{address}".encode() if address else lane.encode()
        self.headers = signed(running.url("rpc/stream"), self.body, SECRET, sender, kind, NODE_ID)
        self.connection = NodeConnection(running.address, 10, None)
        self.status, self.answer = self.connection.post(path, self.body, self.headers, 4096)
        self.sock: socket.socket | None = None
        if self.status == 200:
            self.sock = self.connection.detach()
            self.sock.settimeout(10)
            key = stream_key(NODE_KEY, self.headers[NONCE_HEADER], sender, NODE_ID, lane)
            self.writer = FrameWriter(key)

    def send(self, messages: list[Message]) -> bytes:
        assert self.sock is not None
        data = self.writer.frame(frame(messages))
        self.sock.sendall(data)
        return data


@pytest.fixture
def stepped(running: Running, monkeypatch: pytest.MonkeyPatch) -> list[Message]:
    """The messages the node was handed from streams, in order."""
    seen: list[Message] = []
    deliver = running.node.deliver

    def recording(messages: list[Message]) -> None:
        seen.extend(messages)
        deliver(messages)

    monkeypatch.setattr(running.node, "deliver", recording)
    return seen


@pytest.fixture
def peers() -> Iterator[list[Peer]]:
    opened: list[Peer] = []
    yield opened
    for peer in opened:
        peer.close()


def heartbeat(commit: int = 0, sender: str = "n2", to: str = NODE_ID) -> Message:
    """A heartbeat of a past term (its commit index tells it apart): harmless."""
    return rpc_message(type=MessageType.HEARTBEAT, term=0, sender=sender, to=to, commit=commit)


def test_a_peer_opens_a_stream_and_its_frames_are_stepped_in_order(
    running: Running, stepped: list[Message], peers: list[Peer]
) -> None:
    peer = Peer(running)
    peers.append(peer)
    assert (peer.status, peer.answer) == (200, stream.PROTOCOL)
    sent = [heartbeat(commit=i) for i in range(5)]
    peer.send(sent[:2])
    peer.sock.sendall(peer.writer.frame(b""))  # type: ignore[union-attr]  # a keep-alive
    peer.send(sent[2:])
    wait_for(lambda: len(stepped) == 5, 10, "the frames to be stepped")
    assert [message.commit for message in stepped] == [0, 1, 2, 3, 4]
    assert not peer.closed_by_node(timeout=0.2)


@pytest.mark.parametrize(
    ("kind", "lane", "status"),
    [(NODE, "gossip", 400), (CLIENT, "data", 403)],
)
def test_a_handshake_with_an_unknown_lane_or_a_client_key_is_refused(
    running: Running, peers: list[Peer], kind: str, lane: str, status: int
) -> None:
    peer = Peer(running, lane=lane, kind=kind)
    peers.append(peer)
    assert peer.status == status and peer.sock is None


def test_a_replayed_handshake_is_refused(running: Running, peers: list[Peer]) -> None:
    first = Peer(running)
    peers.append(first)
    again = NodeConnection(running.address, 10, None)
    status, answer = again.post("/raft/rpc/stream", first.body, first.headers, 4096)
    again.close()
    assert status == 403 and b"replayed" in answer


def test_a_node_learns_the_address_a_peer_gives_unless_it_knows_one(
    running: Running, peers: list[Peer]
) -> None:
    """A node that joins is reached by the leader before it knows the leader's address
    from the log: it answers at the address the leader's stream gave."""
    addresses = running.node.transport.addresses
    peers.append(Peer(running, sender="n2", address="http://127.0.0.1:1"))
    assert addresses["n2"] == "http://127.0.0.1:1"
    peers.append(Peer(running, sender="n2", address="http://127.0.0.1:2", lane="control"))
    assert addresses["n2"] == "http://127.0.0.1:1"  # known: never replaced
    for bad in ("ftp://127.0.0.1:3", "http://", "http://" + "a" * 3000):
        refused = Peer(running, sender="n3", address=bad)
        peers.append(refused)
        assert refused.status == 400 and refused.sock is None
    assert "n3" not in addresses


def frame_with_wrong_key(messages: list[Message]) -> bytes:
    return FrameWriter(b"k" * 32).frame(frame(messages))


@pytest.mark.parametrize(
    "spoil",
    ["wrong key", "replayed frame", "other sender", "other receiver", "garbage", "oversized"],
)
def test_a_frame_that_cannot_be_trusted_closes_the_stream_unstepped(
    running: Running, stepped: list[Message], peers: list[Peer], spoil: str
) -> None:
    """Whatever is wrong with a frame, nothing in it is stepped and the node goes on."""
    peer = Peer(running)
    peers.append(peer)
    first = peer.send([heartbeat(commit=1)])
    wait_for(lambda: len(stepped) == 1, 10, "the good frame to be stepped")
    assert peer.sock is not None
    if spoil == "wrong key":
        peer.sock.sendall(frame_with_wrong_key([heartbeat(commit=2)]))
    elif spoil == "replayed frame":
        peer.sock.sendall(first)
    elif spoil == "other sender":
        peer.send([heartbeat(sender="n3")])
    elif spoil == "other receiver":
        peer.send([heartbeat(to="n9")])
    elif spoil == "garbage":
        peer.sock.sendall(peer.writer.frame(b"\x00\x00\x00\x09not-proto"))
    else:
        peer.sock.sendall(struct.pack(">I16s", stream.MAX_FRAME + 1, b"t" * 16))
    assert peer.closed_by_node()
    assert [message.commit for message in stepped] == [1]
    assert running.node.status()["state"] == "leader"
    again = Peer(running)  # the sender may open a new stream
    peers.append(again)
    again.send([heartbeat(commit=3)])
    wait_for(lambda: len(stepped) == 2, 10, "the new stream's frame to be stepped")


def test_a_new_stream_of_the_same_sender_and_lane_ends_the_old_one(
    running: Running, stepped: list[Message], peers: list[Peer]
) -> None:
    old = Peer(running)
    other_lane = Peer(running, lane="control")
    new = Peer(running)
    peers.extend([old, other_lane, new])
    assert old.closed_by_node()
    assert not other_lane.closed_by_node(timeout=0.2)
    new.send([heartbeat(commit=7)])
    wait_for(lambda: len(stepped) == 1, 10, "the new stream's frame")


def test_a_silent_stream_is_closed(
    running: Running, peers: list[Peer], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(node_server, "CONNECTION_TIMEOUT", 0.3)
    peer = Peer(running)
    peers.append(peer)
    started = time.monotonic()
    assert peer.closed_by_node(timeout=10)
    assert time.monotonic() - started < 5


def test_stopping_the_server_ends_its_streams(running: Running, peers: list[Peer]) -> None:
    peer = Peer(running)
    peers.append(peer)
    running.server.stop()
    assert peer.closed_by_node(timeout=5)


# -- the sending side: a fake peer that accepts streams -----------------------------------


class FakePeer:
    """Accepts the handshakes of a ``Transport`` and reads (or, on ``stuck`` lanes,
    never reads) their frames."""

    def __init__(self, stuck: tuple[str, ...] = (), refuse_first: int = 0) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.stuck = stuck
        self.refuse_first = refuse_first
        self.received: list[tuple[str, list[Message]]] = []
        self.handshakes: list[str] = []
        self.given_address = ""
        """The address the sender gave in its last handshake."""
        self.changed = threading.Condition()
        self.release = threading.Event()
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            self.sockets.append(sock)
            threading.Thread(target=self._serve, args=(sock,), daemon=True).start()

    def _serve(self, sock: socket.socket) -> None:
        """Serves one stream until it ends; the test's teardown closing the socket ends it."""
        with contextlib.suppress(OSError):
            self._talk(sock)

    def _talk(self, sock: socket.socket) -> None:
        source = sock.makefile("rb")
        head = b""
        while not head.endswith(b"\r\n\r\n"):
            byte = source.read(1)
            if not byte:
                return
            head += byte
        fields = dict(
            line.split(": ", 1) for line in head.decode().split("\r\n")[1:] if ": " in line
        )
        lane, _, self.given_address = (
            source.read(int(fields["Content-Length"])).decode().partition("\n")
        )
        with self.changed:
            self.handshakes.append(lane)
            refuse = len(self.handshakes) <= self.refuse_first
        if refuse:  # accept, then break the stream at once
            sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 20\r\n\r\n" + stream.PROTOCOL)
            time.sleep(0.2)
            sock.close()
            return
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 20\r\n\r\n" + stream.PROTOCOL)
        if lane in self.stuck:
            self.release.wait(30)  # a peer too busy to read
            return
        key = stream_key(NODE_KEY, fields[NONCE_HEADER], "n1", "n2", lane)
        reader = FrameReader(source, key)
        while (payload := reader.read()) is not None:
            if payload:
                with self.changed:
                    self.received.append((lane, unframe(payload)))
                    self.changed.notify_all()

    def kinds(self, lane: str) -> list[MessageType]:
        with self.changed:
            return [m.type for got, batch in self.received if got == lane for m in batch]

    def close(self) -> None:
        self.release.set()
        self.listener.close()
        for sock in self.sockets:
            sock.close()


@pytest.fixture
def fake_peer() -> Iterator[Any]:
    made: list[FakePeer] = []

    def make(**options: Any) -> FakePeer:
        peer = FakePeer(**options)
        made.append(peer)
        return peer

    yield make
    for peer in made:
        peer.close()


@pytest.fixture
def transport() -> Iterator[Transport]:
    made = Transport("n1", SECRET, "raft/", 5.0)
    made.set_address("n1", "http://127.0.0.1:7")
    yield made
    made.stop()


def append(index: int, size: int = 0) -> Message:
    entries = (Entry(index=index + 1, term=1, data=b"x" * size),) if size else ()
    return Message(
        type=MessageType.APPEND, to="n2", sender="n1", term=1, index=index, entries=entries
    )


def test_heartbeats_reach_a_peer_that_stopped_reading_replication(
    transport: Transport, fake_peer: Any
) -> None:
    """Heartbeats and votes have a stream of their own: a leader whose AppendEntries
    stream is stuck (a peer busy with a huge batch) is still heard from."""
    peer = fake_peer(stuck=("data",))
    transport.set_address("n2", peer.address)
    transport.send([append(i, size=1 << 20) for i in range(1, 40)])  # 39 MB, never read
    wait_for(lambda: peer.handshakes.count("data") == 1, 5, "the data stream")
    time.sleep(0.3)  # its sender is now blocked writing
    transport.send([Message(type=MessageType.HEARTBEAT, to="n2", sender="n1", term=1)])
    wait_for(lambda: MessageType.HEARTBEAT in peer.kinds("control"), 5, "the heartbeat")
    assert MessageType.APPEND not in peer.kinds("control")


def test_sending_never_blocks_the_caller_when_a_peer_stops_reading(
    transport: Transport, fake_peer: Any
) -> None:
    """The loop sends: however full a peer's stream is, ``send`` returns at once. (Its
    writes straight to the socket once waited for room up to the stream's timeout,
    five seconds, when the buffer was exactly full.)"""
    peer = fake_peer(stuck=("data",))
    transport.set_address("n2", peer.address)
    transport.send([append(0, size=10)])
    wait_for(lambda: peer.handshakes.count("data") == 1, 5, "the data stream")
    slowest, index = 0.0, 0
    until = time.monotonic() + 4
    while time.monotonic() < until:  # the buffer fills within a second or two
        index += 1
        started = time.monotonic()
        transport.send([append(index, size=3000)])
        slowest = max(slowest, time.monotonic() - started)
    assert slowest < 0.5, f"send took {slowest:.2f} s"


def test_only_small_batches_are_written_by_the_loops_own_thread(
    transport: Transport, fake_peer: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A small batch goes straight to the idle stream from the caller (the loop): no
    hand-off. A large one is encoded, signed and written by the lane's sender thread:
    megabytes on the loop held its heartbeats back by tens of milliseconds."""
    writers: list[tuple[int, str]] = []

    def recording(messages: list[Message]) -> bytes:
        payload = frame(messages)
        writers.append((len(payload), threading.current_thread().name))
        return payload

    monkeypatch.setattr(transport_module, "frame", recording)
    peer = fake_peer()
    transport.set_address("n2", peer.address)
    transport.send([append(0)])  # opens the data stream
    wait_for(lambda: len(peer.kinds("data")) == 1, 5, "the first AppendEntries")

    def writer_of(index: int, size: int) -> str:
        writers.clear()
        transport.send([append(index, size=size)])
        wait_for(lambda: len(peer.kinds("data")) > index, 5, "the batch")
        (written,) = writers
        return written[1]

    caller = threading.current_thread().name
    assert writer_of(1, transport_module.WRITE_NOW_BYTES) == caller
    assert writer_of(2, transport_module.WRITE_NOW_BYTES + 1) != caller


def test_send_now_writes_what_fits_and_never_waits() -> None:
    for timeout in (None, 5.0):
        near, far = socket.socketpair()
        with near, far:
            near.settimeout(timeout)
            written = 0
            started = time.monotonic()
            while (sent := stream.send_now(near, b"x" * 65536)) > 0:
                written += sent
            assert time.monotonic() - started < 1
            assert written > 0
            assert far.recv(10) == b"x" * 10
            assert near.gettimeout() == timeout


def test_batches_on_one_lane_arrive_in_the_order_they_were_queued(
    transport: Transport, fake_peer: Any
) -> None:
    peer = fake_peer()
    transport.set_address("n2", peer.address)
    for index in range(1, 301):
        transport.send([append(index)])
    wait_for(lambda: len(peer.kinds("data")) == 300, 10, "every AppendEntries")
    indexes = [m.index for lane, batch in peer.received if lane == "data" for m in batch]
    assert indexes == list(range(1, 301))
    assert peer.given_address == "http://127.0.0.1:7"  # the handshake gave the sender's address


def test_a_stream_that_broke_is_opened_again_and_the_batch_resent(
    transport: Transport, fake_peer: Any
) -> None:
    peer = fake_peer(refuse_first=1)
    transport.set_address("n2", peer.address)
    transport.send([append(1)])  # opens the first stream, which the peer then breaks
    wait_for(lambda: len(peer.handshakes) == 1, 5, "the first handshake")
    time.sleep(0.5)  # the stream is broken now; the sender does not know it yet
    transport.send([append(2)])
    wait_for(lambda: 2 in [m.index for _, b in peer.received for m in b], 10, "the resend")
    assert peer.handshakes == ["data", "data"]


def test_a_heartbeat_answered_later_than_the_interval_is_signalled(
    running: Running, peers: list[Peer]
) -> None:
    """Streams carry no answers, so the node times each peer's heartbeats itself:
    ``heartbeat_interval`` fires when an answer comes later than the interval."""
    from django_raft import signals

    slow: list[dict[str, Any]] = []

    def record(**arguments: Any) -> None:
        slow.append(arguments)

    signals.heartbeat_interval.connect(record, weak=False)
    try:
        node = running.node
        term = node.status()["term"]
        now = time.monotonic()
        node._heartbeats_sent.update({"n2": now - 0.5, "n3": now + 60})  # as if sent
        for sender in ("n2", "n3"):
            peer = Peer(running, sender=sender)
            peers.append(peer)
            peer.send([rpc_message(type=MessageType.HEARTBEAT_RESPONSE, term=term, sender=sender)])
        wait_for(lambda: "n2" not in node._heartbeats_sent, 10, "n2's answer")
        wait_for(lambda: "n3" not in node._heartbeats_sent, 10, "n3's answer")
        time.sleep(0.2)  # signals are sent from the dispatcher thread
        assert [call["peer"] for call in slow] == ["n2"]
        assert slow[0]["value"] >= 0.5 and slow[0]["prev_value"] == node.heartbeat_interval
    finally:
        signals.heartbeat_interval.disconnect(record)


def test_streams_hold_no_request_thread(running: Running, peers: list[Peer]) -> None:
    """Each stream has a thread of its own: six open streams leave the node's four
    request threads (``start_node(threads=4)`` here) to its clients."""
    for sender in ("n2", "n3", "n4"):
        for lane in stream.LANES:
            peer = Peer(running, sender=sender, lane=lane)
            peers.append(peer)
            assert peer.status == 200
    assert running.status()["state"] == "leader"  # answered: a request thread was free
    assert all(not peer.closed_by_node(timeout=0.1) for peer in peers)


def test_streams_beyond_the_bound_are_closed_at_once(
    running: Running, peers: list[Peer], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(node_server, "MAX_STREAMS", 2)
    kept = [Peer(running, sender="n2"), Peer(running, sender="n3")]
    refused = Peer(running, sender="n4")
    again = Peer(running, sender="n2")  # replaces n2's own stream: not a new one
    peers.extend([*kept, refused, again])
    assert refused.closed_by_node()
    assert kept[0].closed_by_node()  # replaced by ``again``
    assert not kept[1].closed_by_node(timeout=0.2)
    assert not again.closed_by_node(timeout=0.2)


def test_a_batch_too_large_for_one_frame_goes_message_by_message(
    transport: Transport, fake_peer: Any, monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    """A batch whose frame would pass ``MAX_FRAME`` is cut into one frame per message;
    a single message too large for a frame is dropped and logged, and the lane goes on."""
    monkeypatch.setattr(stream, "MAX_FRAME", 4000)
    peer = fake_peer()
    transport.set_address("n2", peer.address)
    transport.send([append(index, size=1500) for index in (1, 2, 3)])  # about 4,600 bytes
    wait_for(lambda: len(peer.kinds("data")) == 3, 10, "the three AppendEntries")
    assert all(len(batch) == 1 for lane, batch in peer.received if lane == "data")
    transport.send([append(4, size=5000)])  # alone over the limit
    transport.send([append(5)])
    wait_for(lambda: len(peer.kinds("data")) == 4, 10, "the next AppendEntries")
    assert [m.index for _, batch in peer.received for m in batch] == [1, 2, 3, 5]
    assert "too large for a frame: dropped" in caplog.text
