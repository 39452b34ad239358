"""The node's side of command streams (``command_stream``): read requests, answer them.

A stream's thread reads frames of requests and hands each to ``submit.submit``: a write
on the leader is proposed at once and answered from the completer thread when it is
applied; anything else (a follower's forwarding, a read, a command the leader lost)
runs on a few threads of the stream server's own.
Another thread per stream writes the answers, every answer ready in one frame, so a
client that reads slowly delays only itself. At most ``MAX_IN_FLIGHT`` commands of a
stream run at once: beyond that the stream is not read until one is answered.
"""

from __future__ import annotations

import collections
import json
import logging
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, BinaryIO

from ...exceptions import StopError
from ...protocol import stream
from ...protocol.command_stream import MAX_IN_FLIGHT, MAX_REQUEST_FRAME
from ...protocol.connection import shut
from ..runner import RaftNode
from ..submit import submit

__all__ = ["SLOW_THREADS", "serve"]

logger = logging.getLogger(__name__)

SLOW_THREADS = 32
"""Threads that run the commands a node cannot propose at once (see the module)."""
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
    for answers tells a slow command from a node that stopped answering."""

    def __init__(self, sock: socket.socket, key: bytes, name: str) -> None:
        super().__init__(name=f"raft-answers-{name}", daemon=True)
        self._sock = sock
        self._writer = stream.FrameWriter(key)
        self._ready: collections.deque[tuple[int, dict[str, Any]]] = collections.deque()
        self._wakeup = threading.Condition(threading.Lock())
        self._stopped = False
        self._pong = False

    def put(self, number: int, answer: dict[str, Any]) -> None:
        with self._wakeup:
            self._ready.append((number, answer))
            self._wakeup.notify()

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
                while not ready and not self._stopped and not self._pong:
                    self._wakeup.wait()
                if self._stopped:
                    return
                answers = list(ready)
                ready.clear()
                self._pong = False
            try:
                payload = json.dumps(answers).encode() if answers else b""
                self._sock.sendall(self._writer.frame(payload))
            except (OSError, ValueError) as error:
                logger.info("raft: answers to a command stream failed: %s", error)
                shut(self._sock)
                return


class _Dispatcher:
    """Runs one stream's commands on the node and hands their answers to the writer."""

    def __init__(self, node: RaftNode, answers: _Answers) -> None:
        self.node = node
        self.answers = answers
        self.room = threading.Semaphore(MAX_IN_FLIGHT)

    def answer(self, number: int, answer: dict[str, Any]) -> None:
        self.answers.put(number, answer)
        self.room.release()

    def run(self, number: int, body: Any, leading: bool) -> None:
        """Start a command; its answer comes later (``answer``)."""
        submitted = submit(self.node, body, _slow_pool(), leading)
        submitted.add_done_callback(lambda done: self.answer(number, done.result()))


def serve(
    node: RaftNode, source: BinaryIO, sock: socket.socket, keys: tuple[bytes, bytes], name: str
) -> None:
    """Serve one command stream until it ends, breaks or lies (then it is closed).

    ``keys``: the requests' and the answers' (``command_stream.stream_keys``).
    """
    reader = stream.FrameReader(source, keys[0], MAX_REQUEST_FRAME)
    answers = _Answers(sock, keys[1], name)
    answers.start()
    dispatcher = _Dispatcher(node, answers)
    try:
        while (payload := reader.read()) is not None:
            if node.stopping.is_set():
                return
            if not payload:
                answers.pong()
                continue
            requests = requests_of(payload)
            leading = node.status().get("state") == "leader"
            for number, body in requests:
                while not dispatcher.room.acquire(timeout=0.5):
                    if node.stopping.is_set():
                        return
                dispatcher.run(number, body, leading)
    except stream.FrameError as error:
        logger.warning("raft: closing a command stream of %r: %s", name, error)
    except (OSError, StopError):
        return  # the client went away, or this node is stopping
    finally:
        answers.stop()
