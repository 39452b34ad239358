"""Submit commands to the cluster from any process: ``django_raft.do(command, **arguments)``.

The client path itself (sessions, forwarding, retries) is ``django_raft.submission``;
this module is the public face: ``do``, ``Client`` and ``status``.
"""

from __future__ import annotations

from typing import Any

from .conf import raft_settings
from .exceptions import ClusterUnreachableError
from .submission import ERRORS, Client, default_client, post, raise_for

__all__ = ["Client", "do", "post", "raise_for", "status"]

_ERRORS = ERRORS
"""Every error a caller can get, by name (docs/reference.md lists each)."""


def do(command: str, /, **arguments: Any) -> Any:
    """Run ``command`` through the log with ``arguments``; return its handler's result.

    It returns once the entry is committed and applied. Every keyword is the handler's:
    options (timeout, sessions) belong to a client: ``django_raft.Client(timeout=...)``.
    It tries every known member and retries until ``COMMAND_TIMEOUT``; the command's
    session makes the retries safe. The errors it raises are in docs/reference.md.
    """
    return default_client().do(command, **arguments)


def status(address: str | None = None, timeout: float = 2.0) -> dict[str, Any]:
    """Return a node's name, state, term, leader, commit and applied index and members."""
    from .runner import RaftNode

    node = RaftNode.current
    if node is not None and address is None:
        return node.status()
    answer = post(address or raft_settings.ADDRESS, "status", {}, timeout)
    value = raise_for(answer)
    if not isinstance(value, dict):
        raise ClusterUnreachableError(f"bad status answer {value!r}")
    return value
