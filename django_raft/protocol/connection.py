"""A keep-alive HTTP(S) connection to one node, on the standard library's ``http.client``.

Nodes post to each other many times a second. ``requests`` costs about a millisecond of
CPU per round trip (settings merging, hooks, cookies, adapters); ``http.client`` a
quarter of that, which is CPU the loop gets back, and time off every commit.
"""

from __future__ import annotations

import contextlib
import http.client
import select
import socket
import ssl
from urllib.parse import urlsplit

__all__ = ["NodeConnection", "NotSentError", "ReplyTooLargeError"]

STALE = (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError)
"""What a kept-alive connection the server has closed meanwhile raises on reuse."""


class ReplyTooLargeError(http.client.HTTPException):
    """A node answered with more than the caller accepts."""


class NotSentError(OSError):
    """The connection could not be opened: the request certainly did not reach the node."""


class NodeConnection:
    """One connection to ``address`` (``http://`` or ``https://``), opened on first use,
    kept alive between requests and opened again when it breaks. Not thread-safe: one
    per thread.

    ``timeout`` bounds each wait for the node (seconds); ``connect_timeout`` the
    opening of the connection. With ``resend``, a request on a kept-alive connection
    the node closed meanwhile is sent again on a new one: only for requests that may
    arrive twice (Raft messages may; a command outside a session may not, so it gets
    the error instead). Either way a connection the node has closed while it was idle
    is noticed before it is reused.
    """

    def __init__(
        self,
        address: str,
        timeout: float,
        context: ssl.SSLContext | None,
        *,
        connect_timeout: float | None = None,
        resend: bool = True,
    ) -> None:
        self.address = address
        self.timeout = timeout
        self.connect_timeout = timeout if connect_timeout is None else connect_timeout
        self.context = context
        self.resend = resend
        parts = urlsplit(address)
        self._https = parts.scheme == "https"
        self._host = parts.hostname or ""
        self._port = parts.port
        self._connection: http.client.HTTPConnection | None = None

    def post(
        self,
        path: str,
        body: bytes,
        headers: dict[str, str],
        limit: int,
        timeout: float | None = None,
    ) -> tuple[int, bytes]:
        """POST ``body`` to ``path``; return the status and at most ``limit`` bytes of body.

        ``timeout`` replaces the connection's own for this request's waits.

        Raise ``NotSentError`` when no connection could be opened, ``OSError`` or
        ``http.client.HTTPException`` when the node fails to answer or answers garbage
        (the request may have arrived), and ``ReplyTooLargeError`` past ``limit``.
        """
        if self._connection is not None and peer_closed(self._connection.sock):
            self.close()
        reused = self._connection is not None
        wait = self.timeout if timeout is None else timeout
        try:
            return self._post(path, body, headers, limit, wait)
        except STALE:
            self.close()
            if not (reused and self.resend):
                raise
        except BaseException:
            self.close()
            raise
        try:
            return self._post(path, body, headers, limit, wait)
        except BaseException:
            self.close()
            raise

    def _post(
        self, path: str, body: bytes, headers: dict[str, str], limit: int, wait: float
    ) -> tuple[int, bytes]:
        connection = self._connection
        if connection is None:
            connection = self._open()
        connection.sock.settimeout(wait)
        connection.request("POST", path, body=body, headers=headers)
        response = connection.getresponse()
        data = response.read(limit + 1)
        if len(data) > limit:
            raise ReplyTooLargeError(f"answer of more than {limit} bytes")
        if response.will_close:
            self.close()
        return response.status, data

    def _open(self) -> http.client.HTTPConnection:
        connection: http.client.HTTPConnection
        if self._https:
            connection = http.client.HTTPSConnection(
                self._host, self._port, timeout=self.connect_timeout, context=self.context
            )
        else:
            connection = http.client.HTTPConnection(
                self._host, self._port, timeout=self.connect_timeout
            )
        try:
            connection.connect()
        except OSError as error:
            connection.close()
            raise NotSentError(f"cannot connect to {self.address}: {error}") from error
        self._connection = connection
        return connection

    def detach(self) -> socket.socket:
        """Take the open connection's socket (after a request upgraded it to a stream):
        the caller owns it now, and the next request opens a new connection."""
        connection = self._connection
        if connection is None or connection.sock is None:
            raise NotSentError(f"no open connection to {self.address}")
        sock: socket.socket = connection.sock
        connection.sock = None
        self._connection = None
        return sock

    def close(self) -> None:
        """Close the connection; the next request opens a new one."""
        if self._connection is not None:
            self._connection.close()
            self._connection = None


def shut(sock: socket.socket) -> None:
    """Shut a connection down both ways (whatever thread reads it sees its end)."""
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


def peer_closed(sock: socket.socket | None) -> bool:
    """Whether an idle kept-alive connection was closed (or sent something unasked).

    ``poll``, not ``select``: a process with many connections has descriptors past
    ``select``'s limit of 1,024, where every check would fail and every request would
    open a new connection.
    """
    if sock is None:
        return True
    poller = select.poll()
    try:
        poller.register(sock, select.POLLIN)
        return bool(poller.poll(0))
    except (OSError, ValueError):
        return True
