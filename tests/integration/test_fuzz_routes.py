"""Property-based fuzzing of every route of a live node (a real ``raftnode`` process).

Random and mutated protobuf messages and JSON bodies, unsigned, signed with the node
key, the client key, another cluster's key, or with a corrupted signature. For every
request: no 5xx, every error a JSON answer, the node still running, and a refused
request changes nothing the node stores (hard state, log, replicated data). Random and
mutated frames on a command stream: typed answers or a closed stream, never a crash.

``RAFT_FUZZ_EXAMPLES`` sets the examples per route (default 25: a few hundred in all).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from django_raft.core import (
    ConfState,
    Entry,
    EntryType,
    Message,
    SnapshotMetadata,
)
from django_raft.node.http import command_streams
from django_raft.node.transport import BATCH_PATH, PATHS, frame
from django_raft.protocol import command_stream
from django_raft.protocol.auth import CLIENT, NODE, NONCE_HEADER, SIGNATURE_HEADER, derive_keys
from django_raft.protocol.connection import NodeConnection
from django_raft.protocol.stream import FrameError, FrameParser, FrameWriter
from django_raft.protocol.wire import WireError, encode_message
from tests.signing import signed

from .cluster import SECRET, Cluster, Node, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

EXAMPLES = int(os.environ.get("RAFT_FUZZ_EXAMPLES", "25"))
RPC_ROUTES = [f"rpc/{path}" for path in sorted(set(PATHS.values()))] + [f"rpc/{BATCH_PATH}"]
CLIENT_ROUTES = ["command", "status", "members", "overview", "transfer", "snapshot"]
OTHER_SECRET = "another-cluster-" + "o" * 32
COUNTS: Counter[str] = Counter()


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    cluster = Cluster(tmp_path_factory.mktemp("fuzz"), size=1)
    try:
        cluster.start()
        leader = cluster.leader()
        assert leader.do("kv.set", key="k", value="v")["ok"]
        yield leader
    finally:
        cluster.close()
        print(f"\nfuzz examples per route: {json.dumps(dict(sorted(COUNTS.items())))}")


def stored(node: Node) -> tuple[Any, ...]:
    """What a refused request must not change (term, vote, log, state; not the commit
    index, volatile, which the node writes on its own once a second)."""
    last = node.query('SELECT MAX("index") FROM django_raft_logentry')
    return node.hard_state()[:2], last, node.kv()


def settle(node: Node) -> None:
    """Wait until the node leads again with everything applied (after an accepted RPC)."""

    def settled() -> bool:
        status = node.status()
        return bool(status["state"] == "leader" and status["applied"] == status["last_index"])

    wait_for(settled, 10, "the node to lead again")


senders = st.sampled_from(["n2", "n2", "n1", "ghost", ""])
numbers = st.one_of(st.integers(0, 5), st.integers(0, 2**64 - 1))
messages = st.builds(
    Message,
    type=st.sampled_from(list(PATHS)),
    to=st.sampled_from(["n1", "n1", "n2", ""]),
    sender=senders,
    term=numbers,
    log_term=numbers,
    index=numbers,
    entries=st.lists(
        st.builds(
            Entry,
            index=numbers,
            term=numbers,
            type=st.sampled_from(list(EntryType)),
            data=st.binary(max_size=40),
        ),
        max_size=3,
    ).map(tuple),
    commit=numbers,
    reject=st.booleans(),
    reject_hint=numbers,
    snapshot=st.none()
    | st.builds(
        SnapshotMetadata,
        index=numbers,
        term=numbers,
        conf_state=st.builds(ConfState, voters=st.just(("n1",))),
    ),
    offset=numbers,
    data=st.binary(max_size=100),
    done=st.booleans(),
    context=st.binary(max_size=20),
    transfer=st.booleans(),
)


def encoded(message: Message) -> bytes:
    try:
        return encode_message(message)
    except WireError:
        return b"\x08\x01"


def framed(batch: list[Message]) -> bytes:
    """The batch route's body for the messages that can be encoded."""
    return frame([m for m in batch if encoded(m) != b"\x08\x01"])


@st.composite
def mutated(draw: st.DrawFn, data: bytes) -> bytes:
    """``data`` with a few bytes flipped, cut, or inserted."""
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "cut", "insert"]))
        position = draw(st.integers(0, max(0, len(out) - 1)))
        if kind == "flip" and out:
            out[position] ^= 1 << draw(st.integers(0, 7))
        elif kind == "cut":
            del out[position:]
        else:
            out[position:position] = draw(st.binary(min_size=1, max_size=8))
    return bytes(out)


protobuf_bodies = st.one_of(
    st.binary(max_size=300),
    messages.map(encoded),
    messages.map(encoded).flatmap(mutated),
    st.lists(messages, max_size=4).map(lambda batch: framed(batch)),
    st.lists(messages, min_size=1, max_size=3).map(lambda batch: framed(batch)).flatmap(mutated),
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=10,
)
json_objects = st.fixed_dictionaries(
    {},
    optional={
        "name": st.sampled_from(["kv.set", "kv.incr", "no.such", ""]) | st.text(max_size=10),
        "arguments": json_values,
        "timeout": st.sampled_from([0.5, 0, -1, 10**9, "1"]) | json_values,
        "node_id": st.text(max_size=10).map(lambda t: f"fz{t}") | json_values,
        "remove": st.booleans(),
        "role": st.sampled_from(["voter", "learner", "boss"]),
        "address": st.text(max_size=20),
        "hops": st.integers(-2, 5) | json_values,
    },
)
json_bodies = st.one_of(
    json_objects.map(lambda o: json.dumps(o).encode()),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=200),
    json_objects.map(lambda o: json.dumps(o).encode()).flatmap(mutated),
)
signings = st.sampled_from(["none", "node", "client", "other-secret", "corrupt"])


def send(node: Node, route: str, body: bytes, signing: str) -> requests.Response:
    url = f"{node.address}/raft/{route}"
    headers: dict[str, Any] = {}
    rpc = route.startswith("rpc/")
    if signing != "none":
        kind = NODE if signing in ("node", "corrupt") and rpc else CLIENT
        if signing == "node" and not rpc:
            kind = NODE
        secret = OTHER_SECRET if signing == "other-secret" else SECRET
        receiver = node.node_id if kind == NODE else "*"
        headers.update(signed(url, body, secret, "n2", kind, receiver))
        if signing == "corrupt":
            headers[SIGNATURE_HEADER] = b"\xc3\xa9" + headers[SIGNATURE_HEADER][2:].encode()
    return requests.post(url, data=body, headers=headers, timeout=15)


def check(node: Node, route: str, body: bytes, signing: str) -> None:
    COUNTS[route] += 1
    before = stored(node)
    response = send(node, route, body, signing)
    # 501: the node in this process has no snapshot on demand (the only 5xx allowed).
    unsupported = route == "snapshot" and response.status_code == 501
    assert response.status_code < 500 or unsupported, (route, signing, body[:80], response.text)
    assert response.headers["Content-Type"].startswith(
        ("application/json", "application/x-protobuf")
    ), response.headers
    if response.status_code >= 400:
        assert response.json()["ok"] is False
        assert node.running()
        assert stored(node) == before, (route, signing, body[:80], response.text[:300])
    else:
        settle(node)


fuzz_settings = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.mark.parametrize("route", RPC_ROUTES)
@fuzz_settings
@given(body=protobuf_bodies, signing=signings)
def test_rpc_routes_survive_anything(node: Node, route: str, body: bytes, signing: str) -> None:
    check(node, route, body, signing)


@pytest.mark.parametrize("route", CLIENT_ROUTES)
@fuzz_settings
@given(body=json_bodies, signing=signings)
def test_client_routes_survive_anything(node: Node, route: str, body: bytes, signing: str) -> None:
    check(node, route, body, signing)


@fuzz_settings
@given(path=st.text(max_size=30), method=st.sampled_from(["GET", "PUT", "DELETE", "PATCH"]))
def test_other_methods_and_paths_are_json_errors(node: Node, path: str, method: str) -> None:
    COUNTS["other methods and paths"] += 1
    before = stored(node)
    response = requests.request(method, f"{node.address}/raft/{path}", timeout=15)
    assert response.status_code < 500 and node.running()
    if response.status_code >= 400:
        assert response.json()["ok"] is False
        assert stored(node) == before
    status = requests.get(f"{node.address}/raft/metrics", timeout=15)
    assert status.status_code == 200


def test_the_node_is_still_healthy(node: Node, tmp_path: Path) -> None:
    assert node.running()
    assert node.do("kv.set", key="after-fuzz", value="ok")["ok"]
    wait_for(lambda: node.kv().get("after-fuzz") == "ok", 10, "the command to apply")


frame_requests = st.lists(
    st.tuples(st.integers(-2, 2**64), st.one_of(json_objects, json_values)), max_size=5
).map(lambda pairs: json.dumps([list(pair) for pair in pairs]).encode())
frame_payloads = st.one_of(
    frame_requests,
    frame_requests.flatmap(mutated),
    json_values.map(lambda value: json.dumps(value).encode()),
    st.binary(max_size=200),
)


class Stream:
    """A command stream to the node, signed with the client key, read by hand."""

    def __init__(self, node: Node) -> None:
        url = f"{node.address}/raft/{command_stream.PATH}"
        headers = signed(url, b"", SECRET, "fuzz", CLIENT)
        self.connection = NodeConnection(node.address, 15, None)
        status, answer = self.connection.post(urlsplit(url).path, b"", headers, 4096)
        assert status == 200, answer
        self.sock = self.connection.detach()
        self.sock.settimeout(15)
        up, down = command_stream.stream_keys(
            derive_keys(SECRET).client, headers[NONCE_HEADER], "fuzz", node.node_id
        )
        self.writer, self.parser = FrameWriter(up), FrameParser(down)

    def answers(self, count: int) -> list[Any] | None:
        """The next ``count`` answers; None when the node closed the stream."""
        found: list[Any] = []
        while len(found) < count:
            data = self.sock.recv(1 << 16)
            if not data:
                return None
            for payload in self.parser.feed(data):
                if payload:  # an empty frame answers a ping (an empty frame sent)
                    found.extend(json.loads(payload))
        return found

    def close(self) -> None:
        self.sock.close()
        self.connection.close()


@fuzz_settings
@given(payload=frame_payloads)
def test_the_command_stream_survives_anything(node: Node, payload: bytes) -> None:
    """Any frame (well tagged: the key holder's bugs, not a stranger's) is either a
    valid frame of requests, each answered with a typed answer, or closes the stream;
    the node keeps running and opens the next stream."""
    COUNTS["command/stream"] += 1
    stream = Stream(node)
    try:
        try:
            expected: int | None = len(command_streams.requests_of(payload))
        except FrameError:
            expected = None
        stream.sock.sendall(stream.writer.frame(payload))
        if expected is None:
            assert stream.answers(1) is None
        else:
            answers = stream.answers(expected)
            assert answers is not None and len(answers) == expected
            for number, answer in answers:
                assert isinstance(number, int) and isinstance(answer["ok"], bool)
                assert answer["ok"] or answer["error_type"] not in ("", "NodeServerError"), answer
    finally:
        stream.close()
    assert node.running()
