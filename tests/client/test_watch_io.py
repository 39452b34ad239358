"""The blocking ``watch()`` and the async ``awatch()`` against fake members on local
ports: both do the same I/O for the same decisions (tests/client/test_watch_cursor.py),
so each test runs both ways.

A fake member answers each connection with the next of its scripted answers (raw
bytes), then closes it (or keeps it open: ``hold``); past its script it closes the
connections it accepts at once.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from django.test import override_settings

import django_raft
from django_raft.client import Client
from django_raft.client.watch import Event
from django_raft.exceptions import ClusterUnreachableError, WatchCompactedError
from django_raft.node.http.watches import _compacted, _entry, _progress

FORMS = ["watch", "awatch"]


class Member:
    """A fake member: the next of ``answers`` to each connection, which it then closes
    unless it is to ``hold`` them; ``after`` is the ``after`` parameter of each request
    it got ("" without one)."""

    def __init__(self, *answers: bytes, hold: bool = False) -> None:
        self.answers = list(answers)
        self.hold = hold
        self.after: list[str] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.05)
        self.address = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._accepted: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            self._accepted.append(conn)
            request = b""
            while b"\r\n\r\n" not in request and (data := conn.recv(4096)):
                request += data
            if request:
                query = urlsplit(request.split(b" ")[1].decode()).query
                self.after.append(parse_qs(query).get("after", [""])[0])
            if request and self.answers:
                conn.sendall(self.answers.pop(0))
                if self.hold:
                    continue
            conn.close()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._listener.close()
        for conn in self._accepted:
            conn.close()


def stream(*messages: bytes) -> bytes:
    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
    head += b"Transfer-Encoding: chunked\r\n\r\n"
    return head + b"".join(b"%x\r\n%b\r\n" % (len(m), m) for m in messages)


def refusal(status: int, body: bytes) -> bytes:
    head = f"HTTP/1.1 {status} No\r\nContent-Type: application/json\r\n"
    return head.encode() + b"Content-Length: %d\r\n\r\n%b" % (len(body), body)


def entry(index: int) -> bytes:
    return _entry({"index": index, "term": 1, "command": "kv.set", "arguments": {}, "ok": True})


OVERLOADED = refusal(503, json.dumps({"ok": False, "error_type": "OverloadedError"}).encode())
COMPACTED = refusal(410, _compacted(41, 90, 410).body)


def nowhere() -> str:
    """The address of a local port nothing listens on."""
    with socket.create_server(("127.0.0.1", 0)) as sock:
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


def follow(form: str, seen: list[Event], **arguments: Any) -> int | None:
    """Open ``watch(**arguments)`` or ``awatch(**arguments)`` and iterate it until the
    iteration ends, putting its events in ``seen``; its ``last_index``."""
    if form == "watch":
        with django_raft.watch(**arguments) as changes:
            seen.extend(changes)
            return changes.last_index

    async def iterate() -> int | None:
        async with django_raft.awatch(**arguments) as changes:
            async for event in changes:
                seen.append(event)
            return changes.last_index

    return asyncio.run(iterate())


@pytest.fixture
def members() -> Iterator[list[Member]]:
    made: list[Member] = []
    yield made
    for member in made:
        member.stop()


def settings(*addresses: str) -> override_settings:
    """This process as a web process of the server whose node is ``addresses[0]``."""
    cluster = {f"n{number}": address for number, address in enumerate(addresses)}
    return override_settings(
        DJANGO_RAFT={"SECRET": "io-tests", "ADDRESS": addresses[0], "CLUSTER": cluster}
    )


@pytest.mark.parametrize("form", FORMS)
def test_a_watch_moves_past_failing_members_resumes_after_its_last_event_and_raises_compaction(
    form: str, members: list[Member]
) -> None:
    busy = Member(OVERLOADED, COMPACTED)
    serving = Member(stream(_progress(3), entry(4), entry(5)), COMPACTED)  # then closes
    members += [busy, serving]
    seen: list[Event] = []
    # the client's order: nowhere (this server's node), then busy, then serving
    order = settings(nowhere(), serving.address, busy.address)
    with order, pytest.raises(WatchCompactedError) as raised:
        follow(form, seen, after=3, timeout=2, client=Client(timeout=5))
    assert [event.index for event in seen] == [4, 5]
    assert (raised.value.first_index, raised.value.applied_index) == (41, 90)
    assert busy.after[0] == serving.after[0] == "3"
    assert sorted(busy.after[1:] + serving.after[1:]) == ["5"]  # asked once more, after 5


@pytest.mark.parametrize("form", FORMS)
def test_an_iteration_ends_at_its_timeout_on_the_same_connection(
    form: str, members: list[Member]
) -> None:
    member = Member(stream(_progress(3)), hold=True)
    members.append(member)
    seen: list[Event] = []
    started = time.monotonic()
    with settings(member.address):
        assert follow(form, seen, after=2, timeout=0.3) == 3
    assert seen == []
    assert 0.3 <= time.monotonic() - started < 2
    assert member.after == ["2"]


@pytest.mark.parametrize("form", FORMS)
def test_without_a_member_the_opening_fails_at_the_client_s_timeout(form: str) -> None:
    started = time.monotonic()
    with settings(nowhere(), nowhere()), pytest.raises(ClusterUnreachableError):
        follow(form, [], timeout=1, client=Client(timeout=0.5))
    assert 0.5 <= time.monotonic() - started < 2
