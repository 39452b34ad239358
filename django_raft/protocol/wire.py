"""The protobuf wire format: core messages, commands and their results to bytes and back.

The schema is ``proto/django_raft/raft.proto``. Encoding trusts its input (the core's
messages, this node's commands) beyond what protobuf itself checks. Decoding trusts
nothing: whatever arrives from the network or the log is checked, and anything
malformed raises ``WireError``, never another exception, so a bad peer cannot crash
the node or hand the core a message it does not expect.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import DecodeError

from ..core import (
    LOCAL_MESSAGES,
    ConfState,
    Entry,
    EntryType,
    Message,
    MessageType,
    SnapshotMetadata,
)
from ..proto import raft_pb2 as pb

__all__ = [
    "MAX_TERM_JUMP",
    "MAX_VALUE",
    "DecodedCommand",
    "WireError",
    "decode_command",
    "decode_envelope",
    "decode_message",
    "decode_result",
    "encode_command",
    "encode_message",
    "encode_result",
]

MAX_VALUE = 2**62 - 1
"""The largest index, term, offset or sequence number encoded or decoded: one bound for
all, well inside what a signed 64-bit database column holds, so that a node that
accepted the largest term can still count elections past it (the wire's uint64 allows
more; no real log gets there)."""
MAX_TERM_JUMP = 2**40
"""How far a peer's term may be ahead of ours: more elections than a cluster runs in
centuries. A message further ahead is a bug or corruption, refused by the receiver so
that one message cannot spend the terms left."""


class WireError(ValueError):
    """Bytes that are not a valid encoding, or a value that cannot be encoded."""


# The proto names each network message type after the core's (MESSAGE_TYPE_APPEND for
# APPEND...); a core type missing from the proto fails here, at import.
_TO_WIRE: dict[MessageType, pb.MessageType.ValueType] = {
    kind: pb.MessageType.Value(f"MESSAGE_TYPE_{kind.name}")
    for kind in MessageType
    if kind not in LOCAL_MESSAGES
}
_FROM_WIRE: dict[int, MessageType] = {number: kind for kind, number in _TO_WIRE.items()}
_ENTRY_TYPE_TO_WIRE: dict[EntryType, pb.EntryType.ValueType] = {
    kind: pb.EntryType.Value(f"ENTRY_TYPE_{kind.name}") for kind in EntryType
}
_ENTRY_TYPE_FROM_WIRE: dict[int, EntryType] = {
    number: kind for kind, number in _ENTRY_TYPE_TO_WIRE.items()
}

_RANGE_CHECKED = ("term", "log_term", "index", "commit", "reject_hint", "offset")


def encode_message(message: Message) -> bytes:
    """Serialise a message for the network; local messages (HUP, PROPOSE...) are refused."""
    kind = _TO_WIRE.get(message.type)
    if kind is None:
        raise WireError(f"{message.type.name} is a local message: it never crosses the network")
    for name in _RANGE_CHECKED:
        if not 0 <= getattr(message, name) <= MAX_VALUE:
            raise WireError(f"cannot encode {message.type.name} message: {name} out of range")
    try:
        wire = pb.Message(
            type=kind,
            to=message.to,
            sender=message.sender,
            term=message.term,
            log_term=message.log_term,
            index=message.index,
            commit=message.commit,
            reject=message.reject,
            reject_hint=message.reject_hint,
            offset=message.offset,
            data=message.data,
            done=message.done,
            context=message.context,
            transfer=message.transfer,
        )
        if message.entries:
            add = wire.entries.add
            entry_type = _ENTRY_TYPE_TO_WIRE
            for entry in message.entries:
                # With upb, assigning the fields is faster than add(**fields).
                item = add()
                item.index = entry.index
                item.term = entry.term
                item.type = entry_type[entry.type]
                item.data = entry.data
        snapshot = message.snapshot
        if snapshot is not None:
            # Set even when every field is a default: presence is what says "a snapshot".
            wire.snapshot.SetInParent()
            wire.snapshot.index = snapshot.index
            wire.snapshot.term = snapshot.term
            wire.snapshot.conf_state.voters.extend(snapshot.conf_state.voters)
            wire.snapshot.conf_state.learners.extend(snapshot.conf_state.learners)
            wire.snapshot.conf_state.removed.extend(snapshot.conf_state.removed)
        return wire.SerializeToString()
    except (TypeError, ValueError) as error:
        raise WireError(f"cannot encode {message.type.name} message: {error}") from error


def decode_message(data: bytes) -> Message:
    """Parse what ``encode_message`` wrote; raise ``WireError`` on anything malformed."""
    wire = pb.Message()
    try:
        wire.ParseFromString(data)
    except DecodeError as error:
        raise WireError(f"malformed message ({len(data)} bytes): {error}") from None
    kind = _FROM_WIRE.get(wire.type)
    if kind is None:
        if wire.type == pb.MESSAGE_TYPE_UNSPECIFIED:
            raise WireError("message without a type")
        raise WireError(f"unknown message type {wire.type}")
    if not wire.sender:
        raise WireError(f"{kind.name} message without a sender")
    if not wire.to:
        raise WireError(f"{kind.name} message without a recipient")
    if (
        wire.term | wire.log_term | wire.index | wire.commit | wire.reject_hint | wire.offset
    ) > MAX_VALUE:
        name = next(name for name in _RANGE_CHECKED if getattr(wire, name) > MAX_VALUE)
        raise WireError(f"{kind.name} message: {name} {getattr(wire, name)} is out of range")
    entries: tuple[Entry, ...] = ()
    if wire.entries:
        entries = _decode_entries(kind, wire)
    snapshot = None
    if wire.HasField("snapshot"):
        snapshot = _decode_snapshot(kind, wire.snapshot)
    return Message(
        type=kind,
        to=wire.to,
        sender=wire.sender,
        term=wire.term,
        log_term=wire.log_term,
        index=wire.index,
        entries=entries,
        commit=wire.commit,
        reject=wire.reject,
        reject_hint=wire.reject_hint,
        snapshot=snapshot,
        offset=wire.offset,
        data=wire.data,
        done=wire.done,
        context=wire.context,
        transfer=wire.transfer,
    )


def _decode_entries(kind: MessageType, wire: pb.Message) -> tuple[Entry, ...]:
    """The entries of an APPEND: numbered on from prevLogIndex, terms never decreasing.

    The core takes entry ``i`` to be at prevLogIndex + 1 + i; terms run from prevLogTerm
    up to the leader's term (Log Matching, §5.3). Anything else is refused here rather
    than written into the log.
    """
    if kind is not MessageType.APPEND:
        raise WireError(f"{kind.name} message carries entries; only APPEND does")
    if wire.index + len(wire.entries) > MAX_VALUE:
        raise WireError(f"APPEND message: entries past index {MAX_VALUE}")
    entries: list[Entry] = []
    append = entries.append
    entry_types = _ENTRY_TYPE_FROM_WIRE
    index = wire.index
    term = wire.log_term
    last_term = wire.term
    for entry in wire.entries:
        index += 1
        entry_term = entry.term
        entry_type = entry_types.get(entry.type)
        if entry.index != index or not term <= entry_term <= last_term or entry_type is None:
            raise _bad_entry(wire, entry, index, term)
        term = entry_term
        append(Entry(index, entry_term, entry_type, entry.data))
    return tuple(entries)


def _bad_entry(wire: pb.Message, entry: pb.Entry, index: int, term: int) -> WireError:
    """Say what is wrong with the entry that ``_decode_entries`` expected at ``index``."""
    if entry.index != index:
        return WireError(
            f"APPEND message: entry {entry.index} where entry {index} belongs"
            f" (entries follow index {wire.index} without gaps)"
        )
    if not term <= entry.term <= wire.term:
        return WireError(
            f"APPEND message: entry {index} has term {entry.term}, outside"
            f" [{term}, {wire.term}] (the previous entry's term to the message's)"
        )
    return WireError(f"APPEND message: entry {index} has unknown type {entry.type}")


def _decode_snapshot(kind: MessageType, wire: pb.SnapshotMetadata) -> SnapshotMetadata:
    if wire.index > MAX_VALUE or wire.term > MAX_VALUE:
        raise WireError(f"{kind.name} message: snapshot index or term out of range")
    voters = tuple(wire.conf_state.voters)
    learners = tuple(wire.conf_state.learners)
    members = set(voters) | set(learners)
    if "" in members or len(members) != len(voters) + len(learners):
        raise WireError(
            f"{kind.name} message: snapshot membership {voters} + {learners} has an empty,"
            " repeated or both voting and learning node id"
        )
    removed = tuple(wire.conf_state.removed)
    if "" in removed or len(set(removed)) != len(removed) or members & set(removed):
        raise WireError(
            f"{kind.name} message: snapshot's removed ids {removed} are empty, repeated or"
            " still members"
        )
    return SnapshotMetadata(wire.index, wire.term, ConfState(voters, learners, removed))


def encode_command(
    name: str,
    arguments: dict[str, Any],
    client_id: str = "",
    sequence: int = 0,
    time_ms: int = 0,
    first_unanswered: int = 0,
) -> bytes:
    """Serialise an application command for the data of a NORMAL entry.

    ``arguments`` are the handler's keyword arguments; they cross as a JSON object.
    ``client_id`` and ``sequence`` identify the command within a client's session;
    ``time_ms`` is the log time the leader stamps on it when proposing (0: none);
    ``first_unanswered`` is the session's ack floor, at most ``sequence`` (0: the
    sequence itself, what a client with one command at a time means).
    """
    if not isinstance(name, str) or not name:
        raise WireError(f"a command needs a non-empty name, not {name!r}")
    if not isinstance(arguments, dict) or not all(isinstance(key, str) for key in arguments):
        raise WireError(f"command {name!r}: arguments must be a dict with string keys")
    if sequence > MAX_VALUE or not 0 <= time_ms <= MAX_VALUE:
        raise WireError(f"command {name!r}: sequence or time out of range")
    if not 0 <= first_unanswered <= sequence:
        raise WireError(f"command {name!r}: first_unanswered is not in [0, sequence]")
    try:
        encoded = _ENCODER.encode(arguments).encode()
        command = pb.Command(
            name=name,
            arguments=encoded,
            client_id=client_id,
            sequence=sequence,
            time_ms=time_ms,
            first_unanswered=first_unanswered,
        )
    except (TypeError, ValueError, RecursionError) as error:
        raise WireError(f"cannot encode command {name!r}: {error}") from error
    return command.SerializeToString()


@dataclass(frozen=True, slots=True)
class DecodedCommand:
    """Every field of a command as ``decode_envelope`` read it."""

    name: str
    arguments: dict[str, Any]
    client_id: str
    sequence: int
    time_ms: int
    first_unanswered: int = 0
    """The session's ack floor the client sent (0: none, read as ``sequence``)."""


def decode_command(data: bytes) -> tuple[str, dict[str, Any], str, int]:
    """Parse what ``encode_command`` wrote into ``(name, arguments, client_id, sequence)``."""
    command = decode_envelope(data)
    return command.name, command.arguments, command.client_id, command.sequence


def decode_envelope(data: bytes) -> DecodedCommand:
    """Parse what ``encode_command`` wrote, the session fields and log time included."""
    wire = pb.Command()
    try:
        wire.ParseFromString(data)
    except DecodeError as error:
        raise WireError(f"malformed command ({len(data)} bytes): {error}") from None
    if not wire.name:
        raise WireError("command without a name")
    if wire.sequence > MAX_VALUE or wire.time_ms > MAX_VALUE:
        raise WireError(f"command {wire.name!r}: sequence or time out of range")
    if wire.first_unanswered > wire.sequence:
        raise WireError(f"command {wire.name!r}: first_unanswered above its sequence")
    arguments = _decode_json(wire.arguments, f"command {wire.name!r}: arguments")
    if not isinstance(arguments, dict):
        raise WireError(
            f"command {wire.name!r}: arguments are a JSON {type(arguments).__name__}, not an object"
        )
    return DecodedCommand(
        wire.name, arguments, wire.client_id, wire.sequence, wire.time_ms, wire.first_unanswered
    )


def encode_result(ok: bool, value: Any = None, error: str = "") -> bytes:
    """Serialise the outcome of applying a command: its JSON value when ``ok``, else ``error``."""
    if ok and error:
        raise WireError("a successful result carries no error")
    if not ok and (value is not None or not error):
        raise WireError("a failed result carries an error message and no value")
    try:
        encoded = _ENCODER.encode(value).encode() if ok else b""
        result = pb.CommandResult(ok=ok, value=encoded, error=error)
    except (TypeError, ValueError, RecursionError) as cause:
        raise WireError(f"cannot encode result: {cause}") from cause
    return result.SerializeToString()


def decode_result(data: bytes) -> tuple[bool, Any, str]:
    """Parse what ``encode_result`` wrote into ``(ok, value, error)``."""
    wire = pb.CommandResult()
    try:
        wire.ParseFromString(data)
    except DecodeError as error:
        raise WireError(f"malformed result ({len(data)} bytes): {error}") from None
    if wire.ok:
        if wire.error:
            raise WireError("successful result with an error message")
        return True, _decode_json(wire.value, "result value"), ""
    if wire.value or not wire.error:
        raise WireError("failed result without an error message, or with a value")
    return False, None, wire.error


def _reject_constant(constant: str) -> None:
    raise ValueError(f"{constant} is not JSON")


_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False)
"""Compact strict JSON, built once: ``json.dumps`` with options builds one per call."""
_DECODER = json.JSONDecoder(parse_constant=_reject_constant)
"""Strict JSON (no NaN or Infinity), built once for the same reason."""


def _decode_json(data: bytes, what: str) -> Any:
    """Parse strict JSON (UTF-8, no NaN or Infinity), raising ``WireError`` on anything else."""
    try:
        return _DECODER.decode(data.decode())
    except (ValueError, RecursionError) as error:
        # UnicodeDecodeError and JSONDecodeError are ValueErrors; nesting deep enough
        # to exhaust the stack is a RecursionError.
        raise WireError(f"{what}: not valid JSON ({error})") from None
