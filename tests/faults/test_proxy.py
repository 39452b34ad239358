"""The proxies of the fault suite: one in front of each node, telling the links apart by
the sender a connection's first request names, so that cutting ``a -> b`` stops what
``a`` sends to ``b`` and nothing else."""

from __future__ import annotations

import socket
import socketserver
import threading
from collections.abc import Callable, Iterator

import pytest

from tests.faults.proxy import Network, sender_of
from tests.integration.cluster import free_port

SILENCE = 0.5
"""Seconds without an answer that count as swallowed."""
ANSWER = 10.0
"""Seconds a forwarded request has to come back (two busy cores may take a while)."""


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while data := self.request.recv(65536):
            self.request.sendall(data)


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


@pytest.fixture
def network() -> Iterator[Network]:
    """Echo servers standing for nodes n1, n2, n3, each behind its proxy."""
    servers = {node: _Server(("127.0.0.1", free_port()), _Echo) for node in ("n1", "n2", "n3")}
    for server in servers.values():
        threading.Thread(target=server.serve_forever, daemon=True).start()
    found = Network({node: server.server_address[1] for node, server in servers.items()})
    try:
        yield found
    finally:
        found.close()
        for server in servers.values():
            server.shutdown()
            server.server_close()


Connect = Callable[[str | None, str], socket.socket]


@pytest.fixture
def connect(network: Network) -> Iterator[Connect]:
    """Open a connection from a sender to a node's proxy, its first request sent (every
    one closed at the end)."""
    opened: list[socket.socket] = []

    def open_one(sender: str | None, target: str) -> socket.socket:
        port = int(network.address("n1", target).rsplit(":", 1)[1])
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        opened.append(sock)
        sock.sendall(request(sender))
        return sock

    yield open_one
    for sock in opened:
        sock.close()


def request(sender: str | None) -> bytes:
    header = f"X-Raft-Node: {sender}\r\n" if sender else ""
    return f"POST /raft/rpc/stream HTTP/1.1\r\nHost: x\r\n{header}\r\nbody".encode()


def echoed(sock: socket.socket, sender: str | None, within: float = ANSWER) -> bool:
    """Whether the request came back (forwarded both ways) ``within`` seconds."""
    wanted = request(sender)
    got = b""
    sock.settimeout(within)
    try:
        while len(got) < len(wanted):
            data = sock.recv(len(wanted) - len(got))
            if not data:
                return False
            got += data
    except TimeoutError:
        return False
    return got == wanted


def swallowed(sock: socket.socket, sender: str | None) -> bool:
    """Whether the request did not come back within ``SILENCE``."""
    return not echoed(sock, sender, SILENCE)


def closed(sock: socket.socket) -> bool:
    sock.settimeout(5)
    try:
        return sock.recv(65536) == b""
    except ConnectionResetError:
        return True


def test_the_sender_is_the_node_header_of_the_first_request_head() -> None:
    assert sender_of(request("n2")) == "n2"
    assert sender_of(b"GET / HTTP/1.1\r\nx-raft-node:  n3 \r\n\r\n") == "n3"
    assert sender_of(request(None)) is None


def test_every_node_is_reached_at_one_address_whatever_the_sender(network: Network) -> None:
    assert network.address("n1", "n2") == network.address("n3", "n2")
    assert network.address("n1", "n2") != network.address("n1", "n3")


def test_a_cut_link_closes_and_swallows_only_its_own_connections(
    network: Network, connect: Connect
) -> None:
    before = connect("n1", "n2")
    assert echoed(before, "n1")
    others = [connect("n3", "n2"), connect("n2", "n1")]
    network.cut([("n1", "n2")])
    assert closed(before)
    after = connect("n1", "n2")
    assert swallowed(after, "n1")
    # The other links, and connections from no node, go on as before: the request sent
    # on opening comes back, and so does one sent after the cut.
    for sock, sender in zip(others, ("n3", "n2"), strict=True):
        assert echoed(sock, sender)
        sock.sendall(request(sender))
        assert echoed(sock, sender)
    assert echoed(connect(None, "n2"), None)
    assert echoed(connect("client", "n2"), "client")
    network.heal()
    assert closed(after)
    assert echoed(connect("n1", "n2"), "n1")


def test_isolating_a_node_cuts_both_directions_but_not_its_own_loop(
    network: Network, connect: Connect
) -> None:
    network.isolate([["n1"], ["n2", "n3"]])
    assert swallowed(connect("n1", "n2"), "n1")
    assert swallowed(connect("n3", "n1"), "n3")
    assert echoed(connect("n2", "n3"), "n2")
    assert echoed(connect("n1", "n1"), "n1")
    network.heal()
