"""The client path, in one place: submitting commands, forwarding them, retrying them.

``django_raft.do`` and the node's ``command`` route both go through here. A node that
leads proposes the command; a follower forwards it to the leader. A ``Client`` (what
``do`` uses) knows every member's address, the ``ADDRESS`` setting's first, then
``CLUSTER`` and the membership it learns from the nodes' answers; it remembers which
node led last, tries the others when one does not answer, and retries until its
deadline. Retries are safe because every command carries its session's
``(client_id, sequence)``: the state machine applies it at most once.
"""

from __future__ import annotations

import functools
import itertools
import json
import threading
import time
from collections.abc import Callable
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from http.client import HTTPException
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from django.core.signals import setting_changed

from . import command_stream, commands, sessions
from .auth import ANY_NODE, CLIENT, Signer, derive_keys
from .conf import raft_settings
from .connection import NodeConnection, NotSentError
from .core import (
    DuplicatePeerError,
    MembershipError,
    NotLeaderError,
    ProposalDroppedError,
    RaftError,
)
from .exceptions import (
    NOT_APPLIED,
    ClusterUnreachableError,
    CommandFailedError,
    CommandTimeoutError,
    InvalidRequestError,
    LockNotHeldError,
    NodeStoppedError,
    OverloadedError,
    SessionExpiredError,
    StaleTokenError,
)
from .outcome import Outcome, describe_error
from .tls import client_context
from .wire import WireError, encode_command

if TYPE_CHECKING:
    from .runner import RaftNode

__all__ = ["ERRORS", "Client", "default_client", "post", "raise_for", "submit_command"]

ERRORS: dict[str, type[Exception]] = {
    "ClusterUnreachableError": ClusterUnreachableError,
    "CommandFailedError": CommandFailedError,
    "CommandTimeoutError": CommandTimeoutError,
    "DuplicatePeerError": DuplicatePeerError,
    "InvalidRequestError": InvalidRequestError,
    "LockNotHeldError": LockNotHeldError,
    "MembershipError": MembershipError,
    "NodeStoppedError": NodeStoppedError,
    "NotLeaderError": NotLeaderError,
    "OverloadedError": OverloadedError,
    "ProposalDroppedError": ProposalDroppedError,
    "SessionExpiredError": SessionExpiredError,
    "StaleTokenError": StaleTokenError,
}
"""Every error a caller can get, by the ``error_type`` of a JSON answer."""

_LEGACY = {
    "StopError": NodeStoppedError,
    "CommandError": CommandFailedError,
    "UnavailableError": ClusterUnreachableError,
    "BadRequest": InvalidRequestError,
}
"""``error_type`` names older nodes (and a few routes) still answer with."""

_OUTCOME_ERRORS = {
    f"{sessions.EXPIRED}:": "SessionExpiredError",
    "StaleTokenError:": "StaleTokenError",
}
"""A command's recorded error that starts so reaches the caller as that error."""

MAX_HOPS = 3
"""A forwarded request is not forwarded again more than this many times."""
ATTEMPT_TIMEOUT = 2.0
"""Seconds one attempt waits for a node before the client tries another."""
RETRY_PAUSE = 0.05
SUSPECT_FOR = 1.0
"""Seconds a member that did not answer is tried after the others."""
_RETRYABLE = (
    ClusterUnreachableError,
    NotLeaderError,
    NodeStoppedError,
    OverloadedError,
    CommandTimeoutError,
    ProposalDroppedError,
)

READ_INDEX = "django_raft.read_index"
"""The read-only command that only waits for a read index, for ``django_raft.read()``."""

_http = threading.local()
"""Per thread, one keep-alive connection per node address (a connection is not shared)."""
CONNECT_TIMEOUT = 1.0
"""Seconds to open a connection to a node."""
MAX_ANSWER = 64 << 20
"""Bytes of a node's JSON answer read at most."""


def raise_for(payload: dict[str, Any]) -> Any:
    """Return ``payload["value"]`` or raise the error it describes."""
    if payload.get("ok"):
        return payload.get("value")
    name = str(payload.get("error_type"))
    kind = ERRORS.get(name) or _LEGACY.get(name) or RaftError
    message = str(payload.get("error", "unknown error"))
    if kind is NotLeaderError:
        raise NotLeaderError(str(payload.get("leader", "")))
    raise kind(message)


class _NotSent(ClusterUnreachableError):
    """The request never reached the node (connection refused): certainly not applied."""


class _Abandoned(ClusterUnreachableError):
    """The command was sent, and its sender stopped waiting for the answer (``abandon``):
    it may be applied."""


LOST = "; it may have been applied"
"""How an error message ends when the command's outcome is unknown."""


def post(address: str, route: str, body: dict[str, Any], timeout: float) -> dict[str, Any]:
    """POST a signed JSON request to a node's client route; return its JSON answer.

    Raise ``ClusterUnreachableError`` when the node does not answer.
    """
    data = json.dumps(body).encode()
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
        raise _NotSent(f"cannot reach {address}: {error}") from error
    except (OSError, HTTPException, ValueError) as error:
        raise ClusterUnreachableError(
            f"{address} did not answer: {error or type(error).__name__}"
        ) from error
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
    """Send a command body to a node; its JSON answer. A write goes on this process's
    command stream to the node (over plain HTTP, when the node serves one), anything
    else as a request. Raise ``ClusterUnreachableError`` when no answer comes:
    ``_NotSent`` when the command certainly did not reach the node, ``_Abandoned`` when
    ``abandon()`` gave a reason to stop waiting (streams only; see ``CommandStream``)."""
    if body.get("read") or not address.startswith("http:"):
        return post(address, "command", body, timeout)
    keys = derive_keys(raft_settings.SECRET, raft_settings.CLIENT_SECRET)
    signer = Signer(keys.client, CLIENT, raft_settings.NODE_ID or "client")
    try:
        found = _streams.get(address, signer, raft_settings.URL_PREFIX, max(timeout, 0.01))
    except NotSentError as error:
        raise _NotSent(f"cannot reach {address}: {error}") from error
    if found is None:
        return post(address, "command", body, timeout)
    try:
        return found.call(body, timeout, abandon)
    except command_stream.Abandoned as error:
        raise _Abandoned(str(error)) from error
    except command_stream.StreamBroken as error:
        if not error.sent:
            raise _NotSent(str(error)) from error
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


# -- on the node: propose, or forward to the leader ---------------------------------------


def _remaining(deadline: float) -> float:
    return max(0.0, deadline - time.monotonic())


def failure(message: str, error_type: str, **extra: Any) -> dict[str, Any]:
    """The JSON answer of a command that failed with ``error_type``."""
    return {"ok": False, "error": message, "error_type": error_type, **extra}


TIMEOUT_RULE = "timeout must be a number of seconds in (0, 3600]"


def valid_timeout(body: dict[str, Any]) -> float | None:
    """A client request's ``timeout`` (``COMMAND_TIMEOUT`` when absent); None when it
    breaks ``TIMEOUT_RULE``."""
    timeout = body.get("timeout", raft_settings.COMMAND_TIMEOUT)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 0 < timeout <= 3600:
        return None
    return float(timeout)


def forward(
    node: RaftNode | None, route: str, body: dict[str, Any], deadline: float
) -> dict[str, Any]:
    """Send a client request on to the leader (or, outside a node, to ``ADDRESS``).

    A command this node forwarded whose leader then changes is sent again to the new
    leader if it carries a session (applied at most once all the same); without one it
    is answered at once as a ``CommandTimeoutError``, the truth: it may be applied. A
    request lost after it was sent is a ``CommandTimeoutError`` too;
    ``ClusterUnreachableError`` and ``NotLeaderError`` only when nothing was sent.
    """
    hops = body.get("hops", 0)
    if not isinstance(hops, int) or hops >= MAX_HOPS:
        return failure("no leader could be reached", "NotLeaderError")
    body = {**body, "hops": hops + 1}
    if node is None:
        address = raft_settings.ADDRESS
        if not address:
            raise ClusterUnreachableError(
                "DJANGO_RAFT['ADDRESS'] names no node to send commands to"
            )
        return _forward_to(address, route, body, deadline)
    sent = ""  # why a command sent before may have been applied
    while True:
        address = _leader_of(node, deadline if sent and body.get("client_id") else 0.0)
        if not address and sent and body.get("client_id") and _leads(node):
            return _settled(submit_command(body, deadline), sent)  # this node leads now
        if not address:
            leader = node.status().get("leader", "")
            if sent:
                return failure(f"{sent}{LOST}", "CommandTimeoutError")
            return failure("no leader is known", "NotLeaderError", leader=leader)
        if route != "command":
            return _forward_to(address, route, body, deadline)
        try:
            answer = send_command(
                address, body, _remaining(deadline), functools.partial(_leader_moved, node, address)
            )
        except _NotSent as error:
            if sent:
                return failure(f"{sent}{LOST}", "CommandTimeoutError")
            return failure(str(error), "ClusterUnreachableError")
        except _Abandoned as error:
            sent = f"forwarded to {address}, then {error}"
            if body.get("client_id"):
                continue  # the session makes sending it again safe
            return failure(f"{sent}{LOST}", "CommandTimeoutError")
        except ClusterUnreachableError as error:
            return failure(f"{error}{LOST}", "CommandTimeoutError")
        return _settled(answer, sent)


def _settled(answer: dict[str, Any], lost: str) -> dict[str, Any]:
    """``answer``, unless it is a failure that proves nothing was applied while an
    earlier attempt may have been (``lost`` says why): then a ``CommandTimeoutError``."""
    if not lost or answer.get("ok") or _may_have_applied(answer):
        return answer
    return failure(
        f"an earlier attempt may have been applied ({lost}); then: {answer.get('error', '')}",
        "CommandTimeoutError",
    )


def _may_have_applied(answer: dict[str, Any]) -> bool:
    """Whether a failure answer leaves open that its command was applied."""
    name = str(answer.get("error_type"))
    kind = ERRORS.get(name) or _LEGACY.get(name)
    return kind is None or not issubclass(kind, NOT_APPLIED)


def _leads(node: RaftNode) -> bool:
    return bool(node.status().get("state") == "leader")


def _forward_to(address: str, route: str, body: dict[str, Any], deadline: float) -> dict[str, Any]:
    try:
        if route == "command":  # on this process's command stream to the leader
            return send_command(address, body, _remaining(deadline))
        return post(address, route, body, _remaining(deadline))
    except _NotSent as error:
        return failure(str(error), "ClusterUnreachableError")
    except ClusterUnreachableError as error:
        return failure(f"{error}{LOST}", "CommandTimeoutError")


LEADER_WAIT = 0.01
"""Seconds between two looks for a new leader, when a forwarded command waits for one."""


def _leader_of(node: RaftNode, deadline: float) -> str:
    """The leader's address as this node knows it, "" if none other than this node;
    until ``deadline``, wait for one."""
    while True:
        address = node.leader_address()
        if address and address != node.address:
            return address
        if _leads(node) or _remaining(deadline) <= 0:
            return ""
        time.sleep(min(LEADER_WAIT, _remaining(deadline)))


def _leader_moved(node: RaftNode, address: str) -> str:
    """Why a command forwarded to ``address`` is no longer worth waiting for there: this
    node learnt of another leader ("" while it has not)."""
    now = node.leader_address()
    return f"{node.node_id} learnt of a newer leader at {now}" if now not in ("", address) else ""


def outcome_answer(outcome: Outcome | None) -> dict[str, Any]:
    """The JSON answer for a command's recorded outcome."""
    if outcome is None:
        return {"ok": True, "value": None}
    if outcome.ok:
        return {"ok": True, "value": outcome.value, "error": "", "error_type": ""}
    error_type = "CommandFailedError"
    for prefix, name in _OUTCOME_ERRORS.items():
        if outcome.error.startswith(prefix):
            error_type = name
    return {"ok": False, "value": None, "error": outcome.error, "error_type": error_type}


def run_on_node(node: RaftNode, call: Any, deadline: float) -> dict[str, Any]:
    """Run ``call(seconds)`` against the node; its outcome or error as a JSON answer."""
    try:
        outcome = call(_remaining(deadline))
    except FutureTimeout:
        return failure(
            "not committed and applied in time; it may still be applied", "CommandTimeoutError"
        )
    except RaftError as error:
        return failure(str(error), type(error).__name__)
    return outcome_answer(outcome)


def _command_fields(body: dict[str, Any]) -> tuple[str, dict[str, Any], str, int] | str:
    name, arguments = body.get("name"), body.get("arguments", {})
    client_id, sequence = body.get("client_id", ""), body.get("sequence", 0)
    if not isinstance(name, str) or not name or not isinstance(arguments, dict):
        return "name must be a string, arguments an object"
    if not isinstance(client_id, str) or len(client_id) > 64:
        return "client_id must be a string of at most 64 characters"
    if type(sequence) is not int or sequence < 0 or (client_id and sequence == 0):
        return "sequence must be a positive integer in a session"
    return name, arguments, client_id, sequence


def read_command(
    node: RaftNode, name: str, arguments: dict[str, Any], deadline: float
) -> dict[str, Any]:
    """On the node: a ReadIndex round, then the read-only handler ``name``, locally."""

    if name == READ_INDEX:
        handler = None
    else:
        try:
            handler = commands.get(name)
        except Exception as error:
            return {"ok": False, "error": describe_error(error), "error_type": "BadRequest"}
        if not commands.is_read_only(name):
            return {
                "ok": False,
                "error": f"command {name!r} is not read-only",
                "error_type": "BadRequest",
            }
    try:
        index = node.read_index(max(0.0, deadline - time.monotonic()))
    except FutureTimeout:
        return {"ok": False, "error": "no read index in time", "error_type": "CommandTimeoutError"}
    except RaftError as error:
        return {"ok": False, "error": str(error), "error_type": type(error).__name__}
    if handler is None:
        return outcome_answer(Outcome(ok=True, value=index))
    context = commands.Context(node.node_id, index, 0, node.machine.alias)
    try:
        return outcome_answer(Outcome(ok=True, value=handler(context, **arguments)))
    except Exception as error:
        return outcome_answer(Outcome(ok=False, error=describe_error(error)))


def command_fields(body: dict[str, Any]) -> tuple[str, dict[str, Any], str, int] | dict[str, Any]:
    """A command body's name, arguments, session id and sequence number, or the failure
    that refuses the body."""
    fields = _command_fields(body)
    return failure(fields, "BadRequest") if isinstance(fields, str) else fields


def proposal(fields: tuple[str, dict[str, Any], str, int]) -> bytes | dict[str, Any]:
    """The log entry's data for a command (its ``command_fields``), or the failure that
    refuses it (an unknown command, bad arguments, too large)."""
    name, arguments, client_id, sequence = fields
    tracked = bool(client_id) or name in sessions.BUILTIN
    try:
        data = encode_command(
            name, arguments, client_id, sequence, int(time.time() * 1000) if tracked else 0
        )
        if name not in sessions.BUILTIN:  # the sessions' own commands are always well formed
            commands.check_call(name, arguments, len(data), raft_settings.MAX_COMMAND_SIZE)
    except WireError as error:
        return failure(str(error), "BadRequest")
    except InvalidRequestError as error:
        return failure(str(error), "InvalidRequestError")
    return data


def submit_command(body: dict[str, Any], deadline: float) -> dict[str, Any]:
    """Propose ``body``'s command here if we lead, else forward it; return the answer.

    A ``"read": true`` body runs a read-only command (``commands.command(read_only=True)``)
    on this node after a ReadIndex round, without appending to the log.
    """
    from .runner import RaftNode

    fields = command_fields(body)
    if isinstance(fields, dict):
        return fields
    name, arguments = fields[0], fields[1]
    node = RaftNode.current
    if body.get("read"):
        if node is None:
            return forward(None, "command", body, deadline)
        return read_command(node, name, arguments, deadline)
    if node is None or node.status().get("state") != "leader":
        return forward(node, "command", body, deadline)
    data = proposal(fields)
    if isinstance(data, dict):
        return data
    answer = run_on_node(node, lambda seconds: node.propose(data, seconds), deadline)
    if answer.get("error_type") == "NotLeaderError":
        return forward(node, "command", body, deadline)
    if answer["ok"]:
        answer["leader"] = node.node_id  # clients remember where the leader is
    return answer


def status_answer(node: RaftNode, payload: dict[str, Any]) -> dict[str, Any]:
    """A node's status; with ``"addresses": true`` in the request, the addresses of the
    members it knows too (clients learn them)."""
    status = node.status()
    if payload.get("addresses") is True:
        status["addresses"] = dict(node.transport.addresses)
    return status


# -- the client: every member, the leader remembered, retries until the deadline ----------


@dataclass
class Client:
    """Submits commands to the cluster. Its options are its own, never a handler's.

    ``timeout``: seconds ``do()`` keeps trying (default ``COMMAND_TIMEOUT``);
    ``session``: carry a session so that retries apply a command at most once (without
    one, a command is sent once and a lost answer is a ``CommandTimeoutError``);
    ``session_timeout``: seconds of log time an idle session lives (``SESSION_TIMEOUT``).
    One client keeps one session per thread.
    """

    timeout: float | None = None
    session: bool = True
    session_timeout: float | None = None
    _addresses: dict[str, str] = field(default_factory=dict, repr=False)
    _leader: str = field(default="", repr=False)
    _suspects: dict[str, float] = field(default_factory=dict, repr=False)
    _local: threading.local = field(default_factory=threading.local, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        if self.timeout is not None and not 0 < self.timeout <= 3600:
            raise InvalidRequestError("timeout must be a number of seconds in (0, 3600]")
        if self.session_timeout is not None and not 0 < self.session_timeout <= 30 * 86400:
            raise InvalidRequestError("session_timeout must be in (0, 30 days]")

    def do(self, command: str, /, **arguments: Any) -> Any:
        """Run ``command`` through the log with ``arguments``; return its handler's result."""
        if not isinstance(command, str) or not command:
            raise InvalidRequestError("a command name is a non-empty string")
        deadline = time.monotonic() + self._seconds()
        if not self.session:
            return raise_for(self._attempts({"name": command, "arguments": arguments}, deadline))
        for first_try in (True, False):
            client_id, sequence = self._next(deadline)
            body = {
                "name": command,
                "arguments": arguments,
                "client_id": client_id,
                "sequence": sequence,
            }
            answer = self._attempts(body, deadline, retry=True)
            if answer.get("error_type") == "SessionExpiredError":
                self._local.session = None  # not applied: open a new session, send again
                if first_try:
                    continue
            return raise_for(answer)
        raise AssertionError("unreachable")

    def read(self, command: str, /, **arguments: Any) -> Any:
        """Run a read-only command after a ReadIndex round, without a log entry."""
        body = {"name": command, "arguments": arguments, "read": True}
        return raise_for(self._attempts(body, time.monotonic() + self._seconds(), retry=True))

    def read_index(self) -> int:
        """A read index from a leader that confirmed its leadership after this call
        began. This server's node (``ADDRESS``) is asked first: it answers once it has
        applied the index itself."""
        body = {"name": READ_INDEX, "arguments": {}, "read": True}
        deadline = time.monotonic() + self._seconds()
        return int(raise_for(self._attempts(body, deadline, retry=True, local_first=True)))

    # -- sessions

    def open_session(self, deadline: float | None = None) -> str:
        """Open a new session through the log; return its client id."""
        deadline = time.monotonic() + self._seconds() if deadline is None else deadline
        timeout = self.session_timeout or raft_settings.SESSION_TIMEOUT
        body = {"name": sessions.OPEN_SESSION, "arguments": {"timeout_ms": int(timeout * 1000)}}
        return str(raise_for(self._attempts(body, deadline, retry=True)))

    def send(self, command: str, arguments: dict[str, Any], client_id: str, sequence: int) -> Any:
        """Run ``command`` as number ``sequence`` of session ``client_id``, retrying until
        the deadline: however often it is sent, it is applied at most once."""
        body = {
            "name": command,
            "arguments": arguments,
            "client_id": client_id,
            "sequence": sequence,
        }
        return raise_for(self._attempts(body, time.monotonic() + self._seconds(), retry=True))

    def _next(self, deadline: float) -> tuple[str, int]:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = [self.open_session(deadline), itertools.count(1)]
        return session[0], next(session[1])

    @property
    def client_id(self) -> str:
        """This thread's session id ("" before its first command)."""
        session = getattr(self._local, "session", None)
        return session[0] if session else ""

    # -- sending

    def _seconds(self) -> float:
        return float(self.timeout or raft_settings.COMMAND_TIMEOUT)

    def _attempts(
        self,
        body: dict[str, Any],
        deadline: float,
        retry: bool = False,
        local_first: bool = False,
    ) -> dict[str, Any]:
        """Send until an answer that is not worth retrying, or the deadline.

        The answer tells the truth about the command: once an attempt may have reached
        the log, a failure is a ``CommandTimeoutError`` whatever later attempts were
        told (``_settled``). Without ``retry`` (no session), nothing is sent again after
        such an attempt. A read appends nothing, whatever happens.
        """
        from .runner import RaftNode

        read = bool(body.get("read"))
        answer: dict[str, Any] = failure("no node answered in time", "ClusterUnreachableError")
        lost = ""  # why an earlier attempt may have been applied
        for attempt in itertools.count():
            remaining = _remaining(deadline)
            if remaining <= 0:
                break
            seconds = min(remaining, ATTEMPT_TIMEOUT)
            payload = {**body, "timeout": seconds}
            address = self._pick(attempt, local_first)
            node = RaftNode.current
            try:
                if node is not None and address in ("", node.address):
                    answer = submit_command(payload, time.monotonic() + seconds)
                else:
                    answer = send_command(address, payload, seconds)
            except _NotSent as error:
                answer = failure(str(error), "ClusterUnreachableError")
                self._suspect(address)
            except ClusterUnreachableError as error:
                if read:  # a read appends nothing: its loss is not a command's
                    answer = failure(str(error), "ClusterUnreachableError")
                else:
                    answer = failure(f"{error}{LOST}", "CommandTimeoutError")
                self._suspect(address)
            if answer.get("ok"):
                self._remember(answer)
                return answer
            if not read and _may_have_applied(answer):
                lost = str(answer.get("error", ""))
            error_type = answer.get("error_type") or ""
            if error_type not in _RETRYABLE_NAMES or (lost and not retry):
                break
            if error_type != "CommandTimeoutError":
                self._forget(address)
                time.sleep(min(RETRY_PAUSE, _remaining(deadline)))
        return _settled(answer, lost)

    def addresses(self) -> list[str]:
        """Every member address known: ``ADDRESS`` first, then ``CLUSTER``, then learnt."""
        found = [raft_settings.ADDRESS] if raft_settings.ADDRESS else []
        found += list(raft_settings.CLUSTER.values())
        with self._lock:
            found += list(self._addresses.values())
        return list(dict.fromkeys(address for address in found if address))

    def _pick(self, attempt: int, local_first: bool = False) -> str:
        """The address to try at ``attempt``: this server's node or the leader first,
        then every member in turn, those that failed in the last ``SUSPECT_FOR``
        seconds last."""
        from .runner import RaftNode

        addresses = self.addresses()
        if not addresses:
            node = RaftNode.current
            if node is not None:
                return node.address
            raise ClusterUnreachableError("DJANGO_RAFT['ADDRESS'] names no node to send to")
        now = time.monotonic()
        first = raft_settings.ADDRESS if local_first else self._leader
        with self._lock:
            if attempt == 0 and first and self._suspects.get(first, 0.0) <= now:
                return first
            fresh = [a for a in addresses if self._suspects.get(a, 0.0) <= now] or addresses
        return fresh[attempt % len(fresh)]

    def _suspect(self, address: str) -> None:
        """``address`` did not answer: try the other members first for a while."""
        self._forget(address)
        with self._lock:
            self._suspects[address] = time.monotonic() + SUSPECT_FOR

    def _remember(self, answer: dict[str, Any]) -> None:
        leader = answer.get("leader")
        if isinstance(leader, str) and leader:
            with self._lock:
                known = self._addresses.get(leader) or raft_settings.CLUSTER.get(leader)
            if known:
                self._leader = known
            elif not self._leader:
                self.learn()

    def _forget(self, address: str) -> None:
        if self._leader == address:
            self._leader = ""

    def learn(self, timeout: float = 1.0) -> None:
        """Ask the nodes for the members' addresses and the leader."""
        for address in self.addresses():
            try:
                value = raise_for(post(address, "status", {"addresses": True}, timeout))
            except RaftError:
                continue
            learnt = value.get("addresses") if isinstance(value, dict) else None
            if isinstance(learnt, dict):
                with self._lock:
                    self._addresses.update(
                        {str(k): str(v) for k, v in learnt.items() if isinstance(v, str)}
                    )
                    leader = self._addresses.get(str(value.get("leader", "")))
                if leader:
                    self._leader = leader
                return


_RETRYABLE_NAMES = frozenset(kind.__name__ for kind in _RETRYABLE) | {"StopError"}

_default: Client | None = None
_default_lock = threading.Lock()


def _forget_default(*, setting: str, **kwargs: Any) -> None:
    """Other settings, another cluster: the default client's sessions belong to the old."""
    global _default
    if setting == "DJANGO_RAFT":
        with _default_lock:
            _default = None


setting_changed.connect(_forget_default)


def default_client() -> Client:
    """The client ``django_raft.do`` uses (one per process; a session per thread)."""
    global _default
    with _default_lock:
        if _default is None:
            _default = Client()
        return _default
