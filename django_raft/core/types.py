"""The values the core exchanges with its host: entries, messages, states and Ready.

Every value here is an immutable dataclass so that a message handed to the
transport, or an entry handed to storage, can never change under the core's feet.
Node identifiers are strings (go-raft names its servers); ``NONE`` means "nobody".
"""

from __future__ import annotations

import enum
import json
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


class ConfChangeType(enum.Enum):
    """The single-server membership changes (thesis §4.1)."""

    ADD_VOTER = "add_voter"
    """Add a voting member, or promote a learner to voter."""
    ADD_LEARNER = "add_learner"
    """Add a member that receives the log but neither votes nor counts toward quorum."""
    REMOVE = "remove"
    """Remove a voter or a learner."""


@dataclass(frozen=True, slots=True)
class ConfChange:
    """One membership change, carried in the data of a CONF_CHANGE entry.

    ``context`` is opaque to the core; the host puts the member's address there.
    """

    type: ConfChangeType
    node_id: str
    context: str = ""

    def encode(self) -> bytes:
        """Serialise for the log."""
        return json.dumps(
            {"type": self.type.value, "node_id": self.node_id, "context": self.context},
            separators=(",", ":"),
        ).encode()

    @classmethod
    def decode(cls, data: bytes) -> ConfChange:
        """Parse what ``encode`` wrote; raise ``ValueError`` on anything else."""
        try:
            fields = json.loads(data)
            return cls(
                ConfChangeType(fields["type"]), str(fields["node_id"]), str(fields["context"])
            )
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"not a membership change: {data[:80]!r}") from error


@dataclass(frozen=True, slots=True)
class SnapshotMetadata:
    """Where a snapshot sits in the log and the membership at that point."""

    index: int = 0
    term: int = 0
    conf_state: ConfState = ConfState()


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The state machine as of ``metadata.index``, as opaque bytes from the host."""

    metadata: SnapshotMetadata = SnapshotMetadata()
    data: bytes = b""


@dataclass(frozen=True, slots=True)
class ReadState:
    """A linearizable read may be served once the state machine has applied ``index``.

    ``context`` is the host's identifier of the read request it answers.
    """

    index: int
    context: bytes


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
    SNAPSHOT = "install_snapshot"
    """One chunk of InstallSnapshot (Figure 13)."""
    SNAPSHOT_RESPONSE = "install_snapshot_response"
    """Acknowledges a chunk; ``offset`` is the next byte the follower expects."""
    TIMEOUT_NOW = "timeout_now"
    """Leadership transfer: start an election now, skipping pre-vote (thesis §3.10)."""
    READ_INDEX = "read_index"
    """Ask the leader for a read index (thesis §6.4); ``context`` names the read."""
    READ_INDEX_RESPONSE = "read_index_response"


LOCAL_MESSAGES = frozenset(
    {MessageType.HUP, MessageType.BEAT, MessageType.CHECK_QUORUM, MessageType.PROPOSE}
)


@dataclass(frozen=True, slots=True)
class Message:
    """One message between nodes (or from the host to the core, for local kinds).

    For APPEND, ``index`` and ``log_term`` are prevLogIndex and prevLogTerm; for the vote
    requests they are lastLogIndex and lastLogTerm; for APPEND_RESPONSE ``index`` is the
    last index the follower now matches (or, on reject, the rejected prevLogIndex) and
    ``reject_hint``/``log_term`` point the leader at where the logs may agree. For
    SNAPSHOT, ``snapshot`` describes the whole snapshot and ``data`` is the chunk that
    starts at byte ``offset``; ``done`` marks the last chunk.
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
    snapshot: SnapshotMetadata | None = None
    offset: int = 0
    data: bytes = b""
    done: bool = False
    context: bytes = b""
    transfer: bool = False
    """On vote requests: sent because of a leadership transfer, so leases do not apply."""


@dataclass(frozen=True, slots=True)
class Ready:
    """What the host must do next, in this order (the ordering contract):

    1. persist ``hard_state`` (when not None) and ``entries`` (one atomic, synced write);
    2. send ``messages``;
    3. apply ``committed_entries`` to the state machine;
    4. call ``advance(ready)``.

    ``snapshot``, when not None, is persisted with the entries (replacing the log up to
    its index) and restored into the state machine before any committed entry is applied.
    ``soft_state`` is not None when the leader or the role changed since the last Ready.
    ``read_states`` are reads this node may serve once it has applied their index.
    """

    soft_state: SoftState | None = None
    hard_state: HardState | None = None
    entries: tuple[Entry, ...] = ()
    snapshot: Snapshot | None = None
    committed_entries: tuple[Entry, ...] = ()
    messages: tuple[Message, ...] = field(default=())
    read_states: tuple[ReadState, ...] = ()
