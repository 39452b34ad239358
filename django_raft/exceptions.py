"""Errors raised to users of ``django_raft``.

Each name says what happened and clashes with nothing in Django or in the core. The
older names ``CommandError`` (it shadowed Django's), ``StopError`` and
``UnavailableError`` (the core has its own errors of those meanings) remain as aliases
of the new ones for existing code; they are deprecated and left out of ``__all__``.
"""

from __future__ import annotations

from .core import DuplicatePeerError, NotLeaderError, RaftError

__all__ = [
    "ApplyError",
    "ClusterUnreachableError",
    "CommandFailedError",
    "CommandTimeoutError",
    "DuplicatePeerError",
    "InvalidRequestError",
    "LockNotHeldError",
    "NodeStoppedError",
    "NotLeaderError",
    "OverloadedError",
    "RaftError",
    "SessionExpiredError",
    "StaleTokenError",
]


class ApplyError(RaftError):
    """Committed entries could not be applied because the database failed (not because
    of the commands): the node stops rather than record an outcome other nodes would
    not have. Restarted, it applies them again from its log."""


class CommandTimeoutError(RaftError):
    """The command was not committed and applied in time; it may still be applied later."""


class NodeStoppedError(RaftError):
    """The node is stopping or stopped (go-raft's StopError)."""


class CommandFailedError(RaftError):
    """The command's handler raised; ``error`` is the message every node recorded."""

    def __init__(self, error: str) -> None:
        self.error = error
        super().__init__(error)


class ClusterUnreachableError(RaftError):
    """No node of the cluster could be reached before the deadline."""


class OverloadedError(RaftError):
    """The node holds as many outstanding proposals as it may; retry later."""


class InvalidRequestError(RaftError, ValueError):
    """The request was refused before reaching the log (bad name, arguments or option)."""


class SessionExpiredError(RaftError):
    """The client's session expired (or never existed) when its command was applied.

    A command that met it for the first time was not applied. A retry that meets it
    may concern a command applied before the session expired: its outcome is unknown.
    """


class StaleTokenError(RaftError):
    """A fencing token is not the lock's current one: a newer holder took the lock."""


class LockNotHeldError(RaftError):
    """A lock could not be acquired before the deadline, or was no longer held."""


CommandError = CommandFailedError
"""Deprecated alias of ``CommandFailedError``."""
StopError = NodeStoppedError
"""Deprecated alias of ``NodeStoppedError``."""
UnavailableError = ClusterUnreachableError
"""Deprecated alias of ``ClusterUnreachableError``."""
