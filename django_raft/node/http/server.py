"""Run a node in this process: the loop, the transport and the HTTP server for its routes.

The routes are served by cheroot, a production-grade threaded WSGI server with HTTP/1.1
keep-alive, which peers' senders reuse connection by connection.
"""

from __future__ import annotations

import gc
import itertools
import logging
import queue
import signal
import socket
import ssl
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from types import FrameType
from typing import Any
from urllib.parse import urlsplit

from cheroot import server as cheroot_server
from cheroot import wsgi
from cheroot.workers.threadpool import ThreadPool
from django.core.exceptions import ImproperlyConfigured
from django.core.handlers.wsgi import WSGIHandler
from django.db import IntegrityError, OperationalError, connections
from django.http import Http404, HttpRequest, HttpResponseBase, JsonResponse
from django.urls import set_urlconf
from django.utils.log import log_response

from ...checks import membership_disagreements, stored_membership
from ...conf import is_node_url, raft_settings
from ...exceptions import (
    InvalidRequestError,
    NodeServerError,
    NodeStoppedError,
    OverloadedError,
    StopError,
)
from ...models import HardState, NodeIdentity
from ...protocol import command_stream, stream, tls
from ...protocol.answers import failure
from ...protocol.auth import NODE, NONCE_HEADER
from ...protocol.connection import shut
from ...protocol.wire import WireError
from .. import metrics, rtt
from ..runner import RaftNode
from ..statemachine import StateMachine
from ..storage import (
    DjangoStorage,
    LogNotEmptyError,
    check_identity,
    claim_identity,
    cluster_id_of,
    make_durable,
)
from ..transport import unframe
from . import command_streams, views, watches

logger = logging.getLogger(__name__)

LISTEN_BACKLOG = 1024
"""Connections the kernel queues before the server accepts them (cheroot's default, 5,
made bursts of new clients see connection resets)."""
CONNECTION_TIMEOUT = 5
"""Seconds a connection may stay silent: an idle keep-alive connection is closed after
it, and so is one that stops sending in the middle of a request. Peers send every
heartbeat interval, so their connections never sit that long."""
HEADER_TIMEOUT = 2.0
"""Seconds a connection has to send a request's line and headers (TLS handshake included)."""
PEER_THREADS = 16
"""Request threads kept for peers' connections (see ``NodeServer``)."""
MAX_KEEP_ALIVE = 256
"""Idle keep-alive connections of clients kept open at most (peers' are not counted)."""
UNREAD_STATUSES = (403, 413)
"""Refusals that may leave the request body unread: the connection is closed after them."""
DEFAULT_THREADS = 64
"""Request threads: each client waiting for its command's commit holds one."""
SWITCH_INTERVAL = 0.001
"""Seconds a thread may hold the interpreter before another runnable thread gets it.

The node's threads (loop, senders, request threads, and whatever the process itself
runs) take turns holding the GIL, and every database or socket call gives it up. With
Python's default of 5 ms, a loop that does a few dozen such calls per turn waits
behind any busy thread for up to 5 ms each time: turns of 100 ms and more, late
heartbeats and lost leaders under load. A shorter interval bounds those waits; the
node process sets it when it starts (``sys.setswitchinterval``), lowering it only."""
GC_THRESHOLD = (50_000, 50, 100)
"""The garbage collector's thresholds in the node process (Python's: 700, 10, 10).

Each command allocates a few dozen short-lived objects, and thousands of commands may
be outstanding: with Python's defaults the collector ran every few hundred commands and
walked every outstanding one each time (measured with 10,000 outstanding: 20-50% more
throughput in four runs of five, alternated with runs on the defaults). Raised (never
lowered) when the node starts, after what the start loaded was moved out of the
collector's sight (``gc.freeze``)."""


def _json_errors(get_response: Callable[[HttpRequest], HttpResponseBase]) -> Any:
    """Wrap Django's handling of a node request so every error is a JSON answer.

    Whatever ``DEBUG`` says: no debug page (which could show the secret), no HTML.
    An unexpected exception is logged once and answered with a JSON 500.
    """

    def inner(request: HttpRequest) -> HttpResponseBase:
        try:
            response = get_response(request)
        except Http404:
            return _json_error(404, f"no route {request.path!r}")
        except Exception as error:
            logger.exception("raft: error serving %s %s", request.method, request.path)
            response = JsonResponse(_server_error(error), status=500)
            response._has_been_logged = True  # type: ignore[attr-defined]  # once is enough
            return response
        status = response.status_code
        if status >= 400 and response.get("Content-Type") != "application/json":
            answer = _json_error(status, "")
            if response.has_header("Allow"):
                answer["Allow"] = response["Allow"]
            return answer
        return response

    return inner


def _json_error(status: int, detail: str) -> JsonResponse:
    """A JSON error for an HTTP status: refused (4xx) or failed on the node (5xx)."""
    message = HTTPStatus(status).phrase + (f": {detail}" if detail else "")
    kind = NodeServerError if status >= 500 else InvalidRequestError
    return JsonResponse(failure(kind, message), status=status)


def _server_error(error: Exception) -> dict[str, Any]:
    """The JSON answer to a request that failed with ``error``: it names the exception's
    class, never its message (which could carry a secret); the traceback is logged."""
    return failure(NodeServerError, f"internal error: {type(error).__name__} (logged on the node)")


NODE_URLCONF = "django_raft.node.http.urlconf"
"""The URLconf ``raftnode`` serves; the project's ``ROOT_URLCONF`` is neither needed nor used."""


class NodeApplication(WSGIHandler):
    """The WSGI application of ``raftnode``: the Raft routes (``django_raft.node.http.urlconf``).

    The hot routes, Raft RPCs between nodes and client commands, are served on a fast
    path that skips Django's request handling (they need no request object: the body,
    two headers and the node); every other route goes through Django with no
    middleware, since the routes authenticate every request with the cluster secret
    and need neither sessions, CSRF nor users. Errors are JSON answers on both paths.
    """

    def __init__(self) -> None:
        super().__init__()
        prefix = "/" + raft_settings.URL_PREFIX
        self._rpc_prefix = prefix + "rpc/"
        self._command_path = prefix + "command"
        self._command_stream_path = prefix + command_stream.PATH
        self._watch_path = prefix + watches.PATH

    def load_middleware(self, is_async: bool = False) -> None:
        self._view_middleware: list[Any] = []
        self._template_response_middleware: list[Any] = []
        self._exception_middleware: list[Any] = []
        self._middleware_chain = _json_errors(self._get_response)  # type: ignore[attr-defined]

    def get_response(self, request: Any) -> Any:
        """Django's ``get_response`` with the node's URLconf for the request and for
        ``reverse()``: Django's own reads ``settings.ROOT_URLCONF`` first, which a project
        need not have (and a node must not depend on)."""
        set_urlconf(NODE_URLCONF)
        request.urlconf = NODE_URLCONF
        response = self._middleware_chain(request)
        response._resource_closers.append(request.close)
        if response.status_code >= 400:
            log_response(
                "%s: %s", response.reason_phrase, request.path, response=response, request=request
            )
        return response

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        path = environ.get("PATH_INFO", "")
        if environ.get("REQUEST_METHOD") == "POST":
            route = path[len(self._rpc_prefix) :]
            if path.startswith(self._rpc_prefix) and route and "/" not in route:
                return self._fast(environ, start_response, route)
            if path == self._command_path or path == self._command_stream_path:
                return self._fast(environ, start_response, None)
        elif path == self._watch_path and environ.get("REQUEST_METHOD") == "GET":
            body, _handoff.stream = watches.respond(environ, start_response)
            return body
        return super().__call__(environ, start_response)

    def _fast(self, environ: dict[str, Any], start_response: Any, rpc_path: str | None) -> Any:
        try:
            answer = self._answer(environ, rpc_path)
        except Exception as error:
            logger.exception("raft: error serving POST %s", environ.get("PATH_INFO"))
            answer = views.Answer.json(_server_error(error), 500)
        headers = [("Content-Type", answer.content_type), ("Content-Length", str(len(answer.body)))]
        if answer.status in UNREAD_STATUSES:
            headers.append(("Connection", "close"))  # the body may be unread: do not read it
        elif rpc_path is not None and answer.status == 200:
            headers.append((PEER_HEADER, "1"))
        start_response(f"{answer.status} {HTTPStatus(answer.status).phrase}", headers)
        return [answer.body]

    def _answer(self, environ: dict[str, Any], rpc_path: str | None) -> views.Answer:
        limit = views.MAX_RPC_BODY if rpc_path is not None else views.MAX_CLIENT_BODY
        path = environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")
        checked = views.authenticate(
            path,
            lambda name: environ.get("HTTP_" + name.upper().replace("-", "_")),
            environ.get("CONTENT_LENGTH"),
            limit,
            rpc=rpc_path is not None,
        )
        if isinstance(checked, views.Answer):
            return checked
        if rpc_path is None and not path.endswith(command_stream.PATH):
            return views.command_request(environ["wsgi.input"].read, checked)
        body = environ["wsgi.input"].read(checked.length) if checked.length else b""
        if not checked.body_matches(body):
            return views.Answer.error(403, "the body does not match its signature")
        if rpc_path == stream.STREAM_PATH:
            nonce = environ.get("HTTP_" + NONCE_HEADER.upper().replace("-", "_"), "")
            return _accept_stream(body, checked.sender, nonce)
        if rpc_path is not None:
            return views.rpc_answer(rpc_path, body, checked.sender)
        nonce = environ.get("HTTP_" + NONCE_HEADER.upper().replace("-", "_"), "")
        return _accept_command_stream(checked.kind, checked.sender, nonce, environ)


@dataclass(frozen=True, slots=True)
class _Accepted:
    """A stream whose handshake was answered: the connection serves its frames next.

    A peer's (``lane`` is one of ``stream.LANES``, ``keys`` its one key) or a client's
    command stream (``lane`` is ``COMMANDS``, ``keys`` the requests' and the answers')."""

    sender: str
    lane: str
    keys: tuple[bytes, ...]


COMMANDS = "commands"
MAX_COMMAND_STREAMS = 256
"""Clients' command streams open at once at most."""
MAX_COMMAND_STREAMS_PER_CLIENT = 64
"""Command streams one client (its name and host) holds at once at most: a fair share,
so that one client cannot take every slot."""
STREAM_IDLE = 1.0
"""Seconds after which a command stream with no command running, and none started or
answered meanwhile, counts as idle: when the slots are taken, an idle stream is closed
to make room for a new one (its client opens another when it has a command), so
keep-alives alone cannot hold a slot."""
MAX_REQUEST_HEADERS = 32 << 10
"""Bytes of a request's line and headers at most (a signed request needs well under
2 KiB): a longer request line is answered 414, longer headers 413, and the connection
is closed."""


MAX_STREAMS = 256
"""Peers' streams open at once at most (two per peer: one per lane)."""
MAX_ADDRESS_LENGTH = 2048
"""Characters of the address a stream's handshake may carry at most."""

_handoff = threading.local()
"""The stream the request just answered on this thread accepted, if any: the
connection (served by the same thread) picks it up once the answer is sent."""


def _accept_stream(body: bytes, sender: str, nonce: str) -> views.Answer:
    """Answer a stream's handshake (already authenticated): accept it, or say why not."""
    node = RaftNode.current
    if node is None or node.stopping.is_set():
        return views.Answer.error(503, "no Raft node runs in this process", NodeStoppedError)
    lane, _, address = body.decode("utf-8", "replace").partition("\n")
    if lane not in stream.LANES:
        return views.Answer.error(400, f"no lane {lane[:40]!r}: the lanes are {stream.LANES}")
    if address and (len(address) > MAX_ADDRESS_LENGTH or not is_node_url(address)):
        return views.Answer.error(400, "the sender's address must be its http(s) URL")
    if address:
        node.transport.learn_address(sender, address)
    key = stream.stream_key(views.verifier().keys.node, nonce, sender, node.node_id, lane)
    _handoff.stream = _Accepted(sender, lane, (key,))
    return views.Answer(200, "text/plain", stream.PROTOCOL)


def _accept_command_stream(
    kind: str, sender: str, nonce: str, environ: dict[str, Any]
) -> views.Answer:
    """Answer a client's command stream handshake (already authenticated)."""
    node = RaftNode.current
    if node is None or node.stopping.is_set():
        return views.Answer.error(503, "no Raft node runs in this process", NodeStoppedError)
    if environ.get("wsgi.url_scheme") != "http":
        return views.Answer.error(400, "command streams are served over plain HTTP only")
    streams: _Streams | None = getattr(_handoff, "command_streams", None)
    client = (sender, str(environ.get("REMOTE_ADDR", "")))
    if streams is not None and not streams.room(client):
        # Refused before it is accepted: the client sends its commands as requests.
        return views.Answer.error(
            503, "no room for another command stream: every slot is busy", OverloadedError
        )
    keys = views.verifier().keys
    key = keys.node if kind == NODE else keys.client
    _handoff.stream = _Accepted(
        sender, COMMANDS, command_stream.stream_keys(key, nonce, sender, node.node_id)
    )
    return views.Answer(200, "text/plain", command_stream.PROTOCOL + b" " + node.node_id.encode())


def _handoff_pending() -> bool:
    """Whether the request this thread is answering opened a stream."""
    return getattr(_handoff, "stream", None) is not None


PEER_HEADER = "X-Raft-Peer"
"""Set by the application on an answer to an authenticated RPC, taken off by the server:
the connection then belongs to a peer and is served by the peers' own threads."""


class _Request(cheroot_server.HTTPRequest):
    """A request whose answer may mark its connection as a peer's, or close it unread.

    cheroot reads what is left of a request body before answering, to keep the
    connection alive; an answer with ``Connection: close`` (a request refused before its
    body was read) closes it instead of reading what an unauthenticated client announced.
    """

    def parse_request(self) -> None:
        """Read the request line and headers, within ``HEADER_TIMEOUT`` in all."""
        watchdog = getattr(self.server, "watchdog", None)
        if watchdog is None:
            super().parse_request()
            return
        token = watchdog.arm(self.conn.socket)
        try:
            super().parse_request()
        finally:
            watchdog.disarm(token)

    def send_headers(self) -> None:
        peer = PEER_HEADER.encode().lower()
        watch = watches.WATCH_HEADER.encode().lower()
        kept, watching = [], False
        for key, value in self.outheaders:
            name = key.lower()
            if name == peer:
                self.conn.raft_peer = True
                continue
            if name == watch:
                watching = True
                continue
            if name == b"connection" and value.lower() == b"close":
                self.close_connection = True
            kept.append((key, value))
        self.outheaders = kept
        super().send_headers()
        if watching:
            self.chunked_write = False  # the watch's thread writes the chunks, the last too


class _Watchdog(threading.Thread):
    """Cuts connections that take longer than ``HEADER_TIMEOUT`` to send their headers.

    cheroot's timeout is per read: a client sending a byte now and then would hold a
    request thread for as long as it likes.
    """

    def __init__(self, timeout: float) -> None:
        super().__init__(name="raft-http-watchdog", daemon=True)
        self.timeout = timeout
        self._armed: dict[int, tuple[float, socket.socket]] = {}
        self._lock = threading.Lock()
        self._tokens = itertools.count()
        self.stopped = threading.Event()

    def arm(self, sock: socket.socket) -> int:
        token = next(self._tokens)
        with self._lock:
            self._armed[token] = (time.monotonic() + self.timeout, sock)
        return token

    def disarm(self, token: int) -> None:
        with self._lock:
            self._armed.pop(token, None)

    def run(self) -> None:
        while not self.stopped.wait(0.05):
            now = time.monotonic()
            with self._lock:
                late = [token for token, (deadline, _) in self._armed.items() if deadline < now]
                cut = [self._armed.pop(token)[1] for token in late]
            for sock in cut:
                shut(sock)


class _Connection(cheroot_server.HTTPConnection):
    """A connection whose TLS handshake, if any, is done first, in the request thread,
    within ``HEADER_TIMEOUT``; a failed one is logged in one line and closes it."""

    RequestHandlerClass = _Request

    def communicate(self) -> bool:
        """Shake hands if not done yet, then serve the request as cheroot does."""
        sock = self.socket
        if isinstance(sock, ssl.SSLSocket) and not getattr(self, "raft_shaken", False):
            watchdog: _Watchdog = self.server.watchdog
            token = watchdog.arm(sock)
            try:
                sock.do_handshake()
            except (ssl.SSLError, OSError) as error:
                logger.info("raft: TLS handshake with %s failed: %s", self.remote_addr, error)
                return False
            finally:
                watchdog.disarm(token)
            self.raft_shaken = True
        _handoff.stream = None
        _handoff.command_streams = self.server.command_streams
        keep = bool(super().communicate())
        accepted: _Accepted | watches.Accepted | None = _handoff.stream
        if accepted is None:
            return keep
        _handoff.stream = None
        if isinstance(accepted, watches.Accepted):
            return watches.start(self, accepted, keep)
        commands = accepted.lane == COMMANDS
        client = activity = None
        if commands:
            name = (accepted.sender, str(id(self)))
            client = (accepted.sender, str(self.remote_addr or ""))
            activity = self._activity = command_streams.Activity()
            streams = self.server.command_streams
            serve: Callable[[_Accepted, tuple[str, str]], None] = self._serve_commands
        else:
            name = (accepted.sender, accepted.lane)
            streams = self.server.streams
            serve = self._serve_stream
        if keep and streams.open(name, self.socket, client, activity):
            # The stream gets a thread of its own: request threads stay free for
            # requests, and a new stream needs one only for its handshake.
            self._stream_thread = threading.Thread(
                target=serve,
                args=(accepted, name),
                name=f"raft-stream-{accepted.sender}-{accepted.lane}",
                daemon=True,
            )
            self._stream_thread.start()
        return False  # the request thread is done with this connection

    def close(self) -> None:
        """Close the connection, unless a stream's thread serves it (it closes it)."""
        thread: threading.Thread | None = getattr(self, "_stream_thread", None)
        if thread is not None and threading.current_thread() is not thread:
            return
        super().close()

    def _serve_stream(self, accepted: _Accepted, name: tuple[str, str]) -> None:
        """Step the frames of an accepted stream until it ends, breaks or lies.

        A frame that fails its tag, does not decode, or carries a message the node
        would not accept on an RPC route closes the stream (logged); the sender opens
        a new one. So does a stream silent for ``CONNECTION_TIMEOUT``.
        """
        node = RaftNode.current
        server: NodeServer = self.server
        sock = self.socket
        reader = stream.FrameReader(self.rfile, accepted.keys[0])
        try:
            sock.settimeout(CONNECTION_TIMEOUT)
            for payload in reader.payloads():
                if node is None or not server.ready or node.stopping.is_set():
                    return
                messages = unframe(payload)
                refused = views.check_messages(node, messages, accepted.sender)
                if refused is not None:
                    raise stream.FrameError(refused)
                for message in messages:
                    metrics.count_received(message.type.value)
                node.deliver(messages)
        except (stream.FrameError, WireError) as error:
            logger.warning(
                "raft: closing the %s stream from %r: %s", accepted.lane, accepted.sender, error
            )
        except (OSError, StopError):
            return  # the sender went away, or this node is stopping
        finally:
            server.streams.close(name, sock)
            self.close()

    def _serve_commands(self, accepted: _Accepted, name: tuple[str, str]) -> None:
        """Serve a client's command stream (``command_streams``) until it ends."""
        node = RaftNode.current
        server: NodeServer = self.server
        sock = self.socket
        try:
            if node is not None:
                sock.settimeout(CONNECTION_TIMEOUT)
                up, down = accepted.keys
                command_streams.serve(
                    node,
                    self.rfile,
                    sock,
                    (up, down),
                    accepted.sender,
                    self._activity,
                )
        finally:
            server.command_streams.close(name, sock)
            self.close()


class _PeerLane:
    """What the peers' request threads see as their server: their own queue of
    connections (``requests``), and the real server for everything else."""

    def __init__(self, server: NodeServer, threads: int) -> None:
        self._server = server
        self.requests = ThreadPool(self, min=threads, max=threads)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._server, name)


class _Streams:
    """The peers' open streams, one per sender and lane: a sender that opens a new one
    (its old one broke on its side) ends the old one, and a stopping server ends all.
    At most ``MAX_STREAMS`` are open at once.

    With ``commands``, the clients' command streams instead (one per connection), at
    most ``MAX_COMMAND_STREAMS``, and ``MAX_COMMAND_STREAMS_PER_CLIENT`` per client (its
    name and host). When a new stream finds no slot (its client's share, or all), the
    stream idle the longest (``STREAM_IDLE``) of the client holding the most is closed
    to make room; only when every candidate is busy is the new one refused."""

    def __init__(self, commands: bool = False) -> None:
        self._open: dict[tuple[str, str], socket.socket] = {}
        self._clients: dict[tuple[str, str], tuple[str, str] | None] = {}
        self._active: dict[tuple[str, str], command_streams.Activity] = {}
        self._lock = threading.Lock()
        self._commands = commands
        self._gauge = metrics.streams_open.labels("command" if commands else "peer")
        self._gauge.set(0)
        self.evicted = 0
        """Idle command streams closed to make room for new ones."""

    def _victim(self, client: tuple[str, str] | None) -> tuple[bool, tuple[str, str] | None]:
        """Whether a stream of ``client`` can open, and the stream to close first (None:
        there is room). Hold the lock."""
        if not self._commands:
            return True, None
        mine = [name for name, owner in self._clients.items() if owner == client]
        if len(mine) >= MAX_COMMAND_STREAMS_PER_CLIENT:
            candidates = mine
        elif len(self._open) >= MAX_COMMAND_STREAMS:
            candidates = list(self._open)
        else:
            return True, None
        held: dict[tuple[str, str] | None, int] = {}
        for owner in self._clients.values():
            held[owner] = held.get(owner, 0) + 1
        idle = [name for name in candidates if self._active[name].idle(STREAM_IDLE)]
        if not idle:
            return False, None
        return True, max(
            idle, key=lambda name: (held[self._clients[name]], -self._active[name].last)
        )

    def room(self, client: tuple[str, str] | None) -> bool:
        """Whether a new stream of ``client`` would find a slot (or make one)."""
        with self._lock:
            if not self._commands:
                return len(self._open) < MAX_STREAMS
            return self._victim(client)[0]

    def open(
        self,
        name: tuple[str, str],
        sock: socket.socket,
        client: tuple[str, str] | None = None,
        activity: command_streams.Activity | None = None,
    ) -> bool:
        """Record a stream; False (and it is not recorded) when too many are open."""
        evicted = None
        with self._lock:
            old = self._open.get(name)
            if old is None:
                if not self._commands and len(self._open) >= MAX_STREAMS:
                    logger.warning("raft: %d streams are open: %r's is refused", MAX_STREAMS, name)
                    return False
                possible, victim = self._victim(client)
                if not possible:
                    logger.warning("raft: every command stream slot is busy: %r's is refused", name)
                    return False
                if victim is not None:
                    evicted = self._forget(victim)
                    self.evicted += 1
            self._open[name] = sock
            self._clients[name] = client
            self._active[name] = activity or command_streams.Activity()
            self._gauge.set(len(self._open))
        for stale in (old, evicted):
            if stale is not None:
                shut(stale)
        return True

    def _forget(self, name: tuple[str, str]) -> socket.socket:
        self._clients.pop(name, None)
        self._active.pop(name, None)
        return self._open.pop(name)

    def close(self, name: tuple[str, str], sock: socket.socket) -> None:
        with self._lock:
            if self._open.get(name) is sock:
                self._forget(name)
                self._gauge.set(len(self._open))

    def close_all(self) -> None:
        with self._lock:
            socks = list(self._open.values())
            self._open.clear()
            self._clients.clear()
            self._active.clear()
            self._gauge.set(0)
        for sock in socks:
            shut(sock)


class NodeServer(wsgi.Server):
    """cheroot's server, with room kept for peers, and no thread for a silent connection.

    - A new connection waits in the selector, like an idle keep-alive one, and gets a
      thread only once it sends something; it is closed after ``CONNECTION_TIMEOUT``
      if it never does. (cheroot hands it a thread at once: connections that send
      nothing would hold every thread.)
    - A connection that carried an authenticated Raft RPC is a peer's: its requests go
      to ``PEER_THREADS`` threads of their own, so clients, slow or many, cannot delay
      heartbeats. Peers' connections are always kept alive; other keep-alive
      connections are bounded (``MAX_KEEP_ALIVE``).
    """

    ConnectionClass = _Connection
    keep_alive_conn_limit = MAX_KEEP_ALIVE
    max_request_header_size = MAX_REQUEST_HEADERS

    def prepare(self) -> None:
        """Bind, and start the peers' threads as well."""
        self.streams = _Streams()
        self.command_streams = _Streams(commands=True)
        super().prepare()
        self.watchdog = _Watchdog(HEADER_TIMEOUT)
        self.watchdog.start()
        self._peer_lane = _PeerLane(self, PEER_THREADS)
        self._peer_lane.requests.start()
        self._peer_threads = set(self._peer_lane.requests._threads)  # type: ignore[attr-defined]

    @property
    def can_add_keepalive_connection(self) -> bool:
        """Whether a connection may be kept alive: a peer's always, and so is one whose
        request opened a stream (it leaves the keep-alive pool for a thread of its own)."""
        if threading.current_thread() in self._peer_threads or _handoff_pending():
            return bool(self.ready)
        return bool(super().can_add_keepalive_connection)

    def process_conn(self, conn: Any) -> None:
        """Park a new connection; hand a peer's to the peers' threads, others to the rest."""
        if not getattr(conn, "raft_seen", False):
            conn.raft_seen = True
            self._connections.put(conn)  # type: ignore[attr-defined]
            return
        if getattr(conn, "raft_peer", False):
            try:
                self._peer_lane.requests.put(conn)
            except queue.Full:
                conn.close()
            return
        super().process_conn(conn)

    prober: rtt.Prober | None = None
    """Times the round trips to the peers (``rtt``), once the node runs."""

    def stop(self) -> None:
        """Stop serving, the peers' threads and streams too."""
        if self.prober is not None:
            self.prober.stop()
        streams = getattr(self, "streams", None)
        if streams is not None:
            streams.close_all()
            self.command_streams.close_all()
            watches.slots.close_all()
        super().stop()
        watchdog = getattr(self, "watchdog", None)
        if watchdog is not None:
            watchdog.stopped.set()
        lane = getattr(self, "_peer_lane", None)
        if lane is not None:
            lane.requests.stop(timeout=2)


def parse_bind(bind: str) -> tuple[str, int]:
    """Split "host:port"; raise ``ValueError`` with a clear message when it is not one."""
    host, _, port = bind.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{bind!r} is not host:port")
    return host.strip("[]"), int(port)


def bind_of(address: str) -> str:
    """The host:port an address URL listens on."""
    parts = urlsplit(address)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"{parts.hostname}:{port}"


def tune_interpreter() -> None:
    """Set the node process's thread switch interval and collector thresholds (lowering
    the one and raising the others only), and freeze what is loaded by now (without a
    full collection first: it would delay the node's start by a fifth of a second for
    the little garbage a start leaves)."""
    sys.setswitchinterval(min(sys.getswitchinterval(), SWITCH_INTERVAL))
    current = gc.get_threshold()
    gc.set_threshold(*(max(now, wanted) for now, wanted in zip(current, GC_THRESHOLD, strict=True)))
    gc.freeze()


def start_node(
    node_id: str,
    address: str,
    bind: str,
    bootstrap: bool,
    join: str | None,
    threads: int = DEFAULT_THREADS,
) -> tuple[RaftNode, wsgi.Server]:
    """Open storage, bind, bootstrap or join if asked, start the loop and the HTTP server.

    Nothing is written before the port is bound: a node that cannot listen (or whose
    database belongs to another node) leaves its database as it found it, so a corrected
    retry starts (or bootstraps) as if the first try never happened.
    """
    alias = raft_settings.DATABASE
    log_alias = raft_settings.log_database
    make_durable(alias)
    aliases = [log_alias] if log_alias == alias else [log_alias, alias]
    if log_alias != alias:
        make_durable(log_alias)
        check_log_database(log_alias, alias)
    elif connections[alias].vendor == "sqlite":
        logger.warning(
            "raft: node %s keeps its log and its state in one SQLite file (%r): SQLite lets "
            "one transaction write at a time, so while a command handler runs the node "
            "cannot write its log, and a handler slower than the election timeout costs "
            "the leader. Give the log a file of its own: DJANGO_RAFT['LOG_DATABASE'].",
            node_id,
            alias,
        )
    for each in aliases:
        check_identity(each, node_id)
    cluster_id = member_cluster_id(join) if join else ""
    if cluster_id:
        for each in aliases:
            check_identity(each, node_id, cluster_id)
    storage = DjangoStorage(log_alias)
    server = _bound_server(bind, threads)
    try:
        cluster_id = _claim(storage, aliases, node_id, address, bootstrap, cluster_id)
        storage.identity = (node_id, cluster_id or _stored_cluster_id(log_alias))
        warn_of_membership(node_id, address, log_alias, alias)
        machine = StateMachine(alias, node_id)
        # A crash between persisting a received snapshot and restoring it leaves the
        # state machine behind the log's start: restore it first.
        machine.catch_up(storage.snapshot())
        node = RaftNode(node_id, address, storage, machine)
    except BaseException:
        server.stop()
        raise
    node.transport.set_address(node_id, address)
    tune_interpreter()
    threading.Thread(target=server.serve, name="raft-http", daemon=True).start()
    node.start()
    server.prober = rtt.Prober(
        node.transport, rtt.RoundTrips(node_id, raft_settings.ELECTION_TIMEOUT)
    )
    server.prober.start()
    if join:
        ask_to_join(join, node_id, address)
    return node, server


def _claim(
    storage: DjangoStorage,
    aliases: list[str],
    node_id: str,
    address: str,
    bootstrap: bool,
    cluster_id: str,
) -> str:
    """Claim the databases for this node (and found the cluster, with ``bootstrap``);
    return the cluster id. Another process claiming them at the same moment makes one
    of the two refuse (``IdentityError``), whichever wrote second."""
    deadline = time.monotonic() + CLAIM_WAIT
    while True:
        try:
            if bootstrap and storage.last_index() == 0:
                cluster = raft_settings.CLUSTER or {node_id: address}
                storage.bootstrap(sorted(cluster), cluster, node_id)
                cluster_id = cluster_id_of(cluster)
            for each in aliases:
                claim_identity(each, node_id, cluster_id)
            return cluster_id
        except (IntegrityError, OperationalError, LogNotEmptyError) as error:
            # Written meanwhile by another process: refused if it claimed them.
            for each in aliases:
                check_identity(each, node_id)
            if not isinstance(error, OperationalError) or time.monotonic() >= deadline:
                raise
            time.sleep(0.1)


CLAIM_WAIT = 10.0
"""Seconds a node retries claiming a database another writer holds locked."""


def _bound_server(bind: str, threads: int) -> NodeServer:
    """The node's HTTP server, listening on ``bind`` (not serving yet)."""
    host, port = parse_bind(bind)
    server = NodeServer(
        (host, port),
        NodeApplication(),
        numthreads=threads,
        request_queue_size=LISTEN_BACKLOG,
        timeout=CONNECTION_TIMEOUT,
    )
    if raft_settings.TLS_CERT:
        server.ssl_adapter = tls.server_adapter(
            raft_settings.TLS_CERT,
            raft_settings.TLS_KEY,
            raft_settings.TLS_CA,
            raft_settings.TLS_CLIENT_AUTH,
        )
    server.prepare()
    return server


def _stored_cluster_id(alias: str) -> str:
    row = NodeIdentity.objects.using(alias).values_list("cluster_id", flat=True).first()
    return row or ""


def warn_of_membership(node_id: str, address: str, log_alias: str, alias: str) -> list[str]:
    """Log (WARNING) where the stored membership and ``ADDRESS``/``CLUSTER`` disagree."""
    found = membership_disagreements(
        stored_membership(log_alias, alias), node_id, address, raft_settings.CLUSTER
    )
    if found:
        logger.warning(
            "raft: node %s: the membership stored in its database disagrees with its "
            "settings: %s. The stored membership is what the cluster uses (changes go "
            "through the log: raftmembers); update DJANGO_RAFT['ADDRESS']/CLUSTER to match.",
            node_id,
            "; ".join(found),
        )
    return found


def member_cluster_id(member: str) -> str:
    """The cluster id a running member reports ("" when it has none recorded)."""
    from ...protocol.answers import raise_for
    from ...protocol.send import post

    value = raise_for(post(member, "status", {}, raft_settings.COMMAND_TIMEOUT))
    found = value.get("cluster_id", "") if isinstance(value, dict) else ""
    return found if isinstance(found, str) else ""


def check_log_database(log_alias: str, alias: str) -> None:
    """Refuse to start when ``LOG_DATABASE`` has no log tables, or is empty while the
    node's log is still in ``DATABASE`` (a node must not start over with a new log)."""
    table = HardState._meta.db_table
    if table not in connections[log_alias].introspection.table_names():
        raise ImproperlyConfigured(
            f"LOG_DATABASE {log_alias!r} has no django_raft tables: run "
            f"`manage.py migrate django_raft --database {log_alias}` first"
        )
    if HardState.objects.using(log_alias).exists():
        return
    if (
        table in connections[alias].introspection.table_names()
        and HardState.objects.using(alias).exists()
    ):
        raise ImproperlyConfigured(
            f"this node's log is in DATABASE {alias!r}, and LOG_DATABASE {log_alias!r} "
            "is empty: a node cannot start over with an empty log. Copy the "
            "django_raft_logentry, django_raft_hardstate and django_raft_snapshot rows "
            f"to {log_alias!r} (with the node stopped), or leave LOG_DATABASE unset"
        )


def ask_to_join(member: str, node_id: str, address: str) -> None:
    """Ask a running cluster, through any member, to add this node as a voter."""
    from ...protocol.answers import raise_for
    from ...protocol.send import post

    raise_for(
        post(
            member,
            "members",
            {"node_id": node_id, "address": address, "role": "voter"},
            raft_settings.COMMAND_TIMEOUT,
        )
    )


def serve_forever(node: RaftNode, server: wsgi.Server) -> None:
    """Block until SIGTERM/SIGINT (or the node stops itself), then stop cleanly."""
    stop = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        while not stop.is_set() and not node.stopped.is_set():
            stop.wait(0.2)
    finally:
        node.stop()
        server.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
