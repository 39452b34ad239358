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
from typing import Any, NoReturn
from urllib.parse import urlencode, urlsplit

from django.db.models import Model

from ..conf import raft_settings
from ..exceptions import ClusterUnreachableError, InvalidRequestError, WatchCompactedError
from ..protocol.answers import ERRORS
from ..protocol.auth import ANY_NODE, CLIENT, Signer, derive_keys
from ..protocol.tls import client_context
from .client import Client, default_client

__all__ = [
    "Cursor",
    "Event",
    "EventParser",
    "Lost",
    "Watch",
    "refused",
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
    blocking and the async watches read their sockets their own way)."""

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


class _Stream:
    """One member's watch answer over a raw socket: the chunked body's events."""

    def __init__(self, sock: socket.socket, buffered: bytes) -> None:
        self.sock = sock
        self._parser = EventParser(buffered)
        self.heard = time.monotonic()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    def next_message(self, deadline: float | None) -> tuple[str, str] | None:
        """The next ``(event, data)``; None when ``deadline`` passed first."""
        while (message := self._parser.next()) is None:
            wait = SILENCE - (time.monotonic() - self.heard)
            if deadline is not None:
                if deadline - time.monotonic() <= 0:
                    return None
                wait = min(wait, deadline - time.monotonic())
            if wait <= 0:
                raise Lost(f"the member sent nothing for {SILENCE} s")
            self.sock.settimeout(wait)
            try:
                data = self.sock.recv(1 << 16)
            except (TimeoutError, ssl.SSLWantReadError):
                continue
            except OSError as error:
                raise Lost(f"the connection broke: {error}") from error
            if not data:
                raise Lost("the member closed the watch")
            self.heard = time.monotonic()
            self._parser.feed(data)
        return message


def _labels(models: type[Model] | str | Iterable[type[Model] | str] | None) -> list[str]:
    if models is None:
        return []
    if isinstance(models, str | type):
        models = [models]
    return [m.lower() if isinstance(m, str) else m._meta.label_lower for m in models]


class Cursor:
    """What a watch knows whichever way it reads (``Watch`` blocking, the async client's
    ``AsyncWatch`` awaiting): its filters, the index it went through (``last_index``),
    the member it reads from and the next to try, and what each message means."""

    def __init__(
        self,
        after: int | None,
        parameters: list[tuple[str, str]],
        timeout: float | None,
        client: Client,
    ) -> None:
        self.last_index: int | None = after
        self.timeout = timeout
        self._parameters = parameters
        self._client = client
        self._closed = False
        self._attempt = 0
        self._address = ""

    def _drop(self) -> None:
        """Close the connection to the member, if any."""

    def _deadline(self) -> float | None:
        """When the iteration beginning now stops waiting (None: never)."""
        return None if self.timeout is None else time.monotonic() + self.timeout

    def _next_address(self) -> str:
        """The member to read from next: this server's node first, then the others."""
        address = self._address = self._client._pick(self._attempt, local_first=True)
        self._attempt += 1
        return address

    def _lost(self) -> None:
        """The member stopped serving: drop it, and try it after the others."""
        self._drop()
        self._client._suspect(self._address)

    def _path(self, address: str) -> str:
        """The route's path on ``address``, with the filters and where to resume."""
        parameters = list(self._parameters)
        if self.last_index is not None:
            parameters.insert(0, ("after", str(self.last_index)))
        path = f"{urlsplit(address).path.rstrip('/')}/{raft_settings.URL_PREFIX}watch"
        return path + ("?" + urlencode(parameters) if parameters else "")

    def _take(self, kind: str, data: str) -> Event | None:
        """The event a message carries, if new; progress moves ``last_index``."""
        try:
            payload = json.loads(data)
        except ValueError:
            return None
        if kind == "progress":
            index = int(payload.get("index", 0))
            if self.last_index is None or index > self.last_index:
                self.last_index = index
            return None
        if kind == "error":
            self._drop()
            _raise(payload)
        if kind != "entry":
            return None
        event = Event.from_json(payload)
        if self.last_index is not None and event.index <= self.last_index:
            return None  # already delivered (never sent twice by one member)
        self.last_index = event.index
        return event


def refused(address: str, status: int, body: bytes) -> NoReturn:
    """Raise what a member's answer other than the stream means: ``Lost`` when another
    member may serve the watch, else the typed error."""
    try:
        answer = json.loads(body)
    except ValueError:
        answer = None
    if not isinstance(answer, dict) or answer.get("ok", True):
        raise Lost(f"{address} answered the watch with {status}")
    if answer.get("error_type") in ELSEWHERE:
        raise Lost(str(answer.get("error", "")))
    _raise(answer)


class Watch(Cursor):
    """An iterator of ``Event``s from the cluster, and a context manager (``close()``).

    ``last_index`` is the index it went through: the last event's, or further when the
    member said it read further without a match. Iterating blocks until the next event
    (with ``timeout``: until it passes, then the iteration stops; iterate again to go on
    from where it stopped). Raises ``WatchCompactedError`` when what follows ``last_index``
    was compacted away, ``InvalidRequestError`` for a filter the node refuses.
    """

    def __init__(
        self,
        after: int | None,
        parameters: list[tuple[str, str]],
        timeout: float | None,
        client: Client,
    ) -> None:
        super().__init__(after, parameters, timeout, client)
        self._stream: _Stream | None = None
        self._connect(time.monotonic() + client._seconds(), first=True)

    def __iter__(self) -> Iterator[Event]:
        return self

    def __next__(self) -> Event:
        deadline = self._deadline()
        while not self._closed:
            try:
                if self._stream is None and not self._connect(deadline):
                    break
                assert self._stream is not None
                message = self._stream.next_message(deadline)
            except Lost:
                self._lost()
                continue
            if message is None:
                break
            event = self._take(*message)
            if event is not None:
                return event
        raise StopIteration

    def _connect(self, deadline: float | None, first: bool = False) -> bool:
        """Open the watch on a member (the next one after a failure) from ``last_index``;
        False when ``deadline`` passed first. The first connection waits for the
        member's first line, so that "from now" means from the call to ``watch()``."""
        while not self._closed:
            if deadline is not None and time.monotonic() >= deadline:
                if first:
                    raise ClusterUnreachableError("no member of the cluster could serve the watch")
                return False
            address = self._next_address()
            try:
                self._stream = self._open(address)
                if first and (message := self._stream.next_message(deadline)) is not None:
                    self._take(*message)
                self._attempt = 0
                return True
            except Lost:
                self._lost()
            time.sleep(RETRY_PAUSE)
        return False

    def _open(self, address: str) -> _Stream:
        parts = urlsplit(address)
        path = self._path(address)
        keys = derive_keys(raft_settings.SECRET, raft_settings.CLIENT_SECRET)
        signer = Signer(keys.client, CLIENT, raft_settings.NODE_ID or "client")
        headers = signer.headers("GET", path, ANY_NODE, b"")
        host = parts.hostname or ""
        port = parts.port or (443 if parts.scheme == "https" else 80)
        try:
            sock = socket.create_connection((host, port), timeout=CONNECT_TIMEOUT)
        except OSError as error:
            raise Lost(f"cannot connect to {address}: {error}") from error
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if parts.scheme == "https":
                context = client_context(
                    raft_settings.TLS_CERT, raft_settings.TLS_KEY, raft_settings.TLS_CA
                )
                sock = context.wrap_socket(sock, server_hostname=host)
            lines = [f"GET {path} HTTP/1.1", f"Host: {parts.netloc}", "Accept: text/event-stream"]
            lines += [f"{name}: {value}" for name, value in headers.items()]
            sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("utf-8"))
            status, head, rest = _read_head(sock)
        except OSError as error:
            sock.close()
            raise Lost(f"{address} did not answer the watch: {error}") from error
        if status == 200 and b"chunked" in head.get(b"transfer-encoding", b"").lower():
            return _Stream(sock, rest)
        body = _read_body(sock, head, rest)
        sock.close()
        refused(address, status, body)

    def _drop(self) -> None:
        if self._stream is not None:
            self._stream.close()
            self._stream = None

    def close(self) -> None:
        """Stop watching: the connection is closed; iterating ends."""
        self._closed = True
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


def _raise(answer: dict[str, Any]) -> NoReturn:
    """Raise the typed error of a node's failing answer."""
    name = str(answer.get("error_type"))
    message = str(answer.get("error", "the watch failed"))
    if name == "WatchCompactedError":
        raise WatchCompactedError(
            message,
            first_index=int(answer.get("first_index", 0)),
            applied_index=int(answer.get("applied_index", 0)),
        )
    kind = ERRORS.get(name, InvalidRequestError)
    raise kind(message)


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
