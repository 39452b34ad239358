"""A keep-alive HTTP(S) connection to one node, on the standard library's ``http.client``.

Nodes post to each other many times a second. ``requests`` costs about a millisecond of
CPU per round trip (settings merging, hooks, cookies, adapters); ``http.client`` a
quarter of that, which is CPU the loop gets back, and time off every commit.
"""

from __future__ import annotations

import http.client
import ssl
from urllib.parse import urlsplit

__all__ = ["NodeConnection", "ReplyTooLargeError"]

STALE = (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError)
"""What a kept-alive connection the server has closed meanwhile raises on reuse."""


class ReplyTooLargeError(http.client.HTTPException):
    """A node answered with more than the caller accepts."""


class NodeConnection:
    """One connection to ``address`` (``http://`` or ``https://``), opened on first use,
    kept alive between requests and opened again when it breaks. Not thread-safe: one
    per sender thread."""

    def __init__(self, address: str, timeout: float, context: ssl.SSLContext | None) -> None:
        self.address = address
        self.timeout = timeout
        self.context = context
        parts = urlsplit(address)
        self._https = parts.scheme == "https"
        self._host = parts.hostname or ""
        self._port = parts.port
        self._connection: http.client.HTTPConnection | None = None

    def post(
        self, path: str, body: bytes, headers: dict[str, str], limit: int
    ) -> tuple[int, bytes]:
        """POST ``body`` to ``path``; return the status and at most ``limit`` bytes of body.

        Raise ``OSError`` or ``http.client.HTTPException`` when the node cannot be
        reached or answers garbage, and ``ReplyTooLargeError`` past ``limit``. A request
        on a kept-alive connection the node closed meanwhile is sent again, once, on a
        new one.
        """
        reused = self._connection is not None
        try:
            return self._post(path, body, headers, limit)
        except STALE:
            self.close()
            if not reused:
                raise
        except BaseException:
            self.close()
            raise
        try:
            return self._post(path, body, headers, limit)
        except BaseException:
            self.close()
            raise

    def _post(
        self, path: str, body: bytes, headers: dict[str, str], limit: int
    ) -> tuple[int, bytes]:
        connection = self._connection
        if connection is None:
            if self._https:
                connection = http.client.HTTPSConnection(
                    self._host, self._port, timeout=self.timeout, context=self.context
                )
            else:
                connection = http.client.HTTPConnection(
                    self._host, self._port, timeout=self.timeout
                )
            self._connection = connection
        connection.request("POST", path, body=body, headers=headers)
        response = connection.getresponse()
        data = response.read(limit + 1)
        if len(data) > limit:
            raise ReplyTooLargeError(f"answer of more than {limit} bytes")
        if response.will_close:
            self.close()
        return response.status, data

    def close(self) -> None:
        """Close the connection; the next request opens a new one."""
        if self._connection is not None:
            self._connection.close()
            self._connection = None
