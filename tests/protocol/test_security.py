"""Signatures that cannot be replayed or moved, secrets strong enough, one wire bound,
snapshots checked whole, commands checked before proposing (in process, no sockets)."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from django.test import override_settings

from django_raft import commands
from django_raft.conf import raft_settings
from django_raft.core import (
    Config,
    ConfState,
    MemoryStorage,
    Message,
    MessageType,
    RawNode,
    SnapshotMetadata,
    bootstrap,
)
from django_raft.exceptions import InvalidRequestError
from django_raft.node.statemachine import StateMachine, check_snapshot
from django_raft.proto import raft_pb2 as pb
from django_raft.protocol.auth import (
    ANY_NODE,
    CLIENT,
    DIGEST_HEADER,
    NODE,
    NODE_HEADER,
    NONCE_HEADER,
    RECEIVER_HEADER,
    SIGNATURE_HEADER,
    TIME_HEADER,
    Checked,
    NonceCache,
    Signer,
    Verifier,
    derive_keys,
    generate_secret,
)
from django_raft.protocol.wire import MAX_VALUE, WireError, decode_message, encode_message

SECRET = generate_secret()
KEYS = derive_keys(SECRET)
PATH = "/raft/rpc/appendEntries"


def verifier(**kwargs: Any) -> Verifier:
    return Verifier(KEYS, "n2", window=30, **kwargs)


def check(v: Verifier, headers: dict[str, str], path: str = PATH, kinds: Any = (NODE,)) -> Any:
    return v.check("POST", path, headers.get, 3, kinds)


def node_headers(body: bytes = b"abc", receiver: str = "n2", path: str = PATH) -> dict[str, str]:
    return Signer(KEYS.node, NODE, "n1").headers("POST", path, receiver, body)


def test_a_signed_request_passes_once_and_its_body_must_match() -> None:
    v = verifier()
    headers = node_headers()
    checked = check(v, headers)
    assert isinstance(checked, Checked) and checked.sender == "n1" and checked.kind == NODE
    assert checked.body_matches(b"abc") and not checked.body_matches(b"abd")
    assert "replayed" in check(v, headers)  # the same request again: refused


@pytest.mark.parametrize("header", [NODE_HEADER, TIME_HEADER, NONCE_HEADER, DIGEST_HEADER])
def test_the_signature_covers_every_header(header: str) -> None:
    headers = node_headers()
    value = headers[header]
    headers[header] = (
        "n3" if header == NODE_HEADER else value[:-1] + ("1" if value[-1] == "0" else "0")
    )
    refused = check(verifier(), headers)
    assert "wrong signature" in refused, header


def test_the_signature_covers_the_receiver() -> None:
    headers = node_headers(receiver="n2")
    headers[RECEIVER_HEADER] = "n3"
    assert "wrong signature" in check(Verifier(KEYS, "n3", window=30), headers)


def test_the_signature_covers_method_and_path() -> None:
    headers = node_headers()
    assert isinstance(check(verifier(), headers, path="/raft/rpc/requestVote"), str)
    assert isinstance(verifier().check("PUT", PATH, headers.get, 3, (NODE,)), str)


def test_a_request_for_another_node_is_refused() -> None:
    assert "addressed to 'n3'" in check(verifier(), node_headers(receiver="n3"))
    # "any node" is for clients only.
    assert "addressed to '*'" in check(verifier(), node_headers(receiver=ANY_NODE))


def test_a_client_key_cannot_speak_raft_and_a_client_secret_gives_no_node_key() -> None:
    client = Signer(KEYS.client, CLIENT, "n1").headers("POST", PATH, "n2", b"abc")
    assert "wrong signature" in check(verifier(), client)
    assert isinstance(check(verifier(), client, kinds=(CLIENT, NODE)), Checked)
    web = derive_keys("", client_secret=SECRET)  # a web process holding CLIENT_SECRET only
    separate = derive_keys(generate_secret(), client_secret=SECRET)
    assert web.client == separate.client and web.node != separate.node


def test_requests_outside_the_window_are_refused() -> None:
    headers = node_headers()
    now = int(headers[TIME_HEADER]) / 1000
    assert "time window" in check(verifier(clock=lambda: now + 31), headers)
    assert "time window" in check(verifier(clock=lambda: now - 31), headers)
    assert isinstance(check(verifier(clock=lambda: now + 29), headers), Checked)


def test_the_nonce_memory_is_bounded_and_forgets_nothing_it_could_accept() -> None:
    cache = NonceCache(window=30, capacity=3)
    for n in range(5):
        assert cache.admit(f"{n:032x}", 100.0 + n, 110.0) is None
    assert len(cache) == 3 and cache.floor == 101.0
    # The evicted nonces are older than the floor: a replay of them is refused anyway.
    assert cache.admit(f"{0:032x}", 100.0, 110.0) is not None
    assert cache.admit(f"{1:032x}", 101.0, 110.0) is not None
    assert cache.admit(f"{4:032x}", 104.0, 110.0) is not None  # remembered


@pytest.mark.parametrize(
    "bad",
    ["é" * 64, "\ud800" * 64, "", "0" * 63, "Z" * 64, "0" * 10_000, "\x00" * 64],
    ids=repr,
)
def test_any_header_value_is_a_refusal_never_an_exception(bad: str) -> None:
    for header in (SIGNATURE_HEADER, NONCE_HEADER, TIME_HEADER, DIGEST_HEADER, NODE_HEADER):
        headers = node_headers()
        headers[header] = bad
        assert isinstance(check(verifier(), headers), str), header


# -- secrets ---------------------------------------------------------------------------------

NODE_SETTINGS = {"NODE_ID": "n1", "ADDRESS": "http://127.0.0.1:8001"}


@pytest.mark.parametrize("secret", ["", "dev", "x" * 31])
def test_a_node_refuses_to_start_with_an_empty_or_short_secret(secret: str) -> None:
    with override_settings(DJANGO_RAFT={**NODE_SETTINGS, "SECRET": secret}):
        [problem] = raft_settings.coded_problems(node=True)
        assert problem[0] == "weak-secret" and "token_urlsafe(48)" in problem[1]
    allowed = {**NODE_SETTINGS, "SECRET": secret, "ALLOW_WEAK_SECRET": True}
    with override_settings(DJANGO_RAFT=allowed):
        assert raft_settings.coded_problems(node=True) == []


def test_a_generated_secret_is_strong_and_a_short_client_secret_is_refused() -> None:
    with override_settings(DJANGO_RAFT={**NODE_SETTINGS, "SECRET": generate_secret()}):
        assert raft_settings.coded_problems(node=True) == []
    with override_settings(DJANGO_RAFT={"CLIENT_SECRET": "short"}):
        assert [what for what, _ in raft_settings.coded_problems()] == ["weak-client-secret"]


def test_tls_settings_must_make_a_set(tmp_path: Any) -> None:
    cert = tmp_path / "cert.pem"
    cert.write_text("x")
    cases = {
        "tls-pair": {"TLS_CERT": str(cert)},
        "tls-client-auth-without-ca": {
            "TLS_CERT": str(cert),
            "TLS_KEY": str(cert),
            "TLS_CLIENT_AUTH": True,
        },
        "tls-file": {"TLS_CA": str(tmp_path / "missing.pem")},
    }
    for what, values in cases.items():
        with override_settings(DJANGO_RAFT=values):
            assert [w for w, _ in raft_settings.coded_problems()] == [what]


# -- the wire's one bound --------------------------------------------------------------------


@pytest.mark.parametrize("field", ["term", "log_term", "index", "commit", "reject_hint", "offset"])
def test_values_past_the_bound_are_refused_both_ways(field: str) -> None:
    message = Message(type=MessageType.HEARTBEAT, to="n2", sender="n1")
    values: dict[str, Any] = {field: MAX_VALUE}
    fine = dataclasses.replace(message, **values)
    assert getattr(decode_message(encode_message(fine)), field) == MAX_VALUE
    with pytest.raises(WireError):
        encode_message(dataclasses.replace(message, **{**values, field: MAX_VALUE + 1}))
    wire = pb.Message(type=pb.MESSAGE_TYPE_HEARTBEAT, to="n2", sender="n1")
    setattr(wire, field, 2**63 - 1)  # what 52a15dc accepted, and then could not go past
    with pytest.raises(WireError, match="out of range"):
        decode_message(wire.SerializeToString())


# -- snapshots -------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_snapshot_is_checked_whole() -> None:
    machine = StateMachine("default", "a")
    data = machine.save()
    conf = ConfState(())
    good = SnapshotMetadata(5, 1, conf)
    from django_raft.core import Snapshot

    assert check_snapshot(Snapshot(good, data)) is None
    flipped = bytearray(data)
    flipped[len(flipped) // 2] ^= 1
    for bad in (b"", b"garbage", data[:-1], bytes(flipped), data + b"x"):
        assert check_snapshot(Snapshot(good, bad)) is not None
    other = SnapshotMetadata(5, 1, ConfState(("z",)))
    assert "members" in str(check_snapshot(Snapshot(other, data)))


def test_the_core_keeps_nothing_of_a_snapshot_its_host_refuses() -> None:
    storage = MemoryStorage()
    storage.persist(*bootstrap(["a", "b"]))
    refused: list[bytes] = []

    def refuse(snapshot: Any) -> str:
        refused.append(snapshot.data)
        return "garbage"

    node = RawNode(Config(id="b", snapshot_check=refuse), storage)
    before = (storage.snapshot(), storage.last_index())
    chunk = Message(
        type=MessageType.SNAPSHOT,
        to="b",
        sender="a",
        term=2,
        snapshot=SnapshotMetadata(50, 2, ConfState(("a", "b"))),
        data=b"garbage",
        done=True,
    )
    node.step(chunk)
    ready = node.ready()
    assert ready.snapshot is None and refused == [b"garbage"]
    assert node.dropped["snapshot_invalid"] == 1
    [answer] = [m for m in ready.messages if m.type is MessageType.SNAPSHOT_RESPONSE]
    assert answer.reject and answer.offset == 0  # the leader starts the transfer again
    node.advance(ready)
    assert (storage.snapshot(), storage.last_index()) == before


# -- commands --------------------------------------------------------------------------------


def test_commands_that_could_only_fail_are_refused_before_proposing() -> None:
    def handler(context: Any, key: str, by: int = 1) -> None: ...

    def batch(context: Any, calls: Any) -> list[Any]:
        return []

    with commands.preserved():
        commands.reset()
        commands.register("t.one", handler)
        commands.register("t.batch", batch, batch=True, arguments=handler)
        commands.register("t.free", batch, batch=True)
        commands.check_call("t.one", {"key": "k"}, 10, 100)
        commands.check_call("t.batch", {"key": "k", "by": 2}, 10, 100)
        commands.check_call("t.free", {"anything": 1}, 10, 100)
        cases: list[tuple[str, dict[str, Any], int]] = [
            ("t.none", {}, 10),
            ("t.one", {}, 10),
            ("t.one", {"key": "k", "extra": 1}, 10),
            ("t.batch", {"by": 2}, 10),
            ("t.one", {"key": "k"}, 101),
        ]
        for name, arguments, size in cases:
            with pytest.raises(InvalidRequestError):
                commands.check_call(name, arguments, size, 100)


# -- senders only for members ----------------------------------------------------------------


def test_the_transport_starts_senders_only_for_members_and_stops_removed_ones() -> None:
    import threading

    from django_raft.node.transport import Transport

    transport = Transport("n1", SECRET, "raft/", 0.2)
    transport.set_address("n2", "http://127.0.0.1:9")  # a member (nobody listens there)
    before = threading.active_count()
    try:
        transport.send(
            [
                Message(type=MessageType.HEARTBEAT, to=f"ghost{n}", sender="n1", term=1)
                for n in range(20)
            ]
        )
        assert threading.active_count() == before and not transport._peers
        transport.send([Message(type=MessageType.HEARTBEAT, to="n2", sender="n1", term=1)])
        senders = [lane.sender for lane in transport._peers["n2"]]
        assert senders and all(sender.is_alive() for sender in senders)
        transport.forget("n2")
        for sender in senders:
            sender.join(timeout=5)
        assert not any(sender.is_alive() for sender in senders) and not transport._peers
        transport.send([Message(type=MessageType.HEARTBEAT, to="n2", sender="n1", term=1)])
        assert not transport._peers  # forgotten: no new senders either
    finally:
        transport.stop()
