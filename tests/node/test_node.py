"""One real node in this process: its loop, its storage and its HTTP routes.

The node is started with ``server.start_node`` on a free port of 127.0.0.1, over the
test database (SQLite's in-memory test database is shared between the connections of
every thread, so the loop thread sees what the test sees). A single node elects itself,
so commands commit without peers. The routes are called over real HTTP: every kind of
bad input gets a 4xx with a message, and leaves the node running and its stored state
as it was.
"""

from __future__ import annotations

import itertools
import json
import logging
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import pytest
import requests
from cheroot import wsgi
from django.test import override_settings

import django_raft
from demo_project.kv.models import KeyValue
from django_raft import commands, models, signals
from django_raft.commands import Context
from django_raft.core import Entry, EntryType, Message, MessageType
from django_raft.exceptions import CommandError, InvalidRequestError, OverloadedError
from django_raft.node import runner, sessions
from django_raft.node.http import views
from django_raft.node.http.server import start_node
from django_raft.node.runner import RaftNode
from django_raft.node.statemachine import describe_error
from django_raft.node.transport import BATCH_PATH, CONTENT_TYPE, frame, unframe
from django_raft.protocol.auth import NODE, NODE_HEADER, SIGNATURE_HEADER
from django_raft.protocol.wire import WireError, encode_command, encode_message
from tests.integration.cluster import free_port, wait_for
from tests.signing import signed

pytestmark = pytest.mark.django_db(transaction=True)

SECRET = "test-node-secret-" + "x" * 32
NODE_ID = "n1"
EVENT_SIGNALS = {
    "state_changed": signals.state_changed,
    "leader_changed": signals.leader_changed,
    "term_changed": signals.term_changed,
    "committed": signals.committed,
}


@dataclass
class Running:
    """A node running in this process, and the signals it sent."""

    node: RaftNode
    server: wsgi.Server
    address: str
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    events_lock: threading.Lock = field(default_factory=threading.Lock)

    def url(self, route: str) -> str:
        return f"{self.address}/raft/{route}"

    def sent(self, name: str) -> list[dict[str, Any]]:
        with self.events_lock:
            return [arguments for kind, arguments in self.events if kind == name]

    def status(self) -> dict[str, Any]:
        """The node's status as a client gets it, over HTTP."""
        answer = post(self.url("status"), b"{}")
        assert answer.status_code == 200, answer.text
        value: dict[str, Any] = answer.json()["value"]
        return value


Starter = Callable[..., Running]


@pytest.fixture
def start(transactional_db: None) -> Iterator[Starter]:
    """Start the node; ``before_start`` runs first (to connect receivers, say)."""
    stack: list[Callable[[], object]] = []

    def starter(before_start: Callable[[], None] | None = None) -> Running:
        port = free_port()
        address = f"http://127.0.0.1:{port}"
        overridden = override_settings(
            DJANGO_RAFT={
                "SECRET": SECRET,
                "NODE_ID": NODE_ID,
                "ADDRESS": address,
                "REPLICATED_MODELS": ["kv.KeyValue"],
            }
        )
        overridden.enable()
        stack.append(overridden.disable)
        if before_start is not None:
            before_start()
        events: list[tuple[str, dict[str, Any]]] = []
        lock = threading.Lock()
        for name, signal in EVENT_SIGNALS.items():

            def record(name: str = name, **arguments: Any) -> None:
                arguments.pop("signal", None)
                with lock:
                    events.append((name, arguments))

            signal.connect(record, weak=False)
            stack.append(partial(signal.disconnect, record))
        node, server = start_node(
            NODE_ID, address, f"127.0.0.1:{port}", bootstrap=True, join=None, threads=4
        )

        def stop() -> None:
            node.stop()
            server.stop()

        stack.append(stop)
        running = Running(node, server, address, events, lock)
        wait_for(lambda: is_settled_leader(node), 10, "the node to elect itself")
        return running

    try:
        yield starter
    finally:
        while stack:
            stack.pop()()
        assert RaftNode.current is None


@pytest.fixture
def running(start: Starter) -> Running:
    return start()


def settled_status(applied: int) -> dict[str, Any]:
    """The status once it shows ``applied``: the loop updates it just after do() returns."""
    status: dict[str, Any] = wait_for(
        lambda: (status := django_raft.status())["applied"] >= applied and status,
        5,
        f"the status to show index {applied} applied",
    )
    return status


def is_settled_leader(node: RaftNode) -> bool:
    status = node.status()
    return (
        status["state"] == "leader"
        and status["commit"] == status["applied"] == status["last_index"]
        and status["commit"] >= 2  # the bootstrap entry and the new leader's empty entry
    )


def signed_headers(url: str, body: bytes, node: str = "client") -> dict[str, str]:
    if "/rpc/" in url:
        return signed(url, body, SECRET, node, NODE, NODE_ID)
    return signed(url, body, SECRET, node)


def post(url: str, body: bytes, headers: dict[str, str] | None = None) -> requests.Response:
    """POST ``body``, signed with the cluster secret unless ``headers`` says otherwise."""
    return requests.post(
        url,
        data=body,
        headers=signed_headers(url, body) if headers is None else headers,
        timeout=10,
    )


def stored_state() -> dict[str, Any]:
    """Everything the node persists, read from the database."""
    return {
        "hard_state": list(models.HardState.objects.values_list("term", "vote", "commit")),
        "log": [
            (index, term, kind, name, bytes(data))
            for index, term, kind, name, data in models.LogEntry.objects.order_by(
                "index"
            ).values_list("index", "term", "type", "command", "data")
        ],
        "snapshot": list(models.Snapshot.objects.values_list("index", "term")),
        "applied": list(models.AppliedState.objects.values_list("applied_index", "applied_term")),
        "members": list(models.Member.objects.values_list("node_id", "address", "role")),
        "kv": list(KeyValue.objects.order_by("key").values_list("key", "value", "version")),
    }


DIAGNOSTICS = ("max_turn_ms", "messages_dropped", "snapshot_failures")
"""Status fields that count what the node saw, not state it keeps."""


def node_state(running: Running) -> tuple[dict[str, Any], dict[str, Any]]:
    def steady(status: dict[str, Any]) -> dict[str, Any]:
        """The status without its diagnostics (``max_turn_ms`` grows between two reads)."""
        return {k: v for k, v in status.items() if k not in DIAGNOSTICS}

    status = steady(running.status())
    assert status == steady(running.node.status())
    return status, stored_state()


# -- commands -------------------------------------------------------------------------------


def test_a_single_node_elects_itself_and_applies_commands(running: Running) -> None:
    status = django_raft.status()
    assert status["state"] == "leader" and status["leader"] == NODE_ID
    index = status["commit"]
    assert django_raft.do("kv.set", key="a", value="1") == 1
    assert django_raft.do("kv.set", key="a", value="2") == 2
    assert django_raft.do("kv.incr", key="n", by=5) == 5
    assert django_raft.do("kv.get", key="a") == "2"
    assert django_raft.do("kv.delete", key="n") is True
    assert dict(KeyValue.objects.values_list("key", "value")) == {"a": "2"}
    assert KeyValue.objects.get(pk="a").version == 2
    after = settled_status(index + 6)
    assert after["commit"] == after["applied"] == after["last_index"] == index + 6
    names = list(models.LogEntry.objects.filter(index__gt=index).values_list("command", flat=True))
    # The first do() of a thread opens its client session.
    assert names == [sessions.OPEN_SESSION, "kv.set", "kv.set", "kv.incr", "kv.get", "kv.delete"]
    # The commit index alone is written within COMMIT_WRITE_INTERVAL (it is volatile).
    wait_for(lambda: models.HardState.objects.get().commit == index + 6, 5, "the commit")
    assert models.AppliedState.objects.get().applied_index == index + 6


def test_a_raising_handler_is_a_command_error_and_the_node_goes_on(
    running: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    def write_then_fail(context: Context, key: str) -> None:
        KeyValue.objects.using(context.using).create(key=key, value="written", version=1)
        raise ValueError(f"refusing {key!r}")

    monkeypatch.setitem(commands._handlers, "tests.write_then_fail", write_then_fail)
    start = django_raft.status()["last_index"]
    assert django_raft.do("kv.set", key="a", value="x") == 1
    with pytest.raises(CommandError) as raised:
        django_raft.do("tests.write_then_fail", key="b")
    assert raised.value.error == str(raised.value) == "ValueError: refusing 'b'"
    assert raised.value.error == describe_error(ValueError("refusing 'b'"))
    assert not KeyValue.objects.filter(pk="b").exists()  # the handler's write was undone
    with pytest.raises(CommandError, match=r"^ValueError: the value of 'a' is not an integer"):
        django_raft.do("kv.incr", key="a")
    with pytest.raises(CommandError, match=r"^TypeError: by must be an integer, not str"):
        django_raft.do("kv.incr", key="n", by="1")
    # Refused before proposing: they never enter the log.
    with pytest.raises(InvalidRequestError, match=r"no handler is registered for command 'no\.su"):
        django_raft.do("no.such")
    with pytest.raises(InvalidRequestError, match=r"cannot encode command 'kv\.set'"):
        django_raft.do("kv.set", key="c", value=float("nan"))  # refused: not even proposed
    with pytest.raises(InvalidRequestError, match=r"'kv\.set': .*unexpected keyword argument"):
        django_raft.do("kv.set", key="a", value="y", extra=1)
    with pytest.raises(InvalidRequestError, match=r"'kv\.set': missing a required argument"):
        django_raft.do("kv.set", key="a")
    with pytest.raises(InvalidRequestError, match=r"over MAX_COMMAND_SIZE"):
        django_raft.do("kv.set", key="a", value="v" * (1 << 20))
    # The node still works; each command that failed in its handler is in the log.
    assert django_raft.do("kv.set", key="a", value="y") == 2
    assert dict(KeyValue.objects.values_list("key", "value")) == {"a": "y"}
    logged = models.LogEntry.objects.filter(index__gt=start).values_list("command", flat=True)
    assert list(logged) == [
        sessions.OPEN_SESSION,
        "kv.set",
        "tests.write_then_fail",
        "kv.incr",
        "kv.incr",
        "kv.set",
    ]
    status = settled_status(start + 6)
    assert status["state"] == "leader" and status["applied"] == status["commit"] == start + 6


def test_a_command_error_over_http_is_the_same(running: Running) -> None:
    body = json.dumps({"name": "kv.incr", "arguments": {"key": "k", "by": "x"}}).encode()
    answer = post(running.url("command"), body)
    assert answer.status_code == 200
    assert answer.json() == {
        "ok": False,
        "value": None,
        "error": "TypeError: by must be an integer, not str",
        "error_type": "CommandFailedError",
    }
    body = json.dumps({"name": "kv.set", "arguments": {"key": "k", "value": "v"}}).encode()
    assert post(running.url("command"), body).json()["value"] == 1
    assert django_raft.do("kv.get", key="k") == "v"


def test_status_fields(running: Running) -> None:
    status = django_raft.status()
    assert set(status) == {
        "id",
        "state",
        "term",
        "vote",
        "leader",
        "commit",
        "applied",
        "last_index",
        "voters",
        "learners",
        "snapshot_index",
        "progress",
        "max_turn_ms",
        "pending_proposals",
        "signals_dropped",
        "messages_dropped",
        "snapshot_failures",
        "cluster_id",
        "round_trips",
    }
    assert status["cluster_id"] == models.NodeIdentity.objects.get().cluster_id != ""
    assert status["round_trips"] == {"limit_ms": 15.0, "peers": {}, "too_slow": []}
    assert 0 < status["max_turn_ms"] < 60_000
    assert status["pending_proposals"] == status["signals_dropped"] == 0
    assert status["id"] == NODE_ID and status["vote"] == NODE_ID
    assert status["state"] == "leader" and status["leader"] == NODE_ID
    assert status["voters"] == [NODE_ID] and status["learners"] == []
    assert status["term"] >= 2  # bootstrapped in term 1, elected in a later one
    assert status["commit"] == status["applied"] == status["last_index"]
    term, vote = models.HardState.objects.values_list("term", "vote").get()
    assert (term, vote) == (status["term"], NODE_ID)
    wait_for(  # the commit index alone is written within COMMIT_WRITE_INTERVAL
        lambda: models.HardState.objects.get().commit == status["commit"], 5, "the commit"
    )

    # The same, over HTTP, as a process without a node gets it (the longest turn so
    # far may have grown meanwhile).
    def steady(found: dict[str, Any]) -> dict[str, Any]:
        return {key: value for key, value in found.items() if key != "max_turn_ms"}

    assert steady(running.status()) == steady(status)
    assert steady(django_raft.status(running.address)) == steady(status)
    assert list(models.Member.objects.values_list("node_id", "address", "role")) == [
        (NODE_ID, running.address, "voter")
    ]


# -- signals --------------------------------------------------------------------------------


def assert_chained(sent: list[dict[str, Any]]) -> None:
    """Each event's prev_value is the value of the one before it."""
    for before, after in itertools.pairwise(sent):
        assert after["prev_value"] == before["value"], sent


def test_signals_are_sent_with_value_prev_value_and_node_id(running: Running) -> None:
    for name in EVENT_SIGNALS:
        sent = running.sent(name)
        assert sent, f"no {name} signal"
        for arguments in sent:
            assert set(arguments) == {"sender", "node_id", "value", "prev_value"}, arguments
            assert arguments["sender"] is RaftNode and arguments["node_id"] == NODE_ID
            assert arguments["value"] != arguments["prev_value"] or name == "committed"
        if name != "committed":
            assert_chained(sent)
    states = running.sent("state_changed")
    assert states[0]["prev_value"] == "follower" and states[-1]["value"] == "leader"
    assert running.sent("leader_changed") == [
        {"sender": RaftNode, "node_id": NODE_ID, "value": NODE_ID, "prev_value": ""}
    ]
    terms = running.sent("term_changed")
    assert terms[0]["prev_value"] == 1  # the bootstrap term
    assert all(t["value"] > t["prev_value"] for t in terms)
    assert terms[-1]["value"] == django_raft.status()["term"]
    committed = running.sent("committed")
    assert all(isinstance(c["value"], int) and c["value"] >= c["prev_value"] for c in committed)
    assert committed[-1]["value"] == django_raft.status()["commit"]

    django_raft.do("kv.get", key="a")  # opens this thread's session first
    wait_for(
        lambda: running.sent("committed")[-1]["value"] == django_raft.status()["commit"], 5, ""
    )
    before = len(running.sent("committed"))
    django_raft.do("kv.set", key="a", value="1")
    index = models.LogEntry.objects.get(command="kv.set").index
    # Sent by the loop once the entry is applied (do() may return just before).
    wait_for(lambda: len(running.sent("committed")) > before, 5, "the committed signal")
    committed = running.sent("committed")
    assert len(committed) == before + 1
    assert committed[-1]["value"] == index and committed[-1]["prev_value"] == index - 1
    assert len(running.sent("term_changed")) == len(terms)  # nothing else changed
    assert len(running.sent("state_changed")) == len(states)


def test_a_raising_receiver_does_not_stop_the_node(
    start: Starter, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[str] = []

    def explode(signal: Any, **arguments: Any) -> None:
        calls.append(arguments["node_id"])
        raise RuntimeError("a receiver failed")

    every_signal = [getattr(signals, name) for name in dir(signals) if not name.startswith("_")]
    every_signal = [s for s in every_signal if isinstance(s, type(signals.committed))]
    assert len(every_signal) == 10

    def connect() -> None:
        for signal in every_signal:
            signal.connect(explode, weak=False, dispatch_uid="tests.explode")

    try:
        with caplog.at_level(logging.ERROR, logger="django.dispatch"):
            running = start(before_start=connect)
            assert django_raft.do("kv.set", key="a", value="1") == 1
        assert calls and set(calls) == {NODE_ID}
        assert "a receiver failed" in caplog.text
        # The receivers connected after the raising one still got every event.
        index = models.LogEntry.objects.get(command="kv.set").index
        wait_for(lambda: running.sent("committed")[-1]["value"] == index, 5, "committed")
        assert running.node.status()["state"] == "leader"
        assert KeyValue.objects.get(pk="a").value == "1"
    finally:
        for signal in every_signal:
            signal.disconnect(dispatch_uid="tests.explode")


# -- bad input over HTTP --------------------------------------------------------------------


@dataclass
class Case:
    what: str
    send: Callable[[Running], requests.Response]
    status: int
    message: str
    """A part of the JSON ``error``, or of the body when it is not JSON."""


def rpc_message(**fields: Any) -> Message:
    """A well-formed message to the node, from a peer, in a past term: harmless if stepped."""
    values: dict[str, Any] = {"type": MessageType.HEARTBEAT, "to": NODE_ID, "sender": "n2"}
    values.update(fields)
    return Message(**values)


def rpc(
    path: str,
    body: bytes,
    node: str | None = "n2",
    signature: str | None = "good",
    content_length: str | None = None,
) -> Callable[[Running], requests.Response]:
    def send(running: Running) -> requests.Response:
        headers = {"Content-Type": CONTENT_TYPE}
        url = running.url(f"rpc/{path}")
        if signature is not None:
            headers |= signed_headers(url, body, node or "n2")
        if node is None:
            headers.pop(NODE_HEADER)
        if signature is not None and signature != "good":
            headers[SIGNATURE_HEADER] = signature
        return post(url, body, headers)

    return send


def other_signature(path: str, body: bytes) -> str:
    """A signature of ``body`` made with another cluster's secret."""
    other = signed(f"/raft/rpc/{path}", body, "another-cluster-" + "o" * 32, "n2", NODE, NODE_ID)
    return other[SIGNATURE_HEADER]


def client(route: str, payload: Any, raw: bytes | None = None) -> Callable[[Running], Any]:
    def send(running: Running) -> requests.Response:
        body = raw if raw is not None else json.dumps(payload).encode()
        return post(
            running.url(route),
            body,
            {"Content-Type": "application/json"} | signed_headers(running.url(route), body),
        )

    return send


def request(method: str, path: str, body: bytes = b"") -> Callable[[Running], Any]:
    def send(running: Running) -> requests.Response:
        return requests.request(
            method,
            f"{running.address}{path}",
            data=body,
            headers=signed_headers(f"{running.address}{path}", body),
            timeout=10,
        )

    return send


APPEND = encode_message(
    rpc_message(
        type=MessageType.APPEND,
        entries=tuple(Entry(i, 1, EntryType.NORMAL, b"x" * 50) for i in range(1, 5)),
        context=b"context",
    )
)
HEARTBEAT = encode_message(rpc_message())
FUTURE_APPEND = rpc_message(type=MessageType.APPEND, term=10**6)
"""A leader's message from a later term: stepped, it would depose the node."""
COMMAND = {"name": "kv.set", "arguments": {"key": "bad", "value": "input"}}

RPC_CASES = [
    Case("garbage body", rpc("appendEntries", b"\x00garbage\xff" * 10), 400, "not a Raft message"),
    Case("truncated protobuf", rpc("appendEntries", APPEND[:-5]), 400, "not a Raft message"),
    Case("empty body", rpc("appendEntries", b""), 400, "not a Raft message"),
    Case("no signature", rpc("appendEntries", HEARTBEAT, signature=None), 403, "signature"),
    Case("wrong signature", rpc("appendEntries", HEARTBEAT, signature="0" * 64), 403, "signature"),
    Case("empty signature", rpc("appendEntries", HEARTBEAT, signature=""), 403, "signature"),
    Case(
        "signed with another secret",
        rpc("appendEntries", HEARTBEAT, signature=other_signature("appendEntries", HEARTBEAT)),
        403,
        "signature",
    ),
    Case(
        "valid message, wrong path",
        rpc("requestVote", HEARTBEAT),
        400,
        "a heartbeat message does not belong on 'requestVote'",
    ),
    Case("valid message, unknown path", rpc("nothing", HEARTBEAT), 400, "does not belong on"),
    Case(
        "addressed to another node",
        rpc("appendEntries", encode_message(rpc_message(to="n9"))),
        400,
        "message for 'n9' sent to 'n1'",
    ),
    Case(
        "sender header mismatch",
        rpc("appendEntries", HEARTBEAT, node="n3"),
        400,
        "the sender does not match",
    ),
    Case("no sender header", rpc("appendEntries", HEARTBEAT, node=None), 403, "signature"),
    Case(
        "a vote request on the response path",
        rpc(
            "requestVoteResponse",
            encode_message(rpc_message(type=MessageType.REQUEST_VOTE, term=10**6)),
        ),
        400,
        "does not belong on 'requestVoteResponse'",
    ),
    Case(
        "a vote request for another node",
        rpc(
            "requestVote",
            encode_message(rpc_message(type=MessageType.REQUEST_VOTE, to="n2", term=9)),
        ),
        400,
        "message for 'n2'",
    ),
    Case("batch: garbage", rpc(BATCH_PATH, b"\x00\x00\x00\x05garbage"), 400, "not a Raft"),
    Case(
        "batch: truncated",
        rpc(BATCH_PATH, frame([rpc_message(), FUTURE_APPEND])[:-2]),
        400,
        "not a Raft message: truncated frame",
    ),
    Case("batch: empty", rpc(BATCH_PATH, b""), 400, "no message"),
    Case("batch: one unframed message", rpc(BATCH_PATH, HEARTBEAT), 400, "not a Raft message"),
    Case(
        "batch: one message for another node",
        rpc(BATCH_PATH, frame([FUTURE_APPEND, rpc_message(to="n9")])),
        400,
        "message for 'n9' sent to 'n1'",
    ),
    Case(
        "batch: one message from another sender",
        rpc(BATCH_PATH, frame([FUTURE_APPEND, rpc_message(sender="n3")])),
        400,
        "the sender does not match",
    ),
    Case(
        "batch: wrong signature",
        rpc(
            BATCH_PATH,
            frame([FUTURE_APPEND]),
            signature=other_signature(BATCH_PATH, frame([FUTURE_APPEND])),
        ),
        403,
        "signature",
    ),
]

CLIENT_CASES = [
    Case("not JSON", client("command", None, b"{not json"), 400, "the body is not JSON"),
    Case("not UTF-8", client("command", None, b"\xff\xfe\x00"), 400, "the body is not JSON"),
    Case("a JSON list", client("command", [COMMAND]), 400, "must be a JSON object"),
    Case("a JSON string", client("command", "kv.set"), 400, "must be a JSON object"),
    Case("JSON null", client("command", None), 400, "must be a JSON object"),
    Case("no name", client("command", {"arguments": {}}), 400, "name must be a string"),
    Case("empty body", client("command", None, b""), 400, "name must be a string"),
    Case("name not a string", client("command", {"name": 5}), 400, "name must be a string"),
    Case("name a list", client("command", {"name": ["kv.set"]}), 400, "name must be a string"),
    Case("empty name", client("command", {"name": ""}), 400, "name must be a string"),
    Case(
        "arguments not an object",
        client("command", {"name": "kv.set", "arguments": ["a", "1"]}),
        400,
        "arguments an object",
    ),
    *[
        Case(
            f"timeout {timeout!r}",
            client("command", {**COMMAND, "timeout": timeout}),
            400,
            "timeout must be a number of seconds in (0, 3600]",
        )
        for timeout in (-1, 0, "x", 10**9, True, None, [1])
    ],
    Case(
        "timeout NaN",
        client("command", None, b'{"name": "kv.set", "timeout": NaN}'),
        400,
        "the body is not JSON",
    ),
    Case(
        "timeout -Infinity",
        client("command", None, b'{"name": "kv.set", "timeout": -Infinity}'),
        400,
        "the body is not JSON",
    ),
    Case(
        "an argument that is not JSON (NaN)",
        client("command", None, b'{"name": "kv.set", "arguments": {"key": NaN}}'),
        400,
        "the body is not JSON",
    ),
    Case(
        "JSON nested too deep",
        client("command", None, b'{"name": "kv.set", "arguments": {"key": ' + b"[" * 100_000),
        400,
        "the body is not JSON",
    ),
    Case(
        "command with no signature",
        lambda r: post(r.url("command"), json.dumps(COMMAND).encode(), {NODE_HEADER: "client"}),
        403,
        "signature",
    ),
    Case(
        "command with a wrong signature",
        lambda r: post(
            r.url("command"),
            json.dumps(COMMAND).encode(),
            signed_headers(r.url("command"), json.dumps({**COMMAND, "timeout": 1}).encode()),
        ),
        403,
        "signature",
    ),
    Case("status: not JSON", client("status", None, b"status?"), 400, "the body is not JSON"),
    Case("status: a JSON list", client("status", []), 400, "must be a JSON object"),
    Case(
        "status with no signature",
        lambda r: post(r.url("status"), b"{}", {NODE_HEADER: "client"}),
        403,
        "signature",
    ),
    Case("members: not JSON", client("members", None, b"\x00"), 400, "the body is not JSON"),
    Case("members: a JSON number", client("members", 5), 400, "must be a JSON object"),
    Case("members: no node_id", client("members", {}), 400, "node_id must be"),
    Case("members: node_id a number", client("members", {"node_id": 2}), 400, "node_id must be"),
    Case(
        "members: node_id longer than a member id is stored",
        client("members", {"node_id": "n" * 256, "address": "http://x"}),
        400,
        "node_id must be 1 to 255",
    ),
    Case(
        "members: node_id not printable",
        client("members", {"node_id": "n\n2", "address": "http://x"}),
        400,
        "node_id must be",
    ),
    Case(
        "members: unknown role",
        client("members", {"node_id": "n2", "address": "http://x", "role": "boss"}),
        400,
        'role must be "voter" or "learner"',
    ),
    Case("members: no address", client("members", {"node_id": "n2"}), 400, "address must be"),
    Case(
        "members: not an http address",
        client("members", {"node_id": "n2", "address": "ftp://x"}),
        400,
        "address must be",
    ),
    Case(
        "members: bad timeout",
        client("members", {"node_id": "n2", "address": "http://x", "timeout": -1}),
        400,
        "timeout must be",
    ),
    Case(
        "members with no signature",
        lambda r: post(r.url("members"), b'{"node_id": "n2"}', {}),
        403,
        "signature",
    ),
]

ROUTING_CASES = [
    *[
        Case(f"GET {path}", request("GET", f"/raft/{path}"), 405, "")
        for path in ("rpc/appendEntries", "command", "status", "members")
    ],
    Case("PUT command", request("PUT", "/raft/command", json.dumps(COMMAND).encode()), 405, ""),
    Case("DELETE members", request("DELETE", "/raft/members"), 405, ""),
    Case("unknown route", request("POST", "/raft/nothing", b"{}"), 404, "Not Found"),
    Case("the prefix alone", request("POST", "/raft/", b"{}"), 404, "Not Found"),
    Case("outside the prefix", request("POST", "/status", b"{}"), 404, "Not Found"),
    Case("the project's admin", request("GET", "/admin/"), 404, "Not Found"),
    Case("rpc without a path", request("POST", "/raft/rpc/", HEARTBEAT), 404, "Not Found"),
]


def check_refused(running: Running, cases: list[Case]) -> None:
    """Send each case; it must get its 4xx and leave the node as it was."""
    # The commit index reaches the database within COMMIT_WRITE_INTERVAL of being known:
    # wait for it, so that its late write is not taken for a change a case made.
    wait_for(
        lambda: stored_state()["hard_state"][0][2] == running.node.status()["commit"],
        5,
        "the commit index to be written",
    )
    status, stored = node_state(running)
    problems = []
    for case in cases:
        response = case.send(running)
        got: Any = response.text
        if response.headers.get("Content-Type", "").startswith("application/json"):
            got = response.json()
            if got.get("ok") is not False or case.message not in got.get("error", ""):
                problems.append(f"{case.what}: answered {got}")
        elif case.message not in response.text:
            problems.append(f"{case.what}: answered {response.text[:200]!r}")
        if response.status_code != case.status:
            problems.append(f"{case.what}: status {response.status_code}, not {case.status}")
        if node_state(running) != (status, stored):
            problems.append(f"{case.what}: the node's state changed")
            status, stored = node_state(running)
    assert not problems, "\n".join(problems)


def test_bad_rpc_requests_are_refused(running: Running) -> None:
    check_refused(running, RPC_CASES)
    assert django_raft.do("kv.set", key="after", value="rpc") == 1


def test_bad_client_requests_are_refused(running: Running) -> None:
    check_refused(running, CLIENT_CASES)
    assert django_raft.do("kv.set", key="after", value="client") == 1


def test_bad_methods_and_routes_are_refused(running: Running) -> None:
    check_refused(running, ROUTING_CASES)
    assert django_raft.do("kv.set", key="after", value="routing") == 1


def test_405_names_the_allowed_method(running: Running) -> None:
    response = request("GET", "/raft/command")(running)
    assert response.status_code == 405 and response.headers["Allow"] == "POST"


def test_well_formed_rpcs_are_stepped(running: Running) -> None:
    """The control for the refusals: a well-formed, signed RPC reaches the core.

    n2 is no member of this one-node cluster, so the core drops its heartbeats (and
    counts them) without answering or changing anything.
    """
    status, stored = node_state(running)

    def dropped() -> int:
        return sum(running.node.status()["messages_dropped"].values())

    before = dropped()
    response = rpc("appendEntries", HEARTBEAT)(running)
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"] == CONTENT_TYPE
    assert unframe(response.content) == []
    response = rpc(BATCH_PATH, frame([rpc_message(), rpc_message()]))(running)
    assert response.status_code == 200, response.text
    assert unframe(response.content) == []
    wait_for(lambda: dropped() == before + 3, 5, "the core to count the three heartbeats")
    assert node_state(running) == (status, stored)
    # What the refused batches carry would have deposed the node, had it been stepped.
    response = rpc("appendEntries", encode_message(FUTURE_APPEND))(running)
    assert response.status_code == 200, response.text
    assert models.HardState.objects.get().term == 10**6  # persisted before the answer
    wait_for(
        lambda: running.node.status()["term"] == 10**6,
        5,
        "the status to show the new term",
    )
    deposed = running.node.status()
    assert (deposed["state"], deposed["leader"]) == ("follower", "n2")


def test_an_rpc_body_over_the_limit_is_refused_unread(running: Running) -> None:
    """Content-Length above MAX_RPC_BODY: refused before the body is sent."""
    status, stored = node_state(running)
    port = running.server.bind_addr[1]
    head = (
        f"POST /raft/rpc/appendEntries HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: {CONTENT_TYPE}\r\n{NODE_HEADER}: n2\r\n"
        f"{SIGNATURE_HEADER}: {'0' * 64}\r\n"
        f"Content-Length: {views.MAX_RPC_BODY + 1}\r\nConnection: close\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head + HEARTBEAT)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head_lines, _, body = answer.partition(b"\r\n\r\n")
    assert head_lines.startswith(b"HTTP/1.1 413"), answer[:300]
    assert json.loads(body)["error"] == f"request body over {views.MAX_RPC_BODY} bytes"
    assert node_state(running) == (status, stored)


def test_bodies_over_smaller_limits_are_refused(
    running: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(views, "MAX_RPC_BODY", len(APPEND) - 1)
    monkeypatch.setattr(views, "MAX_CLIENT_BODY", 64)
    big_command = json.dumps({**COMMAND, "arguments": {"key": "k", "value": "v" * 64}}).encode()
    check_refused(
        running,
        [
            Case("append over the limit", rpc("appendEntries", APPEND), 413, "request body over"),
            Case("command over the limit", client("command", None, big_command), 413, "over 64"),
            Case("status over the limit", client("status", None, b" " * 65 + b"{}"), 413, "64"),
        ],
    )
    # Exactly at the limit is fine.
    assert rpc("appendEntries", HEARTBEAT)(running).status_code == 200
    assert client("status", None, b" " * 62 + b"{}")(running).status_code == 200


def test_a_stopped_node_answers_503(running: Running) -> None:
    running.node.stop()
    answer = post(running.url("status"), b"{}")
    assert answer.status_code == 503 and answer.json()["error_type"] == "NodeStoppedError"
    answer = post(running.url("command"), json.dumps(COMMAND).encode())
    assert answer.status_code == 503 and answer.json()["error_type"] == "NodeStoppedError"
    answer = rpc("appendEntries", HEARTBEAT)(running)
    assert answer.status_code == 503 and answer.json()["error_type"] == "NodeStoppedError"


# -- framing ---------------------------------------------------------------------------------


FRAMED = [
    rpc_message(),
    rpc_message(
        type=MessageType.APPEND,
        term=3,
        log_term=2,
        index=7,
        commit=6,
        entries=(Entry(8, 3, EntryType.NORMAL, b"\x00\x01"), Entry(9, 3, EntryType.NORMAL, b"")),
    ),
    rpc_message(type=MessageType.REQUEST_VOTE_RESPONSE, reject=True, term=4),
    rpc_message(type=MessageType.HEARTBEAT_RESPONSE, context=b"ctx"),
]


def test_frame_round_trip() -> None:
    assert unframe(frame(FRAMED)) == FRAMED
    assert frame([]) == b"" and unframe(b"") == []
    assert unframe(frame(FRAMED[:1])) == FRAMED[:1]
    assert unframe(frame([rpc_message()] * 3)) == [rpc_message()] * 3


def test_unframe_refuses_every_truncation() -> None:
    data = frame(FRAMED)
    boundaries = {0}
    position = 0
    for message in FRAMED:
        position += 4 + len(encode_message(message))
        boundaries.add(position)
    for cut in range(len(data)):
        if cut in boundaries:
            assert len(unframe(data[:cut])) == sorted(boundaries).index(cut)
        else:
            with pytest.raises(WireError, match=r"truncated frame|malformed"):
                unframe(data[:cut])


def test_unframe_refuses_garbage() -> None:
    with pytest.raises(WireError, match="truncated frame header"):
        unframe(b"\x00\x00")
    with pytest.raises(WireError, match="truncated frame"):
        unframe(b"\xff\xff\xff\xff" + b"x" * 10)
    with pytest.raises(WireError):
        unframe(b"\x00\x00\x00\x04" + b"\xff\xff\xff\xff")
    with pytest.raises(WireError):
        unframe(b"\x00\x00\x00\x00")  # an empty message has no type


# -- the loop under load: backpressure, signals off the loop, replies before apply ---------


def blocking_handler(monkeypatch: pytest.MonkeyPatch) -> tuple[threading.Event, threading.Event]:
    """Register ``tests.block``: it holds the applier until ``release`` is set."""
    entered, release = threading.Event(), threading.Event()

    def block(context: Context) -> str:
        entered.set()
        release.wait(20)
        return "released"

    monkeypatch.setitem(commands._handlers, "tests.block", block)
    return entered, release


def test_proposals_beyond_the_bound_are_refused_with_overloaded_error(
    running: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    node = running.node
    monkeypatch.setattr(node, "max_pending", 3)
    monkeypatch.setattr(node, "_room", threading.BoundedSemaphore(3))
    entered, release = blocking_handler(monkeypatch)
    try:
        held = [node.propose_async(encode_command("tests.block", {}))]
        assert entered.wait(10)  # the applier is running it: the others stay outstanding
        held += [
            node.propose_async(encode_command("kv.set", {"key": f"h{i}", "value": "v"}))
            for i in range(2)
        ]
        refused = node.propose_async(encode_command("kv.set", {"key": "over", "value": "v"}))
        with pytest.raises(OverloadedError, match="3 proposals outstanding"):
            refused.result(0)
        with pytest.raises(OverloadedError):
            node.propose(encode_command("kv.set", {"key": "over", "value": "v"}), timeout=0.2)
        answer = client(
            "command",
            {"name": "kv.set", "arguments": {"key": "over", "value": "v"}, "timeout": 0.2},
        )(running).json()
        assert answer["error_type"] == "OverloadedError"
    finally:
        release.set()
    assert [future.result(10).value for future in held] == ["released", 1, 1]
    assert not KeyValue.objects.filter(pk="over").exists()  # refused: nothing proposed
    assert django_raft.do("kv.set", key="after", value="room again") == 1


def test_propose_async_answers_every_proposal_of_a_burst(running: Running) -> None:
    futures = [
        running.node.propose_async(encode_command("kv.set", {"key": f"b{i % 7}", "value": "v"}))
        for i in range(700)
    ]
    outcomes = [future.result(30) for future in futures]
    assert all(outcome.ok for outcome in outcomes)
    assert sorted(outcome.value for outcome in outcomes) == sorted(
        version for _ in range(7) for version in range(1, 101)
    )
    settled_pending(running.node)


def settled_pending(node: RaftNode) -> None:
    """Wait for the status to show no proposal pending: futures are resolved on the
    completer thread, and the loop publishes its status at the end of its turn."""
    wait_for(lambda: node.status()["pending_proposals"] == 0, 5, "no pending proposals")


def test_every_request_of_a_peer_stepped_in_one_turn_is_answered(
    running: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two requests of one peer (the transport keeps several in flight) in one turn: the
    replies ride on one of them, and both are answered as soon as the turn is durable."""
    node = running.node
    entered, release = threading.Event(), threading.Event()
    persist = node.storage.persist

    def blocking_persist(hard_state: Any, entries: Any, snapshot: Any) -> None:
        if entries:
            entered.set()
            release.wait(20)
        persist(hard_state, entries, snapshot)

    monkeypatch.setattr(node.storage, "persist", blocking_persist)
    held = node.propose_async(encode_command("kv.set", {"key": "held", "value": "released"}))
    assert entered.wait(10)  # the loop is busy: what comes now waits for one turn
    answers: list[list[Message]] = []

    def receive() -> None:
        answers.append(node.receive([rpc_message(term=0)], timeout=60))

    threads = [threading.Thread(target=receive) for _ in range(2)]
    for thread in threads:
        thread.start()
    wait_for(lambda: node.inbox.qsize() >= 2, 10, "both requests to be queued")
    release.set()
    for thread in threads:
        thread.join(10)  # the one left out of the turn's answers waited its whole timeout
    assert not any(thread.is_alive() for thread in threads)
    assert len(answers) == 2
    assert held.result(10).ok


def test_the_log_runs_at_most_max_unapplied_entries_ahead_of_the_state(
    running: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Proposals wait in the node, not in the log, while the state machine is behind."""
    node = running.node
    monkeypatch.setattr(runner, "MAX_UNAPPLIED", 10)
    ahead: list[int] = []
    persist = node.storage.persist

    def recording_persist(hard_state: Any, entries: Any, snapshot: Any) -> None:
        persist(hard_state, entries, snapshot)
        if entries:  # the loop thread: the core's applied index is safe to read here
            ahead.append(entries[-1].index - node.raw.basic_status().applied)

    monkeypatch.setattr(node.storage, "persist", recording_persist)
    entered, release = blocking_handler(monkeypatch)
    held = [node.propose_async(encode_command("tests.block", {}))]
    assert entered.wait(10)
    held += [
        node.propose_async(encode_command("kv.set", {"key": f"u{i}", "value": "v"}))
        for i in range(100)
    ]
    release.set()
    assert [future.result(30).ok for future in held] == [True] * 101
    assert len(ahead) >= 10 and max(ahead) <= 10  # 100 entries, appended 10 at most at once
    settled_pending(node)
    assert KeyValue.objects.filter(key__startswith="u").count() == 100


def test_a_slow_done_callback_delays_results_but_never_the_loop(
    running: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    node = running.node
    holding, let_go = blocking_handler(monkeypatch)
    node.propose_async(encode_command("tests.block", {}))
    assert holding.wait(10)  # nothing is applied until the callback below is attached
    entered, release = threading.Event(), threading.Event()
    threads: list[str] = []

    def slow(future: Any) -> None:
        threads.append(threading.current_thread().name)
        entered.set()
        release.wait(20)

    first = node.propose_async(encode_command("kv.set", {"key": "cb", "value": "v"}))
    first.add_done_callback(slow)
    let_go.set()
    try:
        assert entered.wait(10)
        later = [
            node.propose_async(encode_command("kv.set", {"key": f"cb{i}", "value": "v"}))
            for i in range(20)
        ]
        # The loop goes on committing and applying; only the answers wait their turn.
        wait_for(
            lambda: KeyValue.objects.filter(key__startswith="cb").count() == 21,
            10,
            "the later commands to be applied",
        )
        assert node.status()["state"] == "leader"
        assert not any(future.done() for future in later)
    finally:
        release.set()
    assert all(future.result(10).ok for future in later)
    assert threads == [f"raft-complete-{NODE_ID}"]


def test_signals_are_sent_off_the_loop_thread_and_a_slow_receiver_does_not_hold_it(
    start: Starter,
) -> None:
    threads: list[str] = []
    release = threading.Event()

    def slow(signal: Any, **arguments: Any) -> None:
        threads.append(threading.current_thread().name)
        release.wait(20)

    try:
        running = start(
            before_start=lambda: signals.committed.connect(
                slow, weak=False, dispatch_uid="tests.slow"
            )
        )
        wait_for(lambda: threads, 10, "the receiver to be called")
        # The receiver is stuck, yet commands keep committing and the node keeps leading.
        for i in range(20):
            assert django_raft.do("kv.set", key=f"s{i}", value="v") == 1
        assert running.node.status()["state"] == "leader"
        assert threads == [f"raft-signals-{NODE_ID}"]
    finally:
        release.set()
        signals.committed.disconnect(dispatch_uid="tests.slow")


def test_a_follower_answers_append_entries_before_it_applies_them(
    running: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reply before apply: the answer goes once the entries are durable."""
    entered, release = blocking_handler(monkeypatch)
    response = rpc("appendEntries", encode_message(FUTURE_APPEND))(running)  # now a follower
    assert response.status_code == 200, response.text
    last = running.node.status()["last_index"]
    log_term = models.LogEntry.objects.get(index=last).term
    append = rpc_message(
        type=MessageType.APPEND,
        term=10**6,
        index=last,
        log_term=log_term,
        commit=last + 1,
        entries=(Entry(last + 1, 10**6, EntryType.NORMAL, encode_command("tests.block", {})),),
    )
    try:
        response = rpc("appendEntries", encode_message(append))(running)
        assert response.status_code == 200, response.text
        (reply,) = unframe(response.content)
        assert (reply.type, reply.reject, reply.index) == (
            MessageType.APPEND_RESPONSE,
            False,
            last + 1,
        )
        assert entered.wait(10)  # the entry is being applied after the answer went out
        assert models.LogEntry.objects.filter(index=last + 1).exists()
    finally:
        release.set()
    wait_for(lambda: running.node.status()["applied"] == last + 1, 10, "the entry to apply")


# -- errors are JSON, signatures compared as bytes -------------------------------------------


@pytest.mark.parametrize("route", ["rpc/appendEntries", "command", "status"])
def test_a_non_ascii_signature_is_refused_not_a_server_error(running: Running, route: str) -> None:
    body = HEARTBEAT if route.startswith("rpc/") else b"{}"
    headers = {NODE_HEADER: "n2", SIGNATURE_HEADER: "é" * 64}
    response = post(running.url(route), body, headers)
    assert response.status_code == 403, response.text
    assert response.json()["ok"] is False


@pytest.mark.parametrize("route", ["rpc/appendEntries", "command", "status"])
def test_an_unexpected_error_is_a_json_500_even_with_debug_on(
    running: Running,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    route: str,
) -> None:
    def fail(*arguments: Any, **keywords: Any) -> Any:
        raise RuntimeError(f"boom {SECRET}")

    monkeypatch.setattr(views, "rpc_answer", fail)
    monkeypatch.setattr(views, "command_answer", fail)
    monkeypatch.setattr(RaftNode, "status", fail)
    body = HEARTBEAT if route.startswith("rpc/") else b"{}"
    with override_settings(DEBUG=True), caplog.at_level(logging.ERROR):
        response = post(running.url(route), body, signed_headers(running.url(route), body, "n2"))
    assert response.status_code == 500
    assert response.headers["Content-Type"] == "application/json"
    assert response.json()["error_type"] == "NodeServerError"
    assert "boom" not in response.text
    errors = [record for record in caplog.records if record.levelno >= logging.ERROR]
    assert len(errors) == 1 and "RuntimeError: boom" in caplog.text  # logged once


def test_starting_a_node_tunes_the_interpreter_for_it(running: Running) -> None:
    import gc
    import sys

    from django_raft.node.http.server import GC_THRESHOLD, SWITCH_INTERVAL

    assert sys.getswitchinterval() <= SWITCH_INTERVAL
    assert all(now >= wanted for now, wanted in zip(gc.get_threshold(), GC_THRESHOLD, strict=True))
