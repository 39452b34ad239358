"""Flow control in bytes: how much of its clients' commands a node holds at once.

A command costs the node memory from the moment its bytes are read until it is
answered: the request, its parsed body, its log entry, its forwarding to the leader.
Counting commands bounds none of that (one command may be a megabyte), so the node
counts bytes, in a ``Budget``: a command stream's frame and a ``command`` request take
their size from it *before* any of them is read (the frame's header, the request's
``Content-Length``) and give it back as each command is answered. A follower holds
those bytes while it forwards the commands to its leader, so its forwarding queue is
bounded too. What does not fit is refused with ``OverloadedError`` (nothing was
proposed: the caller may retry).

The budget is shared fairly. A client (the name a request is signed with) holds at most
``Limits.client`` bytes, and one of its streams (one process) ``Limits.stream``; a
member forwarding its own clients' commands holds up to ``Limits.peer``. The node's
last ``Limits.reserve`` bytes go only to a stream (or, on the ``command`` route, a
client) that holds at most ``Limits.floor``: a client that floods cannot take what
another needs for its next command, even when both sign with the same name (every
process without a ``NODE_ID`` signs as "client"). The defaults follow
``MAX_COMMAND_SIZE`` (``limits``).
"""

from __future__ import annotations

import threading
import time
import weakref
from dataclasses import dataclass
from typing import Any

from ..conf import raft_settings
from ..protocol.command_stream import MAX_REQUEST_FRAME

__all__ = [
    "COMMAND_COST",
    "MAX_REQUEST",
    "Budget",
    "Limits",
    "StreamShare",
    "Ticket",
    "budget_of",
    "limits",
    "refusal",
]

NODE_COMMANDS = 32
"""The node holds this many largest commands' worth of bytes (``limits``)."""
MAX_REQUEST = MAX_REQUEST_FRAME
"""Bytes of one frame of requests, or of one ``command`` request's body, at most."""
COMMAND_COST = 4 << 10
"""Bytes a command costs the node besides its own, counted with them: its parsed body,
its futures, its place in the queues (measured: about 3.5 KiB for a small command a
follower forwards). Without it, a flood of tiny commands would fit in the bytes bound
by the hundred thousand."""


@dataclass(frozen=True, slots=True)
class Limits:
    """Bytes of commands in flight at most: on the node, per client, per stream (and per
    peer forwarding to this node); ``reserve`` of the node's bytes are kept for clients
    holding less than ``floor``."""

    node: int
    client: int
    stream: int
    peer: int
    floor: int
    reserve: int


def limits(max_command_size: int) -> Limits:
    """The limits that follow from ``MAX_COMMAND_SIZE``: the node holds
    ``NODE_COMMANDS`` commands of that size, a client a quarter of that, a stream an
    eighth, a peer forwarding its clients' commands half; each of them room for one
    whole request (``MAX_REQUEST``) at least."""
    node = max(NODE_COMMANDS * max(max_command_size, 1), 8 * MAX_REQUEST)
    return Limits(
        node=node,
        client=max(node // 4, 2 * MAX_REQUEST),
        stream=max(node // 8, MAX_REQUEST),
        peer=node // 2,
        floor=MAX_REQUEST,
        reserve=2 * MAX_REQUEST,
    )


class StreamShare:
    """One stream's bytes in flight, counted apart from its client's (``Budget.take``)."""

    __slots__ = ("held", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0


class Ticket:
    """Bytes taken from a budget; ``release`` gives them back (once, however often it
    is called)."""

    __slots__ = ("_budget", "_client", "_peer", "_stream", "size")

    def __init__(
        self, budget: Budget, client: str, size: int, stream: StreamShare | None, peer: bool
    ) -> None:
        self._budget: Budget | None = budget
        self._client = client
        self._stream = stream
        self._peer = peer
        self.size = size

    def grow(self, size: int, timeout: float = 0.0) -> bool:
        """Take ``size`` more bytes for the same client and stream (``Budget.take``);
        False, and nothing taken, when there is no room within ``timeout`` seconds."""
        budget = self._budget
        if budget is None:
            raise ValueError("a released ticket cannot grow")
        if not budget._acquire(self._client, size, timeout, self._stream, self._peer):
            return False
        self.size += size
        return True

    def release(self, *_: Any) -> None:
        """Give the bytes back (a future's done-callback may call it)."""
        budget, self._budget = self._budget, None
        if budget is not None:
            budget._give(self._client, self.size, self._stream)

    def split(self, count: int) -> list[Ticket]:
        """This ticket cut into ``count`` tickets of nearly equal size (the commands of
        one frame, each given back when it is answered); this one is spent."""
        budget, self._budget = self._budget, None
        if budget is None or count < 1:
            raise ValueError("a released ticket cannot be split")
        share, extra = divmod(self.size, count)
        return [
            Ticket(budget, self._client, share + (i < extra), self._stream, self._peer)
            for i in range(count)
        ]


class Budget:
    """The bytes of client commands a node holds, with a share per client and stream.

    Thread-safe. ``take`` grants bytes (waiting up to ``timeout`` for room) or refuses;
    every ``Ticket`` granted must be released.
    """

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self._held = 0
        self._clients: dict[str, int] = {}
        self._room = threading.Condition(threading.Lock())

    @property
    def held(self) -> int:
        """Bytes held by all clients now."""
        return self._held

    def held_by(self, client: str) -> int:
        """Bytes held by ``client`` now."""
        return self._clients.get(client, 0)

    def stream(self, peer: bool = False) -> StreamShare:
        """A new stream's share (a peer's may hold as much as the peer)."""
        return StreamShare(self.limits.peer if peer else self.limits.stream)

    def take(
        self,
        client: str,
        size: int,
        timeout: float = 0.0,
        stream: StreamShare | None = None,
        peer: bool = False,
    ) -> Ticket | None:
        """Take ``size`` bytes for ``client`` (and its ``stream``); None when there is
        no room within ``timeout`` seconds. ``peer``: the client is a node forwarding
        its own clients' commands (it holds up to ``Limits.peer``)."""
        size = max(0, size)
        if not self._acquire(client, size, timeout, stream, peer):
            return None
        return Ticket(self, client, size, stream, peer)

    def _acquire(
        self, client: str, size: int, timeout: float, stream: StreamShare | None, peer: bool
    ) -> bool:
        if size > self.limits.node:
            return False
        deadline = time.monotonic() + timeout
        with self._room:
            while not self._grants(client, size, stream, peer):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._room.wait(left)
            self._held += size
            self._clients[client] = self._clients.get(client, 0) + size
            if stream is not None:
                stream.held += size
        return True

    def _grants(self, client: str, size: int, stream: StreamShare | None, peer: bool) -> bool:
        limits = self.limits
        mine = self._clients.get(client, 0) + size
        if stream is not None and stream.held + size > stream.limit:
            return False
        total = self._held + size
        if (
            mine <= (limits.peer if peer else limits.client)
            and total <= limits.node - limits.reserve
        ):
            return True
        # The reserve, for a stream that holds little whatever its client's name holds
        # (every process may sign as "client"), or a client that holds little.
        light = stream.held + size if stream is not None else mine
        return light <= limits.floor and total <= limits.node

    def _give(self, client: str, size: int, stream: StreamShare | None) -> None:
        with self._room:
            self._held -= size
            left = self._clients[client] - size
            if left:
                self._clients[client] = left
            else:
                del self._clients[client]
            if stream is not None:
                stream.held -= size
            self._room.notify_all()


def refusal(node_id: str, client: str) -> str:
    """The message of the ``OverloadedError`` that refuses a command of ``client``."""
    return f"node {node_id!r} holds as many commands as it may for {client!r}; retry later"


_budgets: weakref.WeakKeyDictionary[Any, Budget] = weakref.WeakKeyDictionary()
_budgets_lock = threading.Lock()


def budget_of(node: Any) -> Budget:
    """The budget of ``node`` (one per node object, from the settings when first asked)."""
    with _budgets_lock:
        found = _budgets.get(node)
        if found is None:
            found = _budgets[node] = Budget(limits(raft_settings.MAX_COMMAND_SIZE))
        return found
