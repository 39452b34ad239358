"""Per-link TCP proxies on 127.0.0.1: the network a fault run partitions and slows.

Each node reaches each peer through a proxy of its own (the peer's address in that
node's ``CLUSTER`` is the proxy's), so the link ``a -> b`` carries exactly what node
``a`` sends to node ``b``; the answers come back on ``b``'s own streams, through the
proxy of ``b -> a``. Cutting one link is then a one-way partition.

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

from tests.integration.cluster import free_port

T = TypeVar("T")


class Link:
    """The proxy of one direction between two nodes."""

    def __init__(self, source: str, target: str, target_port: int) -> None:
        self.source = source
        self.target = target
        self.target_port = target_port
        self.port = free_port()
        self.cut = False
        self.delay = 0.0
        self.server: asyncio.AbstractServer | None = None
        self.connections: set[asyncio.StreamWriter] = set()
        self.bytes_forwarded = 0

    @property
    def address(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
        self._close_all()

    def _close_all(self) -> None:
        for writer in list(self.connections):
            writer.close()
        self.connections.clear()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections.add(writer)
        try:
            if self.cut:
                while await reader.read(65536):
                    pass  # swallowed
                return
            try:
                up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
            except OSError:
                return
            self.connections.add(up_writer)
            await asyncio.gather(
                self._pump(reader, up_writer), self._pump(up_reader, writer), return_exceptions=True
            )
        finally:
            self.connections.discard(writer)
            writer.close()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
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
            while True:
                data = await reader.read(65536)
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


class Network:
    """The proxies of every ordered pair of nodes, and the faults they inject."""

    def __init__(self, ports: dict[str, int]) -> None:
        self.ports = dict(ports)
        self.links: dict[tuple[str, str], Link] = {
            (a, b): Link(a, b, port) for a in ports for b, port in ports.items() if a != b
        }
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="proxies", daemon=True)
        self.thread.start()
        for link in self.links.values():
            self._run(link.start())

    def _run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout=10)

    def add(self, node_id: str, port: int) -> None:
        """Links between a new node (listening on ``port``) and every node known."""
        new = [Link(other, node_id, port) for other in self.ports]
        new += [Link(node_id, other, their_port) for other, their_port in self.ports.items()]
        self.ports[node_id] = port
        for link in new:
            self.links[(link.source, link.target)] = link
            self._run(link.start())

    def address(self, source: str, target: str) -> str:
        """Where ``source`` reaches ``target``."""
        return self.links[(source, target)].address

    def _set(self, pairs: list[tuple[str, str]], cut: bool) -> None:
        def apply() -> None:
            for pair in pairs:
                link = self.links[pair]
                if link.cut != cut:
                    link.cut = cut
                    link._close_all()

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
        for link in self.links.values():
            with contextlib.suppress(Exception):
                self._run(link.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
