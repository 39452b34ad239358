"""The node running in this process, if any: the seam between the client and the node.

A ``raftnode`` process registers its node here when it starts (``register``) and
removes it when it stops; the client, the leader helpers and ``status()`` ask
``current()``. The client knows the node only by this interface, so nothing outside
``django_raft.node`` imports the node.
"""

from __future__ import annotations

import threading
from typing import Any, Protocol

__all__ = ["LocalNode", "current", "register", "unregister"]


class LocalNode(Protocol):
    """What the client may ask of the node in its own process."""

    @property
    def address(self) -> str:
        """The URL where the other members reach this node."""

    def status(self) -> dict[str, Any]:
        """The node's status: ``state``, ``leader``, ``term``, ``commit``, ... ."""

    def submit(self, body: dict[str, Any]) -> dict[str, Any]:
        """Run a client request body (as the ``command`` route takes it, its ``timeout``
        included) in the calling thread; its JSON answer."""


_lock = threading.Lock()
_node: LocalNode | None = None


def register(node: LocalNode) -> None:
    """Make ``node`` the one running in this process."""
    global _node
    with _lock:
        _node = node


def unregister(node: LocalNode) -> None:
    """Forget ``node``, if it is the one registered."""
    global _node
    with _lock:
        if _node is node:
            _node = None


def current() -> LocalNode | None:
    """The node running in this process, None in a web, shell or worker process."""
    return _node
