"""Transport between nodes: per peer and lane, a queue and a sender thread with a stream.

A node sends a peer its messages over two long-lived connections (``stream``): the
*data* lane carries replication (AppendEntries, snapshots, and their answers), the
*control* lane heartbeats, votes and TimeoutNow, so they never wait behind a large
batch and a busy leader is still heard from within the election timeout. Messages
on one lane arrive in the order they were sent; the two lanes may overtake each
other, which Raft tolerates for the control messages. A batch is written as soon as
it is queued: nothing waits for an answer, so any number of batches are in flight
(pipelining), and the peer's answers come back on the peer's own streams. Each frame
carries what was queued, up to ``MAX_BATCH`` messages and ``MAX_BATCH_ENTRIES``
entries (one write to disk on the peer for all of them).

A slow or dead peer only fills its own queues (bounded: the oldest messages are
dropped, which Raft tolerates), so it never stalls the loop or the other peers. A
stream that breaks is opened again for the next batch; the batch that met the break
is sent once more on the new stream (Raft messages may arrive twice). Unacknowledged
data older than ``STALL_TIMEOUT`` breaks a stream (``TCP_USER_TIMEOUT``), so a peer
that vanished without closing its connections is noticed. Senders exist only for
peers with a known address (current members): a message to any other id is dropped,
and ``forget`` stops a removed peer's.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import struct
import threading
from collections import deque
from collections.abc import Iterable
from http.client import HTTPException

from ..conf import raft_settings
from ..core import Message, MessageType
from ..protocol import stream, tls
from ..protocol.auth import NODE, NONCE_HEADER, Signer, derive_keys
from ..protocol.connection import NodeConnection, peer_closed
from ..protocol.wire import WireError, decode_message, encode_message
from . import events, metrics

logger = logging.getLogger(__name__)

CONTENT_TYPE = "application/x-protobuf"
MAX_QUEUE = 10_000
"""Messages held for one peer before the oldest are dropped."""
MAX_BATCH = 256
"""Queued messages posted together (one write to disk on the peer for all of them)."""
MAX_BATCH_ENTRIES = 1000
"""Log entries posted together at most (beyond the first message), so that the peer's
write, and its loop turn, stay short."""
CONTROL = frozenset(
    {
        MessageType.HEARTBEAT,
        MessageType.HEARTBEAT_RESPONSE,
        MessageType.PRE_VOTE,
        MessageType.PRE_VOTE_RESPONSE,
        MessageType.REQUEST_VOTE,
        MessageType.REQUEST_VOTE_RESPONSE,
        MessageType.TIMEOUT_NOW,
    }
)
"""The messages sent on the control lane: small, and safe to step out of order."""
KEEPALIVE = 1.0
"""Seconds a stream may stay idle before its sender writes an empty frame: the peer
closes a stream it has not heard from for ``server.CONNECTION_TIMEOUT``."""
STALL_TIMEOUT = 5.0
"""Seconds sent data may stay unacknowledged by the peer's kernel before the stream is
broken (``TCP_USER_TIMEOUT``), and the longest a write may block."""
RETRY_DELAY = 0.05
"""Seconds a sender waits after failing to open a stream before it tries again (what
was queued meanwhile is kept, up to ``MAX_QUEUE``)."""
MAX_HANDSHAKE_REPLY = 4096
"""Bytes of a peer's answer to a stream's handshake read at most."""
WRITE_NOW_BYTES = 64 << 10
"""Bytes of entry and snapshot data a batch may carry at most to be written by the loop's own thread
(``_PeerSender.write_now``): encoding, signing and copying a larger one would hold the
loop (megabytes cost it tens of milliseconds, and its heartbeats with them), so the
lane's sender thread writes it."""
BATCH_PATH = "batch"
"""The route for several framed messages at once (``frame``)."""

PATHS = {
    MessageType.APPEND: "appendEntries",
    MessageType.HEARTBEAT: "appendEntries",
    MessageType.APPEND_RESPONSE: "appendEntriesResponse",
    MessageType.HEARTBEAT_RESPONSE: "appendEntriesResponse",
    MessageType.REQUEST_VOTE: "requestVote",
    MessageType.PRE_VOTE: "requestVote",
    MessageType.REQUEST_VOTE_RESPONSE: "requestVoteResponse",
    MessageType.PRE_VOTE_RESPONSE: "requestVoteResponse",
    MessageType.SNAPSHOT: "snapshot",
    MessageType.SNAPSHOT_RESPONSE: "snapshotResponse",
    MessageType.TIMEOUT_NOW: "timeoutNow",
    MessageType.READ_INDEX: "readIndex",
    MessageType.READ_INDEX_RESPONSE: "readIndexResponse",
}
"""The route each message kind is posted to (go-raft's paths, and one per response)."""


def frame(messages: Iterable[Message]) -> bytes:
    """Concatenate encoded messages, each preceded by its 4-byte big-endian length."""
    parts = []
    for message in messages:
        data = encode_message(message)
        parts.append(struct.pack(">I", len(data)))
        parts.append(data)
    return b"".join(parts)


def _payload_bytes(messages: Iterable[Message]) -> int:
    """Bytes of entry and snapshot data the messages carry."""
    return sum(
        len(message.data) + sum(len(entry.data) for entry in message.entries)
        for message in messages
    )


def unframe(data: bytes) -> list[Message]:
    """Split what ``frame`` produced; raise ``WireError`` on anything malformed."""
    messages = []
    position = 0
    while position < len(data):
        if position + 4 > len(data):
            raise WireError("truncated frame header")
        (length,) = struct.unpack_from(">I", data, position)
        position += 4
        if position + length > len(data):
            raise WireError("truncated frame")
        messages.append(decode_message(data[position : position + length]))
        position += length
    return messages


class _PeerQueue:
    """The messages waiting on one lane to one peer, and the thread that streams them."""

    def __init__(self, transport: Transport, peer: str, lane: str) -> None:
        self.queue: deque[Message] = deque(maxlen=MAX_QUEUE)
        self.wakeup = threading.Condition()
        self.closed = threading.Event()
        self.sender = _PeerSender(transport, peer, lane, self)
        self.sender.start()

    def put(self, messages: list[Message]) -> None:
        """Queue messages, or write them to the stream at once when nothing is ahead of
        them and the stream takes them without blocking (see ``_PeerSender.write_now``)."""
        with self.wakeup:
            if not self.queue and not self.sender.busy and self.sender.write_now(messages):
                return
            self.queue.extend(messages)
            self.wakeup.notify()

    def take(self, stopped: threading.Event, idle: float) -> list[Message] | None:
        """Wait up to ``idle`` seconds for messages; return a batch of them in order
        (empty if none came), or None once stopped or closed with nothing left."""
        with self.wakeup:
            if not self.queue and not stopped.is_set() and not self.closed.is_set():
                self.wakeup.wait(idle)
            if stopped.is_set() or (self.closed.is_set() and not self.queue):
                return None
            if not self.queue:
                return []
            batch = [self.queue.popleft()]
            entries = len(batch[0].entries)
            while self.queue and len(batch) < MAX_BATCH:
                more = len(self.queue[0].entries)
                if more and entries + more > MAX_BATCH_ENTRIES:
                    break
                batch.append(self.queue.popleft())
                entries += more
            self.sender.busy = True
            return batch

    def wake(self) -> None:
        with self.wakeup:
            self.wakeup.notify_all()


class _PeerSender(threading.Thread):
    """Writes the batches taken from one lane's queue to a stream it keeps open.

    The loop may write a batch itself (``write_now``), saving the hand-off to this
    thread on the path of every command; whatever the socket does not take at once
    is left for this thread (``_backlog``), which writes it before anything else.
    """

    def __init__(self, transport: Transport, peer: str, lane: str, source: _PeerQueue) -> None:
        super().__init__(name=f"raft-send-{peer}-{lane}", daemon=True)
        self.transport = transport
        self.peer = peer
        self.lane = lane
        self.source = source
        self.busy = False
        """Whether this thread holds a batch it took and has not written yet."""
        self._lock = threading.Lock()
        """Held while the stream is written to, opened or closed."""
        self._socket: socket.socket | None = None
        self._writer: stream.FrameWriter | None = None
        self._address = ""
        self._backlog = b""

    def run(self) -> None:
        transport = self.transport
        try:
            while True:
                batch = self.source.take(transport.stopped, KEEPALIVE)
                if batch is None:
                    break
                try:
                    if batch:
                        self._send_batch(batch)
                    elif self._socket is not None:
                        self._send(b"")  # idle (or a backlog): tell the peer it lives
                except Exception:  # never let the lane die: Raft sends again what is lost
                    logger.exception("raft: sending to %s failed", self.peer)
                finally:
                    self.busy = False
        finally:
            with self._lock:
                self._close()

    def _send_batch(self, batch: list[Message]) -> None:
        """Write a batch as one frame, or message by message when it is too large for one."""
        payload = frame(batch)
        if len(payload) <= stream.MAX_FRAME:
            self._send(payload)
            return
        for message in batch:
            payload = frame([message])
            if len(payload) > stream.MAX_FRAME:
                logger.error(
                    "raft: a %s to %s of %d bytes is too large for a frame: dropped",
                    message.type.value,
                    self.peer,
                    len(payload),
                )
                continue
            self._send(payload)

    def write_now(self, messages: list[Message]) -> bool:
        """Write a batch to the open stream without blocking; False: queue it instead.

        Called by ``put`` with the queue empty and this thread idle, so nothing queued
        is overtaken. Only plain TCP: a TLS socket cannot be written to without
        blocking. What the socket does not take at once becomes the backlog. Only small
        batches (``WRITE_NOW_BYTES``): the caller is the loop.
        """
        if _payload_bytes(messages) > WRITE_NOW_BYTES:
            return False
        if not self._lock.acquire(blocking=False):
            return False
        try:
            sock, writer = self._socket, self._writer
            if (
                sock is None
                or writer is None
                or self._backlog
                or isinstance(sock, ssl.SSLSocket)
                or self.transport.addresses.get(self.peer, "") != self._address
            ):
                return False
            if peer_closed(sock):
                self._close()
                return False
            payload = frame(messages)
            if len(payload) > stream.MAX_FRAME:
                return False  # the sender thread cuts it up
            data = writer.frame(payload)
            try:
                sent = stream.send_now(sock, data)
            except OSError:
                self._close()  # the stream is gone: the batch goes to a new one
                return False
            if sent < len(data):
                self._backlog = data[sent:]
                self.source.wakeup.notify()
            return True
        finally:
            self._lock.release()

    def _send(self, payload: bytes) -> None:
        with self._lock:
            address = self.transport.addresses.get(self.peer, "")
            sock = self._socket
            if address != self._address or (sock is not None and peer_closed(sock)):
                self._close()  # moved, or the peer closed the stream (it never writes on it)
            fresh = self._socket is None
            for attempt in range(2):
                if self._socket is None and not self._open(address):
                    return
                assert self._socket is not None and self._writer is not None
                try:
                    if self._backlog:
                        self._socket.sendall(self._backlog)
                        self._backlog = b""
                    self._socket.sendall(self._writer.frame(payload))
                    return
                except OSError as error:
                    self._close()
                    if fresh or attempt:
                        self._failed(error)
                        return
                    fresh = True  # the stream broke since the last batch: one more try

    def _open(self, address: str) -> bool:
        """Open a stream to ``address``; on failure, report it and wait a little."""
        transport = self.transport
        if not address or transport.stopped.is_set():
            return False
        path = f"/{transport.prefix}rpc/{stream.STREAM_PATH}"
        body = f"{self.lane}\n{transport.addresses.get(transport.node_id, '')}".encode()
        headers = transport.signer.headers("POST", path, self.peer, body)
        headers["Content-Type"] = "text/plain"
        connection = NodeConnection(
            address, STALL_TIMEOUT, transport.tls_context, connect_timeout=transport.timeout
        )
        try:
            status, content = connection.post(path, body, headers, MAX_HANDSHAKE_REPLY)
            if status != 200 or content != stream.PROTOCOL:
                raise ConnectionError(f"stream refused: {status} {content[:200]!r}")
            sock = connection.detach()
            if hasattr(socket, "TCP_USER_TIMEOUT") and sock.family != socket.AF_UNIX:
                sock.setsockopt(
                    socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, int(STALL_TIMEOUT * 1000)
                )
            sock.settimeout(STALL_TIMEOUT)
        except (OSError, HTTPException, ValueError) as error:
            connection.close()
            self._failed(error)
            transport.stopped.wait(RETRY_DELAY)
            return False
        nonce = headers[NONCE_HEADER]
        key = stream.stream_key(
            transport.signer.key, nonce, transport.node_id, self.peer, self.lane
        )
        self._socket, self._writer, self._address = sock, stream.FrameWriter(key), address
        return True

    def _failed(self, error: BaseException) -> None:
        logger.debug("raft: %s unreachable: %s", self.peer, error)
        events.peer_failed(self.transport.node_id, self.peer, str(error) or type(error).__name__)

    def _close(self) -> None:
        """Close the stream (what is in its backlog is lost); hold ``_lock``."""
        if self._socket is not None:
            with contextlib.suppress(OSError):
                self._socket.close()
        self._socket = self._writer = None
        self._address = ""
        self._backlog = b""


class Transport:
    """Sends the core's messages to peers over streams; their answers come as requests."""

    def __init__(
        self,
        node_id: str,
        secret: str,
        prefix: str,
        timeout: float,
    ) -> None:
        self.node_id = node_id
        self.signer = Signer(derive_keys(secret).node, NODE, node_id)
        self.tls_context = tls.client_context(
            raft_settings.TLS_CERT, raft_settings.TLS_KEY, raft_settings.TLS_CA
        )
        self.prefix = prefix
        self.timeout = timeout
        self.addresses: dict[str, str] = {}
        self.stopped = threading.Event()
        self._peers: dict[str, tuple[_PeerQueue, _PeerQueue]] = {}
        """Per peer: its data lane and its control lane."""
        self.forgotten: set[str] = set()
        """Removed members: never sent to again (a removed id never rejoins)."""

    def set_address(self, node_id: str, address: str) -> None:
        """Record where ``node_id`` is reached (from the membership entries' context)."""
        if address:
            self.addresses[node_id] = address

    def learn_address(self, node_id: str, address: str) -> None:
        """Record the address a peer gave when it opened a stream, unless one is known.

        A node that joins, or lost its data, learns the others' addresses from the log
        only once entries reach it; until then it answers the leader at the address the
        leader gave. The log's addresses always win: they are set, this only fills in.
        """
        if node_id not in self.forgotten and node_id != self.node_id:
            self.addresses.setdefault(node_id, address)

    def forget(self, node_id: str) -> None:
        """Stop sending to ``node_id`` (removed from the cluster).

        What is already queued is still sent (it may tell the node of its removal);
        then its senders end, and nothing more is queued for it.
        """
        self.forgotten.add(node_id)
        for queue in self._peers.pop(node_id, ()):
            queue.closed.set()
            queue.wake()

    def send(self, messages: Iterable[Message]) -> None:
        """Queue messages for their peers; never blocks on the network.

        A message to an id with no known address (not a member) is dropped: no sender
        thread is ever started for it.
        """
        by_peer: dict[str, list[Message]] = {}
        for message in messages:
            by_peer.setdefault(message.to, []).append(message)
            metrics.count_sent(message.type.value)
        for peer, batch in by_peer.items():
            lanes = self._peers.get(peer)
            if lanes is None:
                if self.stopped.is_set():
                    return
                if peer not in self.addresses or peer in self.forgotten or peer == self.node_id:
                    logger.debug(
                        "raft: %d message(s) for unknown node %r dropped", len(batch), peer
                    )
                    continue
                lanes = self._peers[peer] = (
                    _PeerQueue(self, peer, "data"),
                    _PeerQueue(self, peer, "control"),
                )
            data, control = lanes
            urgent = [message for message in batch if message.type in CONTROL]
            if urgent:
                control.put(urgent)
            if len(urgent) < len(batch):
                data.put([message for message in batch if message.type not in CONTROL])

    def stop(self) -> None:
        """Stop every sender thread."""
        self.stopped.set()
        lanes = [queue for pair in self._peers.values() for queue in pair]
        for queue in lanes:
            queue.wake()
        for queue in lanes:
            queue.sender.join(timeout=2)
