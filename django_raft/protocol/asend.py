"""Client requests to a node for asyncio code: ``send``'s requests, awaited.

A write or a read index over plain HTTP goes on the process's command stream to the
node (``command_stream``), whose answer completes an asyncio future from the stream's
reader thread; other requests are HTTP on asyncio connections of their own. The same
errors as ``send``: ``Unsent`` when a request certainly never reached the node.
"""

from __future__ import annotations

import asyncio
import functools
import json
import ssl
from typing import Any
from urllib.parse import urlsplit

from ..conf import raft_settings
from ..exceptions import ClusterUnreachableError
from . import command_stream, send
from .auth import ANY_NODE, CLIENT, Signer, derive_keys
from .request import READ_INDEX
from .send import MAX_ANSWER, NO_ADDRESS, AnswerAbandoned, Unsent
from .tls import client_context

__all__ = [
    "connect",
    "post",
    "read_head",
    "read_response",
    "request_bytes",
    "send_command",
    "signer",
]


def signer() -> Signer:
    """This process's client signer (the client key, named by ``NODE_ID``)."""
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
    ours = signer()
    prefix = raft_settings.URL_PREFIX
    streams = send._streams
    found = streams.peek(address, ours, prefix)
    if found is None and not streams.refusing(address, ours, prefix):
        wait = max(min(timeout, command_stream.HANDSHAKE_TIMEOUT), 0.01)
        try:  # a handshake: blocking, once per node while the stream lives
            found = await asyncio.to_thread(streams.get, address, ours, prefix, wait)
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
    headers = signer().headers("POST", path, ANY_NODE, data)
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
    return send.answer_of(f"{address}{path}", status, content)


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
