"""The client for asyncio code (ASGI views): ``ado``, ``aread``, ``alock``, ``awatch``.

Each is its blocking twin (``do``, ``read``, ``lock``, ``watch``) with the waiting
done by the event loop: the same client, the same one session per process, the same
retries and the same errors, each saying truthfully whether the command may have been
applied. The decisions are the blocking client's own (``client.Attempts``, the session's
numbers, ``Lock``'s lease); only the sending and the waiting differ::

    async def publish(request):
        version = await django_raft.ado("kv.set", key="motd", value=request.POST["text"])
        async with django_raft.aread():
            text = await KeyValue.objects.aget(pk="motd")
        ...

How it waits, and where a thread is used:

- A write or a read index over plain HTTP goes on this process's command stream to the
  node (``protocol.command_stream``), the one the blocking client uses: its answer
  completes an asyncio future from the stream's reader thread. No thread per call.
- Other requests (``https`` nodes, read-only commands, the members' addresses) and
  watches are HTTP on asyncio streams: no thread either.
- A thread only where the work is blocking by nature: opening a command stream (its
  handshake, once per node while the stream lives), the local database's applied index
  in ``aread`` (Django's database connections are synchronous: ``sync_to_async``, as
  Django's own async ORM does) and, inside a ``raftnode`` process, the node's own
  ``submit``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import ssl
import time
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

from asgiref.sync import sync_to_async
from django.db.models import Model

from ..conf import raft_settings
from ..exceptions import ClusterUnreachableError, OverloadedError, RaftError
from ..protocol import command_stream, send
from ..protocol.answers import raise_for
from ..protocol.auth import ANY_NODE, CLIENT, Signer, derive_keys
from ..protocol.request import LOCK_ACQUIRE, LOCK_RELEASE, READ_INDEX
from ..protocol.send import MAX_ANSWER, NO_ADDRESS, AnswerAbandoned, Unsent
from ..protocol.tls import client_context
from . import reads, watch
from .client import (
    LEARN_BODY,
    NO_SESSION,
    READ_INDEX_BODY,
    TOO_MANY,
    Attempts,
    Client,
    _remaining,
    _Session,
    check_name,
    default_client,
    local_node,
    session_body,
)
from .locks import RETRY_PAUSE, Lock

__all__ = [
    "AsyncLock",
    "AsyncWatch",
    "ado",
    "alock",
    "aread",
    "aread_index",
    "awatch",
    "client_do",
    "client_read_index",
]

POLL = 0.005
"""Seconds between two looks at a session being opened, or at a free sequence number,
by another caller (both rare: the first command, and ``MAX_OUTSTANDING`` outstanding)."""


async def ado(command: str, /, **arguments: Any) -> Any:
    """``django_raft.do`` for async code: run ``command`` through the log; return its
    handler's result once committed and applied. The same session, retries and errors
    as ``do()``; the event loop goes on meanwhile. Options belong to a client:
    ``await Client(timeout=...).ado(...)``."""
    return await client_do(default_client(), command, arguments)


async def client_do(client: Client, command: str, arguments: dict[str, Any]) -> Any:
    """``client.do(command, **arguments)``, awaited (``Client.ado``)."""
    check_name(command)
    deadline = time.monotonic() + client._seconds()
    if not client.session:
        return raise_for(
            await _attempts(client, {"name": command, "arguments": arguments}, deadline)
        )
    for first_try in (True, False):
        session = await _current(client, deadline)
        sequence, floor = await _take(client, session, deadline)
        body = session_body(command, arguments, session, sequence, floor)
        try:
            answer = await _attempts(client, body, deadline, retry=True)
        finally:
            client._answered(session, sequence)
        if client._again(answer, session, first_try):
            continue
        return raise_for(answer)
    raise AssertionError("unreachable")


async def client_read_index(client: Client) -> int:
    """``client.read_index()``, awaited (``Client.aread_index``)."""
    deadline = time.monotonic() + client._seconds()
    answer = await _attempts(client, READ_INDEX_BODY, deadline, True, local_first=True)
    return int(raise_for(answer))


async def aread_index(timeout: float | None = None) -> int:
    """``reads.read_index`` for async code: wait until this server's database has
    applied a read index obtained after the call began; return it.

    The index comes over the command stream; the local applied index is one short query
    in Django's thread for synchronous database work (``sync_to_async``), asked again
    after growing pauses (``asyncio.sleep``) until it reaches the index. Raise
    ``StaleReadError`` when it has not within ``timeout`` (``COMMAND_TIMEOUT``).
    """
    seconds = timeout or raft_settings.COMMAND_TIMEOUT
    deadline = time.monotonic() + seconds
    index = await Client(timeout=seconds, session=False).aread_index()
    applied_index = sync_to_async(reads.applied_index)
    pause = reads.POLL
    while (applied := await applied_index()) < index:
        left = deadline - time.monotonic()
        if left <= 0:
            raise reads.stale_error(applied, index, seconds)
        await asyncio.sleep(min(pause, left))
        pause = min(pause * 2, 0.05)
    return index


@asynccontextmanager
async def aread(*, stale: bool = False, timeout: float | None = None) -> AsyncIterator[int]:
    """``django_raft.read`` for async code: reads inside the block see every command
    acknowledged before it began. Yield the read index (0 for ``stale=True``); raise
    ``StaleReadError`` rather than yield when this server's database cannot catch up
    with it before the timeout. Like ``read()``, never inside a transaction that has
    already read."""
    yield 0 if stale else await aread_index(timeout)


class AsyncLock:
    """``locks.Lock`` for async code: the same lease (counted from when the request was
    sent) and fencing token; ``acquire``, ``renew`` and ``release`` are awaited. It
    holds a ``Lock`` (``held``) whose decisions it uses, so the two never differ."""

    def __init__(self, name: str, ttl: float, *, client: Client | None = None) -> None:
        self.held = Lock(name, ttl, client=client)

    @property
    def token(self) -> int:
        return self.held.token

    async def acquire(self, blocking: bool = True, timeout: float | None = None) -> int:
        """Take the lock; return its fencing token (0 if not ``blocking`` and it is taken).

        Raise ``LockNotHeldError`` if it could not be taken within ``timeout`` seconds,
        or if it was granted after its TTL, counted from the request, had passed."""
        held = self.held
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            sent = time.monotonic()
            answer = await held.client.ado(LOCK_ACQUIRE, **held.request())
            if held.granted(answer, sent):
                if (late := held.too_late()) is not None:
                    await self._give_back()
                    raise late
                return held.token
            if not blocking:
                return 0
            if held.gave_up(deadline):
                raise held.taken()
            await asyncio.sleep(RETRY_PAUSE)

    async def renew(self) -> int:
        """Extend the TTL of a lock held; raise ``LockNotHeldError`` if it was lost."""
        token = await self.acquire(blocking=False)
        self.held.check_renewed(token)
        return token

    async def release(self) -> bool:
        """Give the lock back; return whether it was still held with this token."""
        held = self.held
        if not held.token:
            return False
        arguments = held.release_arguments()
        return bool(await held.client.ado(LOCK_RELEASE, **arguments))

    def remaining(self) -> float:
        """Seconds the lease surely lasts from now (0 when it may have ended)."""
        return self.held.remaining()

    async def _give_back(self) -> None:
        with contextlib.suppress(RaftError):
            await self.release()
        self.held.token, self.held.expires = 0, 0.0


@asynccontextmanager
async def alock(
    name: str, ttl: float, *, timeout: float | None = None, client: Client | None = None
) -> AsyncIterator[int]:
    """``django_raft.lock`` for async code: hold lock ``name`` for the block; yield its
    fencing token. ``LockNotHeldError`` as ``lock()`` raises it."""
    held = AsyncLock(name, ttl, client=client)
    token = await held.acquire(timeout=timeout)
    try:
        yield token
    finally:
        await held.release()


class AsyncWatch(watch.Cursor):
    """``watch.Watch`` for async code: an async iterator of ``watch.Event`` (and an
    async context manager that closes it), read from the node's ``watch`` route on an
    asyncio connection. The same events, once each and in order across failovers
    (it resumes on another member after ``last_index``), and the same errors
    (``WatchCompactedError``, ``InvalidRequestError``, ``ClusterUnreachableError``).

    It connects on ``async with`` (or its first iteration): "from now" (``after=None``)
    means from then. With ``timeout``, an iteration stops when no event came within it;
    iterate again to go on from where it stopped.
    """

    def __init__(
        self,
        after: int | None,
        parameters: list[tuple[str, str]],
        timeout: float | None,
        client: Client,
    ) -> None:
        super().__init__(after, parameters, timeout, client)
        self._connection: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self._parser = watch.EventParser()
        self._heard = 0.0
        self._opened = False

    def __aiter__(self) -> AsyncWatch:
        return self

    async def __aenter__(self) -> AsyncWatch:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()

    async def open(self) -> None:
        """Open the watch on a member (``ClusterUnreachableError`` if none could serve
        it within the client's timeout); what follows ``after`` (or now) is kept."""
        if not self._opened:
            self._opened = True
            await self._connect(time.monotonic() + self._client._seconds(), first=True)

    def close(self) -> None:
        """Stop watching: the connection is closed; iterating ends."""
        self._closed = True
        self._drop()

    async def __anext__(self) -> watch.Event:
        await self.open()
        deadline = self._deadline()
        while not self._closed:
            try:
                if self._connection is None and not await self._connect(deadline):
                    break
                message = await self._next_message(deadline)
            except watch.Lost:
                self._lost()
                continue
            if message is None:
                break
            event = self._take(*message)
            if event is not None:
                return event
        raise StopAsyncIteration

    async def _connect(self, deadline: float | None, first: bool = False) -> bool:
        """Open the watch on a member (the next after a failure) from ``last_index``;
        False when ``deadline`` passed first. The first waits for the member's first
        message, so that "from now" is from the opening."""
        while not self._closed:
            if deadline is not None and time.monotonic() >= deadline:
                if first:
                    raise ClusterUnreachableError("no member of the cluster could serve the watch")
                return False
            address = self._next_address()
            try:
                await self._open(address)
                if first and (message := await self._next_message(deadline)) is not None:
                    self._take(*message)
                self._attempt = 0
                return True
            except watch.Lost:
                self._lost()
            await asyncio.sleep(watch.RETRY_PAUSE)
        return False

    async def _open(self, address: str) -> None:
        path = self._path(address)
        headers = {"Accept": "text/event-stream", **_signer().headers("GET", path, ANY_NODE, b"")}
        try:
            reader, writer = await connect(address)
        except Unsent as error:
            raise watch.Lost(str(error)) from error
        self._connection = reader, writer
        self._parser = watch.EventParser()
        try:
            writer.write(request_bytes("GET", address, path, headers))
            status, head = await asyncio.wait_for(
                read_head(reader), watch.CONNECT_TIMEOUT + watch.SILENCE
            )
            if status == 200 and "chunked" in head.get("transfer-encoding", "").lower():
                self._heard = time.monotonic()
                return
            body = await asyncio.wait_for(
                reader.read(watch.MAX_HEAD), watch.CONNECT_TIMEOUT + watch.SILENCE
            )
        except (OSError, ValueError, TimeoutError, asyncio.IncompleteReadError) as error:
            raise watch.Lost(f"{address} did not answer the watch: {error}") from error
        self._drop()
        watch.refused(address, status, body)

    async def _next_message(self, deadline: float | None) -> tuple[str, str] | None:
        """The next ``(event, data)``; None when ``deadline`` passed first."""
        assert self._connection is not None
        reader = self._connection[0]
        while (message := self._parser.next()) is None:
            wait = watch.SILENCE - (time.monotonic() - self._heard)
            if deadline is not None:
                if deadline <= time.monotonic():
                    return None
                wait = min(wait, deadline - time.monotonic())
            if wait <= 0:
                raise watch.Lost(f"the member sent nothing for {watch.SILENCE} s")
            try:  # read() takes what is there or nothing: a timeout loses no byte
                data = await asyncio.wait_for(reader.read(1 << 16), wait)
            except TimeoutError:
                continue
            except OSError as error:
                raise watch.Lost(f"the connection broke: {error}") from error
            if not data:
                raise watch.Lost("the member closed the watch")
            self._heard = time.monotonic()
            self._parser.feed(data)
        return message

    def _drop(self) -> None:
        if self._connection is not None:
            self._connection[1].close()
            self._connection = None


def awatch(
    after: int | None = None,
    *,
    commands: str | Iterable[str] | None = None,
    models: type[Model] | str | Iterable[type[Model] | str] | None = None,
    pk: Any = None,
    timeout: float | None = None,
    client: Client | None = None,
) -> AsyncWatch:
    """``django_raft.watch`` for async code, with the same arguments and checks::

    async with django_raft.awatch(models=Flag) as events:
        async for event in events:
            ...
    """
    parameters = watch.watch_parameters(after, commands, models, pk, timeout)
    return AsyncWatch(after, parameters, timeout, client or default_client())


# -- the client's waiting, awaited


async def _current(client: Client, deadline: float) -> _Session:
    """``Client._current`` awaited: the one opener holds the same lock as a thread
    would (taken without waiting; others poll), so a process opens one session."""
    while (session := client._mine()) is None:
        if client._opening.acquire(blocking=False):
            try:
                if (session := client._mine()) is None:
                    opened = await _attempts(client, client._open_session_body(), deadline, True)
                    session = client._opened(str(raise_for(opened)))
                return session
            finally:
                client._opening.release()
        if _remaining(deadline) <= 0:
            raise ClusterUnreachableError(NO_SESSION)
        await asyncio.sleep(POLL)
    return session


async def _take(client: Client, session: _Session, deadline: float) -> tuple[int, int]:
    """``Client._take`` awaited."""
    while True:
        with client._numbers:
            taken = client._try_take(session)
        if taken is not None:
            return taken
        if _remaining(deadline) <= 0:
            raise OverloadedError(TOO_MANY)
        await asyncio.sleep(POLL)


async def _attempts(
    client: Client,
    body: dict[str, Any],
    deadline: float,
    retry: bool = False,
    local_first: bool = False,
) -> dict[str, Any]:
    """``Client._attempts`` awaited: the same ``Attempts`` decide."""
    attempts = Attempts(client, body, deadline, retry, local_first)
    while (attempt := attempts.next()) is not None:
        address, payload, seconds = attempt
        node = local_node(address)
        try:
            if node is not None:  # a raftnode process: its node's submit blocks
                answer = await asyncio.to_thread(node.submit, payload)
            else:
                answer = await send_command(address, payload, seconds)
        except ClusterUnreachableError as error:
            answer = attempts.unreachable(address, error)
        pause = attempts.settle(address, answer)
        if pause is None:
            break
        if pause:
            await asyncio.sleep(pause)
    if attempts.learn:
        await _learn(client)
    return attempts.answer()


async def _learn(client: Client, timeout: float = 1.0) -> None:
    """``Client.learn`` awaited."""
    for address in client.addresses():
        try:
            value = raise_for(await post(address, "status", LEARN_BODY, timeout))
        except RaftError:
            continue
        if client._learnt(value):
            return


# -- sending, awaited


def _signer() -> Signer:
    keys = derive_keys(raft_settings.SECRET, raft_settings.CLIENT_SECRET)
    return Signer(keys.client, CLIENT, raft_settings.NODE_ID or "client")


async def send_command(address: str, body: dict[str, Any], timeout: float) -> dict[str, Any]:
    """``send.send_command`` awaited, with the same errors: a write or a read index on
    this process's command stream to the node (plain HTTP), anything else as a
    request."""
    if not address:
        raise Unsent(NO_ADDRESS)
    if not address.startswith("http:") or (body.get("read") and body.get("name") != READ_INDEX):
        return await post(address, "command", body, timeout)
    signer = _signer()
    prefix = raft_settings.URL_PREFIX
    streams = send._streams
    found = streams.peek(address, signer, prefix)
    if found is None and not streams.refusing(address, signer, prefix):
        wait = max(min(timeout, command_stream.HANDSHAKE_TIMEOUT), 0.01)
        try:  # a handshake: blocking, once per node while the stream lives
            found = await asyncio.to_thread(streams.get, address, signer, prefix, wait)
        except send.NotSentError as error:
            raise send._unsent(address, error) from error
    if found is None:
        return await post(address, "command", body, timeout)
    try:
        return await found.acall(body, timeout)
    except TypeError as error:  # raised by its encoding, before anything is sent
        raise send._not_json(error) from error
    except command_stream.Abandoned as error:
        raise AnswerAbandoned(str(error)) from error
    except command_stream.StreamBroken as error:
        if not error.sent:
            raise Unsent(str(error)) from error
        raise ClusterUnreachableError(str(error)) from error


async def post(address: str, route: str, body: dict[str, Any], timeout: float) -> dict[str, Any]:
    """``send.post`` awaited: a signed JSON POST to a node's client route on an asyncio
    connection of its own; the same errors (``Unsent`` when it was certainly not sent)."""
    if not address:
        raise Unsent(NO_ADDRESS)
    try:
        data = json.dumps(body).encode()
    except (TypeError, ValueError) as error:
        raise send._not_json(error) from error
    path = urlsplit(f"{address.rstrip('/')}/{raft_settings.URL_PREFIX}{route}").path
    headers = _signer().headers("POST", path, ANY_NODE, data)
    headers["Content-Type"] = "application/json"
    reader, writer = await connect(address)
    try:
        writer.write(request_bytes("POST", address, path, headers, data))
        status, _, content = await asyncio.wait_for(read_response(reader), timeout + 1.0)
    except (OSError, ValueError, TimeoutError, asyncio.IncompleteReadError) as error:
        raise ClusterUnreachableError(
            f"{address} did not answer: {error or type(error).__name__}"
        ) from error
    finally:
        writer.close()
    try:
        answer = json.loads(content)
    except ValueError as error:
        raise ClusterUnreachableError(f"{address}{path} answered {status} without JSON") from error
    if not isinstance(answer, dict):
        raise ClusterUnreachableError(f"{address}{path} answered {answer!r}")
    return answer


@functools.lru_cache(maxsize=8)
def _tls(cert: str, key: str, ca: str) -> ssl.SSLContext:
    return client_context(cert, key, ca)


async def connect(address: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """An asyncio connection to a node (TLS for ``https``, with the ``TLS_*`` settings);
    raise ``Unsent`` when it cannot be opened within ``send.CONNECT_TIMEOUT``."""
    parts = urlsplit(address)
    context = None
    if parts.scheme == "https":
        context = _tls(raft_settings.TLS_CERT, raft_settings.TLS_KEY, raft_settings.TLS_CA)
    port = parts.port or (443 if context else 80)
    try:
        return await asyncio.wait_for(
            asyncio.open_connection(parts.hostname or "", port, ssl=context, limit=1 << 20),
            send.CONNECT_TIMEOUT,
        )
    except (OSError, TimeoutError) as error:
        raise send._unsent(address, error) from error


def request_bytes(
    method: str, address: str, path: str, headers: dict[str, str], body: bytes = b""
) -> bytes:
    """An HTTP/1.1 request on a connection of its own: a POST asks the node to close
    it after the answer; a GET (a watch) keeps it, as the node streams only then."""
    host = urlsplit(address).netloc
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}"]
    if method == "POST":
        lines.append("Connection: close")
    lines += [f"{name}: {value}" for name, value in headers.items()]
    if body or method == "POST":
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


async def read_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    """An HTTP response's status and headers (names in lower case)."""
    status_line = await reader.readuntil(b"\r\n")
    parts = status_line.split(None, 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
        raise ValueError(f"not an HTTP answer: {status_line[:100]!r}")
    headers: dict[str, str] = {}
    while (line := await reader.readuntil(b"\r\n")) != b"\r\n":
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(parts[1]), headers


async def read_response(
    reader: asyncio.StreamReader, limit: int = MAX_ANSWER
) -> tuple[int, dict[str, str], bytes]:
    """A whole HTTP response: status, headers, and a body of at most ``limit`` bytes."""
    status, headers = await read_head(reader)
    body = bytearray()
    if headers.get("transfer-encoding", "").lower() == "chunked":
        while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
            _grow(body, await reader.readexactly(size), limit)
            await reader.readexactly(2)
        await reader.readuntil(b"\r\n")
    elif "content-length" in headers:
        length = int(headers["content-length"])
        if length > limit:
            raise ValueError(f"answer of more than {limit} bytes")
        body += await reader.readexactly(length)
    else:
        while chunk := await reader.read(1 << 16):
            _grow(body, chunk, limit)
    return status, headers, bytes(body)


def _grow(body: bytearray, more: bytes, limit: int) -> None:
    if len(body) + len(more) > limit:
        raise ValueError(f"answer of more than {limit} bytes")
    body += more
