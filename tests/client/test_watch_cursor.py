"""A watch's decisions without I/O (``watch.Cursor``), the ones the blocking ``Watch``
and the async ``AsyncWatch`` both take: which member next, the pause between members,
where to resume, what an answer or a message means, the deadlines, and the parser fed
its bytes however they are cut.

The cursor's clock is the ``now`` the tests pass; the client's suspicion of a member
that failed (which puts it last for a second) runs on its own clock, well within it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
from django.test import override_settings

from django_raft.client import Client
from django_raft.client.watch import (
    RETRY_PAUSE,
    SILENCE,
    Connect,
    Cursor,
    Drop,
    Event,
    Pause,
    Receive,
    Step,
)
from django_raft.exceptions import (
    ClusterUnreachableError,
    InvalidRequestError,
    RaftError,
    WatchCompactedError,
)
from django_raft.node.http.watches import _compacted, _entry, _progress

T = 1000.0
"""The cursor's clock when a test begins."""
PAUSE = f"pause {RETRY_PAUSE:g}"
MEMBERS = {"a": "http://a.test:8000", "b": "http://b.test:8000", "c": "http://c.test:8000"}


@pytest.fixture
def client() -> Iterator[Client]:
    """A client of a three-member cluster whose own server's node is ``a``."""
    settings = {"SECRET": "cursor-tests", "ADDRESS": MEMBERS["a"], "CLUSTER": MEMBERS}
    with override_settings(DJANGO_RAFT={**settings, "COMMAND_TIMEOUT": 5}):
        yield Client()


def said(step: Step | None) -> str:
    """A step in a word or three: ``connect b /raft/watch?after=5``, ``receive 3.5``..."""
    match step:
        case Connect(address, request):
            line = request.split(b"\r\n")[0].decode()
            assert line.endswith(" HTTP/1.1") and b"Accept: text/event-stream" in request
            return f"connect {(urlsplit(address).hostname or '')[0]} {line.split()[1]}"
        case Receive(seconds):
            return f"receive {seconds:g}"
        case Pause(seconds):
            return f"pause {seconds:g}"
        case Drop():
            return "drop"
        case Event() as event:
            return f"event {event.index}"
    return "end"


def run(cursor: Cursor, now: float) -> list[str]:
    """The cursor's steps at ``now`` up to one that needs an answer (a connection or
    bytes), an event, or the end of the iteration."""
    done = []
    while True:
        step = cursor.step(now)
        done.append(said(step))
        if not isinstance(step, Drop | Pause):
            return done


def chunked(*messages: bytes) -> bytes:
    return b"".join(b"%x\r\n%b\r\n" % (len(m), m) for m in messages)


def entry(index: int, **changes: Any) -> bytes:
    event = {"index": index, "term": 1, "command": "kv.set", "arguments": {}, "ok": True}
    return _entry({**event, **changes})


def failure(error_type: str, **extra: Any) -> bytes:
    return json.dumps({"ok": False, "error": "no", "error_type": error_type, **extra}).encode()


def opened(client: Client, after: int = 3, timeout: float | None = None) -> Cursor:
    """A cursor whose opening ended at ``T`` on member ``a``, which said it read ``after``."""
    cursor = Cursor(after, [], timeout, client)
    cursor.start(T)
    assert run(cursor, T) == [f"connect a /raft/watch?after={after}"]
    assert cursor.answered(200, "chunked", T, chunked(_progress(after)))
    assert run(cursor, T) == ["end"]
    return cursor


def test_the_opening_tries_each_member_once_pausing_after_each_failure(client: Client) -> None:
    cursor = Cursor(3, [("command", "kv.set")], None, client)
    cursor.start(T)
    assert run(cursor, T) == ["connect a /raft/watch?after=3&command=kv.set"]
    cursor.broke("connection refused")
    # a failed member goes last: attempt 1 of the two left is c
    assert run(cursor, T) == ["drop", PAUSE, "connect c /raft/watch?after=3&command=kv.set"]
    assert not cursor.answered(503, "", T)
    cursor.refusal(failure("OverloadedError"))  # another member may serve it
    assert run(cursor, T) == ["drop", PAUSE, "connect b /raft/watch?after=3&command=kv.set"]
    assert cursor.answered(200, "chunked", T)
    assert run(cursor, T) == ["receive 3.5"]  # the opening waits for the first message
    cursor.received(chunked(_progress(7)), T + 1)
    assert run(cursor, T + 1) == ["end"]
    assert cursor.last_index == 7


def test_a_member_lost_while_streaming_is_left_at_once_and_the_next_resumes_after_the_last(
    client: Client,
) -> None:
    cursor = opened(client)
    cursor.begin(T)
    cursor.received(chunked(entry(4), entry(5)), T)
    assert [run(cursor, T), run(cursor, T), run(cursor, T)] == [
        ["event 4"],
        ["event 5"],
        ["receive 3.5"],
    ]
    cursor.broke("connection reset")
    assert run(cursor, T) == ["drop", "connect b /raft/watch?after=5"]  # no pause
    assert cursor.answered(200, "chunked", T, chunked(_progress(5), entry(5), entry(6)))
    assert run(cursor, T) == ["event 6"]  # 5 is not delivered twice
    assert cursor.last_index == 6


@pytest.mark.parametrize(
    "garbage",
    [
        b"event: entry\ndata: {not json\n\n",
        b"event: entry\ndata: [1, 2]\n\n",
        b'event: entry\ndata: {"index": 5}\n\n',
        b'event: progress\ndata: {"index": "five"}\n\n',
    ],
)
def test_a_malformed_message_leaves_the_member_and_skips_no_event(
    client: Client, garbage: bytes
) -> None:
    """A buggy member's garbled message is neither skipped (the event it stood for would
    be lost) nor raised to the caller: the watch resumes elsewhere after the last event."""
    cursor = opened(client)
    cursor.begin(T)
    cursor.received(chunked(entry(4), garbage, entry(6)), T)
    assert run(cursor, T) == ["event 4"]
    assert run(cursor, T) == ["drop", "connect b /raft/watch?after=4"]
    assert cursor.lost.startswith("the member sent a malformed")
    assert cursor.answered(200, "chunked", T, chunked(_progress(4), entry(5), entry(6)))
    assert [run(cursor, T), run(cursor, T)] == [["event 5"], ["event 6"]]


def test_a_malformed_first_message_is_no_opening(client: Client) -> None:
    cursor = Cursor(3, [], None, client)
    cursor.start(T)
    assert run(cursor, T) == ["connect a /raft/watch?after=3"]
    assert cursor.answered(200, "chunked", T, chunked(b"event: progress\ndata: {}\n\n"))
    assert run(cursor, T) == ["drop", PAUSE, "connect c /raft/watch?after=3"]


def test_after_the_opening_a_failure_starts_again_from_this_server_s_node(
    client: Client,
) -> None:
    cursor = Cursor(3, [], None, client)
    cursor.start(T)
    assert run(cursor, T) == ["connect a /raft/watch?after=3"]
    cursor.broke("connection refused")
    assert run(cursor, T)[-1] == "connect c /raft/watch?after=3"
    assert cursor.answered(200, "chunked", T, chunked(_progress(3)))
    assert run(cursor, T) == ["end"]
    cursor.begin(T)
    cursor.received(b"", T)  # c closed the connection
    # attempt 0 again: a, the first choice, is still suspected, so the first of the others
    assert run(cursor, T) == ["drop", "connect b /raft/watch?after=3"]
    assert cursor.lost == "the member closed the watch"


@pytest.mark.parametrize("where", ["answer", "stream"])
def test_a_compacted_history_drops_the_connection_then_raises(client: Client, where: str) -> None:
    body = _compacted(41, 90, 410).body
    if where == "answer":
        cursor = Cursor(1, [], None, client)
        cursor.start(T)
        run(cursor, T)
        assert not cursor.answered(410, "", T)
        cursor.refusal(body)
    else:
        cursor = opened(client)
        cursor.begin(T)
        cursor.received(chunked(b"event: error\ndata: " + body + b"\n\n"), T)
    assert said(cursor.step(T)) == "drop"  # then the error
    with pytest.raises(WatchCompactedError) as raised:
        cursor.step(T)
    assert (raised.value.first_index, raised.value.applied_index) == (41, 90)
    after = 1 if where == "answer" else 3
    assert run(cursor, T)[0].endswith(f"/raft/watch?after={after}")  # asked again, if iterated


@pytest.mark.parametrize(
    ("status", "body", "raised"),
    [
        (400, failure("InvalidRequestError"), InvalidRequestError),
        (403, failure("NotAnErrorWeKnow"), InvalidRequestError),
        (503, failure("NodeStoppedError"), None),
        (502, b"<html>Bad Gateway</html>", None),
        (200, b'{"ok": true}', None),  # not chunked: not the stream
    ],
)
def test_an_answer_other_than_the_stream_raises_or_moves_on(
    client: Client, status: int, body: bytes, raised: type[RaftError] | None
) -> None:
    cursor = Cursor(3, [], None, client)
    cursor.start(T)
    run(cursor, T)
    assert not cursor.answered(status, "", T)
    cursor.refusal(body)
    if raised is None:
        assert run(cursor, T) == ["drop", PAUSE, "connect c /raft/watch?after=3"]
        return
    assert said(cursor.step(T)) == "drop"  # then the error
    with pytest.raises(raised):
        cursor.step(T)


def test_the_opening_gives_up_at_the_client_s_timeout(client: Client) -> None:
    cursor = Cursor(None, [], None, client)
    cursor.start(T)  # COMMAND_TIMEOUT: 5 s
    assert run(cursor, T + 4.9) == ["connect a /raft/watch"]
    cursor.broke("connection refused")
    assert run(cursor, T + 4.9)[-1] == "connect c /raft/watch"
    cursor.broke("connection refused")
    assert [said(cursor.step(T + 5)), said(cursor.step(T + 5))] == ["drop", PAUSE]
    with pytest.raises(ClusterUnreachableError):
        cursor.step(T + 5)


def test_an_opening_that_hears_nothing_before_its_deadline_is_open(client: Client) -> None:
    cursor = Cursor(None, [], None, client)
    cursor.start(T)
    run(cursor, T)
    assert cursor.answered(200, "chunked", T)
    assert run(cursor, T + 5) == ["end"]  # the deadline comes before the member's silence
    cursor.begin(T + 5)
    assert run(cursor, T + 5) == ["drop", "connect b /raft/watch"]  # silent since T: lost


def test_an_iteration_ends_at_its_timeout_and_the_next_goes_on_with_the_same_member(
    client: Client,
) -> None:
    cursor = opened(client, timeout=2)
    cursor.begin(T)
    assert run(cursor, T) == ["receive 2"]
    assert run(cursor, T + 2) == ["end"]
    cursor.begin(T + 2)
    assert run(cursor, T + 2.5) == ["receive 1"]  # the member's silence comes first
    cursor.received(chunked(_progress(4)), T + 2.5)
    assert run(cursor, T + 2.5) == ["receive 1.5"]
    assert cursor.last_index == 4


def test_a_member_silent_for_SILENCE_seconds_is_left(client: Client) -> None:
    cursor = opened(client)
    cursor.begin(T)
    assert run(cursor, T + SILENCE - 0.5) == ["receive 0.5"]
    assert run(cursor, T + SILENCE) == ["drop", "connect b /raft/watch?after=3"]
    assert cursor.lost == f"the member sent nothing for {SILENCE} s"


def test_a_closed_watch_ends_every_iteration(client: Client) -> None:
    cursor = opened(client)
    cursor.received(chunked(entry(4)), T)
    cursor.close()
    cursor.begin(T)
    assert run(cursor, T) == ["end"]


# -- the stream's messages, however the bytes are cut --------------------------------------


def events_from(client: Client, data: bytes, step: int) -> tuple[list[Event], int | None]:
    """Feed ``data`` to an open cursor at 3, ``step`` bytes at a time; the events it
    gives and the index it went through."""
    cursor = opened(client)
    cursor.begin(T)
    found = []
    for start in range(0, len(data), step):
        cursor.received(data[start : start + step], T)
        while True:
            match cursor.step(T):
                case Event() as event:
                    found.append(event)
                case Drop():
                    continue
                case Receive():
                    break
                case other:
                    raise AssertionError(f"unexpected {other}")
    return found, cursor.last_index


def test_the_parser_reads_events_however_the_bytes_are_cut(client: Client) -> None:
    event = {
        "index": 5,
        "term": 2,
        "command": "kv.set",
        "arguments": {"key": "é\n"},
        "ok": True,
        "result": 1,
        "error": "",
        "changes": [["kv.keyvalue", "é\n"]],
    }
    data = chunked(
        _progress(3),
        _entry({**event, "index": 3}),  # at or below last_index: already delivered
        _entry(event) + _progress(9),
    )
    for step in (1, 2, 7, len(data)):
        found, last = events_from(client, data, step)
        assert [(e.index, e.arguments, e.changes) for e in found] == [
            (5, {"key": "é\n"}, [("kv.keyvalue", "é\n")])
        ]
        assert last == 9


def test_a_compaction_in_the_stream_raises_the_typed_error(client: Client) -> None:
    body = _compacted(41, 90, 410).body
    data = chunked(_progress(3), b"event: error\ndata: " + body + b"\n\n")
    with pytest.raises(WatchCompactedError) as raised:
        events_from(client, data, 5)
    assert (raised.value.first_index, raised.value.applied_index) == (41, 90)
    assert "90" in str(raised.value)
    assert json.loads(body)["error_type"] == "WatchCompactedError"
