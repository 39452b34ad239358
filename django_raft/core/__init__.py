"""The sans-IO Raft core: no Django, no threads, no sockets, no clock, no global random.

The host drives a ``RawNode`` with ``tick()``, ``step(message)`` and ``propose(data)``,
takes a ``Ready`` describing what to persist, send and apply, and calls ``advance``.
"""

from .config import (
    ENTRIES_AFTER_SNAPSHOT,
    MAX_ENTRIES_PER_MESSAGE,
    Config,
    RandomSource,
    SplitMix64,
)
from .errors import (
    CompactedError,
    ConfChangePendingError,
    ConfigError,
    DuplicatePeerError,
    MembershipError,
    NotLeaderError,
    ProposalDroppedError,
    RaftError,
    RemovedPeerError,
    StoppedError,
    StorageError,
    UnavailableError,
    UnknownPeerError,
)
from .log import RaftLog
from .membership import apply_conf_change, bootstrap, validate_conf_change
from .progress import Inflights, Progress, ProgressState
from .raft import Raft
from .rawnode import RawNode
from .storage import MemoryStorage, Storage
from .types import (
    LOCAL_MESSAGES,
    NONE,
    BasicStatus,
    ConfChange,
    ConfChangeType,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    MessageType,
    ReadState,
    Ready,
    Snapshot,
    SnapshotMetadata,
    SoftState,
    StateType,
)

__all__ = [
    "ENTRIES_AFTER_SNAPSHOT",
    "LOCAL_MESSAGES",
    "MAX_ENTRIES_PER_MESSAGE",
    "NONE",
    "BasicStatus",
    "CompactedError",
    "ConfChange",
    "ConfChangePendingError",
    "ConfChangeType",
    "ConfState",
    "Config",
    "ConfigError",
    "DuplicatePeerError",
    "Entry",
    "EntryType",
    "HardState",
    "Inflights",
    "MembershipError",
    "MemoryStorage",
    "Message",
    "MessageType",
    "NotLeaderError",
    "Progress",
    "ProgressState",
    "ProposalDroppedError",
    "Raft",
    "RaftError",
    "RaftLog",
    "RandomSource",
    "RawNode",
    "ReadState",
    "Ready",
    "RemovedPeerError",
    "Snapshot",
    "SnapshotMetadata",
    "SoftState",
    "SplitMix64",
    "StateType",
    "StoppedError",
    "Storage",
    "StorageError",
    "UnavailableError",
    "UnknownPeerError",
    "apply_conf_change",
    "bootstrap",
    "validate_conf_change",
]
