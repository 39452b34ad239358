"""Errors raised to users of ``django_raft``, with go-raft's meanings."""

from __future__ import annotations

from .core import DuplicatePeerError, NotLeaderError, RaftError

__all__ = [
    "CommandError",
    "CommandTimeoutError",
    "DuplicatePeerError",
    "InvalidRequestError",
    "NotLeaderError",
    "OverloadedError",
    "RaftError",
    "StopError",
    "UnavailableError",
]


class CommandTimeoutError(RaftError):
    """The command was not committed and applied in time; it may still be applied later."""


class StopError(RaftError):
    """The node is stopping or stopped (go-raft's StopError)."""


class CommandError(RaftError):
    """The command's handler raised; ``error`` is the message every node recorded."""

    def __init__(self, error: str) -> None:
        self.error = error
        super().__init__(error)


class UnavailableError(RaftError):
    """No node of the cluster could be reached."""


class OverloadedError(RaftError):
    """The node holds as many outstanding proposals as it may; retry later."""


class InvalidRequestError(RaftError, ValueError):
    """The request was refused before reaching the log (bad name, arguments or option)."""
