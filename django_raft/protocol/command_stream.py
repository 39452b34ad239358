"""Commands over a stream: one long-lived connection per client process and node.

``django_raft.do()`` sends the commands of all a process's threads to a node on one
connection, opened once with a POST to ``<prefix>command/stream`` signed like any
client request. The node answers ``200`` with ``PROTOCOL``, a space and its id; from
then on the client writes frames of requests and the node writes frames of answers,
framed and tagged as the streams between nodes are (``stream``), each payload a JSON
array::

    requests: [[id, body], ...]     body: what the ``command`` route takes
    answers:  [[id, answer], ...]   answer: what the ``command`` route answers

The tags' keys come from the signing key, the handshake's nonce, the client's name, the
node's id and the direction, so frames copied from one stream fail on any other stream
or node. Commands that several threads send at once travel in one frame and are
proposed in one turn of the loop; answers come back as commands are applied. A command
costs no HTTP request on either side. Plain HTTP only: over TLS, a client sends one
request per command (a TLS connection is not read and written by two threads at once).
A coroutine's command (``acall``) waits on an asyncio future that the reader thread
completes: no thread waits for it.

An empty frame keeps a stream alive; the node answers one from the client with one of
its own. A client waiting for answers pings (``PING``) and breaks a stream whose node
has been silent for ``PROBE`` seconds: a paused or cut-off node costs its commands less
than a second before the client turns to another member, not the caller's deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import select
import socket
import threading
import time
from collections.abc import Callable
from http.client import HTTPException
from typing import Any

from ..exceptions import CommandTimeoutError, InvalidRequestError
from . import stream
from .answers import failure
from .auth import ANY_NODE, NONCE_HEADER, Signer
from .connection import NodeConnection, NotSentError, shut

__all__ = [
    "MAX_IN_FLIGHT",
    "PATH",
    "PROTOCOL",
    "Abandoned",
    "CommandStream",
    "StreamBroken",
    "StreamRefused",
    "stream_keys",
]

PATH = "command/stream"
"""The client route a command stream opens on (``<prefix>command/stream``)."""
PROTOCOL = b"django-raft-commands/1"
"""The start of a node's answer that accepts a command stream (then a space, its id)."""
MAX_IN_FLIGHT = 1024
"""Commands of one stream a node runs at once; it reads no more of the stream until
one is answered."""
MAX_REQUEST_FRAME = 4 << 20
"""Bytes of one frame of requests at most (the ``command`` route's body limit)."""
MAX_ANSWER_FRAME = 64 << 20
"""Bytes of one frame of answers a client reads at most."""
KEEPALIVE = 1.0
"""Seconds a client's stream may stay silent before it writes an empty frame (the node
closes a stream silent for five)."""
PING = 0.2
"""Seconds a client waits for answers without hearing from the node before it writes
an empty frame, which the node answers with an empty frame. The client also pings once
right after the handshake: a node that answers is one it may probe (``PROBE``)."""
PROBE = 0.75
"""Seconds a client waits, with commands in flight, for any frame from a node that
answers pings (``PING``); then the node counts as stopped (paused, cut off) and the
stream is broken: its commands may have been applied, and a client with a session
sends them to another member."""
_CHECK = 0.05
"""Seconds between two looks at whether a caller gave up waiting (``call``)."""
IDLE_CLOSE = 30.0
"""Seconds without a command after which a client closes its stream."""
SEND_TIMEOUT = 5.0
"""Seconds a write to the node may block."""
CONNECT_TIMEOUT = 1.0
"""Seconds to open the connection."""
HANDSHAKE_TIMEOUT = 1.0
"""Seconds a sender waits for a node to accept a command stream. A live node accepts at
once; a paused or stuck one is given up on (the command was not sent) rather than
waited on for the caller's whole deadline."""
MAX_HANDSHAKE_ANSWER = 4096
TIMED_OUT = "not committed and applied in time; it may still be applied"


class StreamRefused(Exception):
    """The node serves no command stream (an older version, or TLS): send requests."""


class StreamBroken(Exception):
    """The stream broke. ``sent``: whether the command had been written (it may then
    have been applied); when False it certainly was not."""

    def __init__(self, message: str, sent: bool) -> None:
        super().__init__(message)
        self.sent = sent


class Abandoned(StreamBroken):
    """The caller stopped waiting for a command it had sent (``call``'s ``abandon``):
    it may still be applied."""

    def __init__(self, message: str) -> None:
        super().__init__(message, sent=True)


def stream_keys(key: bytes, nonce: str, client: str, node_id: str) -> tuple[bytes, bytes]:
    """The keys of a command stream's two directions: requests, then answers."""
    return (
        stream.stream_key(key, nonce, client, node_id, "commands"),
        stream.stream_key(key, nonce, client, node_id, "answers"),
    )


class _Waiter:
    """A command waiting for its answer: a thread waits on ``event``; an asyncio task
    gets ``notify`` called (from the stream's reader thread) instead."""

    __slots__ = ("answer", "event", "notify", "sent")

    def __init__(self, notify: Callable[[], None] | None = None) -> None:
        self.event = threading.Event()
        self.notify = notify
        self.answer: dict[str, Any] | None = None
        self.sent = True

    def done(self) -> None:
        self.event.set()
        if self.notify is not None:
            self.notify()


class CommandStream:
    """A process's stream of commands to one node, shared by its threads.

    ``call`` writes a command and waits for its answer. Threads that call at once share
    a frame: while one writes, the others' requests queue, and the next writer takes
    them all. A thread of the stream reads the answers, and writes an empty frame when
    the stream has been silent for ``KEEPALIVE``; it closes the stream after
    ``IDLE_CLOSE`` without a command.
    """

    def __init__(
        self, address: str, signer: Signer, prefix: str, timeout: float = SEND_TIMEOUT
    ) -> None:
        self.address = address
        self.closed = False
        self.never_answered = False
        """Whether the stream broke with commands sent and no answer ever received (a
        proxy between client and node that does not pass a stream on, say)."""
        self._answered = False
        self._probing = False
        """Whether the node answers pings (it answered one)."""
        self._last_heard = time.monotonic()
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._pending: list[tuple[int, bytes]] = []
        self._waiting: dict[int, _Waiter] = {}
        self._ids = itertools.count(1)
        self._last_used = self._last_sent = time.monotonic()
        self._sock, self._writer, self._parser = self._open(
            signer, f"/{prefix}{PATH}", min(timeout, SEND_TIMEOUT)
        )
        self._reader = threading.Thread(
            target=self._read, name=f"raft-commands-{address}", daemon=True
        )
        self._reader.start()
        self._keepalive()  # a ping: a node that answers it can be probed

    def _open(
        self, signer: Signer, path: str, timeout: float
    ) -> tuple[socket.socket, stream.FrameWriter, stream.FrameParser]:
        """Shake hands within ``timeout``; raise ``NotSentError`` when the node cannot be
        reached or does not answer, ``StreamRefused`` when it serves no command stream."""
        headers = signer.headers("POST", path, ANY_NODE, b"")
        headers["Content-Type"] = "text/plain"
        connection = NodeConnection(
            self.address,
            timeout,
            None,
            connect_timeout=min(timeout, CONNECT_TIMEOUT),
            resend=False,
        )
        try:
            status, content = connection.post(path, b"", headers, MAX_HANDSHAKE_ANSWER)
            accepted, _, node_id = content.partition(b" ")
            if status != 200 or accepted != PROTOCOL or not node_id:
                raise StreamRefused(f"{status} {content[:200]!r}")
            sock = connection.detach()
        except (NotSentError, StreamRefused):
            connection.close()
            raise
        except (OSError, HTTPException, ValueError) as error:
            connection.close()
            raise NotSentError(f"no command stream to {self.address}: {error}") from error
        if hasattr(socket, "TCP_USER_TIMEOUT") and sock.family != socket.AF_UNIX:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, int(SEND_TIMEOUT * 1000))
        sock.settimeout(SEND_TIMEOUT)
        up, down = stream_keys(
            signer.key, headers[NONCE_HEADER], signer.sender, node_id.decode("utf-8", "replace")
        )
        return sock, stream.FrameWriter(up), stream.FrameParser(down, MAX_ANSWER_FRAME)

    def call(
        self,
        body: dict[str, Any],
        timeout: float,
        abandon: Callable[[], str] | None = None,
    ) -> dict[str, Any]:
        """Send a command body; its answer, or a ``CommandTimeoutError`` answer after
        ``timeout``. Raise ``StreamBroken`` when the stream broke first, ``Abandoned``
        as soon as ``abandon()`` (asked every ``_CHECK`` seconds) gives a reason to stop
        waiting, and ``TypeError`` when the body is not JSON."""
        waiter = _Waiter()
        number = self._enqueue(body, waiter)
        if isinstance(number, dict):
            return number
        self._flush()
        deadline = time.monotonic() + timeout
        left = timeout
        while not waiter.event.wait(min(_CHECK, left) if abandon else left):
            left = deadline - time.monotonic()
            reason = abandon() if abandon and left > 0 else ""
            if left <= 0 or reason:
                with self._lock:
                    self._waiting.pop(number, None)
                if waiter.event.is_set():
                    break  # answered meanwhile
                if reason:
                    raise Abandoned(reason)
                return failure(CommandTimeoutError, TIMED_OUT)
        return self._answer(waiter)

    async def acall(self, body: dict[str, Any], timeout: float) -> dict[str, Any]:
        """``call`` for a coroutine: the answer completes an asyncio future from the
        reader thread (``loop.call_soon_threadsafe``), so no thread waits for it. The
        frame is written from the event loop at the end of its turn, or left to the
        thread writing at that moment; a write blocks only when the socket's buffer is
        full (a node that stopped reading), for ``SEND_TIMEOUT`` at most. Cancelled,
        the command is no longer awaited (it may still be applied)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()

        def resolve() -> None:
            if not future.done():
                future.set_result(None)

        def notify() -> None:
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(resolve)

        waiter = _Waiter(notify)
        number = self._enqueue(body, waiter)
        if isinstance(number, dict):
            return number
        # Written once this turn of the loop ends: the commands of every coroutine that
        # calls in this turn go in one frame, as those of threads that call at once do.
        loop.call_soon(self._flush, False)
        try:
            await asyncio.wait_for(future, timeout)
        except TimeoutError:
            with self._lock:
                self._waiting.pop(number, None)
            if not waiter.event.is_set():
                return failure(CommandTimeoutError, TIMED_OUT)
        except asyncio.CancelledError:
            with self._lock:
                self._waiting.pop(number, None)
            raise
        return self._answer(waiter)

    def _enqueue(self, body: dict[str, Any], waiter: _Waiter) -> int | dict[str, Any]:
        """Queue a command for the next frame: its number, or the failure answer of a
        body over the frame limit. Raise ``StreamBroken`` (not sent) when the stream is
        closed, ``TypeError`` when the body is not JSON."""
        encoded = json.dumps(body).encode()  # outside the lock: threads encode at once
        if len(encoded) + 32 > MAX_REQUEST_FRAME:
            return failure(
                InvalidRequestError,
                f"Request Entity Too Large: request body over {MAX_REQUEST_FRAME} bytes",
            )
        with self._lock:
            if self.closed:
                raise StreamBroken(f"the stream to {self.address} is closed", sent=False)
            number = next(self._ids)
            item = b"[%d,%s]" % (number, encoded)
            if not self._waiting:  # the node's silence counts from the first in flight
                self._last_heard = max(self._last_heard, time.monotonic())
            self._waiting[number] = waiter
            self._pending.append((number, item))
            self._last_used = time.monotonic()
        return number

    def _answer(self, waiter: _Waiter) -> dict[str, Any]:
        if waiter.answer is None:
            raise StreamBroken(f"the stream to {self.address} broke", sent=waiter.sent)
        return waiter.answer

    def _flush(self, wait: bool = True) -> None:
        """Write what is queued, in frames of at most ``MAX_REQUEST_FRAME`` bytes.

        Whoever holds the write lock writes everything queued, again after releasing it
        if more came meanwhile; so a caller that does not ``wait`` for the lock (a
        coroutine) leaves its command to the writer at work."""
        while self._send_lock.acquire(blocking=wait):
            try:
                self._write()
            finally:
                self._send_lock.release()
            with self._lock:
                if not self._pending or self.closed:
                    return

    def _write(self) -> None:
        """Write the queued commands; hold ``_send_lock``."""
        with self._lock:
            batch, self._pending = self._pending, []
        if not batch or self.closed:
            return
        frames, size, start = [], 2, 0
        for i, (_, item) in enumerate(batch):
            if size + len(item) + 1 > MAX_REQUEST_FRAME:
                frames.append(batch[start:i])
                start, size = i, 2
            size += len(item) + 1
        frames.append(batch[start:])
        for k, part in enumerate(frames):
            payload = b"[" + b",".join(item for _, item in part) + b"]"
            try:
                self._sock.sendall(self._writer.frame(payload))
            except OSError as error:
                unsent = {number for later in frames[k:] for number, _ in later}
                self._break(f"writing to {self.address} failed: {error}", unsent)
                return
        self._last_sent = time.monotonic()

    def _keepalive(self) -> None:
        if not self._send_lock.acquire(blocking=False):
            return  # a writer is at work: the stream is not silent
        try:
            if not self.closed:
                self._sock.sendall(self._writer.frame(b""))
                self._last_sent = time.monotonic()
        except OSError as error:
            self._break(f"writing to {self.address} failed: {error}", set())
        finally:
            self._send_lock.release()
        with self._lock:
            queued = bool(self._pending) and not self.closed
        if queued:  # a coroutine's command, queued while this wrote (it does not wait)
            self._flush()

    def _read(self) -> None:
        """Read answers until the stream closes; keep it alive while it is used."""
        poller = select.poll()
        poller.register(self._sock, select.POLLIN)
        try:
            while not self.closed:
                ready = poller.poll((PING if self._probing else KEEPALIVE) * 1000)
                now = time.monotonic()
                if ready:
                    data = self._sock.recv(1 << 16)
                    if not data:
                        self._break(f"{self.address} closed the stream", set())
                        return
                    self._last_heard = now
                    for payload in self._parser.feed(data):
                        if payload:
                            self._deliver(payload)
                        else:
                            self._probing = True
                with self._lock:
                    waiting = bool(self._waiting)
                    idle = not waiting and now - self._last_used > IDLE_CLOSE
                if idle:
                    self._break("idle", set())
                    return
                silent = now - self._last_heard
                if self._probing and waiting and silent > PROBE:
                    self._break(f"{self.address} sent nothing for {silent:.2f} s", set())
                    return
                if waiting and silent >= PING and now - self._last_sent >= PING:
                    self._keepalive()
                    continue
                if now - self._last_sent >= KEEPALIVE:
                    self._keepalive()
        except (OSError, ValueError, stream.FrameError) as error:
            self._break(f"reading from {self.address} failed: {error}", set())

    def _deliver(self, payload: bytes) -> None:
        self._answered = True
        answers = json.loads(payload)
        if not isinstance(answers, list):
            raise ValueError("a frame of answers is a JSON array")
        for pair in answers:
            if not (
                isinstance(pair, list)
                and len(pair) == 2
                and type(pair[0]) is int
                and isinstance(pair[1], dict)
            ):
                raise ValueError("an answer is [id, object]")
            with self._lock:
                waiter = self._waiting.pop(pair[0], None)
            if waiter is not None:
                waiter.answer = pair[1]
                waiter.done()

    def _break(self, reason: str, unsent: set[int]) -> None:
        """Close the stream; every command still waiting learns it broke."""
        with self._lock:
            self.closed = True
            waiting, self._waiting = self._waiting, {}
            # A node that answered a ping serves streams: its silence is a pause, not a proxy.
            self.never_answered = not (self._answered or self._probing) and any(
                number not in unsent for number in waiting
            )
            unsent |= {number for number, _ in self._pending}
            self._pending = []
        shut(self._sock)
        with contextlib.suppress(OSError):
            self._sock.close()
        for number, waiter in waiting.items():
            waiter.sent = number not in unsent
            waiter.done()


class Streams:
    """The command streams of this process, one per node address and signing identity.

    A forked process starts with none (its parent's belong to the parent). A node that
    refused a stream, or whose stream broke before it answered anything (a proxy on the
    way that does not pass streams on), gets requests, and a stream again after
    ``RETRY_REFUSED`` seconds.
    """

    RETRY_REFUSED = 60.0

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: dict[tuple[Any, ...], CommandStream] = {}
        self._refused: dict[tuple[Any, ...], float] = {}
        self._opening: dict[tuple[Any, ...], threading.Lock] = {}
        self._pid = os.getpid()

    def peek(self, address: str, signer: Signer, prefix: str) -> CommandStream | None:
        """The open stream to ``address``, if there is one; never waits (the async
        client opens one with ``get`` in a thread only when there is none)."""
        name = (address, signer.key, signer.kind, signer.sender, prefix)
        with self._lock:
            found = self._open.get(name) if self._pid == os.getpid() else None
        return found if found is not None and not found.closed else None

    def refusing(self, address: str, signer: Signer, prefix: str) -> bool:
        """Whether ``address`` gets requests, not a stream, for now (see the class)."""
        name = (address, signer.key, signer.kind, signer.sender, prefix)
        with self._lock:
            return self._pid == os.getpid() and time.monotonic() < self._refused.get(name, 0.0)

    def get(
        self, address: str, signer: Signer, prefix: str, timeout: float = SEND_TIMEOUT
    ) -> CommandStream | None:
        """The open stream to ``address``, opened (within ``timeout``) if need be; None
        when the node refuses streams. Raise ``NotSentError`` when it cannot be reached.

        One thread opens a node's stream while the others wait for it; streams to other
        nodes are not held up."""
        name = (address, signer.key, signer.kind, signer.sender, prefix)
        with self._lock:
            if self._pid != os.getpid():
                self._open.clear()
                self._refused.clear()
                self._opening.clear()
                self._pid = os.getpid()
            found = self._open.get(name)
            if found is not None and not found.closed:
                return found  # the common case: one lock, no opener's
            opening = self._opening.setdefault(name, threading.Lock())
        if not opening.acquire(timeout=timeout):
            raise NotSentError(f"no command stream to {address} in time")
        try:
            with self._lock:
                found = self._open.get(name)
                if found is not None and not found.closed:
                    return found
                if found is not None and found.never_answered:
                    self._refused[name] = time.monotonic() + self.RETRY_REFUSED
                    del self._open[name]
                if time.monotonic() < self._refused.get(name, 0.0):
                    return None
            try:
                opened = CommandStream(address, signer, prefix, timeout)
            except StreamRefused:
                with self._lock:
                    self._refused[name] = time.monotonic() + self.RETRY_REFUSED
                    self._open.pop(name, None)
                return None
            with self._lock:
                self._open[name] = opened
            return opened
        finally:
            opening.release()
