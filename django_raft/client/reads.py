"""Linearizable reads without a log entry (ReadIndex, Raft thesis §6.4).

``django_raft.read()`` gets a read index from a leader that confirmed, with a majority
and after the call began, that it still leads; then it waits until *this server's*
database has applied that index. Whatever the caller reads from its local models
afterwards reflects every command acknowledged before ``read()`` was called::

    with django_raft.read():
        flags = list(Flag.objects.filter(enabled=True))

The index is asked of this server's node first (``ADDRESS``), which answers once it
has applied it. When that node does not answer, another member gives the index, and
``read()`` waits for the local database to catch up; if it has not by the deadline (its
node is down, paused or far behind), ``read()`` raises ``StaleReadError`` and never
yields: it cannot promise a fresh read here. Call it outside a transaction that has
already read (a transaction's snapshot would not see the database catch up).

``read(stale=True)`` skips the round trip: a local read that may miss the latest
commands (for dashboards). A read-only command (``@command(name, read_only=True)``)
runs its handler on the node that obtained the index, after the same round, and
appends nothing to the log (``node.submit.read_command``, on the node).
``django_raft.aread()`` is the same for async code (``client.aio``).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from django.db import connections

from ..conf import raft_settings
from ..exceptions import StaleReadError
from ..models import SINGLETON, AppliedState
from .client import Client

__all__ = ["applied_index", "read", "read_index"]

POLL = 0.002
"""Seconds between two looks at the local applied index, at first (then up to 50 ms)."""


_SELECT_APPLIED = f'SELECT applied_index FROM "{AppliedState._meta.db_table}" WHERE id = %s'


def applied_index() -> int:
    """The index of the last log entry applied to this server's database (one plain
    query: every ``read()`` asks it at least once)."""
    with connections[raft_settings.DATABASE].cursor() as cursor:
        cursor.execute(_SELECT_APPLIED, [SINGLETON])
        row = cursor.fetchone()
    return int(row[0]) if row is not None else 0


def read_index(timeout: float | None = None) -> int:
    """Wait until this server's database has applied a fresh read index; return it.

    Raise ``StaleReadError`` when it has not within ``timeout`` (``COMMAND_TIMEOUT``),
    and the client's errors when no member gave an index.
    """
    seconds = timeout or raft_settings.COMMAND_TIMEOUT
    deadline = time.monotonic() + seconds
    index = Client(timeout=seconds, session=False).read_index()
    pause = POLL
    while (applied := applied_index()) < index:
        left = deadline - time.monotonic()
        if left <= 0:
            raise stale_error(applied, index, seconds)
        time.sleep(min(pause, left))
        pause = min(pause * 2, 0.05)
    return index


def stale_error(applied: int, index: int, seconds: float) -> StaleReadError:
    """The error of a read whose database had applied only ``applied`` when its
    ``seconds`` to reach the read index ``index`` ran out."""
    return StaleReadError(
        f"this server's database applied #{applied}, not the read index #{index}, "
        f"within {seconds:g} s (is its raftnode running?); nothing was read"
    )


@contextmanager
def read(*, stale: bool = False, timeout: float | None = None) -> Iterator[int]:
    """Context manager: reads inside see every command acknowledged before it began.

    It yields the read index (0 for ``stale=True``, which makes no round trip). Raise
    ``StaleReadError`` rather than yield when this server's database cannot catch up
    with the index before the timeout.
    """
    yield 0 if stale else read_index(timeout)
