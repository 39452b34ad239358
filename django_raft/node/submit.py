"""The node's side of a client request: propose it here, or forward it to the leader.

A node that leads proposes the command; a follower forwards it to the leader and
follows a new one with it (``forward``). A read-only command runs here after a ReadIndex
round (``read_command``). Every failure is built by ``protocol.answers.failure``.
"""

from __future__ import annotations

import functools
import time
from concurrent.futures import TimeoutError as FutureTimeout
from typing import TYPE_CHECKING, Any

from .. import commands
from ..conf import raft_settings
from ..core import RaftError
from ..exceptions import ClusterUnreachableError, InvalidRequestError
from ..protocol.answers import LOST, failure, settled
from ..protocol.request import READ_INDEX
from ..protocol.request import command_fields as _command_fields
from ..protocol.send import AnswerAbandoned, Unsent, post, send_command
from ..protocol.wire import WireError, encode_command
from . import sessions
from .outcome import Outcome, describe_error

if TYPE_CHECKING:
    from .runner import RaftNode

__all__ = ["command_fields", "forward", "proposal", "read_command", "submit_command"]

BUILTIN = sessions.BUILTIN


def command_fields(body: dict[str, Any]) -> tuple[str, dict[str, Any], str, int] | dict[str, Any]:
    """A command body's name, arguments, session id and sequence number, or the failure
    that refuses the body."""
    fields = _command_fields(body)
    return failure(fields, "BadRequest") if isinstance(fields, str) else fields


_OUTCOME_ERRORS = {
    f"{sessions.EXPIRED}:": "SessionExpiredError",
    "StaleTokenError:": "StaleTokenError",
}
"""A command's recorded error that starts so reaches the caller as that error."""
MAX_HOPS = 3
"""A forwarded request is not forwarded again more than this many times."""


def _remaining(deadline: float) -> float:
    return max(0.0, deadline - time.monotonic())


def forward(node: RaftNode, route: str, body: dict[str, Any], deadline: float) -> dict[str, Any]:
    """Send a client request on to the leader.

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
    sent = ""  # why a command sent before may have been applied
    while True:
        address = _leader_of(node, deadline if sent and body.get("client_id") else 0.0)
        if not address and sent and body.get("client_id") and _leads(node):
            return settled(submit_command(node, body, deadline), sent)  # this node leads now
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
        except Unsent as error:
            if sent:
                return failure(f"{sent}{LOST}", "CommandTimeoutError")
            return failure(str(error), "ClusterUnreachableError")
        except AnswerAbandoned as error:
            sent = f"forwarded to {address}, then {error}"
            if body.get("client_id"):
                continue  # the session makes sending it again safe
            return failure(f"{sent}{LOST}", "CommandTimeoutError")
        except ClusterUnreachableError as error:
            return failure(f"{error}{LOST}", "CommandTimeoutError")
        return settled(answer, sent)


def _leads(node: RaftNode) -> bool:
    return bool(node.status().get("state") == "leader")


def _forward_to(address: str, route: str, body: dict[str, Any], deadline: float) -> dict[str, Any]:
    try:
        if route == "command":  # on this process's command stream to the leader
            return send_command(address, body, _remaining(deadline))
        return post(address, route, body, _remaining(deadline))
    except Unsent as error:
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


def proposal(fields: tuple[str, dict[str, Any], str, int]) -> bytes | dict[str, Any]:
    """The log entry's data for a command (its ``command_fields``), or the failure that
    refuses it (an unknown command, bad arguments, too large)."""
    name, arguments, client_id, sequence = fields
    tracked = bool(client_id) or name in BUILTIN
    try:
        data = encode_command(
            name, arguments, client_id, sequence, int(time.time() * 1000) if tracked else 0
        )
        if name not in BUILTIN:  # the sessions' own commands are always well formed
            commands.check_call(name, arguments, len(data), raft_settings.MAX_COMMAND_SIZE)
    except WireError as error:
        return failure(str(error), "BadRequest")
    except InvalidRequestError as error:
        return failure(str(error), "InvalidRequestError")
    return data


def submit_command(node: RaftNode, body: dict[str, Any], deadline: float) -> dict[str, Any]:
    """Propose ``body``'s command here if we lead, else forward it; return the answer.

    A ``"read": true`` body runs a read-only command (``commands.command(read_only=True)``)
    on this node after a ReadIndex round, without appending to the log.
    """
    fields = command_fields(body)
    if isinstance(fields, dict):
        return fields
    name, arguments = fields[0], fields[1]
    if body.get("read"):
        return read_command(node, name, arguments, deadline)
    if node.status().get("state") != "leader":
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
