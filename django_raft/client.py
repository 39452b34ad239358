"""Submit commands to the cluster from any process: ``django_raft.do(name, **arguments)``.

In the ``raftnode`` process the command goes straight to the node's loop; anywhere else
(a view, the shell, a Celery task) it is posted to the node at ``DJANGO_RAFT['ADDRESS']``.
A follower forwards to the leader. Requests are signed with the client key (``auth``).
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any
from urllib.parse import urlsplit

import requests

from .auth import ANY_NODE, CLIENT, Signer, derive_keys
from .conf import raft_settings
from .core import DuplicatePeerError, MembershipError, NotLeaderError, ProposalDroppedError
from .exceptions import (
    CommandError,
    CommandTimeoutError,
    InvalidRequestError,
    OverloadedError,
    StopError,
    UnavailableError,
)
from .tls import requests_options

_sessions = threading.local()
"""One keep-alive session per thread (a Session must not be shared between threads)."""

_ERRORS: dict[str, type[Exception]] = {
    "NotLeaderError": NotLeaderError,
    "CommandTimeoutError": CommandTimeoutError,
    "StopError": StopError,
    "CommandError": CommandError,
    "DuplicatePeerError": DuplicatePeerError,
    "MembershipError": MembershipError,
    "ProposalDroppedError": ProposalDroppedError,
    "UnavailableError": UnavailableError,
    "OverloadedError": OverloadedError,
    "InvalidRequestError": InvalidRequestError,
}


def raise_for(payload: dict[str, Any]) -> Any:
    """Return ``payload["value"]`` or raise the error it describes."""
    if payload.get("ok"):
        return payload.get("value")
    kind = _ERRORS.get(str(payload.get("error_type")), CommandError)
    message = str(payload.get("error", "unknown error"))
    if kind is NotLeaderError:
        raise NotLeaderError(str(payload.get("leader", "")))
    raise kind(message)


def post(address: str, route: str, body: dict[str, Any], timeout: float) -> dict[str, Any]:
    """POST a signed JSON request to a node's client route; return its JSON answer."""
    data = json.dumps(body).encode()
    url = f"{address.rstrip('/')}/{raft_settings.URL_PREFIX}{route}"
    keys = derive_keys(raft_settings.SECRET, raft_settings.CLIENT_SECRET)
    signer = Signer(keys.client, CLIENT, raft_settings.NODE_ID or "client")
    headers = signer.headers("POST", urlsplit(url).path, ANY_NODE, data)
    headers["Content-Type"] = "application/json"
    tls = requests_options(raft_settings.TLS_CERT, raft_settings.TLS_KEY, raft_settings.TLS_CA)
    session = getattr(_sessions, "session", None)
    if session is None:
        session = _sessions.session = requests.Session()
    try:
        response = session.post(url, data=data, headers=headers, timeout=timeout + 1.0, **tls)
    except requests.RequestException as error:
        raise UnavailableError(f"cannot reach {address}: {error}") from error
    try:
        answer = response.json()
    except ValueError as error:
        raise UnavailableError(f"{url} answered {response.status_code} without JSON") from error
    if not isinstance(answer, dict):
        raise UnavailableError(f"{url} answered {answer!r}")
    return answer


def do(name: str, timeout: float | None = None, **arguments: Any) -> Any:
    """Run command ``name`` through the log; return its handler's result.

    It returns once the entry is committed and applied on the node that answered. Raise
    ``CommandError`` if the handler raised (on every node alike), ``NotLeaderError`` if
    no leader is known, ``CommandTimeoutError`` after ``timeout`` seconds (the command
    may still be applied later), ``StopError`` if the node is stopping.
    """
    if not isinstance(name, str) or not name:
        raise ValueError("a command name is a non-empty string")
    seconds = raft_settings.COMMAND_TIMEOUT if timeout is None else timeout
    body = {"name": name, "arguments": arguments, "timeout": seconds}
    from .views import submit_command  # the in-process path; views imports this module

    deadline = time.monotonic() + seconds
    return raise_for(submit_command(body, deadline))


def status(address: str | None = None, timeout: float = 2.0) -> dict[str, Any]:
    """Return a node's name, state, term, leader, commit and applied index and members."""
    from .runner import RaftNode

    node = RaftNode.current
    if node is not None and address is None:
        return node.status()
    answer = post(address or raft_settings.ADDRESS, "status", {}, timeout)
    value = raise_for(answer)
    if not isinstance(value, dict):
        raise UnavailableError(f"bad status answer {value!r}")
    return value
