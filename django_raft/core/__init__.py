"""The sans-IO Raft core: no Django, no threads, no sockets, no clock, no global random.

The host drives a ``RawNode`` with ``tick()``, ``step(message)`` and ``propose(data)``,
takes a ``Ready`` describing what to persist, send and apply, and calls ``advance``.
"""

from .config import MAX_ENTRIES_PER_MESSAGE, Config, RandomSource, SplitMix64
from .errors import (
    CompactedError,
    ConfigError,
    NotLeaderError,
    ProposalDroppedError,
    RaftError,
    StorageError,
    UnavailableError,
)
from .log import RaftLog
from .progress import Inflights, Progress, ProgressState
from .raft import Raft
from .rawnode import RawNode
from .storage import MemoryStorage, Storage
from .types import (
    LOCAL_MESSAGES,
    NONE,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    MessageType,
    Ready,
    SoftState,
    StateType,
)

__all__ = [
    "LOCAL_MESSAGES",
    "MAX_ENTRIES_PER_MESSAGE",
    "NONE",
    "CompactedError",
    "ConfState",
    "Config",
    "ConfigError",
    "Entry",
    "EntryType",
    "HardState",
    "Inflights",
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
    "Ready",
    "SoftState",
    "SplitMix64",
    "StateType",
    "Storage",
    "StorageError",
    "UnavailableError",
]
