"""The keep-alive connections nodes and clients post over, against a real local server."""

from __future__ import annotations

import http.server
import socket
import threading
from collections.abc import Iterator
from typing import Any, ClassVar

import pytest

from django_raft.protocol.connection import NodeConnection, NotSentError, ReplyTooLargeError
from tests.integration.cluster import free_port


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive
    received: ClassVar[list[bytes]] = []
    reply = b"ok"

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.received.append(body)
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.reply)))
        self.end_headers()
        self.wfile.write(self.reply)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def server() -> Iterator[http.server.ThreadingHTTPServer]:
    _Handler.received = []
    _Handler.reply = b"ok"
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


def address(server: http.server.ThreadingHTTPServer) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}"


def count_connections(server: http.server.ThreadingHTTPServer) -> list[int]:
    """A list that grows by one each time ``server`` accepts a connection."""
    accepted: list[int] = []
    original = server.get_request

    def counting() -> Any:
        accepted.append(1)
        return original()

    server.get_request = counting  # type: ignore[method-assign]
    return accepted


def test_requests_share_one_connection(server: http.server.ThreadingHTTPServer) -> None:
    connection = NodeConnection(address(server), 5.0, None)
    accepted = count_connections(server)
    for i in range(5):
        assert connection.post("/x", str(i).encode(), {}, 100) == (200, b"ok")
    assert _Handler.received == [b"0", b"1", b"2", b"3", b"4"]
    assert len(accepted) == 1
    connection.close()


def test_a_connection_the_server_closed_while_idle_is_replaced_not_resent(
    server: http.server.ThreadingHTTPServer,
) -> None:
    for resend in (True, False):
        _Handler.received = []
        connection = NodeConnection(address(server), 5.0, None, resend=resend)
        assert connection.post("/x", b"first", {}, 100)[0] == 200
        assert connection._connection is not None
        sock = connection._connection.sock
        # The server side of an idle keep-alive connection goes away.
        sock.shutdown(socket.SHUT_RD)
        assert connection.post("/x", b"second", {}, 100)[0] == 200
        assert _Handler.received == [b"first", b"second"]  # sent once, on a new connection
        connection.close()


def test_a_refused_connection_is_not_sent() -> None:
    connection = NodeConnection(f"http://127.0.0.1:{free_port()}", 1.0, None)
    with pytest.raises(NotSentError):
        connection.post("/x", b"body", {}, 100)


def test_an_answer_over_the_limit_is_refused(server: http.server.ThreadingHTTPServer) -> None:
    _Handler.reply = b"x" * 101
    connection = NodeConnection(address(server), 5.0, None)
    with pytest.raises(ReplyTooLargeError):
        connection.post("/x", b"body", {}, 100)
    assert connection._connection is None  # the rest was unread: the connection is dropped
    _Handler.reply = b"x" * 100
    assert connection.post("/x", b"body", {}, 100) == (200, b"x" * 100)


def test_a_silent_node_times_out() -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    try:
        connection = NodeConnection(f"http://127.0.0.1:{listener.getsockname()[1]}", 5.0, None)
        with pytest.raises(TimeoutError):
            connection.post("/x", b"body", {}, 100, timeout=0.2)
    finally:
        listener.close()


def test_a_connection_past_descriptor_1024_is_kept_alive(
    server: http.server.ThreadingHTTPServer,
) -> None:
    """``select`` cannot watch descriptors past 1,023; the idle check must not need it."""
    import os
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4096)), hard))
    fillers: list[int] = []
    try:
        while not fillers or fillers[-1] < 1100:
            fillers.append(os.open(os.devnull, os.O_RDONLY))
        accepted = count_connections(server)
        connection = NodeConnection(address(server), 5.0, None)
        for i in range(3):
            assert connection.post("/x", str(i).encode(), {}, 100) == (200, b"ok")
        assert connection._connection is not None
        assert connection._connection.sock.fileno() > 1024
        assert len(accepted) == 1
        connection.close()
    finally:
        for descriptor in fillers:
            os.close(descriptor)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
