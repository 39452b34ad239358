"""The routes a ``raftnode`` serves: Raft RPCs between nodes, and the client API.

Every request must be signed (``auth``): Raft RPCs with the node key, client routes with
the client key (or the node key: nodes forward). The signed headers are checked before
any of the body is read, and so is the room a command's body needs in the node's budget
(``admit``, ``flow``). Bad input of any kind gets a 4xx with a message and changes
nothing; the node keeps running.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from ...conf import raft_settings
from ...core import ConfChange, ConfChangeType, Message, RaftError
from ...exceptions import InvalidRequestError, NodeStoppedError, OverloadedError, StopError
from ...models import MAX_NODE_ID_LENGTH
from ...protocol.answers import failure
from ...protocol.auth import CLIENT, NODE, NODE_HEADER, Checked, Verifier, derive_keys
from ...protocol.request import TIMEOUT_RULE, valid_timeout
from ...protocol.wire import MAX_TERM_JUMP, WireError, decode_message
from .. import flow, metrics, rtt
from ..runner import RaftNode
from ..submit import forward, run_on_node, submit
from ..transport import BATCH_PATH, CONTENT_TYPE, PATHS, frame, unframe

MAX_RPC_BODY = 64 << 20
MAX_CLIENT_BODY = flow.MAX_REQUEST
DRAIN_CHUNK = 64 << 10
"""Bytes read at a time from a refused request's body (dropped as they come)."""
logger = logging.getLogger(__name__)


def _error(status: int, message: str, kind: type[RaftError] = InvalidRequestError) -> JsonResponse:
    return JsonResponse(failure(kind, message), status=status)


_verifiers: dict[tuple[Any, ...], Verifier] = {}


def verifier() -> Verifier:
    """The verifier of this process's node (one nonce memory per node and settings)."""
    node = RaftNode.current
    node_id = node.node_id if node is not None else raft_settings.NODE_ID
    key = (node_id, raft_settings.SECRET, raft_settings.CLIENT_SECRET, raft_settings.AUTH_WINDOW)
    found = _verifiers.get(key)
    if found is None:
        _verifiers.clear()
        found = _verifiers[key] = Verifier(
            derive_keys(raft_settings.SECRET, raft_settings.CLIENT_SECRET),
            node_id,
            raft_settings.AUTH_WINDOW,
        )
    return found


def authenticate(
    path: str, header: Any, content_length: str | None, limit: int, rpc: bool
) -> Checked | Answer:
    """Check a POST's signed headers and announced length, before reading its body."""
    try:
        length = int(content_length or 0)
    except ValueError:
        return Answer.error(400, "bad Content-Length")
    if not 0 <= length <= limit:
        return Answer.error(413, f"request body over {limit} bytes")
    checked = verifier().check("POST", path, header, length, (NODE,) if rpc else (CLIENT, NODE))
    if isinstance(checked, str):
        _log_refusal(path, str(header(NODE_HEADER) or ""), checked)
        return Answer.error(403, checked)
    return checked


_refusals = {"logged_at": float("-inf"), "unlogged": 0.0}


def _log_refusal(path: str, sender: str, reason: str) -> None:
    """Log why a request was refused (Django would log only "Forbidden: <path>"), at
    most once a second: a peer with the wrong secret retries many times a second."""
    now = time.monotonic()
    if now - _refusals["logged_at"] < 1.0:
        _refusals["unlogged"] += 1
        return
    unlogged = int(_refusals["unlogged"])
    more = f" (and {unlogged} refused since the last such line)" if unlogged else ""
    _refusals.update(logged_at=now, unlogged=0)
    sender = sender[:MAX_NODE_ID_LENGTH] or "?"
    logger.warning("raft: refused POST %s from %r: %s%s", path, sender, reason, more)


def admit(sender: str, length: int) -> flow.Ticket | Answer:
    """Room in the node's budget for a command request of ``length`` bytes signed by
    ``sender`` (and the command's ``flow.COMMAND_COST``), or the ``OverloadedError``
    answer that refuses it (a 503)."""
    node = RaftNode.current
    if node is None or node.stopping.is_set():
        return Answer.error(503, "no Raft node runs in this process", NodeStoppedError)
    peer = sender in node.transport.addresses
    ticket = flow.budget_of(node).take(sender, length + flow.COMMAND_COST, peer=peer)
    if ticket is None:
        return Answer.error(503, flow.refusal(node.node_id, sender), OverloadedError)
    return ticket


def drain(read: Callable[[int], bytes], length: int) -> None:
    """Read and drop ``length`` bytes of a body a few at a time (the connection stays
    usable, and the answer reaches a client still sending)."""
    while length > 0:
        chunk = read(min(length, DRAIN_CHUNK))
        if not chunk:
            return
        length -= len(chunk)


def _read_body(request: HttpRequest, limit: int, rpc: bool = False) -> bytes | JsonResponse:
    checked = authenticate(
        request.path, request.headers.get, request.META.get("CONTENT_LENGTH"), limit, rpc
    )
    if isinstance(checked, Answer):
        return _unread(checked)
    body = request.read(checked.length) if checked.length else b""
    if not checked.body_matches(body):
        return _error(403, "the body does not match its signature")
    return body


def _unread(refused: Answer) -> JsonResponse:
    response = JsonResponse(json.loads(refused.body), status=refused.status)
    response["Connection"] = "close"  # the body is unread: do not let the server read it
    if refused.status == 403:
        response._has_been_logged = True  # type: ignore[attr-defined]  # authenticate() did
    return response


def _running_node() -> RaftNode | JsonResponse:
    node = RaftNode.current
    if node is None or node.stopping.is_set():
        return _error(503, "no Raft node runs in this process", NodeStoppedError)
    return node


@dataclass(frozen=True, slots=True)
class Answer:
    """A route's answer, independent of Django: ``raftnode``'s fast path serves it too."""

    status: int
    content_type: str
    body: bytes

    @classmethod
    def json(cls, payload: dict[str, Any], status: int = 200) -> Answer:
        """An answer carrying ``payload`` as JSON."""
        return cls(status, "application/json", json.dumps(payload).encode())

    @classmethod
    def error(
        cls, status: int, message: str, kind: type[RaftError] = InvalidRequestError
    ) -> Answer:
        """A JSON error answer, like ``_error``."""
        return cls.json(failure(kind, message), status)

    def response(self) -> HttpResponse:
        """This answer as a Django response."""
        return HttpResponse(self.body, status=self.status, content_type=self.content_type)


def check_messages(node: RaftNode, messages: list[Message], sender: str | None) -> str | None:
    """Why messages that ``sender`` sent this node cannot be stepped, or None.

    Checked before any of them is trusted: the receiver, the claimed sender, and a term
    no further ahead of this node's than ``MAX_TERM_JUMP``.
    """
    if not messages:
        return "no message"
    ceiling = node.status().get("term", 0) + MAX_TERM_JUMP
    for message in messages:
        if message.term > ceiling:
            return f"term {message.term} is implausibly far ahead of ours"
        if message.to != node.node_id:
            return f"message for {message.to!r} sent to {node.node_id!r}"
        if message.sender != sender:
            return "the sender does not match the request header"
    return None


def rpc_answer(path: str, body: bytes, sender: str | None) -> Answer:
    """Step the Raft messages of a checked request body; answer with their replies."""
    node = RaftNode.current
    if node is None or node.stopping.is_set():
        return Answer.error(503, "no Raft node runs in this process", NodeStoppedError)
    if path == rtt.PING_PATH:  # a peer times its round trip to this node
        return Answer(200, "text/plain", b"pong")
    try:
        messages = unframe(body) if path == BATCH_PATH else [decode_message(body)]
    except WireError as error:
        return Answer.error(400, f"not a Raft message: {error}")
    if path != BATCH_PATH:
        for message in messages:
            if PATHS.get(message.type) != path:
                return Answer.error(
                    400, f"a {message.type.value} message does not belong on {path!r}"
                )
    refused = check_messages(node, messages, sender)
    if refused is not None:
        return Answer.error(400, refused)
    for message in messages:
        metrics.count_received(message.type.value)
    try:
        replies = node.receive(messages, raft_settings.RPC_TIMEOUT)
    except StopError as error:
        return Answer.error(503, str(error), NodeStoppedError)
    return Answer(200, CONTENT_TYPE, frame(replies))


@csrf_exempt
@require_POST
def rpc(request: HttpRequest, path: str) -> HttpResponse:
    """Step one Raft message; answer with the messages it produced for the sender."""
    body = _read_body(request, MAX_RPC_BODY, rpc=True)
    if isinstance(body, JsonResponse):
        return body
    return rpc_answer(path, body, request.headers.get(NODE_HEADER)).response()


def _json_body(request: HttpRequest) -> dict[str, Any] | JsonResponse:
    body = _read_body(request, MAX_CLIENT_BODY)
    if isinstance(body, JsonResponse):
        return body
    try:
        payload = json.loads(body or b"{}", parse_constant=_not_json)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return _error(400, "the body is not JSON")
    if not isinstance(payload, dict):
        return _error(400, "the body must be a JSON object")
    return payload


def _not_json(constant: str) -> Any:
    raise ValueError(f"{constant} is not JSON")


def _client_request(request: HttpRequest) -> tuple[dict[str, Any], RaftNode, float] | JsonResponse:
    """Check a client request: signed JSON object, a running node, a valid timeout."""
    payload = _json_body(request)
    if isinstance(payload, JsonResponse):
        return payload
    node = _running_node()
    if isinstance(node, JsonResponse):
        return node
    timeout = valid_timeout(payload, raft_settings.COMMAND_TIMEOUT)
    if timeout is None:
        return _error(400, TIMEOUT_RULE)
    return payload, node, timeout


def command_request(read: Callable[[int], bytes], checked: Checked) -> Answer:
    """Run the command of a request whose headers are checked: its body is read (with
    ``read``) once the node has room for it, and held in the budget until answered."""
    ticket = admit(checked.sender, checked.length)
    if isinstance(ticket, Answer):
        drain(read, checked.length)
        return ticket
    try:
        body = read(checked.length) if checked.length else b""
        if not checked.body_matches(body):
            return Answer.error(403, "the body does not match its signature")
        return command_answer(body)
    finally:
        ticket.release()


def command_answer(body: bytes) -> Answer:
    """Run the command of a checked client request body; answer with its outcome."""
    try:
        payload = json.loads(body or b"{}", parse_constant=_not_json)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return Answer.error(400, "the body is not JSON")
    if not isinstance(payload, dict):
        return Answer.error(400, "the body must be a JSON object")
    node = RaftNode.current
    if node is None or node.stopping.is_set():
        return Answer.error(503, "no Raft node runs in this process", NodeStoppedError)
    answer = submit(node, payload).result()
    refused = answer.get("error_type") == "InvalidRequestError"
    return Answer.json(answer, status=400 if refused else 200)


@csrf_exempt
@require_POST
def command(request: HttpRequest) -> HttpResponse:
    """Run a command through the log and answer with its handler's result."""
    checked = authenticate(
        request.path,
        request.headers.get,
        request.META.get("CONTENT_LENGTH"),
        MAX_CLIENT_BODY,
        False,
    )
    if isinstance(checked, Answer):
        return _unread(checked)
    return command_request(request.read, checked).response()


def status_answer(node: RaftNode, payload: dict[str, Any]) -> dict[str, Any]:
    """A node's status; with ``"addresses": true`` in the request, the addresses of the
    members it knows too (clients learn them)."""
    status = node.status()
    if payload.get("addresses") is True:
        status["addresses"] = dict(node.transport.addresses)
    return status


@csrf_exempt
@require_POST
def status(request: HttpRequest) -> JsonResponse:
    """Answer with this node's status."""
    checked = _client_request(request)
    if isinstance(checked, JsonResponse):
        return checked
    payload, node, _ = checked
    return JsonResponse({"ok": True, "value": status_answer(node, payload)})


_ROLES = {"voter": ConfChangeType.ADD_VOTER, "learner": ConfChangeType.ADD_LEARNER}


def node_id_of(payload: dict[str, Any]) -> str | JsonResponse:
    """The request's ``node_id``, or the 400 answer that refuses it (a stored member id is
    at most ``MAX_NODE_ID_LENGTH`` printable characters)."""
    node_id = payload.get("node_id")
    if (
        not isinstance(node_id, str)
        or not node_id
        or len(node_id) > MAX_NODE_ID_LENGTH
        or not node_id.isprintable()
    ):
        return _error(400, f"node_id must be 1 to {MAX_NODE_ID_LENGTH} printable characters")
    return node_id


@csrf_exempt
@require_POST
def members(request: HttpRequest) -> JsonResponse:
    """Add a member (``{"node_id", "address", "role"}``) or remove one (``"remove": id``)."""
    checked = _client_request(request)
    if isinstance(checked, JsonResponse):
        return checked
    payload, node, timeout = checked
    node_id = node_id_of(payload)
    if isinstance(node_id, JsonResponse):
        return node_id
    if payload.get("remove"):
        change = ConfChange(ConfChangeType.REMOVE, node_id)
    else:
        role, address = payload.get("role", "voter"), payload.get("address")
        if role not in _ROLES:
            return _error(400, 'role must be "voter" or "learner"')
        if not isinstance(address, str) or not address.startswith(("http://", "https://")):
            return _error(400, "address must be the node's http(s) URL")
        change = ConfChange(_ROLES[role], node_id, address)
    deadline = time.monotonic() + timeout
    if node.status().get("state") != "leader":
        return JsonResponse(forward(node, "members", payload, deadline))
    answer = run_on_node(node, lambda seconds: node.change_membership(change, seconds), deadline)
    return JsonResponse(answer, status=200 if answer["ok"] else 409)
