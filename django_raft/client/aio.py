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
import time
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import Any

from asgiref.sync import sync_to_async
from django.db.models import Model

from ..conf import raft_settings
from ..exceptions import ClusterUnreachableError, RaftError
from ..protocol import asend
from ..protocol.auth import ANY_NODE
from ..protocol.request import LOCK_ACQUIRE, LOCK_RELEASE
from ..protocol.send import Unsent
from . import reads, watch
from .client import Client, default_client
from .locks import RETRY_PAUSE, Lock

__all__ = [
    "AsyncLock",
    "AsyncWatch",
    "ado",
    "alock",
    "aread",
    "aread_index",
    "awatch",
]


async def ado(command: str, /, **arguments: Any) -> Any:
    """``django_raft.do`` for async code: run ``command`` through the log; return its
    handler's result once committed and applied. The same session, retries and errors
    as ``do()``; the event loop goes on meanwhile. Options belong to a client:
    ``await Client(timeout=...).ado(...)``."""
    return await default_client().ado(command, **arguments)


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
        signature = asend.signer().headers("GET", path, ANY_NODE, b"")
        headers = {"Accept": "text/event-stream", **signature}
        try:
            reader, writer = await asend.connect(address)
        except Unsent as error:
            raise watch.Lost(str(error)) from error
        self._connection = reader, writer
        self._parser = watch.EventParser()
        try:
            writer.write(asend.request_bytes("GET", address, path, headers))
            status, head = await asyncio.wait_for(
                asend.read_head(reader), watch.CONNECT_TIMEOUT + watch.SILENCE
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
