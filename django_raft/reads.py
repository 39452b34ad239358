"""Linearizable reads without a log entry (ReadIndex, Raft thesis §6.4).

``django_raft.read()`` asks the node of this server for a read index: the node confirms
with a majority that it (or the leader it follows) still leads, then waits until its
own database has applied that index. Whatever the caller reads from its local models
afterwards reflects every command acknowledged before ``read()`` was called::

    with django_raft.read():
        flags = list(Flag.objects.filter(enabled=True))

``read(stale=True)`` skips the round trip: a local read that may miss the latest
commands (for dashboards). A read-only command (``@command(name, read_only=True)``)
runs its handler on the node after the same round, and appends nothing to the log
(``submission.read_command``, on the node).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from .conf import raft_settings
from .submission import READ_INDEX, Client

__all__ = ["read", "read_index"]


def read_index(timeout: float | None = None) -> int:
    """Wait for a read index on this server's node; return it (0 for a stale read)."""
    seconds = timeout or raft_settings.COMMAND_TIMEOUT
    return int(Client(timeout=seconds, session=False).read(READ_INDEX))


@contextmanager
def read(*, stale: bool = False, timeout: float | None = None) -> Iterator[int]:
    """Context manager: reads inside see every command acknowledged before it began.

    It yields the read index. ``stale=True`` makes no round trip (and yields 0).
    """
    yield 0 if stale else read_index(timeout)
