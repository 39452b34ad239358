"""Send a client request to one node: a signed JSON POST, or a command on a stream.

Both the client (``django_raft.client``) and a follower forwarding to its leader send
this way. A request that fails says how far it got: ``Unsent`` when it certainly never
reached the node, ``AnswerAbandoned`` when its sender stopped waiting for the answer
(it may be applied), any other ``ClusterUnreachableError`` when it was sent and no
answer came.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.client import HTTPException
from typing import Any
from urllib.parse import urlsplit

from ..conf import raft_settings
from ..exceptions import ClusterUnreachableError, InvalidRequestError
from . import command_stream
from .auth import ANY_NODE, CLIENT, Signer, derive_keys
from .connection import NodeConnection, NotSentError
from .request import READ_INDEX
from .tls import client_context

__all__ = ["NO_ADDRESS", "AnswerAbandoned", "Unsent", "answer_of", "post", "send_command"]

CONNECT_TIMEOUT = 1.0
"""Seconds to open a connection to a node."""
MAX_ANSWER = 64 << 20
"""Bytes of a node's JSON answer read at most."""
_http = threading.local()
"""Per thread, one keep-alive connection per node address (a connection is not shared)."""


class Unsent(ClusterUnreachableError):
    """The request never reached the node (connection refused): certainly not applied."""


NO_ADDRESS = (
    "no node address to send to: set DJANGO_RAFT['ADDRESS'] (RAFT_ADDRESS) to this"
    " server's node, or CLUSTER (RAFT_CLUSTER) to the members' id=URL pairs"
)


def _unsent(address: str, error: Exception) -> Unsent:
    """The ``Unsent`` error for ``address``: why (the socket's own words) and what to check."""
    reason = error.__cause__ if isinstance(error.__cause__, OSError) else error
    return Unsent(
        f"cannot reach the node at {address} ({reason}): is its raftnode running, and is"
        " this address right in DJANGO_RAFT['ADDRESS'] / ['CLUSTER']?"
    )


def _not_json(error: Exception) -> InvalidRequestError:
    """The error of a request whose body (a command's arguments) is not JSON: refused
    here, as a node refuses it, before anything is sent."""
    return InvalidRequestError(f"the arguments must be JSON values: {error}")


class AnswerAbandoned(ClusterUnreachableError):
    """The command was sent, and its sender stopped waiting for the answer (``abandon``):
    it may be applied."""


def post(address: str, route: str, body: dict[str, Any], timeout: float) -> dict[str, Any]:
    """POST a signed JSON request to a node's client route; return its JSON answer.

    Raise ``ClusterUnreachableError`` when the node does not answer (``Unsent`` when
    there is no address, naming the settings), ``InvalidRequestError`` when ``body`` is
    not JSON (nothing is sent).
    """
    if not address:
        raise Unsent(NO_ADDRESS)
    try:
        data = json.dumps(body).encode()
    except (TypeError, ValueError) as error:
        raise _not_json(error) from error
    url = f"{address.rstrip('/')}/{raft_settings.URL_PREFIX}{route}"
    keys = derive_keys(raft_settings.SECRET, raft_settings.CLIENT_SECRET)
    signer = Signer(keys.client, CLIENT, raft_settings.NODE_ID or "client")
    headers = signer.headers("POST", urlsplit(url).path, ANY_NODE, data)
    headers["Content-Type"] = "application/json"
    try:
        status, content = _connection(address).post(
            urlsplit(url).path, data, headers, MAX_ANSWER, timeout=timeout + 1.0
        )
    except NotSentError as error:
        raise _unsent(address, error) from error
    except (OSError, HTTPException, ValueError) as error:
        raise ClusterUnreachableError(
            f"{address} did not answer: {error or type(error).__name__}"
        ) from error
    return answer_of(url, status, content)


def answer_of(url: str, status: int, content: bytes) -> dict[str, Any]:
    """A node's JSON answer from ``url``; ``ClusterUnreachableError`` (may have applied:
    the request was sent) when it is not a JSON object."""
    try:
        answer = json.loads(content)
    except ValueError as error:
        raise ClusterUnreachableError(f"{url} answered {status} without JSON") from error
    if not isinstance(answer, dict):
        raise ClusterUnreachableError(f"{url} answered {answer!r}")
    return answer


_streams = command_stream.Streams()


def send_command(
    address: str,
    body: dict[str, Any],
    timeout: float,
    abandon: Callable[[], str] | None = None,
) -> dict[str, Any]:
    """Send a command body to a node; its JSON answer. A write or a read index goes on
    this process's command stream to the node (over plain HTTP, when the node serves
    one), anything else as a request. Raise ``ClusterUnreachableError`` when no answer comes:
    ``Unsent`` when the command certainly did not reach the node, ``AnswerAbandoned`` when
    ``abandon()`` gave a reason to stop waiting (streams only; see ``CommandStream``);
    ``InvalidRequestError`` when ``body`` is not JSON (nothing is sent)."""
    if not address:
        raise Unsent(NO_ADDRESS)
    if not address.startswith("http:") or (body.get("read") and body.get("name") != READ_INDEX):
        return post(address, "command", body, timeout)
    keys = derive_keys(raft_settings.SECRET, raft_settings.CLIENT_SECRET)
    signer = Signer(keys.client, CLIENT, raft_settings.NODE_ID or "client")
    try:
        found = _streams.get(
            address,
            signer,
            raft_settings.URL_PREFIX,
            max(min(timeout, command_stream.HANDSHAKE_TIMEOUT), 0.01),
        )
    except NotSentError as error:
        raise _unsent(address, error) from error
    if found is None:
        return post(address, "command", body, timeout)
    try:
        return found.call(body, timeout, abandon)
    except TypeError as error:  # raised by its encoding, before anything is sent
        raise _not_json(error) from error
    except command_stream.Abandoned as error:
        raise AnswerAbandoned(str(error)) from error
    except command_stream.StreamBroken as error:
        if not error.sent:
            raise Unsent(str(error)) from error
        raise ClusterUnreachableError(str(error)) from error


def _connection(address: str) -> NodeConnection:
    """This thread's connection to ``address``, made with the current TLS settings."""
    tls = (raft_settings.TLS_CERT, raft_settings.TLS_KEY, raft_settings.TLS_CA)
    connections: dict[tuple[str, tuple[str, str, str]], NodeConnection] | None = getattr(
        _http, "connections", None
    )
    if connections is None:
        connections = _http.connections = {}
    connection = connections.get((address, tls))
    if connection is None:
        context = client_context(*tls) if address.startswith("https:") else None
        connection = connections[(address, tls)] = NodeConnection(
            address, CONNECT_TIMEOUT, context, connect_timeout=CONNECT_TIMEOUT, resend=False
        )
    return connection
