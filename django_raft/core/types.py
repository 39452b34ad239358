"""The values the core exchanges with its host: entries, messages, states and Ready.

Every value here is an immutable dataclass so that a message handed to the
transport, or an entry handed to storage, can never change under the core's feet.
Node identifiers are strings (go-raft names its servers); ``NONE`` means "nobody".
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

NONE = ""
"""The empty node id: no vote cast, no leader known."""


class EntryType(enum.IntEnum):
    """What a log entry carries."""

    NORMAL = 0
    """An application command; empty data is the no-op a new leader appends."""
    CONF_CHANGE = 1
    """A membership change."""


@dataclass(frozen=True, slots=True)
class Entry:
    """One log entry (Figure 2: the command and the term when the leader received it)."""

    index: int
    term: int
    type: EntryType = EntryType.NORMAL
    data: bytes = b""


@dataclass(frozen=True, slots=True)
class HardState:
    """The state that must be on stable storage before any message that depends on it is sent.

    ``term`` is currentTerm, ``vote`` is votedFor (``NONE`` when no vote was cast in
    this term), ``commit`` is the highest index known to be committed.
    """

    term: int = 0
    vote: str = NONE
    commit: int = 0


@dataclass(frozen=True, slots=True)
class ConfState:
    """The cluster membership: the voters, and the learners that only receive the log."""

    voters: tuple[str, ...] = ()
    learners: tuple[str, ...] = ()


class StateType(enum.Enum):
    """The role a node plays; values are go-raft's state names."""

    FOLLOWER = "follower"
    PRE_CANDIDATE = "pre-candidate"
    CANDIDATE = "candidate"
    LEADER = "leader"


@dataclass(frozen=True, slots=True)
class SoftState:
    """Volatile state the host may want to report: who leads and what this node is."""

    leader: str = NONE
    state: StateType = StateType.FOLLOWER


class MessageType(enum.Enum):
    """The kinds of message. Local ones never cross the network."""

    HUP = "hup"
    """Local: start an election (pre-vote first when enabled)."""
    BEAT = "beat"
    """Local: the leader should send heartbeats."""
    CHECK_QUORUM = "check_quorum"
    """Local: the leader should check it still hears from a quorum."""
    PROPOSE = "propose"
    """Local: append entries to the leader's log."""
    APPEND = "append_entries"
    """AppendEntries RPC (§5.3)."""
    APPEND_RESPONSE = "append_entries_response"
    REQUEST_VOTE = "request_vote"
    """RequestVote RPC (§5.2)."""
    REQUEST_VOTE_RESPONSE = "request_vote_response"
    PRE_VOTE = "pre_vote"
    """RequestVote for the next term without changing any state (thesis §9.6)."""
    PRE_VOTE_RESPONSE = "pre_vote_response"
    HEARTBEAT = "heartbeat"
    """An empty AppendEntries that only asserts leadership and carries the commit index."""
    HEARTBEAT_RESPONSE = "heartbeat_response"


LOCAL_MESSAGES = frozenset(
    {MessageType.HUP, MessageType.BEAT, MessageType.CHECK_QUORUM, MessageType.PROPOSE}
)


@dataclass(frozen=True, slots=True)
class Message:
    """One message between nodes (or from the host to the core, for local kinds).

    For APPEND, ``index`` and ``log_term`` are prevLogIndex and prevLogTerm; for the vote
    requests they are lastLogIndex and lastLogTerm; for APPEND_RESPONSE ``index`` is the
    last index the follower now matches (or, on reject, the rejected prevLogIndex) and
    ``reject_hint``/``log_term`` point the leader at where the logs may agree.
    """

    type: MessageType
    to: str = NONE
    sender: str = NONE
    term: int = 0
    log_term: int = 0
    index: int = 0
    entries: tuple[Entry, ...] = ()
    commit: int = 0
    reject: bool = False
    reject_hint: int = 0


@dataclass(frozen=True, slots=True)
class Ready:
    """What the host must do next, in this order (the ordering contract):

    1. persist ``hard_state`` (when not None) and ``entries`` (one atomic, synced write);
    2. send ``messages``;
    3. apply ``committed_entries`` to the state machine;
    4. call ``advance(ready)``.

    ``soft_state`` is not None when the leader or the role changed since the last Ready.
    """

    soft_state: SoftState | None = None
    hard_state: HardState | None = None
    entries: tuple[Entry, ...] = ()
    committed_entries: tuple[Entry, ...] = ()
    messages: tuple[Message, ...] = field(default=())
