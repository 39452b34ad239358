"""A TCP proxy in front of each node on 127.0.0.1: the network a fault run partitions and slows.

Every node reaches node ``b`` at ``b``'s proxy: it is ``b``'s address in every node's
``CLUSTER`` and ``b``'s own ``ADDRESS``, so the membership stored in the log, and in a
snapshot, is the same on every node. The proxy tells the senders apart: each
connection a node opens to a peer (its streams, its round-trip probes, the commands
it forwards) begins with a signed HTTP request whose ``X-Raft-Node`` header names the
sending node. The proxy reads that request's head, and the connection then belongs to
the link ``a -> b``, which carries exactly what node ``a`` sends to node ``b``; the
answers come back on ``b``'s own streams, through ``a``'s proxy as the link ``b -> a``.
Cutting one link is then a one-way partition. A connection from no other node (no
such header, a name that is no node's, a node reaching itself) is forwarded as it is,
never cut nor slowed.

A cut link closes its open connections and then swallows what arrives on the new ones
(accepted, read, never forwarded), like a network that drops packets rather than one
that refuses connections; healing closes those, so the sender opens fresh ones. Latency
holds every chunk for ``delay`` seconds in each direction, in order.

All proxies run on one asyncio loop in a thread of the harness process.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Coroutine
from typing import Any, TypeVar

from django_raft.protocol.auth import NODE_HEADER
from tests.integration.cluster import free_port

T = TypeVar("T")

HEAD_LIMIT = 64 * 1024
"""Bytes of a connection's first request head read at most to find its sender."""
HEAD_TIMEOUT = 10.0
"""Seconds a new connection has to send its first request head."""
CHUNK = 65536


def sender_of(head: bytes) -> str | None:
    """The ``X-Raft-Node`` header of an HTTP request head, or None."""
    wanted = NODE_HEADER.lower().encode()
    for line in head.split(b"\r\n")[1:]:
        name, colon, value = line.partition(b":")
        if colon and name.strip().lower() == wanted:
            return value.strip().decode("latin-1")
    return None


class Link:
    """One direction between two nodes: whether it is cut or slowed, and the
    connections it carries (or swallows)."""

    def __init__(self, source: str, target: str) -> None:
        self.source = source
        self.target = target
        self.cut = False
        self.delay = 0.0
        self.connections: set[asyncio.StreamWriter] = set()
        self.bytes_forwarded = 0

    def close_all(self) -> None:
        """Close every connection of this link, both ends (in the proxies' loop)."""
        for writer in list(self.connections):
            writer.close()
        self.connections.clear()

    async def carry(
        self,
        head: bytes,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        target_port: int,
    ) -> None:
        """Serve one connection whose first request head, ``head``, was read already."""
        self.connections.add(writer)
        try:
            if self.cut:
                while await reader.read(CHUNK):
                    pass  # swallowed
                return
            try:
                up_reader, up_writer = await asyncio.open_connection("127.0.0.1", target_port)
            except OSError:
                return
            self.connections.add(up_writer)
            try:
                await asyncio.gather(
                    self._pump(reader, up_writer, head),
                    self._pump(up_reader, writer),
                    return_exceptions=True,
                )
            finally:
                self.connections.discard(up_writer)
        finally:
            self.connections.discard(writer)

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, first: bytes = b""
    ) -> None:
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def deliver() -> None:
            while True:
                due, data = await queue.get()
                if not data:
                    break
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                writer.write(data)
                await writer.drain()
                self.bytes_forwarded += len(data)

        sender = asyncio.ensure_future(deliver())
        try:
            if first:
                await queue.put((time.monotonic() + self.delay, first))
            while True:
                data = await reader.read(CHUNK)
                await queue.put((time.monotonic() + self.delay, data))
                if not data:
                    break
            await sender
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            sender.cancel()
            with contextlib.suppress(Exception):
                writer.close()


class Proxy:
    """The proxy in front of one node, shared by every sender."""

    def __init__(self, network: Network, target: str, target_port: int) -> None:
        self.network = network
        self.target = target
        self.target_port = target_port
        self.port = free_port()
        self.direct = Link("", target)
        """The connections from no other node: never cut nor slowed."""
        self.server: asyncio.AbstractServer | None = None
        self.unread: set[asyncio.StreamWriter] = set()
        """Connections whose first request head is still awaited."""

    @property
    def address(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self.server = await asyncio.start_server(
            self._serve, "127.0.0.1", self.port, limit=HEAD_LIMIT
        )

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
        for writer in list(self.unread):
            writer.close()
        self.direct.close_all()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.unread.add(writer)
        try:
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT)
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, OSError):
                return  # closed, silent or no HTTP: nothing to forward
            finally:
                self.unread.discard(writer)
            link = self.network.link(sender_of(head), self.target)
            await link.carry(head, reader, writer, self.target_port)
        except asyncio.CancelledError:
            return  # closing the network; Python 3.11's server logs a cancelled handler
        finally:
            writer.close()


class Network:
    """A proxy in front of every node, the links between every ordered pair of nodes,
    and the faults they inject."""

    def __init__(self, ports: dict[str, int]) -> None:
        self.ports: dict[str, int] = {}
        self.proxies: dict[str, Proxy] = {}
        self.links: dict[tuple[str, str], Link] = {}
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="proxies", daemon=True)
        self.thread.start()
        for node_id, port in ports.items():
            self.add(node_id, port)

    def _run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout=10)

    def add(self, node_id: str, port: int) -> None:
        """A proxy for a new node (listening on ``port``), and its links with every node
        known."""
        for other in self.ports:
            self.links[(other, node_id)] = Link(other, node_id)
            self.links[(node_id, other)] = Link(node_id, other)
        self.ports[node_id] = port
        proxy = self.proxies[node_id] = Proxy(self, node_id, port)
        self._run(proxy.start())

    def address(self, source: str, target: str) -> str:
        """Where ``source`` reaches ``target``: ``target``'s proxy, whatever the source."""
        return self.proxies[target].address

    def link(self, source: str | None, target: str) -> Link:
        """The link a connection from ``source`` to ``target``'s proxy belongs to: the
        proxy's direct one when ``source`` is no other node."""
        found = self.links.get((source or "", target))
        return found if found is not None else self.proxies[target].direct

    def _set(self, pairs: list[tuple[str, str]], cut: bool) -> None:
        def apply() -> None:
            for pair in pairs:
                link = self.links[pair]
                if link.cut != cut:
                    link.cut = cut
                    link.close_all()

        self.loop.call_soon_threadsafe(apply)

    def cut(self, pairs: list[tuple[str, str]]) -> None:
        """Cut these links (one direction each)."""
        self._set(pairs, True)

    def isolate(self, groups: list[list[str]]) -> list[tuple[str, str]]:
        """Cut every link between different groups (both directions); the cut links."""
        side = {node: k for k, group in enumerate(groups) for node in group}
        pairs = [(a, b) for a, b in self.links if side.get(a, -1) != side.get(b, -2)]
        self.cut(pairs)
        return pairs

    def slow(self, delay: float) -> None:
        """Delay every chunk on every link by ``delay`` seconds (each direction)."""

        def apply() -> None:
            for link in self.links.values():
                link.delay = delay

        self.loop.call_soon_threadsafe(apply)

    def heal(self) -> None:
        """Every link open and fast again."""
        self._set(list(self.links), False)
        self.slow(0.0)

    def close(self) -> None:
        """Stop every proxy, close every connection, and end the loop's thread."""

        async def stop() -> None:
            for proxy in self.proxies.values():
                await proxy.stop()
            for link in self.links.values():
                link.close_all()
            # Connections still being served end here, not with the loop destroyed.
            tasks = asyncio.all_tasks() - {asyncio.current_task()}
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        with contextlib.suppress(Exception):
            self._run(stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
