"""One submit path on the node: a command stream, the ``command`` route and the client in
the node's own process all run a request through ``submit.submit``, parsed once."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from django_raft.client import Client
from django_raft.node import submit
from django_raft.protocol.command_stream import CommandStream
from django_raft.protocol.request import CLOCK, READ_INDEX, TIMEOUT_RULE
from tests.node.test_node import Running, client
from tests.protocol.test_command_stream import client_signer

Parses = list[dict[str, Any]]


@pytest.fixture
def parses(monkeypatch: pytest.MonkeyPatch) -> Iterator[Parses]:
    """The bodies ``submit.parse`` was given, in order."""
    seen: Parses = []
    real = submit.parse

    def counting(body: Any) -> Any:
        seen.append(body)
        return real(body)

    monkeypatch.setattr(submit, "parse", counting)
    yield seen


def kv_set(key: str, value: str, **more: Any) -> dict[str, Any]:
    return {"name": "kv.set", "arguments": {"key": key, "value": value}, **more}


def by_route(target: Running, body: dict[str, Any]) -> dict[str, Any]:
    answer: dict[str, Any] = client("command", body)(target).json()
    return answer


def by_stream(target: Running, body: dict[str, Any]) -> dict[str, Any]:
    opened = CommandStream(target.address, client_signer(), "raft/")
    try:
        return opened.call(body, 5)
    finally:
        opened._break("test over", set())


def in_process(target: Running, body: dict[str, Any]) -> dict[str, Any]:
    return target.node.submit(body)


ENTRY_POINTS: dict[str, Callable[[Running, dict[str, Any]], dict[str, Any]]] = {
    "route": by_route,
    "stream": by_stream,
    "in-process": in_process,
}


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_a_request_is_parsed_once_whatever_door_it_came_in_by(
    running: Running, parses: Parses, entry: str
) -> None:
    answer = ENTRY_POINTS[entry](running, kv_set("a", "1"))
    assert answer["ok"] and answer["value"] == 1
    assert [body["name"] for body in parses] == ["kv.set"]


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_every_door_gives_the_same_answers(running: Running, parses: Parses, entry: str) -> None:
    send = ENTRY_POINTS[entry]
    refused = send(running, kv_set("a", "1", timeout=0))
    assert refused == {"ok": False, "error": TIMEOUT_RULE, "error_type": "InvalidRequestError"}
    unknown = send(running, {"name": "no.such", "arguments": {}})
    assert unknown["error_type"] == "InvalidRequestError" and "no.such" in unknown["error"]
    failed = send(running, {"name": "kv.incr", "arguments": {"key": "n", "by": "x"}})
    assert failed["error_type"] == "CommandFailedError" and failed["value"] is None
    read = send(running, {"name": READ_INDEX, "arguments": {}, "read": True})
    assert read["ok"] and read["value"] >= 1 and "leader" not in read
    written = send(running, kv_set("b", "2"))
    assert written["ok"] and written["leader"] == running.node.node_id
    clock = send(running, {"name": CLOCK, "arguments": {}})
    assert clock["error_type"] == "InvalidRequestError" and "leader alone" in clock["error"]
    assert len(parses) == 6


def test_the_client_in_the_node_s_process_hands_commands_to_it(
    running: Running, parses: Parses
) -> None:
    handed = Client(timeout=5)
    assert handed.do("kv.set", key="c", value="3") == 1
    # the session's opening and the command, each parsed once, here
    assert [body["name"] for body in parses] == ["django_raft.session.open", "kv.set"]
    assert json.dumps(parses[1]["arguments"]) == '{"key": "c", "value": "3"}'
