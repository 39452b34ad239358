"""Errors raised to users of ``django_raft``.

Each name says what happened and clashes with nothing in Django or in the core. The
older names ``CommandError`` (it shadowed Django's), ``StopError`` and
``UnavailableError`` (the core has its own errors of those meanings) remain as aliases
of the new ones for existing code; they are deprecated and left out of ``__all__``.

Every error a caller can meet says whether the command may have been applied:
``CommandTimeoutError`` (and anything unknown) says it may; every error in
``NOT_APPLIED`` proves it was not (``may_have_applied``). The client keeps to this
across retries: once an attempt may have reached the log, a call that fails ends in
``CommandTimeoutError``, whatever its last attempt was told.
"""

from __future__ import annotations

from .core import (
    ConfChangePendingError,
    DuplicatePeerError,
    MembershipError,
    NotLeaderError,
    ProposalDroppedError,
    RaftError,
    RemovedPeerError,
    UnknownPeerError,
)

__all__ = [
    "ApplyError",
    "ClusterUnreachableError",
    "CommandFailedError",
    "CommandTimeoutError",
    "ConfChangePendingError",
    "DuplicatePeerError",
    "InvalidRequestError",
    "KeyTakenError",
    "LockNotHeldError",
    "MembershipError",
    "NodeServerError",
    "NodeStoppedError",
    "NotElectedError",
    "NotLeaderError",
    "OverloadedError",
    "ProposalDroppedError",
    "RaftError",
    "RemovedPeerError",
    "SessionExpiredError",
    "StaleReadError",
    "StaleTokenError",
    "UnknownPeerError",
    "WatchCompactedError",
    "may_have_applied",
]


class ApplyError(RaftError):
    """Committed entries could not be applied because the database failed (not because
    of the commands): the node stops rather than record an outcome other nodes would
    not have. Restarted, it applies them again from its log."""


class CommandTimeoutError(RaftError):
    """The command's outcome is unknown: it may have been applied, or be applied later.

    The one error that says so. Raised when the deadline passed, or when a connection
    was lost or a node stopped after the command had left this process. Within its
    session the command is still applied at most once.
    """


class NodeStoppedError(RaftError):
    """The node asked is stopping or stopped (go-raft's StopError) and took nothing."""


class CommandFailedError(RaftError):
    """The command's handler raised; ``error`` is the message every node recorded."""

    def __init__(self, error: str) -> None:
        self.error = error
        super().__init__(error)


class ClusterUnreachableError(RaftError):
    """No node of the cluster could be reached before the deadline: the command never
    reached a node that could append it. (Lost after it was sent: ``CommandTimeoutError``.)"""


class OverloadedError(RaftError):
    """The node holds as many outstanding proposals as it may; retry later."""


class InvalidRequestError(RaftError, ValueError):
    """The request was refused before reaching the log (bad name, arguments or option)."""


class SessionExpiredError(RaftError):
    """The client's session expired (or never existed) when its command was applied:
    the command was not applied. (A retry that meets it, after an earlier attempt that
    may have been applied, ends in ``CommandTimeoutError``.)"""


class StaleTokenError(RaftError):
    """A fencing token is not the lock's current one: a newer holder took the lock."""


class LockNotHeldError(RaftError):
    """A lock could not be acquired before the deadline, was no longer held, or was
    granted too late: its TTL, counted from when the request was sent, had passed."""


class KeyTakenError(RaftError):
    """``announce()`` found the key announced by another live process: nothing changed
    (as ZooKeeper's ``NodeExists``). It is free once that process withdraws it or stops
    renewing it."""


class NotElectedError(RaftError):
    """An election's leadership was not won in time, or was lost (its lease passed
    while the campaigner could not renew it, or a newer leader took over): the call
    changed nothing, and the campaigner's fencing token is refused by ``check_token``."""


class NodeServerError(RaftError):
    """The node failed while serving the request (the failure is logged on the node):
    whether the command was applied is unknown."""


class StaleReadError(RaftError):
    """A linearizable read could not be served in time: this server's database had not
    applied the read index by the deadline, so reading it now could miss acknowledged
    commands. Nothing was appended; try again (the node may be down or catching up)."""


class WatchCompactedError(RaftError):
    """A watch asked for entries the log no longer holds: they were compacted into a
    snapshot (etcd's ``ErrCompacted``). Reload the state you derive from the changes,
    then watch again from ``applied_index``; ``first_index`` is the oldest index a watch
    can still start after, minus one (the snapshot's index plus one)."""

    def __init__(self, message: str = "", first_index: int = 0, applied_index: int = 0) -> None:
        self.first_index = first_index
        self.applied_index = applied_index
        super().__init__(
            message
            or f"entries up to {first_index - 1} were compacted away: reload the state and "
            f"watch again from {applied_index}"
        )


NOT_APPLIED: tuple[type[Exception], ...] = (
    ClusterUnreachableError,
    CommandFailedError,
    WatchCompactedError,
    InvalidRequestError,
    KeyTakenError,
    LockNotHeldError,
    MembershipError,
    NodeStoppedError,
    NotElectedError,
    NotLeaderError,
    OverloadedError,
    ProposalDroppedError,
    SessionExpiredError,
    StaleReadError,
    StaleTokenError,
)
"""Errors that prove the call changed nothing: it was never appended, or (a handler
that raised, a stale fencing token) it was applied as a failure with its writes rolled
back. Resending after one of these cannot apply a command twice."""


def may_have_applied(error: BaseException) -> bool:
    """Whether the command behind ``error`` may have been applied (or may still be).

    True for ``CommandTimeoutError`` and for anything not known to be in
    ``NOT_APPLIED``: an error that proves nothing is treated as the worst case.
    """
    return not isinstance(error, NOT_APPLIED)


CommandError = CommandFailedError
"""Deprecated alias of ``CommandFailedError``."""
StopError = NodeStoppedError
"""Deprecated alias of ``NodeStoppedError``."""
UnavailableError = ClusterUnreachableError
"""Deprecated alias of ``ClusterUnreachableError``."""
