"""The stream between two nodes: one signed handshake, then authenticated frames.

A node sends its Raft messages to a peer over long-lived connections, one per lane
(``data`` for replication, ``control`` for heartbeats and votes), in one direction
only: the peer's answers travel on the peer's own streams. A stream opens with a POST
to ``<prefix>rpc/stream``, signed with the node key like every Raft RPC (``auth``:
method, path, sender, receiver, time, nonce; the body is the lane's name, a newline,
and the sender's address, which the peer uses to answer when it knows no other); the
peer answers ``200`` with ``PROTOCOL`` as the body, and from then on the connection
carries frames and nothing else::

    length (4 bytes, big-endian) | tag (16 bytes) | payload (length bytes)

The payload is a batch of encoded messages (``transport.frame``); an empty payload
keeps an idle stream alive. The tag is the HMAC-SHA256 (truncated to 16 bytes) of the
frame's number and its payload, under a key only the two ends can derive: the node
key, the handshake's nonce (never accepted twice), the sender, the receiver and the
lane. A frame that was changed, injected, replayed, reordered or dropped on the way
fails its tag, and the receiver closes the stream. This costs one HMAC per batch
instead of a signed HTTP request per batch, and no HTTP parsing at all.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import socket
import struct
from collections.abc import Callable, Iterator
from typing import BinaryIO

__all__ = [
    "LANES",
    "MAX_FRAME",
    "PROTOCOL",
    "STREAM_PATH",
    "FrameError",
    "FrameParser",
    "FrameReader",
    "FrameWriter",
    "send_now",
    "stream_key",
]

STREAM_PATH = "stream"
"""The RPC route a stream opens on (``<prefix>rpc/stream``)."""
PROTOCOL = b"django-raft-stream/1"
"""The body of a peer's answer that accepts a stream."""
LANES = ("data", "control")
"""The lanes a node opens a stream for, to each peer: the handshake's body names one."""
MAX_FRAME = 64 << 20
"""Bytes of payload in one frame at most (a snapshot travels in one)."""
TAG_SIZE = 16
_HEADER = struct.Struct(">I16s")
_NUMBER = struct.Struct(">Q")
_LABEL = b"django-raft/stream-key/1"


class FrameError(Exception):
    """A frame that cannot be trusted: the stream is closed."""


def stream_key(node_key: bytes, nonce: str, sender: str, receiver: str, lane: str) -> bytes:
    """The key that tags one stream's frames (both ends derive it from the handshake)."""
    parts = [_LABEL]
    for field in (nonce, sender, receiver, lane):
        data = field.encode("utf-8", "surrogatepass")
        parts.append(len(data).to_bytes(4, "big") + data)
    return hmac.digest(node_key, b"".join(parts), hashlib.sha256)


def _tag(key: bytes, number: int, payload: bytes) -> bytes:
    return hmac.digest(key, _NUMBER.pack(number) + payload, hashlib.sha256)[:TAG_SIZE]


def send_now(sock: socket.socket, data: bytes) -> int:
    """Write what ``sock`` takes at once; return how many bytes that was (0 when its
    buffer is full). Never waits, whatever the socket's timeout: a socket with one waits
    for room even when told ``MSG_DONTWAIT``. Plain sockets only (not TLS)."""
    try:
        if sock.gettimeout() is None:  # a blocking file: only the flag keeps it from waiting
            return sock.send(data, socket.MSG_DONTWAIT)
        return os.write(sock.fileno(), data)  # the file is non-blocking: never waits
    except BlockingIOError:
        return 0


class FrameWriter:
    """Turns payloads into the frames of one stream, numbered from 0."""

    def __init__(self, key: bytes) -> None:
        self._key = key
        self._number = 0

    def frame(self, payload: bytes) -> bytes:
        """The next frame carrying ``payload``."""
        if len(payload) > MAX_FRAME:
            raise ValueError(f"a frame carries at most {MAX_FRAME} bytes")
        tag = _tag(self._key, self._number, payload)
        self._number += 1
        return _HEADER.pack(len(payload), tag) + payload


class FrameReader:
    """Reads the frames of one stream from ``source`` and checks each one's tag."""

    def __init__(self, source: BinaryIO, key: bytes, limit: int = MAX_FRAME) -> None:
        self._source = source
        self._key = key
        self._limit = limit
        self._number = 0

    def read(self, admit: Callable[[int], object] | None = None) -> bytes | None:
        """The next frame's payload; None when the stream ended cleanly between frames.

        ``admit(length)``, if given, is called once the header is read and before any
        of the payload is (a receiver makes room for it there, or waits).
        Raise ``FrameError`` for a frame cut short, too large, or with a wrong tag, and
        ``OSError`` (``TimeoutError`` included) when the connection fails.
        """
        header = self._source.read(_HEADER.size)
        if not header:
            return None
        if len(header) < _HEADER.size:
            raise FrameError("the stream ended inside a frame header")
        length, tag = _HEADER.unpack(header)
        if length > self._limit:
            raise FrameError(f"a frame of {length} bytes (at most {self._limit})")
        if admit is not None:
            admit(length)
        payload = self._source.read(length) if length else b""
        if len(payload) < length:
            raise FrameError("the stream ended inside a frame")
        if not hmac.compare_digest(tag, _tag(self._key, self._number, payload)):
            raise FrameError(f"frame {self._number} fails its tag")
        self._number += 1
        return payload

    def payloads(self) -> Iterator[bytes]:
        """The payloads of the frames to come, keep-alives (empty) left out, until the
        stream ends cleanly; ``read``'s errors otherwise."""
        while (payload := self.read()) is not None:
            if payload:
                yield payload


class FrameParser:
    """Cuts the frames of one stream out of bytes as they arrive, checking each tag.

    For a reader that waits for its socket itself (``poll``) and so cannot leave the
    bytes of a half-received frame in a buffered file.
    """

    def __init__(self, key: bytes, limit: int = MAX_FRAME) -> None:
        self._key = key
        self._limit = limit
        self._number = 0
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        """The payloads of the frames ``data`` completes (``FrameError`` for a bad one)."""
        buffer = self._buffer
        buffer += data
        payloads = []
        while len(buffer) >= _HEADER.size:
            length, tag = _HEADER.unpack_from(buffer)
            if length > self._limit:
                raise FrameError(f"a frame of {length} bytes (at most {self._limit})")
            end = _HEADER.size + length
            if len(buffer) < end:
                break
            payload = bytes(buffer[_HEADER.size : end])
            del buffer[:end]
            if not hmac.compare_digest(tag, _tag(self._key, self._number, payload)):
                raise FrameError(f"frame {self._number} fails its tag")
            self._number += 1
            payloads.append(payload)
        return payloads
