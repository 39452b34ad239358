"""The watch route: committed changes as server-sent events, each watch on a thread of its own.

``GET <URL_PREFIX>watch?after=N&command=NAME&model=app_label.model&pk=PK`` (``command``
and ``model`` repeatable, every parameter optional) is signed like the client routes,
over the path with its query string and an empty body. It is checked in the request
thread: a bad signature is a 403, a bad parameter a 400 (``InvalidRequestError``), an
``after`` older than the log's start a 410 (``WatchCompactedError``, with ``first_index`` and
``applied_index``), no room a 503 (``OverloadedError``: ``MAX_WATCHES`` at once, and
``MAX_WATCHES_PER_CLIENT`` of one client, its signed name and host). An
accepted watch answers ``200 text/event-stream`` (chunked) and leaves cheroot's request
threads: its own thread writes the events, read from the database (``node.watch``), as
the applier reaches them:

    id: <index>            id: <index>             event: error
    event: entry           event: progress         data: <a typed JSON error>
    data: <event JSON>     data: {"index": N}

A progress line says every entry up to ``index`` was read (at the start, then at least
every ``PROGRESS_INTERVAL`` while nothing matches), so a client resumes cheaply after
quiet periods. Entries compacted before the watch read them end it with ``event: error``
(``WatchCompactedError``). A client that stops reading is dropped after ``SEND_TIMEOUT``:
nothing is buffered for it beyond its socket's, and neither the applier nor the loop
ever waits for a watch.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from django.apps import apps
from django.db import connections
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from ...exceptions import (
    InvalidRequestError,
    NodeServerError,
    NodeStoppedError,
    OverloadedError,
    WatchCompactedError,
)
from ...models import MAX_COMMAND_LENGTH
from ...protocol.answers import failure
from ...protocol.auth import CLIENT, NODE
from ...protocol.connection import shut
from ...protocol.wire import MAX_VALUE
from .. import metrics, watch
from ..runner import RaftNode
from . import views

__all__ = [
    "MAX_WATCHES",
    "MAX_WATCHES_PER_CLIENT",
    "PATH",
    "PROGRESS_INTERVAL",
    "SEND_TIMEOUT",
    "WATCH_HEADER",
    "Accepted",
    "respond",
    "start",
    "view",
]

logger = logging.getLogger(__name__)

PATH = "watch"
MAX_WATCHES = 64
"""Watches a node serves at once (each a thread and a database connection or two)."""
MAX_WATCHES_PER_CLIENT = 16
"""A client's share (a client: its signed name and host, as for command streams): beyond
it, a client gets a new watch only while more than this many slots are free. The last
ones are kept for the others, so one client (a web server leaking its watches, say)
cannot take every slot, while a node serving mostly its own server's processes (one
host: one client) still gives them ``MAX_WATCHES`` minus a share. Watches live long, so
none is closed to make room: a new one is refused."""
PROGRESS_INTERVAL = 1.0
"""Seconds a watch may go without a line: a progress line follows when nothing matched."""
SEND_TIMEOUT = 10.0
"""Seconds a watch's client may leave its socket full before the watch is dropped."""
MAX_FILTERS = 64
"""``command`` and ``model`` values one watch may give, each."""
MAX_PK_LENGTH = 255
WATCH_HEADER = "X-Raft-Watch"
"""Set by the application on an accepted watch's answer, taken off by the server, which
then leaves the stream's chunks (the last one too) to the watch's thread."""
_PARAMETERS = frozenset({"after", "command", "model", "pk"})


@dataclass(frozen=True, slots=True)
class Accepted:
    """A watch whose request was answered 200: its thread serves it next."""

    sender: str
    client: tuple[str, str]
    """Its sender and host: the share its slot is taken from."""
    after: int
    wanted: watch.Filter
    state_alias: str
    log_alias: str


class _Slots:
    """The watches open: at most ``MAX_WATCHES``, and past a client's share
    (``MAX_WATCHES_PER_CLIENT``) only while more than a share is free; all closed when
    the server stops."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._taken = 0
        self._held: dict[tuple[str, str], int] = {}
        self._open: set[socket.socket] = set()
        metrics.streams_open.labels("watch").set(0)

    def take(self, client: tuple[str, str]) -> str | None:
        """Take a slot for a watch of ``client``: None, or why there is none."""
        with self._lock:
            held = self._held.get(client, 0)
            free = MAX_WATCHES - self._taken
            if free <= 0:
                return f"this node serves {MAX_WATCHES} watches already"
            if held >= MAX_WATCHES_PER_CLIENT and free <= MAX_WATCHES_PER_CLIENT:
                return (
                    f"this client holds {held} watches, past its share "
                    f"({MAX_WATCHES_PER_CLIENT}): the last {MAX_WATCHES_PER_CLIENT} of this "
                    f"node's {MAX_WATCHES} are kept for other clients"
                )
            self._taken += 1
            self._held[client] = held + 1
            metrics.streams_open.labels("watch").set(self._taken)
            return None

    def release(self, client: tuple[str, str], sock: socket.socket | None = None) -> None:
        """Free a slot ``take`` gave ``client`` (once per slot)."""
        with self._lock:
            self._taken -= 1
            metrics.streams_open.labels("watch").set(self._taken)
            held = self._held.pop(client, 0) - 1
            if held > 0:
                self._held[client] = held
            self._open.discard(sock)  # type: ignore[arg-type]

    def opened(self, sock: socket.socket) -> None:
        with self._lock:
            self._open.add(sock)

    def close_all(self) -> None:
        with self._lock:
            socks = list(self._open)
        for sock in socks:
            shut(sock)


slots = _Slots()


def parse(query: str) -> tuple[int | None, watch.Filter] | str:
    """A watch's ``after`` (None: from the applied index) and filter, or why not."""
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError:
        return "the query string is malformed"
    values: dict[str, list[str]] = {}
    for name, value in pairs:
        if name not in _PARAMETERS:
            return f"unknown parameter {name[:40]!r}: a watch takes after, command, model, pk"
        values.setdefault(name, []).append(value)
    for single in ("after", "pk"):
        if len(values.get(single, ())) > 1:
            return f"{single} is given at most once"
    after = None
    if "after" in values:
        text = values["after"][0]
        if not text.isascii() or not text.isdigit() or int(text) > MAX_VALUE:
            return "after must be a log index: an integer from 0"
        after = int(text)
    names, labels = values.get("command", []), values.get("model", [])
    if len(names) > MAX_FILTERS or len(labels) > MAX_FILTERS:
        return f"at most {MAX_FILTERS} commands and {MAX_FILTERS} models"
    for name in names:
        if not 0 < len(name) <= MAX_COMMAND_LENGTH or not name.isprintable():
            return f"a command name is 1 to {MAX_COMMAND_LENGTH} printable characters"
    models = set()
    for label in labels:
        try:
            models.add(apps.get_model(label)._meta.label_lower)
        except (LookupError, ValueError):
            return f"no model {label[:100]!r}: name it app_label.ModelName"
    pk = values.get("pk", [None])[0]
    if pk is not None and (not labels or len(pk) > MAX_PK_LENGTH):
        return f"pk goes with model, and is at most {MAX_PK_LENGTH} characters"
    return after, watch.Filter(frozenset(names), frozenset(models), pk)


def respond(
    environ: dict[str, Any], start_response: Callable[..., Any]
) -> tuple[list[bytes], Accepted | None]:
    """Answer a watch request (WSGI): the body, and the watch when it is accepted."""
    try:
        answer, accepted = _check(environ)
    except Exception as error:
        logger.exception("raft: error serving GET %s", environ.get("PATH_INFO"))
        message = f"internal error: {type(error).__name__} (logged on the node)"
        answer, accepted = views.Answer.error(500, message, NodeServerError), None
    if accepted is not None:
        start_response(
            "200 OK",
            [
                ("Content-Type", "text/event-stream"),
                ("Cache-Control", "no-cache"),
                ("X-Accel-Buffering", "no"),
                (WATCH_HEADER, "1"),
            ],
        )
        return [], accepted
    headers = [("Content-Type", answer.content_type), ("Content-Length", str(len(answer.body)))]
    start_response(f"{answer.status} {_PHRASES.get(answer.status, 'Error')}", headers)
    return [answer.body], None


_PHRASES = {
    400: "Bad Request",
    403: "Forbidden",
    410: "Gone",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


def _check(environ: dict[str, Any]) -> tuple[views.Answer, Accepted | None]:
    path = environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")
    query = environ.get("QUERY_STRING", "")
    checked = views.verifier().check(
        "GET",
        path + ("?" + query if query else ""),
        lambda name: environ.get("HTTP_" + name.upper().replace("-", "_")),
        0,
        (CLIENT, NODE),
    )
    if isinstance(checked, str):
        return views.Answer.error(403, checked), None
    if not checked.body_matches(b""):
        return views.Answer.error(403, "a watch has no body: sign the empty one"), None
    parsed = parse(query)
    if isinstance(parsed, str):
        return views.Answer.error(400, parsed), None
    after, wanted = parsed
    node = RaftNode.current
    if node is None or node.stopping.is_set():
        return views.Answer.error(503, "no Raft node runs in this process", NodeStoppedError), None
    state_alias, log_alias = node.machine.alias, node.storage.alias
    applied = watch.applied(state_alias)
    compacted = watch.first_index(log_alias)
    if after is None:
        after = applied
    elif after < compacted:
        return _compacted(compacted + 1, applied, 410), None
    client = (checked.sender, str(environ.get("REMOTE_ADDR", "")))
    refused = slots.take(client)
    if refused is not None:
        return views.Answer.error(503, refused, OverloadedError), None
    return views.Answer(200, "text/event-stream", b""), Accepted(
        checked.sender, client, after, wanted, state_alias, log_alias
    )


def _compacted(first_index: int, applied: int, status: int) -> views.Answer:
    error = WatchCompactedError(first_index=first_index, applied_index=applied)
    return views.Answer.json(
        failure(WatchCompactedError, str(error), first_index=first_index, applied_index=applied),
        status,
    )


def start(conn: Any, accepted: Accepted, keep: bool) -> bool:
    """Serve an accepted watch on its own thread (``conn`` is cheroot's connection, whose
    answer's headers are sent); False: the request thread is done with the connection."""
    if not keep:  # the connection was to close (an HTTP/1.0 client): no stream
        slots.release(accepted.client)
        return False
    thread = threading.Thread(
        target=_serve, args=(conn, accepted), name=f"raft-watch-{accepted.sender}", daemon=True
    )
    conn._stream_thread = thread  # the connection is the thread's to close
    slots.opened(conn.socket)
    thread.start()
    return False


def _serve(conn: Any, accepted: Accepted) -> None:
    sock = conn.socket
    try:
        conn.wfile.flush()
        sock.settimeout(SEND_TIMEOUT)
        _stream(sock, accepted)
        sock.sendall(b"0\r\n\r\n")
    except TimeoutError:
        logger.info(
            "raft: dropped the watch of %r: it read nothing for %s s", accepted.sender, SEND_TIMEOUT
        )
    except OSError:
        pass  # the client went away, or the server is stopping
    except Exception:
        logger.exception("raft: the watch of %r failed", accepted.sender)
    finally:
        connections.close_all()
        slots.release(accepted.client, sock)
        conn.close()


def _stream(sock: socket.socket, accepted: Accepted) -> None:
    """Send the events after ``accepted.after`` as they are applied, until the node stops,
    the client leaves or the entries are compacted before they are read."""
    position = accepted.after
    _send(sock, _progress(position))
    sent_at = time.monotonic()
    while True:
        node = RaftNode.current
        if node is None or node.stopping.is_set():
            return
        alias = accepted.state_alias
        applied = watch.known_applied(alias) or watch.applied(alias)
        while position < applied:
            try:
                events, position = watch.read(
                    accepted.state_alias, accepted.log_alias, position, applied, accepted.wanted
                )
            except watch.WatchCompacted as gone:
                answer = _compacted(gone.first_index, applied, 410)
                _send(sock, b"event: error\ndata: " + answer.body + b"\n\n")
                return
            if events:
                _send(sock, b"".join(_entry(event) for event in events))
                sent_at = time.monotonic()
        if time.monotonic() - sent_at >= PROGRESS_INTERVAL:
            _send(sock, _progress(position))
            sent_at = time.monotonic()
        wait = PROGRESS_INTERVAL - (time.monotonic() - sent_at)
        watch.wait_past(accepted.state_alias, position, max(wait, 0.01))


def _entry(event: dict[str, Any]) -> bytes:
    data = json.dumps(event, separators=(",", ":"))
    return f"id: {event['index']}\nevent: entry\ndata: {data}\n\n".encode()


def _progress(index: int) -> bytes:
    return f'id: {index}\nevent: progress\ndata: {{"index": {index}}}\n\n'.encode()


def _send(sock: socket.socket, data: bytes) -> None:
    """Send ``data`` as one chunk of the answer's chunked body."""
    sock.sendall(b"%x\r\n%b\r\n" % (len(data), data))


@csrf_exempt
def view(request: HttpRequest) -> HttpResponse:
    """The route as Django sees it: ``raftnode`` serves a watch before Django does, so
    here it is either not a GET or not a node."""
    if request.method != "GET":
        response = JsonResponse(
            failure(InvalidRequestError, "Method Not Allowed: a watch is a GET"), status=405
        )
        response["Allow"] = "GET"
        return response
    return JsonResponse(
        failure(NodeStoppedError, "watches are served by raftnode: ask the node's address"),
        status=503,
    )
