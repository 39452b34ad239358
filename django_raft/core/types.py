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
    """The cluster membership: the voters, and the learners that only receive the log.

    ``removed`` lists every id ever removed: a removed id never rejoins (a message still
    on its way from the old node could be taken for the new one's), so a node that comes
    back joins under a new id.
    """

    voters: tuple[str, ...] = ()
    learners: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()


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
    """Volatile state the host may want to report: who leads, in which term, and what
    this node is."""

    leader: str = NONE
    state: StateType = StateType.FOLLOWER
    term: int = 0


@dataclass(frozen=True, slots=True)
class BasicStatus:
    """A cheap summary of one node (no lists), for hosts that poll it on every turn.

    ``lead`` is the leader known in ``term`` (``NONE`` if none); ``commit``, ``applied``
    and ``last_index`` are the commit index, the last applied index and the last log
    index, persisted or not.
    """

    id: str
    state: StateType
    term: int
    lead: str
    commit: int
    applied: int
    last_index: int


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


_EARLY_MESSAGES = (
    MessageType.APPEND,
    MessageType.HEARTBEAT,
    MessageType.SNAPSHOT,
    MessageType.TIMEOUT_NOW,
)
"""What a leader may send while it persists (Raft thesis §10.2.1)."""


@dataclass(frozen=True, slots=True)
class Ready:
    """What the host must do next. The ordering contract (the one place it is written):

    1. send the messages ``partition_messages()`` returns first (optional: they may also
       simply wait for step 3);
    2. persist, in one atomic and synced write, ``snapshot`` (when not None: it replaces
       the log up to its index, keeping the entries after it only if the log holds its
       last entry with the same term), then ``entries`` (they replace every stored entry
       from the first one's index on), then ``hard_state`` (when not None). With
       ``MemoryStorage`` that is ``storage.persist(hard_state, entries, snapshot)``;
    3. send the other messages: every message they carry is backed by what step 2 made
       durable (a vote by the persisted vote, an acknowledgement by persisted entries);
    4. when ``snapshot`` is not None, restore the state machine from it, then apply
       ``committed_entries`` in order; the host may answer requests before it applies;
    5. serve ``read_states`` once the state machine has applied their ``index``;
    6. call ``advance(ready)`` before the next ``ready()``. ``step()`` and ``tick()`` may
       be called while steps 2 to 5 are in progress; what they produce waits for the
       next Ready.

    With ``Config.async_apply`` the host does step 4 beside its loop instead: it hands
    the snapshot and the committed entries, in order, to an applier and calls
    ``advance`` without waiting; the applier applies them in that order and the host
    reports each applied index with ``RawNode.applied_to``. The applied index then
    trails the commit index: later Readies carry the entries after those handed over
    (at most ``Config.max_applying_bytes`` outstanding), step 5 waits for the reported
    index, and snapshots are taken at it. Nothing else changes: persisting, sending,
    votes and heartbeats never wait for the applier.

    Messages in the first group are only a leader's outbound replication (AppendEntries,
    heartbeats, snapshot chunks, TimeoutNow) in a Ready that changes neither the term
    nor the vote: the leader counts itself toward a commit quorum only for entries it
    has persisted (``advance`` tells it), so a crash between sending and persisting
    loses nothing that was acknowledged.

    ``soft_state`` is not None when the leader, the role or the term changed since the
    last Ready. A hard state that changes only ``commit`` need not be synced: commitIndex
    is volatile in Figure 2 (restart with ``Config.applied`` instead).
    """

    soft_state: SoftState | None = None
    hard_state: HardState | None = None
    entries: tuple[Entry, ...] = ()
    snapshot: Snapshot | None = None
    committed_entries: tuple[Entry, ...] = ()
    messages: tuple[Message, ...] = field(default=())
    read_states: tuple[ReadState, ...] = ()
    term_or_vote_changed: bool = False
    """Whether ``hard_state`` changes the term or the vote: then every message waits."""

    def partition_messages(self) -> tuple[tuple[Message, ...], tuple[Message, ...]]:
        """Split ``messages`` into (may be sent before persisting, must be sent after)."""
        if self.term_or_vote_changed or self.snapshot is not None:
            return (), self.messages
        early = tuple(m for m in self.messages if m.type in _EARLY_MESSAGES)
        if not early:
            return (), self.messages
        late = tuple(m for m in self.messages if m.type not in _EARLY_MESSAGES)
        return early, late
