"""Watch committed changes from any process: ``django_raft.watch()``.

A watch is the node's ``watch`` route (server-sent events, see
``django_raft.node.http.watches``) read by an iterator of ``Event``: every command
applied after an index, in log order, filtered by command name and/or by the rows it
changed. It remembers the last index it went through (``last_index``: the last event's,
or further when the node said it read further without a match), and when its member
fails it asks another for what follows that index: each event comes once, in order,
across failovers. Entries compacted away before they were read end it with
``WatchCompactedError``: reload what you derive from the changes, then watch again from
``error.applied_index``.

The stream is read straight from the socket (its own small chunked and event parser),
so a ``timeout`` that ends an iteration loses nothing: the next one goes on from there.

Every decision (which member next, how long to pause, what an answer or a message
means, where to resume, when to give up) is ``Cursor``'s, which does no I/O: ``Watch``
reads with blocking sockets and the async client's ``AsyncWatch`` with asyncio, each
doing only the steps the cursor gives.
"""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypeAlias
from urllib.parse import urlencode, urlsplit

from django.db.models import Model

from ..conf import raft_settings
from ..exceptions import (
    ClusterUnreachableError,
    InvalidRequestError,
    RaftError,
    WatchCompactedError,
)
from ..protocol import asend
from ..protocol.answers import ERRORS
from ..protocol.auth import ANY_NODE
from ..protocol.tls import client_context
from .client import Client, default_client

__all__ = [
    "Connect",
    "Cursor",
    "Drop",
    "Event",
    "EventParser",
    "Lost",
    "Pause",
    "Receive",
    "Step",
    "Watch",
    "watch",
    "watch_parameters",
]

CONNECT_TIMEOUT = 1.0
"""Seconds to open a connection to a member and get its answer's head."""
SILENCE = 3.5
"""Seconds without a byte from the member after which it counts as lost (it sends a
progress line at least every second): the watch moves to another."""
RETRY_PAUSE = 0.1
MAX_HEAD = 64 << 10
MAX_LINE = 64 << 20
"""Bytes of one event at most (a command's arguments are at most ``MAX_COMMAND_SIZE``)."""
ELSEWHERE = frozenset({"NodeStoppedError", "OverloadedError", "NodeServerError", "StopError"})
"""Refusals that another member may not give: the watch tries the next one."""


@dataclass(frozen=True, slots=True)
class Event:
    """One applied command: its entry's ``index`` and ``term``, the command's name and
    arguments, its outcome (``ok``, and ``result`` or ``error``: a result whose JSON was
    longer than 1,000 characters is not kept and arrives as None) and the rows it changed,
    as ``(label, pk)`` pairs (``label`` is ``app_label.modelname``, ``pk`` a string)."""

    index: int
    term: int
    command: str
    arguments: dict[str, Any]
    ok: bool
    result: Any
    error: str
    changes: list[tuple[str, str]]

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Event:
        """An event from the JSON the node sends."""
        return cls(
            index=int(data["index"]),
            term=int(data["term"]),
            command=str(data["command"]),
            arguments=dict(data["arguments"]),
            ok=bool(data["ok"]),
            result=data.get("result"),
            error=str(data.get("error", "")),
            changes=[(str(label), str(pk)) for label, pk in data.get("changes", [])],
        )


class Lost(Exception):
    """The member stopped serving the watch (gone, silent, stopped, full): try another."""


class EventParser:
    """Server-sent events out of a chunked HTTP body, fed as bytes arrive (no I/O: the
    ``Cursor`` feeds it what the blocking or the async watch read)."""

    def __init__(self, buffered: bytes = b"") -> None:
        self._raw = bytearray()
        self._body = bytearray()
        self._left = 0
        """Bytes of the current chunk still to come, then its CRLF (``_trailer``)."""
        self._trailer = 0
        self.feed(buffered)

    def feed(self, data: bytes) -> None:
        """Take in bytes of the body; raise ``Lost`` when the body ends or is not
        chunked, or an event is larger than ``MAX_LINE``."""
        raw = self._raw
        raw += data
        while raw:
            if self._trailer:
                taken = min(self._trailer, len(raw))
                del raw[:taken]
                self._trailer -= taken
            elif self._left:
                taken = min(self._left, len(raw))
                self._body += raw[:taken]
                del raw[:taken]
                self._left -= taken
                self._trailer = 0 if self._left else 2
            elif (end := raw.find(b"\r\n")) < 0:
                break
            else:
                try:
                    size = int(bytes(raw[:end]).split(b";")[0], 16)
                except ValueError:
                    raise Lost("the member's answer is not a chunked stream") from None
                del raw[: end + 2]
                if size == 0:
                    raise Lost("the member ended the watch")
                self._left = size
        if len(self._body) > MAX_LINE:
            raise Lost("an event larger than the client reads")

    def next(self) -> tuple[str, str] | None:
        """The next whole message as ``(event, data)``, or None."""
        end = self._body.find(b"\n\n")
        if end < 0:
            return None
        message = bytes(self._body[:end]).decode("utf-8", "replace")
        del self._body[: end + 2]
        kind, lines = "message", []
        for line in message.split("\n"):
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "event":
                kind = value
            elif name == "data":
                lines.append(value)
        return kind, "\n".join(lines)


@dataclass(frozen=True, slots=True)
class Connect:
    """Connect to ``address``, send ``request`` and give the answer's head to
    ``Cursor.answered`` (and, when it is not the stream, its body to ``Cursor.refusal``)."""

    address: str
    request: bytes


@dataclass(frozen=True, slots=True)
class Receive:
    """Wait up to ``seconds`` for bytes of the stream and give them to
    ``Cursor.received`` (nothing when none came in time)."""

    seconds: float


@dataclass(frozen=True, slots=True)
class Pause:
    """Wait ``seconds`` before trying the next member."""

    seconds: float


@dataclass(frozen=True, slots=True)
class Drop:
    """Close the connection to the member, if one is open."""


Step: TypeAlias = Event | Connect | Receive | Pause | Drop
"""What a watch's reader does next (``Cursor.step``): deliver an event, or some I/O."""


def _labels(models: type[Model] | str | Iterable[type[Model] | str] | None) -> list[str]:
    if models is None:
        return []
    if isinstance(models, str | type):
        models = [models]
    return [m.lower() if isinstance(m, str) else m._meta.label_lower for m in models]


class Cursor:
    """What a watch does next, without I/O: ``Watch`` (blocking) and the async client's
    ``AsyncWatch`` (awaiting) only do the steps it gives and report what came of them.

    It holds the filters, the index the watch went through (``last_index``), the member
    read from and the next to try, the deadlines, the pause between members and the
    meaning of each answer and message. The reader calls ``start`` (the opening: a
    member's stream and its first message, so that "from now" means from then) or
    ``begin`` (an iteration), then ``step`` until it gives an ``Event`` or None (the
    iteration is over), doing each other step: for a ``Connect`` it reports ``answered``
    and, when the answer is not the stream, ``refusal``; for a ``Receive``,
    ``received``; ``broke`` whenever the connection fails. ``step`` raises the watch's
    errors, once the connection is dropped.
    """

    def __init__(
        self,
        after: int | None,
        parameters: list[tuple[str, str]],
        timeout: float | None,
        client: Client,
    ) -> None:
        self.last_index: int | None = after
        self.timeout = timeout
        self.lost = ""
        """Why the watch last left a member ("" while it left none)."""
        self._parameters = parameters
        self._client = client
        self._closed = False
        self._attempt = 0
        self._address = ""
        self._status = 0
        self._parser = EventParser()
        self._heard = 0.0
        self._deadline: float | None = None
        self._first = False
        """The opening: it ends with the member's first message."""
        self._opening = False
        """From a ``Connect`` until the watch is open: a failure pauses before the next."""
        self._streaming = False
        self._drop = False
        self._pause = False
        self._error: RaftError | None = None

    def start(self, now: float) -> None:
        """Begin the opening, which raises ``ClusterUnreachableError`` when no member
        served the watch within the client's timeout."""
        self._begin(now + self._client._seconds(), first=True)

    def begin(self, now: float) -> None:
        """Begin an iteration: it waits ``timeout`` from ``now`` for an event."""
        self._begin(None if self.timeout is None else now + self.timeout, first=False)

    def close(self) -> None:
        """Stop watching: every iteration is over at once."""
        self._closed = True

    def step(self, now: float) -> Step | None:
        """What to do next: an event to deliver, some I/O, or None when the iteration is
        over; raise the watch's error once ``Drop`` was given."""
        while True:
            if self._drop:
                self._drop = False
                return Drop()
            if self._error is not None:
                error, self._error = self._error, None
                raise error
            if self._pause:
                self._pause = False
                return Pause(RETRY_PAUSE)
            if self._closed:
                return None
            if not self._streaming:
                return self._connect(now)
            message = self._parser.next()
            if message is None:
                wait = SILENCE - (now - self._heard)
                if self._deadline is not None:
                    if self._deadline <= now:
                        if self._first:
                            self._opened()
                        return None
                    wait = min(wait, self._deadline - now)
                if wait > 0:
                    return Receive(wait)
                self._lose(f"the member sent nothing for {SILENCE} s")
                continue
            event = self._take(*message)
            if self._first and self._streaming:
                self._opened()
                return None
            if event is not None:
                return event

    def answered(self, status: int, encoding: str, now: float, buffered: bytes = b"") -> bool:
        """Take in the head of the member's answer (``encoding``: its
        ``Transfer-Encoding``) and the bytes read past it: whether it is the stream,
        which ``received`` goes on with; if not, give its body to ``refusal``."""
        self._status = status
        if status != 200 or "chunked" not in encoding.lower():
            return False
        self._streaming, self._heard = True, now
        self._parser = EventParser()
        self._feed(buffered)
        if self._streaming and not self._first:
            self._opened()
        return True

    def refusal(self, body: bytes) -> None:
        """Take in the body of an answer that is not the stream: the next member when
        another may serve the watch, else the error it names."""
        error = _refusal(self._address, self._status, body)
        if isinstance(error, Lost):
            self._lose(str(error))
        else:
            self._fail(error)

    def received(self, data: bytes, now: float) -> None:
        """Take in bytes of the stream (b"": the member closed the connection)."""
        if not data:
            self._lose("the member closed the watch")
            return
        self._heard = now
        self._feed(data)

    def broke(self, reason: str) -> None:
        """The connection to the member failed (or never opened): try another."""
        self._lose(reason)

    def _begin(self, deadline: float | None, first: bool) -> None:
        self._deadline, self._first = deadline, first
        self._opening = self._pause = False

    def _connect(self, now: float) -> Connect | None:
        """The request to the next member (this server's node first, then the others);
        None past the deadline, or ``ClusterUnreachableError`` for the opening."""
        if self._deadline is not None and now >= self._deadline:
            if self._first:
                raise ClusterUnreachableError("no member of the cluster could serve the watch")
            return None
        address = self._address = self._client._pick(self._attempt, local_first=True)
        self._attempt += 1
        self._opening = True
        path = self._path(address)
        signature = asend.signer().headers("GET", path, ANY_NODE, b"")
        headers = {"Accept": "text/event-stream", **signature}
        return Connect(address, asend.request_bytes("GET", address, path, headers))

    def _opened(self) -> None:
        """The watch is open: the next failure starts again from the first member."""
        self._attempt = 0
        self._first = self._opening = False

    def _lose(self, reason: str) -> None:
        """The member stopped serving: drop it, try it after the others, and pause
        first when it failed before the watch was open."""
        self.lost = reason
        self._client._suspect(self._address)
        self._streaming = False
        self._drop = True
        self._pause = self._opening

    def _fail(self, error: RaftError) -> None:
        """The watch ends with ``error``: raised once the connection is dropped."""
        self._streaming = False
        self._drop = True
        self._error = error

    def _feed(self, data: bytes) -> None:
        try:
            self._parser.feed(data)
        except Lost as error:
            self._lose(str(error))

    def _path(self, address: str) -> str:
        """The route's path on ``address``, with the filters and where to resume."""
        parameters = list(self._parameters)
        if self.last_index is not None:
            parameters.insert(0, ("after", str(self.last_index)))
        path = f"{urlsplit(address).path.rstrip('/')}/{raft_settings.URL_PREFIX}watch"
        return path + ("?" + urlencode(parameters) if parameters else "")

    def _take(self, kind: str, data: str) -> Event | None:
        """The event a message carries, if new; progress moves ``last_index``. A message
        of a known kind that does not parse leaves the member (skipping it could skip an
        event; the next member resumes after ``last_index``); other kinds are ignored."""
        if kind not in ("progress", "error", "entry"):
            return None
        try:
            payload = json.loads(data)
            if kind == "error":
                self._fail(_typed_error(payload))
                return None
            if kind == "progress":
                index = int(payload["index"])
                if self.last_index is None or index > self.last_index:
                    self.last_index = index
                return None
            event = Event.from_json(payload)
        except (ValueError, TypeError, KeyError, AttributeError):
            self._lose(f"the member sent a malformed {kind} message")
            return None
        if self.last_index is not None and event.index <= self.last_index:
            return None  # already delivered (never sent twice by one member)
        self.last_index = event.index
        return event


def _refusal(address: str, status: int, body: bytes) -> Lost | RaftError:
    """What a member's answer other than the stream means: ``Lost`` when another member
    may serve the watch, else the typed error."""
    try:
        answer = json.loads(body)
    except ValueError:
        answer = None
    if not isinstance(answer, dict) or answer.get("ok", True):
        return Lost(f"{address} answered the watch with {status}")
    if answer.get("error_type") in ELSEWHERE:
        return Lost(str(answer.get("error", "")))
    return _typed_error(answer)


def _typed_error(answer: dict[str, Any]) -> RaftError:
    """The typed error of a node's failing answer."""
    name = str(answer.get("error_type"))
    message = str(answer.get("error", "the watch failed"))
    if name == "WatchCompactedError":
        return WatchCompactedError(
            message,
            first_index=int(answer.get("first_index", 0)),
            applied_index=int(answer.get("applied_index", 0)),
        )
    return ERRORS.get(name, InvalidRequestError)(message)


class Watch:
    """An iterator of ``Event``s from the cluster, and a context manager (``close()``).

    ``last_index`` is the index it went through: the last event's, or further when the
    member said it read further without a match. Iterating blocks until the next event
    (with ``timeout``: until it passes, then the iteration stops; iterate again to go on
    from where it stopped). Raises ``WatchCompactedError`` when what follows ``last_index``
    was compacted away, ``InvalidRequestError`` for a filter the node refuses. The
    decisions are its ``Cursor``'s; it does the blocking I/O they ask for.
    """

    def __init__(
        self,
        after: int | None,
        parameters: list[tuple[str, str]],
        timeout: float | None,
        client: Client,
    ) -> None:
        self.cursor = Cursor(after, parameters, timeout, client)
        self._sock: socket.socket | None = None
        self.cursor.start(time.monotonic())
        self._run()

    @property
    def last_index(self) -> int | None:
        """The index the watch went through (None before anything was read)."""
        return self.cursor.last_index

    def __iter__(self) -> Iterator[Event]:
        return self

    def __next__(self) -> Event:
        self.cursor.begin(time.monotonic())
        event = self._run()
        if event is None:
            raise StopIteration
        return event

    def _run(self) -> Event | None:
        """Do the cursor's steps until it gives an event (None: the iteration is over)."""
        while True:
            match self.cursor.step(time.monotonic()):
                case Event() as event:
                    return event
                case Receive(seconds):
                    self._receive(seconds)
                case Connect(address, request):
                    self._connect(address, request)
                case Pause(seconds):
                    time.sleep(seconds)
                case Drop():
                    self._drop()
                case None:
                    return None

    def _connect(self, address: str, request: bytes) -> None:
        self._drop()  # a connection left by an interrupted iteration
        parts = urlsplit(address)
        host = parts.hostname or ""
        port = parts.port or (443 if parts.scheme == "https" else 80)
        try:
            sock = self._sock = socket.create_connection((host, port), timeout=CONNECT_TIMEOUT)
        except OSError as error:
            self.cursor.broke(f"cannot connect to {address}: {error}")
            return
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if parts.scheme == "https":
                context = client_context(
                    raft_settings.TLS_CERT, raft_settings.TLS_KEY, raft_settings.TLS_CA
                )
                sock = self._sock = context.wrap_socket(sock, server_hostname=host)
            sock.sendall(request)
            status, head, rest = _read_head(sock)
            encoding = head.get(b"transfer-encoding", b"").decode("latin-1")
            if not self.cursor.answered(status, encoding, time.monotonic(), rest):
                self.cursor.refusal(_read_body(sock, head, rest))
        except OSError as error:
            self.cursor.broke(f"{address} did not answer the watch: {error}")

    def _receive(self, seconds: float) -> None:
        sock = self._sock
        if sock is None:  # closed by another thread meanwhile: the next step says so
            return
        sock.settimeout(seconds)
        try:
            data = sock.recv(1 << 16)
        except (TimeoutError, ssl.SSLWantReadError):
            return
        except OSError as error:
            self.cursor.broke(f"the connection broke: {error}")
            return
        self.cursor.received(data, time.monotonic())

    def _drop(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()

    def close(self) -> None:
        """Stop watching: the connection is closed; iterating ends."""
        self.cursor.close()
        self._drop()

    def __enter__(self) -> Watch:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def __del__(self) -> None:
        self._drop()


def _read_head(sock: socket.socket) -> tuple[int, dict[bytes, bytes], bytes]:
    """Read an answer's status and headers; return them and the bytes read past them."""
    sock.settimeout(CONNECT_TIMEOUT + SILENCE)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(1 << 16)
        if not chunk or len(data) > MAX_HEAD:
            raise ConnectionError("no answer")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    status_line, *lines = head.split(b"\r\n")
    parts = status_line.split(b" ", 2)
    if len(parts) < 2 or not parts[1].isdigit():
        raise ConnectionError(f"not an HTTP answer: {status_line[:80]!r}")
    headers = {}
    for line in lines:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    return int(parts[1]), headers, rest


def _read_body(sock: socket.socket, head: dict[bytes, bytes], rest: bytes) -> bytes:
    """The body of an answer with a ``Content-Length`` (a JSON error)."""
    try:
        length = min(int(head.get(b"content-length", b"0")), MAX_HEAD)
        while len(rest) < length:
            chunk = sock.recv(length - len(rest))
            if not chunk:
                break
            rest += chunk
    except (OSError, ValueError):
        pass
    return rest


def watch(
    after: int | None = None,
    *,
    commands: str | Iterable[str] | None = None,
    models: type[Model] | str | Iterable[type[Model] | str] | None = None,
    pk: Any = None,
    timeout: float | None = None,
    client: Client | None = None,
) -> Watch:
    """Watch the commands applied after index ``after`` (None: from now), in log order.

    ``commands``: a name or names; ``models``: a model or models (classes or
    ``"app_label.ModelName"``), and with ``pk`` one row of them: only the commands that
    changed such a row. Each filter given narrows; without any, every command but
    django_raft's own. ``timeout``: seconds an iteration waits for an event before it
    stops (None: forever). The watch is open when this returns (``ClusterUnreachableError``
    if no member could serve it within the client's timeout). See ``Watch``.
    """
    parameters = watch_parameters(after, commands, models, pk, timeout)
    return Watch(after, parameters, timeout, client or default_client())


def watch_parameters(
    after: int | None,
    commands: str | Iterable[str] | None,
    models: type[Model] | str | Iterable[type[Model] | str] | None,
    pk: Any,
    timeout: float | None,
) -> list[tuple[str, str]]:
    """The route's filters for ``watch()``'s arguments (``InvalidRequestError`` for
    arguments it refuses; nothing is sent)."""
    if after is not None and (type(after) is not int or after < 0):
        raise InvalidRequestError("after must be a log index: an integer from 0, or None")
    if timeout is not None and not timeout > 0:
        raise InvalidRequestError("timeout must be a positive number of seconds, or None")
    names = [commands] if isinstance(commands, str) else list(commands or ())
    labels = _labels(models)
    if pk is not None and not labels:
        raise InvalidRequestError("pk goes with models: the rows of which model?")
    parameters = [("command", name) for name in names] + [("model", label) for label in labels]
    if pk is not None:
        parameters.append(("pk", str(pk)))
    return parameters
