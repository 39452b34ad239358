"""Send the node's Django signals, and resolve its callers' futures, from threads of their own.

The loop thread must never wait for a signal receiver: a slow receiver would delay
ticks and heartbeats and could cost the node its leadership. The loop puts each event
on a bounded queue and a dispatcher thread sends them with ``send_robust``, in the
order they happened. When receivers fall so far behind that the queue is full, new
events are dropped and counted, with a warning.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, InvalidStateError
from contextlib import contextmanager
from typing import Any

import django.dispatch

logger = logging.getLogger(__name__)

MAX_QUEUED_SIGNALS = 10_000
"""Events waiting for their receivers before new ones are dropped."""


class SignalDispatcher:
    """A thread that sends queued signals, in order, with ``send_robust``."""

    def __init__(self, name: str, sender: Any, maxsize: int = MAX_QUEUED_SIGNALS) -> None:
        self.sender = sender
        self.dropped = 0
        self._queue: queue.Queue[tuple[django.dispatch.Signal, dict[str, Any]] | None] = (
            queue.Queue(maxsize)
        )
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._warned = False

    def start(self) -> None:
        """Start the dispatcher thread."""
        self._thread.start()

    def send(self, signal: django.dispatch.Signal, **arguments: Any) -> None:
        """Queue ``signal`` with ``arguments``; never blocks (drops when the queue is full).

        A signal without receivers is not queued at all.
        """
        if not signal.has_listeners(self.sender):
            return
        try:
            self._queue.put_nowait((signal, arguments))
        except queue.Full:
            self.dropped += 1
            if not self._warned:
                self._warned = True
                logger.warning(
                    "raft: signal receivers cannot keep up; dropping events "
                    "(%d queued; see status 'signals_dropped')",
                    self._queue.maxsize,
                )
        else:
            self._warned = False

    def stop(self, timeout: float = 2.0) -> None:
        """Send what is queued (within ``timeout``), then stop the thread."""
        if not self._thread.is_alive():
            return
        try:
            self._queue.put(None, timeout=timeout)
        except queue.Full:
            return
        self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            signal, arguments = item
            signal.send_robust(sender=self.sender, **arguments)  # logs a receiver's error


Completion = tuple[Future[Any], Any, BaseException | None]
"""A future, and the result (or the error) to give it."""

_together = threading.local()


@contextmanager
def together() -> Iterator[None]:
    """Callers' futures resolved in this block, in this thread, are answered together:
    a flush registered with ``after_together`` runs once, when the block ends (a run's
    answers leave in one frame per client stream, not one frame each)."""
    outer = getattr(_together, "flushes", None)
    if outer is not None:  # already inside one: the outer block flushes
        yield
        return
    flushes: dict[int, Callable[[], None]] = {}
    _together.flushes = flushes
    try:
        yield
    finally:
        _together.flushes = None
        for flush in flushes.values():
            flush()


def after_together(owner: object, flush: Callable[[], None]) -> bool:
    """Inside a ``together`` block of this thread, run ``flush`` once at its end (once per
    ``owner``) and return True; elsewhere return False (the caller flushes now)."""
    flushes: dict[int, Callable[[], None]] | None = getattr(_together, "flushes", None)
    if flushes is None:
        return False
    flushes.setdefault(id(owner), flush)
    return True


class Completer:
    """A thread that hands the loop's results to the callers' futures, in order.

    Resolving a future runs its done-callbacks (the caller's own, ``propose_async``'s
    bookkeeping) and wakes whoever waits on it. On the loop thread each of those would
    cost a turn the interpreter, once per command: under load, turns of 100 ms and more.
    The loop hands over a whole batch with one call instead.
    """

    def __init__(self, name: str) -> None:
        self._queue: queue.SimpleQueue[list[Completion] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        """Start the thread."""
        self._thread.start()

    def complete(self, batch: list[Completion]) -> None:
        """Queue results for their futures; never blocks."""
        if batch:
            self._queue.put(batch)

    def stop(self, timeout: float = 5.0) -> None:
        """Resolve what is queued, then end the thread."""
        self._queue.put(None)
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            batch = self._queue.get()
            if batch is None:
                return
            with together():
                _resolve(batch)


def _resolve(batch: list[Completion]) -> None:
    """Give each future its result or its error (its callbacks run here)."""
    for future, result, error in batch:
        try:
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(result)
        except InvalidStateError:
            continue  # cancelled, or failed meanwhile because the node stopped
        except Exception:
            logger.exception("raft: a command's done-callback raised")
