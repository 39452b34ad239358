"""HTTP transport between nodes: per peer, a queue and a few senders with keep-alive sessions.

A slow or dead peer only fills its own queues (bounded: the oldest messages are dropped,
which Raft tolerates), so it never stalls the loop or the other peers. Each peer has two
lanes. Replication goes on the data lane, with ``PIPELINE_DEPTH`` sender threads, so
that many requests can be in flight: a slow round trip (a commit notice, a large batch)
does not hold back the next AppendEntries; its requests are numbered so the peer steps
them in order. Heartbeats, votes and TimeoutNow go on the control lane, with a sender
of its own and no numbering: they never wait behind a large batch, so a busy leader
is still heard from within the election timeout. Each request carries what was queued,
up to ``MAX_BATCH`` messages and ``MAX_BATCH_ENTRIES`` entries (one write to disk on
the peer for all of them). Every
request is signed with the node key (``auth``: method, path, sender, receiver, time, nonce
and body); the replies a peer produces for a request come back in the response body and
are handed to ``deliver``. Senders exist only for peers with a known address (current
members): a message to any other id is dropped, and ``forget`` stops a removed peer's.
"""

from __future__ import annotations

import logging
import secrets
import struct
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from http.client import HTTPException
from urllib.parse import urlsplit

from . import events, metrics, tls
from .auth import NODE, Signer, derive_keys
from .conf import raft_settings
from .connection import NodeConnection
from .core import Message, MessageType
from .wire import WireError, decode_message, encode_message

logger = logging.getLogger(__name__)

SEQUENCE_HEADER = "X-Raft-Sequence"
"""``<incarnation>:<n>``: the order of a sender's requests to one peer."""
CONTENT_TYPE = "application/x-protobuf"
MAX_QUEUE = 10_000
"""Messages held for one peer before the oldest are dropped."""
MAX_BATCH = 256
"""Queued messages posted together (one write to disk on the peer for all of them)."""
MAX_BATCH_ENTRIES = 1000
"""Log entries posted together at most (beyond the first message), so that the peer's
write, and its loop turn, stay short."""
PIPELINE_DEPTH = 2
"""Requests in flight to one peer at a time."""
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
GAP_WAIT = 0.05
"""Seconds a request waits for the one sent before it (lost, it is skipped)."""
MAX_REPLY = 16 << 20
"""Bytes of replies read from one answer at most (they are a few acknowledgements)."""
BATCH_PATH = "batch"
"""The route for several framed messages at once."""

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
    """The messages waiting on one lane to one peer, and the sender threads that post them.

    ``sequenced``: requests are numbered (``SEQUENCE_HEADER``) so the peer steps them in
    the order they were taken.
    """

    def __init__(
        self, transport: Transport, peer: str, lane: str, depth: int, sequenced: bool
    ) -> None:
        self.queue: deque[Message] = deque(maxlen=MAX_QUEUE)
        self.wakeup = threading.Condition()
        self.closed = threading.Event()
        self.sequenced = sequenced
        self.sequence = 0
        self.senders = [
            _PeerSender(transport, peer, self, f"{lane}-{number}") for number in range(depth)
        ]
        for sender in self.senders:
            sender.start()

    def put(self, messages: list[Message]) -> None:
        with self.wakeup:
            self.queue.extend(messages)
            self.wakeup.notify()

    def take(self, stopped: threading.Event) -> tuple[list[Message], int | None] | None:
        """Wait for messages; return a batch of them in order, and its sequence number
        (None when the lane is not sequenced); None once stopped."""
        with self.wakeup:
            while not self.queue and not stopped.is_set() and not self.closed.is_set():
                self.wakeup.wait(0.5)
            if stopped.is_set() or not self.queue:
                return None  # stopped; or closed, with what was queued sent
            batch = [self.queue.popleft()]
            entries = len(batch[0].entries)
            while self.queue and len(batch) < MAX_BATCH:
                more = len(self.queue[0].entries)
                if more and entries + more > MAX_BATCH_ENTRIES:
                    break
                batch.append(self.queue.popleft())
                entries += more
            if self.queue:
                self.wakeup.notify()  # another sender may take the rest
            if not self.sequenced:
                return batch, None
            self.sequence += 1
            return batch, self.sequence

    def wake_all(self) -> None:
        with self.wakeup:
            self.wakeup.notify_all()


class _PeerSender(threading.Thread):
    """Posts batches taken from one peer's queue over its own keep-alive connection."""

    def __init__(self, transport: Transport, peer: str, source: _PeerQueue, name: str) -> None:
        super().__init__(name=f"raft-send-{peer}-{name}", daemon=True)
        self.transport = transport
        self.peer = peer
        self.source = source
        self.connection: NodeConnection | None = None

    def run(self) -> None:
        transport = self.transport
        while True:
            taken = self.source.take(transport.stopped)
            if taken is None:
                break
            self._post(*taken)
        if self.connection is not None:
            self.connection.close()

    def _post(self, batch: list[Message], sequence: int | None) -> None:
        transport = self.transport
        address = transport.addresses.get(self.peer)
        if not address:
            return
        if len(batch) == 1:
            body, path = encode_message(batch[0]), PATHS[batch[0].type]
        else:
            body, path = frame(batch), BATCH_PATH
        url = f"{address.rstrip('/')}/{transport.prefix}rpc/{path}"
        url_path = urlsplit(url).path
        headers = transport.signer.headers("POST", url_path, self.peer, body)
        headers["Content-Type"] = CONTENT_TYPE
        if sequence is not None:
            headers[SEQUENCE_HEADER] = f"{transport.incarnation}:{sequence}"
        connection = self.connection
        if connection is None or connection.address != address:
            if connection is not None:
                connection.close()
            connection = self.connection = NodeConnection(
                address, transport.timeout, transport.tls_context
            )
        started = time.monotonic()
        try:
            status, content = connection.post(url_path, body, headers, MAX_REPLY)
        except (OSError, HTTPException, ValueError) as error:
            logger.debug("raft: %s unreachable: %s", self.peer, error)
            events.peer_failed(transport.node_id, self.peer, str(error) or type(error).__name__)
            return
        elapsed = time.monotonic() - started
        if transport.on_round_trip is not None:
            transport.on_round_trip(self.peer, elapsed)
        if status != 200:
            logger.warning("raft: %s answered %s to %s", self.peer, status, url)
            return
        try:
            replies = unframe(content)
        except WireError as error:
            logger.warning("raft: bad reply from %s: %s", self.peer, error)
            return
        if replies:
            transport.deliver(replies)


class Transport:
    """Sends the core's messages to peers over HTTP and feeds their replies back."""

    def __init__(
        self,
        node_id: str,
        secret: str,
        prefix: str,
        timeout: float,
        deliver: Callable[[list[Message]], None],
        on_round_trip: Callable[[str, float], None] | None = None,
    ) -> None:
        self.node_id = node_id
        self.signer = Signer(derive_keys(secret).node, NODE, node_id)
        self.tls_context = tls.client_context(
            raft_settings.TLS_CERT, raft_settings.TLS_KEY, raft_settings.TLS_CA
        )
        self.prefix = prefix
        self.timeout = timeout
        self.deliver = deliver
        self.on_round_trip = on_round_trip
        self.addresses: dict[str, str] = {}
        self.incarnation = secrets.token_hex(8)
        self.stopped = threading.Event()
        self._peers: dict[str, tuple[_PeerQueue, _PeerQueue]] = {}
        """Per peer: its data lane and its control lane."""
        self.forgotten: set[str] = set()
        """Removed members: never sent to again (a removed id never rejoins)."""

    def set_address(self, node_id: str, address: str) -> None:
        """Record where ``node_id`` is reached (from the membership entries' context)."""
        if address:
            self.addresses[node_id] = address

    def forget(self, node_id: str) -> None:
        """Stop sending to ``node_id`` (removed from the cluster).

        What is already queued is still sent (it may tell the node of its removal);
        then its senders end, and nothing more is queued for it.
        """
        self.forgotten.add(node_id)
        for queue in self._peers.pop(node_id, ()):
            queue.closed.set()
            queue.wake_all()

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
                    _PeerQueue(self, peer, "data", PIPELINE_DEPTH, sequenced=True),
                    _PeerQueue(self, peer, "control", 1, sequenced=False),
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
            queue.wake_all()
        for queue in lanes:
            for sender in queue.senders:
                sender.join(timeout=2)


class Sequencer:
    """Hands each sender's requests to the loop in the order they were sent.

    With several requests in flight to a peer, a later one may arrive first; stepped
    out of order, AppendEntries would be rejected and replication would fall back to
    probing. A request that arrives early waits (up to ``GAP_WAIT``) for the ones
    before it; a sender that restarts has a new incarnation and starts afresh.
    """

    def __init__(self, gap_wait: float = GAP_WAIT) -> None:
        self.gap_wait = gap_wait
        self._changed = threading.Condition()
        self._next: dict[str, tuple[str, int]] = {}

    def admit(self, sender: str, tag: str | None, deliver: Callable[[], None]) -> None:
        """Call ``deliver`` once the requests ``sender`` sent before this one were."""
        incarnation, _, number = (tag or "").partition(":")
        if not incarnation or not number.isdigit():
            deliver()
            return
        sequence = int(number)
        deadline = time.monotonic() + self.gap_wait
        with self._changed:
            while True:
                known, expected = self._next.get(sender, (incarnation, sequence))
                remaining = deadline - time.monotonic()
                if known != incarnation or sequence <= expected or remaining <= 0:
                    break
                self._changed.wait(remaining)
            try:
                deliver()
            finally:
                if known != incarnation or sequence + 1 > expected:
                    self._next[sender] = (incarnation, sequence + 1)
                self._changed.notify_all()
