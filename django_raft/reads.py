"""Linearizable reads without a log entry (ReadIndex, Raft thesis §6.4).

``django_raft.read()`` asks the node of this server for a read index: the node confirms
with a majority that it (or the leader it follows) still leads, then waits until its
own database has applied that index. Whatever the caller reads from its local models
afterwards reflects every command acknowledged before ``read()`` was called::

    with django_raft.read():
        flags = list(Flag.objects.filter(enabled=True))

``read(stale=True)`` skips the round trip: a local read that may miss the latest
commands (for dashboards). A read-only command (``@command(name, read_only=True)``)
runs its handler on the node after the same round, and appends nothing to the log.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from . import commands
from .conf import raft_settings
from .core import RaftError

if TYPE_CHECKING:
    from .runner import RaftNode

__all__ = ["read", "read_index"]

READ_INDEX = "django_raft.read_index"
"""The read-only command that only waits for a read index, for ``read()``."""


def read_index(timeout: float | None = None) -> int:
    """Wait for a read index on this server's node; return it (0 for a stale read)."""
    from .submission import Client

    seconds = timeout or raft_settings.COMMAND_TIMEOUT
    return int(Client(timeout=seconds, session=False).read(READ_INDEX))


@contextmanager
def read(*, stale: bool = False, timeout: float | None = None) -> Iterator[int]:
    """Context manager: reads inside see every command acknowledged before it began.

    It yields the read index. ``stale=True`` makes no round trip (and yields 0).
    """
    yield 0 if stale else read_index(timeout)


def read_command(
    node: RaftNode, name: str, arguments: dict[str, Any], deadline: float
) -> dict[str, Any]:
    """On the node: a ReadIndex round, then the read-only handler ``name``, locally."""
    from .statemachine import Outcome, describe_error
    from .submission import outcome_answer

    if name == READ_INDEX:
        handler = None
    else:
        try:
            handler = commands.get(name)
        except Exception as error:
            return {"ok": False, "error": describe_error(error), "error_type": "BadRequest"}
        if not commands.is_read_only(name):
            return {
                "ok": False,
                "error": f"command {name!r} is not read-only",
                "error_type": "BadRequest",
            }
    try:
        index = node.read_index(max(0.0, deadline - time.monotonic()))
    except FutureTimeout:
        return {"ok": False, "error": "no read index in time", "error_type": "CommandTimeoutError"}
    except RaftError as error:
        return {"ok": False, "error": str(error), "error_type": type(error).__name__}
    if handler is None:
        return outcome_answer(Outcome(ok=True, value=index))
    context = commands.Context(node.node_id, index, 0, node.machine.alias)
    try:
        return outcome_answer(Outcome(ok=True, value=handler(context, **arguments)))
    except Exception as error:
        return outcome_answer(Outcome(ok=False, error=describe_error(error)))
