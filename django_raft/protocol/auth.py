"""Request signatures between nodes, and from clients to nodes, that cannot be replayed.

Two keys are derived from the settings, each with its own label (an HKDF-style
expansion with HMAC-SHA256):

- the *node key*, from ``SECRET``: only cluster members hold it; it signs Raft RPCs;
- the *client key*, from ``CLIENT_SECRET`` (or from ``SECRET`` when that is empty): it
  signs requests to the client routes (commands, status, members).

A web process given only ``CLIENT_SECRET`` can submit commands but cannot speak Raft
or pass for a node. A signature covers the key's kind, the method, the path, the sender,
the receiver, a timestamp, a nonce and the SHA-256 of the body. Everything but the body
travels in headers, so a node checks the signature *before* it reads the body, and
reads a body only up to the length the signed headers announced. A request outside the
time window, or with a nonce seen before, is refused; the nonce memory is bounded (when
full, the nonce signed earliest is forgotten and nothing signed as early is accepted any
more; never one signed after the present, so a fresh request is never refused for it).
Verification never raises: any header of any characters is just a refusal.
"""

from __future__ import annotations

import hashlib
import heapq
import hmac
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = [
    "CLIENT",
    "NODE",
    "NODE_HEADER",
    "Keys",
    "NonceCache",
    "Signer",
    "Verifier",
    "derive_keys",
    "generate_secret",
]

NODE = "node"
CLIENT = "client"

NODE_HEADER = "X-Raft-Node"
"""The sender: a node id, or a client's name."""
RECEIVER_HEADER = "X-Raft-To"
"""The receiver: the node id the request is meant for (``*``: any node, clients only)."""
TIME_HEADER = "X-Raft-Time"
"""Milliseconds since the epoch when the request was signed."""
NONCE_HEADER = "X-Raft-Nonce"
"""32 hex digits, unique per request."""
DIGEST_HEADER = "X-Raft-Content-SHA256"
"""The SHA-256 of the body, hex."""
SIGNATURE_HEADER = "X-Raft-Signature"
"""The HMAC-SHA256 of all of the above, hex."""
ANY_NODE = "*"

NONCE_CAPACITY = 100_000
"""Nonces remembered at most (about 10 MB)."""

_LABELS = {NODE: b"django-raft/node-key/1", CLIENT: b"django-raft/client-key/1"}
_VERSION = b"django-raft-signature/1"


def generate_secret() -> str:
    """Return a new random secret, strong enough for ``SECRET`` or ``CLIENT_SECRET``."""
    return secrets.token_urlsafe(48)


@dataclass(frozen=True, slots=True)
class Keys:
    """The derived keys (a process holding only ``CLIENT_SECRET`` derives its node key
    from the empty ``SECRET``, which no node accepts)."""

    node: bytes
    client: bytes


def _derive(secret: str, kind: str) -> bytes:
    # HKDF (RFC 5869) with an all-zero salt, one block: extract, then expand with a label.
    prk = hmac.new(b"\0" * 32, secret.encode(), hashlib.sha256).digest()
    return hmac.new(prk, _LABELS[kind] + b"\x01", hashlib.sha256).digest()


def derive_keys(secret: str, client_secret: str = "") -> Keys:
    """Derive the node key from ``secret`` and the client key from ``client_secret``
    (from ``secret`` when ``client_secret`` is empty)."""
    return Keys(node=_derive(secret, NODE), client=_derive(client_secret or secret, CLIENT))


def _canonical(
    kind: str,
    method: str,
    path: str,
    sender: str,
    receiver: str,
    timestamp: str,
    nonce: str,
    digest: str,
) -> bytes:
    fields = (kind, method, path, sender, receiver, timestamp, nonce, digest)
    # Length-prefixed, so no two different field lists give the same bytes.
    parts = [_VERSION]
    for field in fields:
        data = field.encode("utf-8", "surrogatepass")
        parts.append(len(data).to_bytes(4, "big") + data)
    return b"".join(parts)


def _mac(key: bytes, message: bytes) -> bytes:
    return hmac.new(key, message, hashlib.sha256).hexdigest().encode()


class Signer:
    """Signs outgoing requests with one key, as ``sender``."""

    def __init__(self, key: bytes, kind: str, sender: str) -> None:
        self.key = key
        self.kind = kind
        self.sender = sender

    def headers(self, method: str, path: str, receiver: str, body: bytes) -> dict[str, str]:
        """The headers that authenticate ``body`` sent to ``path`` of ``receiver``."""
        timestamp = str(time.time_ns() // 1_000_000)
        nonce = secrets.token_hex(16)
        digest = hashlib.sha256(body).hexdigest()
        message = _canonical(
            self.kind, method, path, self.sender, receiver, timestamp, nonce, digest
        )
        return {
            NODE_HEADER: self.sender,
            RECEIVER_HEADER: receiver,
            TIME_HEADER: timestamp,
            NONCE_HEADER: nonce,
            DIGEST_HEADER: digest,
            SIGNATURE_HEADER: _mac(self.key, message).decode(),
        }


class NonceCache:
    """The nonces of the requests accepted within the time window, at most ``capacity``.

    When full, the nonce signed earliest is forgotten and ``floor`` rises to its time: a
    request signed at or before ``floor`` is refused, since its nonce may have been
    forgotten. Only nonces signed at or before the present are ever forgotten, so the
    floor never passes the present and a fresh request is never refused for it: those
    signed ahead of this node's clock (a client's clock may run ahead, within the
    window) are kept apart, ``capacity // FUTURE_SHARE`` at most, and a request signed
    ahead while that many are kept is refused instead.
    """

    FUTURE_SHARE = 10

    def __init__(self, window: float, capacity: int = NONCE_CAPACITY) -> None:
        self.window = window
        self.capacity = capacity
        self.future_capacity = max(1, capacity // self.FUTURE_SHARE)
        self.floor = 0.0
        self._seen: dict[str, float] = {}
        self._past: list[tuple[float, str]] = []
        """Heap of the nonces signed at or before the present (as last looked), by time."""
        self._future: list[tuple[float, str]] = []
        """Heap of the nonces signed after the present, by time."""
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._seen)

    def admit(self, nonce: str, signed_at: float, now: float) -> str | None:
        """Record ``nonce``; return why the request is refused, or None."""
        if abs(now - signed_at) > self.window:
            return "signed outside the time window (check the clocks)"
        with self._lock:
            if signed_at <= self.floor:
                return "signed too long ago to be checked for replay"
            seen = self._seen
            if nonce in seen:
                return "replayed: this nonce was seen before"
            past, future = self._past, self._future
            while future and future[0][0] <= now:  # signed ahead, now due
                heapq.heappush(past, heapq.heappop(future))
            horizon = now - self.window
            while past and past[0][0] < horizon:
                del seen[heapq.heappop(past)[1]]
            if signed_at > now:
                if len(future) >= self.future_capacity:
                    return (
                        f"signed {signed_at - now:.1f} s ahead of this node's clock, and too "
                        "many requests signed ahead are remembered (check the clocks)"
                    )
                heapq.heappush(future, (signed_at, nonce))
            else:
                heapq.heappush(past, (signed_at, nonce))
            seen[nonce] = signed_at
            while len(seen) > self.capacity and past:
                oldest, forgotten = heapq.heappop(past)
                del seen[forgotten]
                self.floor = max(self.floor, oldest)
        return None


@dataclass(frozen=True, slots=True)
class Checked:
    """A request whose signed headers passed: the body must still hash to ``digest``."""

    kind: str
    sender: str
    length: int
    digest: str

    def body_matches(self, body: bytes) -> bool:
        """Whether ``body`` is the one the signature covers."""
        return len(body) == self.length and hmac.compare_digest(
            hashlib.sha256(body).hexdigest().encode(), self.digest.encode()
        )


def _is_hex(value: str, length: int) -> bool:
    return len(value) == length and all(c in "0123456789abcdef" for c in value)


class Verifier:
    """Checks signed headers of incoming requests for one node (``node_id``)."""

    def __init__(
        self,
        keys: Keys,
        node_id: str,
        window: float,
        capacity: int = NONCE_CAPACITY,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.keys = keys
        self.node_id = node_id
        self.nonces = NonceCache(window, capacity)
        self.clock = clock

    def check(
        self,
        method: str,
        path: str,
        header: Callable[[str], str | None],
        length: int,
        kinds: tuple[str, ...],
    ) -> Checked | str:
        """Check a request's signed headers against the keys of ``kinds``.

        ``header(name)`` returns a request header or None; ``length`` is the announced
        body length. Returns what the body must match, or why the request is refused.
        Never raises.
        """
        values = [
            header(name)
            for name in (
                NODE_HEADER,
                RECEIVER_HEADER,
                TIME_HEADER,
                NONCE_HEADER,
                DIGEST_HEADER,
                SIGNATURE_HEADER,
            )
        ]
        present = [value for value in values if isinstance(value, str) and value]
        if len(present) != len(values):
            return "missing signature headers: " + _compare_secrets(kinds)
        sender, receiver, timestamp, nonce, digest, signature = present
        if receiver != self.node_id and not (receiver == ANY_NODE and CLIENT in kinds):
            return f"addressed to {receiver!r}, not to this node"
        if not timestamp.isascii() or not timestamp.isdigit() or len(timestamp) > 16:
            return "malformed timestamp"
        if not _is_hex(nonce, 32) or not _is_hex(digest, 64) or not _is_hex(signature, 64):
            return "malformed nonce, digest or signature"
        expected = signature.encode()
        matched = None
        for kind in kinds:
            key = self.keys.node if kind == NODE else self.keys.client
            message = _canonical(kind, method, path, sender, receiver, timestamp, nonce, digest)
            if hmac.compare_digest(_mac(key, message), expected):
                matched = kind
                break
        if matched is None:
            return "wrong signature: " + _compare_secrets(kinds)
        refused = self.nonces.admit(nonce, int(timestamp) / 1000, self.clock())
        if refused is not None:
            return refused
        return Checked(matched, sender, length, digest)


def _compare_secrets(kinds: tuple[str, ...]) -> str:
    """What to check when a request is not signed with a key of ``kinds`` (names only:
    never a secret)."""
    if CLIENT in kinds:
        return (
            "only cluster members and clients may call this; the caller's secret is not this"
            " node's: compare RAFT_SECRET and RAFT_CLIENT_SECRET (DJANGO_RAFT['SECRET'],"
            " ['CLIENT_SECRET']) in the calling process and in the node's"
        )
    return (
        "only cluster members may call this; the caller's node secret is not this node's:"
        " compare RAFT_SECRET (DJANGO_RAFT['SECRET']) on both nodes"
    )
