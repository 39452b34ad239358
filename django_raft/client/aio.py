"""The client for asyncio code (ASGI views): ``ado``, ``aread``, ``alock``, ``awatch``.

Each is its blocking twin (``do``, ``read``, ``lock``, ``watch``) with the waiting
done by the event loop: the same client, the same one session per process, the same
retries and the same errors, each saying truthfully whether the command may have been
applied. The decisions are the blocking client's own (``client.Attempts``, the session's
numbers, ``Lock``'s lease, a watch's ``watch.Cursor``); only the sending and the waiting
differ::

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
from ..exceptions import RaftError
from ..protocol import asend
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


class AsyncWatch:
    """``watch.Watch`` for async code: an async iterator of ``watch.Event`` (and an
    async context manager that closes it), read from the node's ``watch`` route on an
    asyncio connection. The same events, once each and in order across failovers
    (it resumes on another member after ``last_index``), and the same errors
    (``WatchCompactedError``, ``InvalidRequestError``, ``ClusterUnreachableError``):
    the decisions are its ``watch.Cursor``'s (``cursor``), the blocking watch's own;
    it does the asyncio I/O they ask for.

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
        self.cursor = watch.Cursor(after, parameters, timeout, client)
        self._connection: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self._opened = False

    @property
    def last_index(self) -> int | None:
        """The index the watch went through (None before anything was read)."""
        return self.cursor.last_index

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
            self.cursor.start(time.monotonic())
            await self._run()

    def close(self) -> None:
        """Stop watching: the connection is closed; iterating ends."""
        self.cursor.close()
        self._drop()

    async def __anext__(self) -> watch.Event:
        await self.open()
        self.cursor.begin(time.monotonic())
        event = await self._run()
        if event is None:
            raise StopAsyncIteration
        return event

    async def _run(self) -> watch.Event | None:
        """Do the cursor's steps until it gives an event (None: the iteration is over)."""
        while True:
            match self.cursor.step(time.monotonic()):
                case watch.Event() as event:
                    return event
                case watch.Receive(seconds):
                    await self._receive(seconds)
                case watch.Connect(address, request):
                    await self._connect(address, request)
                case watch.Pause(seconds):
                    await asyncio.sleep(seconds)
                case watch.Drop():
                    self._drop()
                case None:
                    return None

    async def _connect(self, address: str, request: bytes) -> None:
        self._drop()  # a connection left by an interrupted iteration
        try:
            reader, writer = await asend.connect(address)
        except Unsent as error:
            self.cursor.broke(str(error))
            return
        self._connection = reader, writer
        answer_timeout = watch.CONNECT_TIMEOUT + watch.SILENCE
        try:
            writer.write(request)
            status, head = await asyncio.wait_for(asend.read_head(reader), answer_timeout)
            encoding = head.get("transfer-encoding", "")
            if not self.cursor.answered(status, encoding, time.monotonic()):
                body = await asyncio.wait_for(reader.read(watch.MAX_HEAD), answer_timeout)
                self.cursor.refusal(body)
        except (OSError, ValueError, TimeoutError, asyncio.IncompleteReadError) as error:
            self.cursor.broke(f"{address} did not answer the watch: {error}")

    async def _receive(self, seconds: float) -> None:
        assert self._connection is not None
        try:  # read() takes what is there or nothing: a timeout loses no byte
            data = await asyncio.wait_for(self._connection[0].read(1 << 16), seconds)
        except TimeoutError:
            return
        except OSError as error:
            self.cursor.broke(f"the connection broke: {error}")
            return
        self.cursor.received(data, time.monotonic())

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
