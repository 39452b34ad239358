"""Errors raised by the core, named with go-raft's meanings where go-raft had one."""

from __future__ import annotations


class RaftError(Exception):
    """Base class of every error the core raises."""


class ConfigError(RaftError, ValueError):
    """A configuration value is invalid; the message names the setting and the rule."""


class NotLeaderError(RaftError):
    """This node is not the leader; ``leader`` names the one it knows of, or is empty."""

    def __init__(self, leader: str = "") -> None:
        self.leader = leader
        hint = f"; the leader is {leader!r}" if leader else "; no leader is known"
        super().__init__(f"not the leader{hint}")


class ProposalDroppedError(RaftError):
    """The leader cannot take a proposal right now (for example, during a transfer)."""


class StorageError(RaftError):
    """An index asked of storage is outside what it holds."""

    def __init__(self, index: int) -> None:
        self.index = index
        super().__init__(f"{type(self).__name__}: index {index}")


class CompactedError(StorageError):
    """The requested index was discarded by log compaction."""


class UnavailableError(StorageError):
    """The requested index is past the end of the stored log."""


class StoppedError(RaftError):
    """The node was stopped (go-raft's StopError); it takes no more input."""


class MembershipError(RaftError, ValueError):
    """A membership change is not valid against the current configuration."""


class DuplicatePeerError(MembershipError):
    """The node to add is already a member in that role (go-raft's DuplicatePeerError)."""


class UnknownPeerError(MembershipError):
    """The node named is not a member of the cluster."""


class RemovedPeerError(MembershipError):
    """The node named was removed from the cluster; its id may not be used again."""


class ConfChangePendingError(ProposalDroppedError):
    """A membership change is still uncommitted; only one may be in flight at a time."""
