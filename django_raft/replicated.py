"""What a handler reads of the replicated state while it applies: the log time, tokens.

Handlers run on the node, in the transaction that applies their entry, and must read
the same on every node: the log time (the proposer's clock as of the last
session-tracked entry applied, never this machine's clock) and the current token of a
lock. The state machine makes the run it applies the source of the log time on its
thread (``applying``); outside a run, the stored clock answers.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol

from .exceptions import StaleTokenError
from .models import SINGLETON, Lock, LogClock

__all__ = ["applying", "check_token", "log_time"]


class Clock(Protocol):
    """A run of entries being applied: it knows the log time as of its last entry."""

    def time(self) -> int:
        """The log time (ms) as of the entries applied so far."""


class _Applying(threading.local):
    """The run being applied on this thread, by database alias."""

    def __init__(self) -> None:
        self.runs: dict[str, Clock] = {}


_applying = _Applying()


@contextmanager
def applying(using: str, run: Clock) -> Iterator[None]:
    """Make ``log_time(using)`` answer from ``run`` on this thread for the block."""
    runs = _applying.runs
    previous = runs.get(using)
    runs[using] = run
    try:
        yield
    finally:
        if previous is None:
            del runs[using]
        else:
            runs[using] = previous


def log_time(using: str) -> int:
    """The log time (ms) as of the last applied session-tracked command."""
    run = _applying.runs.get(using)
    if run is not None:
        return run.time()
    row = LogClock.objects.using(using).filter(pk=SINGLETON).values_list("time_ms", flat=True)
    return row.first() or 0


def check_token(using: str, name: str, token: int, now: int | None = None) -> None:
    """Raise ``StaleTokenError`` unless ``token`` is the current, held token of ``name``.

    Deterministic: the lock's state and the log time are replicated state.
    """
    lock = Lock.objects.using(using).filter(pk=name).values_list("holder", "token", "expires_ms")
    row = lock.first()
    now = log_time(using) if now is None else now
    if row is None or not row[0] or row[1] != token or row[2] <= now:
        current = row[1] if row else 0
        raise StaleTokenError(f"token {token} of lock {name!r} is stale (current {current})")
