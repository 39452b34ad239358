"""The node's side of command streams (``command_stream``): read requests, answer them.

A stream's thread reads frames of requests and hands each to ``submit.submit``: a write
on the leader is proposed at once and answered from the applier thread when it is
applied, a read index (``read()``) answered from the completer thread when the node has
it; anything else (a follower's forwarding, a read-only command, a command the leader
lost) runs on a few threads of the stream server's own.
Another thread per stream writes the answers, every answer ready in one frame, so a
client that reads slowly delays only itself. At most ``MAX_IN_FLIGHT`` commands of a
stream run at once: beyond that the stream is not read until one is answered.

A frame's bytes are taken from the node's budget (``flow``) once its header is read and
before its payload is (with ``flow.COMMAND_COST`` per command once it is parsed): a
stream whose client (or the node) holds all it may waits up to ``ADMIT_WAIT`` for room,
then its frame is read all the same and every command in it is answered with
``OverloadedError`` (never proposed). Frames refused so are read a few at a time in the
whole node (``REFUSING``), so refusing costs little memory either. A command for the
slow threads takes a place in their queue (``SLOW_LANE``), or is refused at once.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, BinaryIO

from ...exceptions import OverloadedError, StopError
from ...protocol import stream
from ...protocol.answers import failure
from ...protocol.command_stream import MAX_IN_FLIGHT, MAX_REQUEST_FRAME, PING
from ...protocol.connection import shut
from .. import dispatch, flow
from ..runner import RaftNode
from ..submit import submit

__all__ = ["ADMIT_WAIT", "REFUSING", "SLOW_LANE", "SLOW_THREADS", "serve"]

logger = logging.getLogger(__name__)

SLOW_THREADS = 32
"""Threads that run the commands a node cannot propose at once (see the module)."""
ADMIT_WAIT = 1.0
"""Seconds a stream waits for room in the node's budget before its next frame is
refused. Meanwhile the node writes it an empty frame every ``PING`` seconds: the stream
is not read, so the client's pings go unanswered, and a client hearing nothing for
``command_stream.PROBE`` would take the node for stopped."""
REFUSING = 4
"""Frames the node reads at once only to refuse their commands (each at most
``MAX_REQUEST_FRAME`` bytes)."""
REFUSING_WAIT = 5.0
"""Seconds a stream waits to read a frame it refuses before it is closed instead."""
_refusing = threading.BoundedSemaphore(REFUSING)
SLOW_LANE = flow.Limits(
    node=8 * SLOW_THREADS,
    client=2 * SLOW_THREADS,
    stream=SLOW_THREADS,
    peer=4 * SLOW_THREADS,
    floor=SLOW_THREADS // 4,
    reserve=SLOW_THREADS,
)
"""Commands waiting for or running on the slow threads at most (one each: a follower's
forwarding, reads), shared like bytes are (``flow``): past a few hundred, a command
would wait there longer than its deadline, so it is refused at once instead. A read
index takes a place too, though it waits on the loop, not on a thread: each is a
heartbeat round for the core, so they are bounded like the reads that run here."""
_slow_lane = flow.Budget(SLOW_LANE)
_MAX_ID = (1 << 63) - 1
_slow: ThreadPoolExecutor | None = None
_slow_lock = threading.Lock()


def _slow_pool() -> ThreadPoolExecutor:
    global _slow
    with _slow_lock:
        if _slow is None:
            _slow = ThreadPoolExecutor(SLOW_THREADS, thread_name_prefix="raft-commands")
        return _slow


def requests_of(payload: bytes) -> list[tuple[int, Any]]:
    """The ``(id, body)`` pairs of a frame of requests; ``FrameError`` if it is not one."""
    try:
        pairs = json.loads(payload)
    except (ValueError, UnicodeDecodeError, RecursionError) as error:
        raise stream.FrameError("a frame of requests that is not JSON") from error
    if not isinstance(pairs, list) or not 0 < len(pairs) <= MAX_IN_FLIGHT:
        raise stream.FrameError(f"a frame of requests is a JSON array of 1 to {MAX_IN_FLIGHT}")
    for pair in pairs:
        if not (
            isinstance(pair, list)
            and len(pair) == 2
            and type(pair[0]) is int
            and 0 <= pair[0] <= _MAX_ID
        ):
            raise stream.FrameError("a request is [id, body], the id a non-negative integer")
    return [(number, body) for number, body in pairs]


class _Answers(threading.Thread):
    """Writes a stream's answers: whatever is ready goes in one frame. An empty frame
    from the client is answered with an empty frame (``pong``): a client that waits
    for answers tells a slow command from a node that stopped answering.

    An answer that finds this thread idle is written by whoever puts it, when the
    socket takes it without waiting (``stream.send_now``): one thread hand-off fewer on
    the path of every command. What the socket does not take at once, this thread
    writes (``_backlog``) before anything else.
    """

    def __init__(self, sock: socket.socket, key: bytes, name: str) -> None:
        super().__init__(name=f"raft-answers-{name}", daemon=True)
        self._sock = sock
        self._writer = stream.FrameWriter(key)
        self._ready: collections.deque[tuple[int, dict[str, Any]]] = collections.deque()
        self._wakeup = threading.Condition(threading.Lock())
        self._stopped = False
        self._pong = False
        self._busy = False
        """Whether this thread is writing (frames must go out in the order made)."""
        self._backlog = b""

    def put(self, number: int, answer: dict[str, Any]) -> None:
        with self._wakeup:
            self._ready.append((number, answer))
        if not dispatch.after_together(self, self.flush):
            self.flush()

    def flush(self) -> None:
        """Write the answers ready, in one frame, now if this thread is idle."""
        with self._wakeup:
            if not self._ready:
                return
            if not (self._busy or self._backlog or self._stopped):
                answers = list(self._ready)
                self._ready.clear()
                if self._write_now(answers):
                    return
                self._ready.extendleft(reversed(answers))
            self._wakeup.notify()

    def _write_now(self, answers: list[tuple[int, dict[str, Any]]]) -> bool:
        """Write a frame of answers without waiting (hold ``_wakeup``); False: leave
        them to this thread."""
        if isinstance(self._sock, ssl.SSLSocket):
            return False
        try:
            data = self._writer.frame(json.dumps(answers).encode())
            sent = stream.send_now(self._sock, data)
        except (OSError, ValueError) as error:
            logger.info("raft: answers to a command stream failed: %s", error)
            shut(self._sock)
            self._stopped = True
            self._wakeup.notify()
            return True
        if sent < len(data):
            self._backlog = data[sent:]
            self._wakeup.notify()
        return True

    def pong(self) -> None:
        """Write a frame soon, empty if no answer is ready (the client pinged)."""
        with self._wakeup:
            self._pong = True
            self._wakeup.notify()

    def stop(self) -> None:
        with self._wakeup:
            self._stopped = True
            self._wakeup.notify()

    def run(self) -> None:
        ready = self._ready
        while True:
            with self._wakeup:
                while not (ready or self._backlog or self._stopped or self._pong):
                    self._wakeup.wait()
                if self._stopped:
                    return
                answers = list(ready)
                ready.clear()
                pong, self._pong = self._pong, False
                backlog, self._backlog = self._backlog, b""
                self._busy = True
                try:  # made holding the lock: a frame ``put`` made comes before it
                    payload = json.dumps(answers).encode() if answers else b""
                    data = self._writer.frame(payload) if answers or pong else b""
                except ValueError as error:
                    logger.error("raft: an answer to a command stream failed: %s", error)
                    shut(self._sock)
                    return
            try:
                self._sock.sendall(backlog + data)
            except (OSError, ValueError) as error:
                logger.info("raft: answers to a command stream failed: %s", error)
                shut(self._sock)
                return
            finally:
                with self._wakeup:
                    self._busy = False


class Activity:
    """When a command stream last started a command, and how many of its commands run:
    the server closes only an idle stream to make room for a new one."""

    __slots__ = ("_lock", "last", "running")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.last = time.monotonic()
        self.running = 0

    def started(self) -> None:
        with self._lock:
            self.last = time.monotonic()
            self.running += 1

    def finished(self) -> None:
        with self._lock:
            self.running -= 1
            self.last = time.monotonic()

    def idle(self, seconds: float) -> bool:
        """Whether none of its commands runs, and none started or ended for ``seconds``."""
        return self.running == 0 and time.monotonic() - self.last >= seconds


class _Dispatcher:
    """Runs one stream's commands on the node and hands their answers to the writer."""

    def __init__(
        self,
        node: RaftNode,
        answers: _Answers,
        name: str,
        peer: bool,
        activity: Activity | None = None,
    ) -> None:
        self.activity = activity
        self.node = node
        self.answers = answers
        self.name = name
        self.peer = peer
        self.room = threading.Semaphore(MAX_IN_FLIGHT)
        self.lane = _slow_lane.stream(peer)

    def answer(self, number: int, answer: dict[str, Any], *tickets: flow.Ticket | None) -> None:
        for ticket in tickets:
            if ticket is not None:
                ticket.release()
        self.answers.put(number, answer)
        self.room.release()
        if self.activity is not None:
            self.activity.finished()

    def run(self, number: int, body: Any, leading: bool, ticket: flow.Ticket) -> None:
        """Start a command that holds ``ticket``; its answer comes later (``answer``).

        A read, or one that runs on the slow threads (``leading`` says whether it will),
        takes a place in their lane first (``SLOW_LANE``), or is refused."""
        if self.activity is not None:
            self.activity.started()
        slot = None
        if not leading or (isinstance(body, dict) and body.get("read")):
            slot = _slow_lane.take(self.name, 1, stream=self.lane, peer=self.peer)
            if slot is None:
                self.answer(number, _overloaded(self.node, self.name), ticket)
                return
        submitted = submit(self.node, body, _slow_pool(), leading)
        submitted.add_done_callback(lambda done: self.answer(number, done.result(), ticket, slot))


def serve(
    node: RaftNode,
    source: BinaryIO,
    sock: socket.socket,
    keys: tuple[bytes, bytes],
    name: str,
    activity: Activity | None = None,
) -> None:
    """Serve one command stream until it ends, breaks or lies (then it is closed).

    ``keys``: the requests' and the answers' (``command_stream.stream_keys``); ``name``:
    the client's, as it signed the handshake (a member's id: a node forwarding);
    ``activity``: where its commands are counted (the server tells idle streams by it).
    """
    reader = stream.FrameReader(source, keys[0], MAX_REQUEST_FRAME)
    answers = _Answers(sock, keys[1], name)
    answers.start()
    peer = name in node.transport.addresses
    dispatcher = _Dispatcher(node, answers, name, peer, activity)
    budget = flow.budget_of(node)
    share = budget.stream(peer)
    admitted: list[flow.Ticket | None] = []
    deadline = 0.0

    def admit(length: int) -> None:
        """Make room for a frame of ``length`` bytes (and one command) before it is read
        (``admitted``)."""
        nonlocal deadline
        if length:
            deadline = time.monotonic() + ADMIT_WAIT
            size = length + flow.COMMAND_COST
            while (ticket := budget.take(name, size, PING, share, peer)) is None:
                if time.monotonic() >= deadline:
                    break
                answers.pong()
            if ticket is None and not _refusing.acquire(timeout=REFUSING_WAIT):
                raise stream.FrameError("the node is overloaded")
            admitted.append(ticket)

    try:
        while (payload := reader.read(admit)) is not None:
            if node.stopping.is_set():
                return
            if not payload:
                answers.pong()
                continue
            if not _run_frame(dispatcher, payload, admitted.pop(), name, deadline):
                return
            payload = b""  # not kept while the next frame waits for room
    except stream.FrameError as error:
        logger.warning("raft: closing a command stream of %r: %s", name, error)
    except (OSError, StopError):
        return  # the client went away, or this node is stopping
    finally:
        for ticket in admitted:  # a frame made room for, then not read
            if ticket is None:
                _refusing.release()
            else:
                ticket.release()
        answers.stop()


def _run_frame(
    dispatcher: _Dispatcher,
    payload: bytes,
    ticket: flow.Ticket | None,
    name: str,
    deadline: float,
) -> bool:
    """Start the commands of a frame that ``ticket`` made room for (refuse them all
    without one, or when there is no room for their cost by ``deadline``); False when
    the node stopped meanwhile."""
    node = dispatcher.node
    if ticket is None:  # read only to be refused
        try:
            requests = requests_of(payload)
        finally:
            _refusing.release()
        _refuse(node, dispatcher.answers, requests, name)
        return True
    with _held(ticket) as tickets:
        requests = requests_of(payload)
        more = (len(requests) - 1) * flow.COMMAND_COST
        if not ticket.grow(more, max(0.0, deadline - time.monotonic())):
            _refuse(node, dispatcher.answers, requests, name)
            return True
        tickets.extend(ticket.split(len(requests)))
        leading = node.status().get("state") == "leader"
        for number, body in requests:
            while not dispatcher.room.acquire(timeout=0.5):
                if node.stopping.is_set():
                    return False
            dispatcher.run(number, body, leading, tickets.pop())
    return True


def _overloaded(node: RaftNode, name: str) -> dict[str, Any]:
    return failure(OverloadedError, flow.refusal(node.node_id, name))


@contextlib.contextmanager
def _held(ticket: flow.Ticket) -> Iterator[list[flow.Ticket]]:
    """The tickets of a frame's commands not yet handed over: given back on the way out
    (a handed-over command gives its own back once answered)."""
    tickets: list[flow.Ticket] = []
    try:
        yield tickets
    finally:
        ticket.release()
        for left in tickets:
            left.release()


def _refuse(node: RaftNode, answers: _Answers, requests: list[tuple[int, Any]], name: str) -> None:
    """Answer every command of a frame the node has no room for: ``OverloadedError``."""
    refused = _overloaded(node, name)
    for number, _ in requests:
        answers.put(number, refused)
