"""The protobuf wire format: every message round-trips, and malformed bytes are refused.

Decoding must turn anything malformed into a ``WireError`` and nothing else: a peer
that sends garbage may not crash the node nor reach the core.
"""

from __future__ import annotations

import dataclasses
import json
import random
from collections.abc import Callable
from typing import Any

import pytest

from django_raft.core import (
    LOCAL_MESSAGES,
    ConfState,
    Entry,
    EntryType,
    Message,
    MessageType,
    SnapshotMetadata,
)
from django_raft.proto import raft_pb2 as pb
from django_raft.protocol.wire import (
    MAX_VALUE,
    WireError,
    decode_command,
    decode_message,
    decode_result,
    encode_command,
    encode_message,
    encode_result,
)

NETWORK_MESSAGES = [kind for kind in MessageType if kind not in LOCAL_MESSAGES]
LOCAL_MESSAGE_TYPES = [kind for kind in MessageType if kind in LOCAL_MESSAGES]
SNAPSHOT = SnapshotMetadata(
    index=120,
    term=7,
    conf_state=ConfState(voters=("n1", "n2", "n3"), learners=("n4",), removed=("n0",)),
)


def full_message(kind: MessageType) -> Message:
    """A message of ``kind`` with every field set to something other than its default."""
    entries: tuple[Entry, ...] = ()
    if kind is MessageType.APPEND:
        entries = (
            Entry(101, 6, EntryType.NORMAL, b""),
            Entry(102, 7, EntryType.CONF_CHANGE, b'{"type":"add_voter"}'),
            Entry(103, 7, EntryType.NORMAL, bytes(range(256))),
        )
    return Message(
        type=kind,
        to="n2",
        sender="n1",
        term=7,
        log_term=6,
        index=100,
        entries=entries,
        commit=99,
        reject=True,
        reject_hint=42,
        snapshot=SNAPSHOT,
        offset=4096,
        data=b"\x00chunk\xff",
        done=True,
        context=b"read-17",
        transfer=True,
    )


def round_trip(message: Message) -> Message:
    return decode_message(encode_message(message))


def varint(value: int) -> bytes:
    """Protobuf's base-128 varint (negative numbers as their 64-bit two's complement)."""
    value &= (1 << 64) - 1
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def field(number: int, payload: bytes | int) -> bytes:
    """One field: a varint for an int, length-delimited for bytes."""
    if isinstance(payload, int):
        return varint(number << 3) + varint(payload)
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def raw_message(**fields: Any) -> bytes:
    """A ``Message`` built on the protobuf class directly, bypassing ``encode_message``."""
    fields.setdefault("type", pb.MESSAGE_TYPE_APPEND)
    fields.setdefault("to", "n2")
    fields.setdefault("sender", "n1")
    fields.setdefault("term", 5)
    return pb.Message(**fields).SerializeToString()


# -- the schema mirrors the core ----------------------------------------------------------


@pytest.mark.parametrize(
    ("proto", "core"),
    [
        (pb.Entry, Entry),
        (pb.ConfState, ConfState),
        (pb.SnapshotMetadata, SnapshotMetadata),
        (pb.Message, Message),
    ],
)
def test_proto_messages_have_the_core_types_fields(proto: Any, core: Any) -> None:
    proto_fields = set(proto.DESCRIPTOR.fields_by_name)
    assert proto_fields == {f.name for f in dataclasses.fields(core)}


def test_every_network_message_type_has_a_wire_number_and_zero_is_unspecified() -> None:
    names = {name for name, number in pb.MessageType.items() if number}
    assert names == {f"MESSAGE_TYPE_{kind.name}" for kind in NETWORK_MESSAGES}
    assert pb.MessageType.Value("MESSAGE_TYPE_UNSPECIFIED") == 0


def test_entry_types_have_the_core_numbers() -> None:
    assert {pb.EntryType.Value(f"ENTRY_TYPE_{kind.name}") for kind in EntryType} == {
        kind.value for kind in EntryType
    }
    assert all(pb.EntryType.Value(f"ENTRY_TYPE_{kind.name}") == kind for kind in EntryType)
    assert len(pb.EntryType.keys()) == len(EntryType)


# -- round trips ------------------------------------------------------------------------


@pytest.mark.parametrize("kind", NETWORK_MESSAGES, ids=lambda kind: kind.name)
def test_every_field_of_every_message_type_round_trips(kind: MessageType) -> None:
    message = full_message(kind)
    assert round_trip(message) == message


@pytest.mark.parametrize("kind", NETWORK_MESSAGES, ids=lambda kind: kind.name)
def test_a_message_with_default_fields_round_trips(kind: MessageType) -> None:
    message = Message(type=kind, to="n2", sender="n1")
    decoded = round_trip(message)
    assert decoded == message
    assert decoded.snapshot is None


def test_an_empty_snapshot_is_told_from_no_snapshot() -> None:
    message = Message(type=MessageType.SNAPSHOT, to="n2", sender="n1", snapshot=SnapshotMetadata())
    assert round_trip(message).snapshot == SnapshotMetadata()


def test_largest_values_and_unicode_node_ids_round_trip() -> None:
    message = Message(
        type=MessageType.APPEND,
        to="nœud-2 🚀",
        sender="узел-1",
        term=MAX_VALUE,
        log_term=MAX_VALUE,
        index=MAX_VALUE - 1,
        entries=(Entry(MAX_VALUE, MAX_VALUE, EntryType.NORMAL, b"x" * (1 << 20)),),
        commit=MAX_VALUE,
        reject_hint=MAX_VALUE,
        offset=MAX_VALUE,
        snapshot=SnapshotMetadata(MAX_VALUE, MAX_VALUE, ConfState(("ß",), ("日本",))),
    )
    assert round_trip(message) == message


def random_message(rng: random.Random) -> Message:
    kind = rng.choice(NETWORK_MESSAGES)
    term = rng.randrange(MAX_VALUE + 1) if rng.random() < 0.1 else rng.randrange(20)
    index = rng.randrange(1000)
    entries: list[Entry] = []
    if kind is MessageType.APPEND:
        entry_term = rng.randrange(term + 1)
        log_term = entry_term
        for position in range(rng.randrange(5)):
            entry_term = rng.randrange(entry_term, term + 1)
            data = rng.randbytes(rng.randrange(40))
            entries.append(
                Entry(index + 1 + position, entry_term, rng.choice(list(EntryType)), data)
            )
    else:
        log_term = rng.randrange(MAX_VALUE + 1)
    snapshot = None
    if rng.random() < 0.3:
        ids = rng.sample(["a", "b", "c", "d", "e", "ø"], rng.randrange(7))
        split = rng.randrange(len(ids) + 1)
        snapshot = SnapshotMetadata(
            rng.randrange(MAX_VALUE + 1),
            rng.randrange(MAX_VALUE + 1),
            ConfState(tuple(ids[:split]), tuple(ids[split:])),
        )
    return Message(
        type=kind,
        to=rng.choice(["n1", "n2", "a" * 300]),
        sender=rng.choice(["n3", "x"]),
        term=term,
        log_term=log_term,
        index=index,
        entries=tuple(entries),
        commit=rng.randrange(MAX_VALUE + 1),
        reject=rng.random() < 0.5,
        reject_hint=rng.randrange(MAX_VALUE + 1),
        snapshot=snapshot,
        offset=rng.randrange(MAX_VALUE + 1),
        data=rng.randbytes(rng.randrange(50)),
        done=rng.random() < 0.5,
        context=rng.randbytes(rng.randrange(10)),
        transfer=rng.random() < 0.5,
    )


def test_random_messages_round_trip() -> None:
    rng = random.Random(20240601)
    for _ in range(500):
        message = random_message(rng)
        assert round_trip(message) == message


# -- encoding refuses what cannot cross -------------------------------------------------


@pytest.mark.parametrize("kind", LOCAL_MESSAGE_TYPES, ids=lambda kind: kind.name)
def test_local_messages_are_never_encoded(kind: MessageType) -> None:
    with pytest.raises(WireError, match="local"):
        encode_message(Message(type=kind, to="n2", sender="n1"))


@pytest.mark.parametrize(
    "message",
    [
        Message(type=MessageType.APPEND, to="n2", sender="n1", term=-1),
        Message(type=MessageType.APPEND, to="n2", sender="n1", commit=1 << 64),
        Message(type=MessageType.APPEND, to="\ud800", sender="n1"),
        Message(
            type=MessageType.APPEND, to="n2", sender="n1", entries=(Entry(-1, 1, EntryType.NORMAL),)
        ),
    ],
)
def test_values_protobuf_cannot_hold_are_refused(message: Message) -> None:
    with pytest.raises(WireError):
        encode_message(message)


# -- decoding refuses anything malformed ------------------------------------------------


@pytest.mark.parametrize("number", [0, 14, 99, 2**31 - 1, -1])
def test_unspecified_unknown_and_local_message_types_are_refused(number: int) -> None:
    # The local types have no wire number, so they fall among the unknown ones.
    data = field(1, number) + field(2, b"n2") + field(16, b"n1")
    with pytest.raises(WireError, match="type"):
        decode_message(data)


def test_a_message_without_sender_or_recipient_is_refused() -> None:
    with pytest.raises(WireError, match="sender"):
        decode_message(raw_message(sender=""))
    with pytest.raises(WireError, match="recipient"):
        decode_message(raw_message(to=""))


@pytest.mark.parametrize("name", ["term", "log_term", "index", "commit", "reject_hint", "offset"])
@pytest.mark.parametrize("value", [MAX_VALUE + 1, (1 << 64) - 1])
def test_values_past_a_signed_64_bit_column_are_refused(name: str, value: int) -> None:
    with pytest.raises(WireError, match=f"{name} {value} is out of range"):
        decode_message(raw_message(**{name: value}))


@pytest.mark.parametrize(
    ("entries", "error"),
    [
        ([pb.Entry(index=11, term=5, type=2)], "unknown type 2"),  # type: ignore[arg-type]
        ([pb.Entry(index=11, term=5, type=99)], "unknown type 99"),  # type: ignore[arg-type]
        ([pb.Entry(index=12, term=5)], "entry 12 where entry 11 belongs"),
        ([pb.Entry(index=11, term=5), pb.Entry(index=13, term=5)], "entry 13 where entry 12"),
        ([pb.Entry(index=11, term=5), pb.Entry(index=11, term=5)], "entry 11 where entry 12"),
        ([pb.Entry(index=11, term=3)], "term 3, outside"),
        ([pb.Entry(index=11, term=6)], "term 6, outside"),
        ([pb.Entry(index=11, term=5), pb.Entry(index=12, term=4)], "term 4, outside"),
    ],
)
def test_entries_must_follow_prev_log_index_with_known_types_and_sane_terms(
    entries: list[pb.Entry], error: str
) -> None:
    data = raw_message(index=10, log_term=4, term=5, entries=entries)
    with pytest.raises(WireError, match=error):
        decode_message(data)


def test_entries_past_the_largest_index_are_refused() -> None:
    data = raw_message(index=MAX_VALUE, entries=[pb.Entry(index=MAX_VALUE + 1, term=5)])
    with pytest.raises(WireError, match="past index"):
        decode_message(data)


@pytest.mark.parametrize("kind", [k for k in NETWORK_MESSAGES if k is not MessageType.APPEND])
def test_only_append_carries_entries(kind: MessageType) -> None:
    data = raw_message(
        type=pb.MessageType.Value(f"MESSAGE_TYPE_{kind.name}"),
        entries=[pb.Entry(index=1, term=1)],
    )
    with pytest.raises(WireError, match="carries entries"):
        decode_message(data)


@pytest.mark.parametrize(
    ("voters", "learners"),
    [(["a", ""], []), (["a", "a"], []), (["a"], ["b", "b"]), (["a", "b"], ["b"]), ([], [""])],
)
def test_a_snapshot_membership_must_name_each_member_once(
    voters: list[str], learners: list[str]
) -> None:
    snapshot = pb.SnapshotMetadata(
        index=3, term=1, conf_state=pb.ConfState(voters=voters, learners=learners)
    )
    data = raw_message(type=pb.MESSAGE_TYPE_SNAPSHOT, snapshot=snapshot)
    with pytest.raises(WireError, match="membership"):
        decode_message(data)


@pytest.mark.parametrize("name", ["index", "term"])
def test_a_snapshot_past_a_signed_64_bit_column_is_refused(name: str) -> None:
    snapshot = pb.SnapshotMetadata()
    setattr(snapshot, name, MAX_VALUE + 1)
    data = raw_message(type=pb.MESSAGE_TYPE_SNAPSHOT, snapshot=snapshot)
    with pytest.raises(WireError, match="out of range"):
        decode_message(data)


@pytest.mark.parametrize(
    "data",
    [
        field(1, 1) + field(2, b"\xff\xfe") + field(16, b"n1"),  # to
        field(1, 1) + field(2, b"n2") + field(16, b"n\xc3"),  # sender, cut mid-character
        field(1, 9)
        + field(2, b"n2")
        + field(10, field(3, field(1, b"\xed\xa0\x80")))  # a voter: an encoded surrogate
        + field(16, b"n1"),
    ],
)
def test_invalid_utf8_in_strings_is_refused(data: bytes) -> None:
    with pytest.raises(WireError):
        decode_message(data)


def valid_encodings() -> list[bytes]:
    return [
        encode_message(full_message(MessageType.APPEND)),
        encode_message(full_message(MessageType.SNAPSHOT)),
        encode_message(Message(type=MessageType.READ_INDEX, to="n2", sender="n1")),
    ]


@pytest.mark.parametrize("data", valid_encodings(), ids=["append", "snapshot", "read_index"])
def test_every_truncation_of_a_message_is_refused(data: bytes) -> None:
    for length in range(len(data)):
        with pytest.raises(WireError):
            decode_message(data[:length])


def test_every_truncation_of_a_command_or_result_is_refused() -> None:
    for data, decode in [
        (encode_command("kv.set", {"key": "k"}, "client-1", 3), decode_command),
        (encode_result(True, {"n": 1}), decode_result),
        (encode_result(False, error="boom"), decode_result),
    ]:
        for length in range(len(data)):
            with pytest.raises(WireError):
                decode(data[:length])


@pytest.mark.parametrize(
    "decode", [decode_message, decode_command, decode_result], ids=lambda f: f.__name__
)
def test_random_bytes_are_refused(decode: Callable[[bytes], object]) -> None:
    rng = random.Random(7)
    for _ in range(2000):
        with pytest.raises(WireError):
            decode(rng.randbytes(rng.randrange(200)))


@pytest.mark.parametrize(
    ("data", "decode"),
    [
        (encode_command("kv.set", {"key": "k"}), decode_message),
        (encode_result(True, 1), decode_message),
        (encode_result(False, error="boom"), decode_message),
        (pb.Entry(index=1, term=2, data=b"x").SerializeToString(), decode_message),
        (pb.ConfState(voters=["a"]).SerializeToString(), decode_message),
        (pb.SnapshotMetadata(index=1, term=1).SerializeToString(), decode_message),
        (encode_message(full_message(MessageType.APPEND)), decode_command),
        (encode_result(True, {"a": 1}), decode_command),
        (encode_message(full_message(MessageType.APPEND)), decode_result),
        (encode_command("kv.set", {"key": "k"}, "client-1", 3), decode_result),
    ],
    ids=[
        "command-as-message",
        "result-as-message",
        "failed-result-as-message",
        "entry-as-message",
        "conf-state-as-message",
        "snapshot-metadata-as-message",
        "message-as-command",
        "result-as-command",
        "message-as-result",
        "command-as-result",
    ],
)
def test_a_valid_protobuf_of_another_message_is_refused(
    data: bytes, decode: Callable[[bytes], object]
) -> None:
    with pytest.raises(WireError):
        decode(data)


def random_protobuf(rng: random.Random, depth: int = 0) -> bytes:
    """Well-formed protobuf of random fields: it parses, so the checks after parsing run."""
    parts = []
    for _ in range(rng.randrange(8)):
        number = rng.randrange(1, 20)
        if rng.random() < 0.5:
            parts.append(field(number, rng.choice([0, 1, 2, 13, 14, MAX_VALUE + 1, -1])))
        elif depth < 2 and rng.random() < 0.3:
            parts.append(field(number, random_protobuf(rng, depth + 1)))
        else:
            parts.append(field(number, rng.choice([b"", b"n1", b"{}", b"\xff", b"[1]"])))
    return b"".join(parts)


def message_head(rng: random.Random) -> bytes:
    """The fields every message needs, so that random fields after them get checked."""
    return field(1, rng.randrange(1, 14)) + field(2, b"n2") + field(16, b"n1")


@pytest.mark.parametrize(
    ("decode", "encode", "head"),
    [
        (decode_message, encode_message, message_head),
        (decode_command, lambda decoded: encode_command(*decoded), lambda rng: b""),
        (decode_result, lambda decoded: encode_result(*decoded), lambda rng: b""),
    ],
    ids=["message", "command", "result"],
)
def test_random_protobuf_decodes_to_a_valid_value_or_raises_wire_error(
    decode: Callable[[bytes], Any],
    encode: Callable[[Any], bytes],
    head: Callable[[random.Random], bytes],
) -> None:
    rng = random.Random(11)
    decoded = 0
    for _ in range(3000):
        try:
            value = decode(head(rng) + random_protobuf(rng))
        except WireError:
            continue
        decoded += 1
        # Whatever decoding accepts is a value encoding accepts and reproduces.
        assert decode(encode(value)) == value
    assert decoded > 0


def test_flipped_bytes_decode_to_a_valid_message_or_raise_wire_error() -> None:
    rng = random.Random(3)
    original = encode_message(full_message(MessageType.APPEND))
    for _ in range(3000):
        data = bytearray(original)
        for _ in range(rng.randrange(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        try:
            decoded = decode_message(bytes(data))
        except WireError:
            continue
        assert round_trip(decoded) == decoded


# -- commands and their results -----------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "arguments", "client_id", "sequence"),
    [
        ("kv.set", {"key": "k", "value": "v"}, "", 0),
        ("kv.set", {}, "client-1", 1),
        ("ünï.cødé", {"nested": {"list": [1, 2.5, None, True, "é"]}}, "c", MAX_VALUE),
    ],
)
def test_commands_round_trip(
    name: str, arguments: dict[str, Any], client_id: str, sequence: int
) -> None:
    data = encode_command(name, arguments, client_id, sequence)
    assert decode_command(data) == (name, arguments, client_id, sequence)


def test_command_arguments_cross_as_a_json_object() -> None:
    wire = pb.Command.FromString(encode_command("kv.set", {"key": "k"}))
    assert json.loads(wire.arguments) == {"key": "k"}


@pytest.mark.parametrize(
    ("name", "arguments", "sequence"),
    [
        ("", {}, 0),
        (None, {}, 0),
        ("kv.set", [], 0),
        ("kv.set", {1: "x"}, 0),
        ("kv.set", {"x": {1, 2}}, 0),
        ("kv.set", {"x": float("nan")}, 0),
        ("kv.set", {}, -1),
        ("kv.set", {}, MAX_VALUE + 1),
        ("\ud800", {}, 0),
    ],
)
def test_commands_that_cannot_be_encoded_are_refused(
    name: Any, arguments: Any, sequence: int
) -> None:
    with pytest.raises(WireError):
        encode_command(name, arguments, "", sequence)


def raw_command(name: str = "kv.set", arguments: bytes = b"{}", sequence: int = 0) -> bytes:
    return pb.Command(name=name, arguments=arguments, sequence=sequence).SerializeToString()


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (raw_command(name=""), "without a name"),
        (raw_command(arguments=b""), "not valid JSON"),
        (raw_command(arguments=b"{"), "not valid JSON"),
        (raw_command(arguments=b"[1, 2]"), "a JSON list, not an object"),
        (raw_command(arguments=b'"text"'), "a JSON str, not an object"),
        (raw_command(arguments=b"null"), "a JSON NoneType, not an object"),
        (raw_command(arguments=b'{"x": NaN}'), "NaN is not JSON"),
        (raw_command(arguments=b'{"x": "\xff"}'), "not valid JSON"),
        (raw_command(arguments='{"x": 1}'.encode("utf-16")), "not valid JSON"),
        (raw_command(arguments=b'{"x":' * 100_000), "not valid JSON"),
        (raw_command(arguments=b'{"x": ' + b"9" * 5000 + b"}"), "not valid JSON"),
        (raw_command(sequence=MAX_VALUE + 1), "out of range"),
        (field(1, b"kv.\xff") + field(4, b"{}"), "malformed command"),
    ],
)
def test_malformed_commands_are_refused(data: bytes, error: str) -> None:
    with pytest.raises(WireError, match=error):
        decode_command(data)


@pytest.mark.parametrize(
    ("ok", "value", "error"),
    [
        (True, None, ""),
        (True, 0, ""),
        (True, "", ""),
        (True, {"a": [1, "é"]}, ""),
        (False, None, "KeyError: 'k'"),
    ],
)
def test_results_round_trip(ok: bool, value: Any, error: str) -> None:
    assert decode_result(encode_result(ok, value, error)) == (ok, value, error)


@pytest.mark.parametrize(
    ("ok", "value", "error"),
    [
        (True, None, "boom"),
        (False, None, ""),
        (False, 1, "boom"),
        (True, {1, 2}, ""),
        (True, float("inf"), ""),
        (False, None, "\ud800"),
    ],
)
def test_results_that_cannot_be_encoded_are_refused(ok: bool, value: Any, error: str) -> None:
    with pytest.raises(WireError):
        encode_result(ok, value, error)


@pytest.mark.parametrize(
    ("result", "error"),
    [
        (pb.CommandResult(ok=True, value=b"1", error="boom"), "with an error"),
        (pb.CommandResult(ok=True), "not valid JSON"),
        (pb.CommandResult(ok=True, value=b"Infinity"), "not valid JSON"),
        (pb.CommandResult(ok=False), "without an error"),
        (pb.CommandResult(ok=False, value=b"1", error="boom"), "with a value"),
    ],
)
def test_inconsistent_results_are_refused(result: pb.CommandResult, error: str) -> None:
    with pytest.raises(WireError, match=error):
        decode_result(result.SerializeToString())
