"""Run a node in this process: the loop, the transport and the HTTP server for its routes.

The routes are served by cheroot, a production-grade threaded WSGI server with HTTP/1.1
keep-alive, which peers' ``requests.Session`` senders reuse connection by connection.
"""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType
from typing import Any
from urllib.parse import urlsplit

from cheroot import wsgi
from django.core.handlers.exception import convert_exception_to_response
from django.core.handlers.wsgi import WSGIHandler

from .conf import raft_settings
from .runner import RaftNode
from .statemachine import StateMachine
from .storage import DjangoStorage, make_durable

logger = logging.getLogger(__name__)


class NodeApplication(WSGIHandler):
    """Django's WSGI handler, serving only the Raft routes (``django_raft.node_urls``).

    It runs no middleware: the routes authenticate every request with the cluster
    secret and need neither sessions, CSRF nor users, and RPCs are the hot path.
    """

    def load_middleware(self, is_async: bool = False) -> None:
        self._view_middleware: list[Any] = []
        self._template_response_middleware: list[Any] = []
        self._exception_middleware: list[Any] = []
        self._middleware_chain = convert_exception_to_response(self._get_response)  # type: ignore[attr-defined]

    def get_response(self, request: Any) -> Any:
        request.urlconf = "django_raft.node_urls"
        return super().get_response(request)


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


def start_node(
    node_id: str, address: str, bind: str, bootstrap: bool, join: str | None, threads: int = 16
) -> tuple[RaftNode, wsgi.Server]:
    """Open storage, bootstrap or join if asked, start the loop and the HTTP server."""
    alias = raft_settings.DATABASE
    make_durable(alias)
    storage = DjangoStorage(alias)
    machine = StateMachine(alias, node_id)
    if bootstrap and storage.last_index() == 0:
        cluster = raft_settings.CLUSTER or {node_id: address}
        storage.bootstrap(sorted(cluster), cluster)
    # A crash between persisting a received snapshot and restoring it leaves the state
    # machine behind the log's start: restore it first.
    machine.catch_up(storage.snapshot())
    node = RaftNode(node_id, address, storage, machine)
    node.transport.set_address(node_id, address)
    host, port = parse_bind(bind)
    server = wsgi.Server((host, port), NodeApplication(), numthreads=threads)
    server.prepare()
    threading.Thread(target=server.serve, name="raft-http", daemon=True).start()
    node.start()
    if join:
        ask_to_join(join, node_id, address)
    return node, server


def ask_to_join(member: str, node_id: str, address: str) -> None:
    """Ask a running cluster, through any member, to add this node as a voter."""
    from .client import post, raise_for

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
