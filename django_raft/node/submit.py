"""A client request on this node, one path for all: propose it here, or forward it.

``submit`` takes a request body (from a command stream, the ``command`` route or the
client in this process), parses it once, and gives a future of its JSON answer. A
leader proposes a write; a read runs here after a ReadIndex round (``read_command``); a
follower forwards a write to the leader and follows a new one with it (``forward``).
What must wait on other nodes runs on the caller's pool, or in the caller's thread when
it has none (a route, the in-process client: the thread waits for its proposal and
takes it from the loop directly). Every failure is built by ``protocol.answers.failure``.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from collections.abc import Callable
from concurrent.futures import Executor, Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any, Protocol

from .. import commands
from ..conf import raft_settings
from ..core import NotLeaderError, RaftError
from ..exceptions import (
    ClusterUnreachableError,
    CommandFailedError,
    CommandTimeoutError,
    InvalidRequestError,
    NodeServerError,
    NodeStoppedError,
    OverloadedError,
    SessionExpiredError,
    StaleTokenError,
)
from ..protocol.answers import LOST, failure, settled
from ..protocol.command_stream import TIMED_OUT
from ..protocol.request import (
    CLOCK,
    READ_INDEX,
    TIMEOUT_RULE,
    command_fields,
    first_unanswered,
    valid_timeout,
)
from ..protocol.send import AnswerAbandoned, Unsent, post, send_command
from ..protocol.wire import WireError, encode_command
from . import sessions
from .outcome import Outcome, describe_error
from .statemachine import StateMachine

__all__ = [
    "Request",
    "forward",
    "outcome_answer",
    "parse",
    "read_command",
    "run_on_node",
    "submit",
]

logger = logging.getLogger(__name__)

_OUTCOME_ERRORS: dict[str, type[RaftError]] = {
    f"{sessions.EXPIRED}:": SessionExpiredError,
    f"{sessions.OVERLOADED}:": OverloadedError,
    "StaleTokenError:": StaleTokenError,
}
"""A command's recorded error that starts so reaches the caller as that error."""
MAX_HOPS = 3
"""A forwarded request is not forwarded again more than this many times."""
MIN_TIME_LEFT = 0.1
"""Seconds a read or a write to forward must have left when a thread of the pool takes
it up, if it had them when it was queued; with less it is refused (``OverloadedError``:
nothing was sent) rather than sent to time out, its outcome unknown."""


class RequestHost(Protocol):
    """What a client request needs of the node (``runner.RaftNode`` has it)."""

    node_id: str
    address: str
    machine: StateMachine

    def status(self) -> dict[str, Any]: ...

    def leader_address(self) -> str: ...

    def propose(self, data: bytes, timeout: float) -> Outcome: ...

    def propose_async(self, data: bytes, *, inline: bool = False) -> Future[Outcome]: ...

    def read_index(self, timeout: float) -> int: ...

    def read_index_async(self, timeout: float) -> Future[int]: ...


@dataclass(frozen=True, slots=True)
class Request:
    """A client request body, parsed once: its command and until when it may run."""

    body: dict[str, Any]
    name: str
    arguments: dict[str, Any]
    client_id: str
    sequence: int
    read: bool
    deadline: float


def parse(body: Any) -> Request | dict[str, Any]:
    """The request in ``body`` (what the ``command`` route takes), or the failure that
    refuses it."""
    if not isinstance(body, dict):
        return failure(InvalidRequestError, "the body must be a JSON object")
    timeout = valid_timeout(body, raft_settings.COMMAND_TIMEOUT)
    if timeout is None:
        return failure(InvalidRequestError, TIMEOUT_RULE)
    fields = command_fields(body)
    if isinstance(fields, str):
        return failure(InvalidRequestError, fields)
    name, arguments, client_id, sequence = fields
    read = bool(body.get("read"))
    return Request(body, name, arguments, client_id, sequence, read, time.monotonic() + timeout)


def submit(
    node: RequestHost, body: Any, pool: Executor | None = None, leading: bool | None = None
) -> Future[dict[str, Any]]:
    """Run a client request on this node; the future of its JSON answer.

    With ``pool``, nothing here waits: a leader's proposal is answered from the node's
    applier thread, a read index from its completer thread (the answer's callbacks must
    be short), a read-only command or a forwarded write runs on ``pool``. Without one, the
    caller's thread runs them and the future is done on return. ``leading``: whether
    this node leads, when the caller just looked.
    """
    answer: Future[dict[str, Any]] = Future()
    request = parse(body)
    if isinstance(request, dict):
        answer.set_result(request)
        return answer
    if pool is not None and _index_only(body):
        _read_index(node, request, answer)
        return answer
    if request.read or not (_leads(node) if leading is None else leading):
        _elsewhere(node, request, answer, pool)
        return answer
    _propose(node, request, answer, pool)
    return answer


def _index_only(body: Any) -> bool:
    """Whether a request body asks for a read index alone (``read()``): its answer waits
    on the loop, never on a thread (``submit`` with a pool)."""
    return isinstance(body, dict) and bool(body.get("read")) and body.get("name") == READ_INDEX


def _read_index(node: RequestHost, request: Request, answer: Future[dict[str, Any]]) -> None:
    """Answer with a read index once the node has applied it, from its completer thread."""

    def done(found: Future[int]) -> None:
        error = found.exception()
        if error is None:
            answer.set_result(outcome_answer(Outcome(ok=True, value=found.result())))
        elif isinstance(error, RaftError):
            answer.set_result(failure(error))
        else:
            answer.set_result(failure(NodeServerError, f"{type(error).__name__} (logged)"))
            logger.error("raft: a read index failed", exc_info=error)

    node.read_index_async(_remaining(request.deadline)).add_done_callback(done)


def _propose(
    node: RequestHost, request: Request, answer: Future[dict[str, Any]], pool: Executor | None
) -> None:
    """Propose a write here (this node leads); with ``pool``, answer from the applier
    thread, else wait in this thread for the outcome."""
    data = proposal(request)
    if isinstance(data, dict):
        answer.set_result(data)
    elif pool is None:
        _settle(node, request, _proposed_here(node, data, request.deadline), answer, pool)
    else:
        node.propose_async(data, inline=True).add_done_callback(
            lambda proposed: _settle(node, request, _outcome_of(proposed), answer, pool)
        )


def _proposed_here(node: RequestHost, data: bytes, deadline: float) -> Outcome | BaseException:
    """Propose and wait until applied here: the outcome, or the error that ended it."""
    try:
        return node.propose(data, _remaining(deadline))
    except FutureTimeout:
        return CommandTimeoutError(TIMED_OUT)
    except RaftError as error:
        return error


def _outcome_of(proposed: Future[Outcome]) -> Outcome | BaseException:
    error = proposed.exception()
    return proposed.result() if error is None else error


def _settle(
    node: RequestHost,
    request: Request,
    outcome: Outcome | BaseException,
    answer: Future[dict[str, Any]],
    pool: Executor | None,
) -> None:
    """Answer a leader's proposal; one that lost leadership before it was appended is
    forwarded to the new leader, as a follower's would be."""
    if isinstance(outcome, NotLeaderError):
        _elsewhere(node, request, answer, pool)
    elif isinstance(outcome, BaseException):
        answer.set_result(failure(outcome))
    else:
        found = outcome_answer(outcome)
        if found["ok"]:
            found["leader"] = node.node_id  # clients remember where the leader is
        answer.set_result(found)


def _elsewhere(
    node: RequestHost, request: Request, answer: Future[dict[str, Any]], pool: Executor | None
) -> None:
    """A read, or a write to forward: both wait on other nodes, so they run on ``pool``
    (in this thread without one)."""

    def run() -> dict[str, Any]:
        if request.read:
            return read_command(node, request)
        return forward(node, "command", request.body, request.deadline, request)

    if pool is None:
        answer.set_result(run())
        return

    queued_with = _remaining(request.deadline)

    def guarded() -> None:
        if _remaining(request.deadline) < MIN_TIME_LEFT <= queued_with:  # waited for a thread
            answer.set_result(
                failure(
                    OverloadedError,
                    f"node {node.node_id!r} had no thread free for it in time; retry later",
                )
            )
            return
        try:
            answer.set_result(run())
        except Exception as error:
            logger.exception("raft: a client request failed")
            answer.set_result(
                failure(NodeServerError, f"{type(error).__name__} (logged on the node)")
            )

    try:
        pool.submit(guarded)
    except RuntimeError:  # the interpreter is shutting down
        answer.set_result(failure(NodeStoppedError, "the node is stopping"))


def _remaining(deadline: float) -> float:
    return max(0.0, deadline - time.monotonic())


def forward(
    node: RequestHost,
    route: str,
    body: dict[str, Any],
    deadline: float,
    request: Request | None = None,
) -> dict[str, Any]:
    """Send a client request on to the leader (``request``: the command's, parsed).

    A command this node forwarded whose leader then changes is sent again to the new
    leader if it carries a session (applied at most once all the same); without one it
    is answered at once as a ``CommandTimeoutError``, the truth: it may be applied. A
    request lost after it was sent is a ``CommandTimeoutError`` too;
    ``ClusterUnreachableError`` and ``NotLeaderError`` only when nothing was sent.
    """
    hops = body.get("hops", 0)
    if not isinstance(hops, int) or hops >= MAX_HOPS:
        return failure(NotLeaderError, "no leader could be reached")
    body = {**body, "hops": hops + 1}
    sent = ""  # why a command sent before may have been applied
    while True:
        address = _leader_of(node, deadline if sent and body.get("client_id") else 0.0)
        if not address and sent and request is not None and request.client_id and _leads(node):
            here = dataclasses.replace(request, body=body)  # this node leads now
            return settled(_here(node, here), sent)
        if not address:
            leader = node.status().get("leader", "")
            if sent:
                return failure(CommandTimeoutError, f"{sent}{LOST}")
            return failure(NotLeaderError, "no leader is known", leader=leader)
        if route != "command":
            return _forward_to(address, route, body, deadline)
        try:
            answer = send_command(
                address, body, _remaining(deadline), functools.partial(_leader_moved, node, address)
            )
        except Unsent as error:
            if sent:
                return failure(CommandTimeoutError, f"{sent}{LOST}")
            return failure(ClusterUnreachableError, str(error))
        except AnswerAbandoned as error:
            sent = f"forwarded to {address}, then {error}"
            if body.get("client_id"):
                continue  # the session makes sending it again safe
            return failure(CommandTimeoutError, f"{sent}{LOST}")
        except ClusterUnreachableError as error:
            return failure(CommandTimeoutError, f"{error}{LOST}")
        return settled(answer, sent)


def _here(node: RequestHost, request: Request) -> dict[str, Any]:
    """Propose ``request`` here, in this thread, and wait for its answer."""
    answer: Future[dict[str, Any]] = Future()
    _propose(node, request, answer, None)
    return answer.result()


def _leads(node: RequestHost) -> bool:
    return bool(node.status().get("state") == "leader")


def _forward_to(address: str, route: str, body: dict[str, Any], deadline: float) -> dict[str, Any]:
    try:
        if route == "command":  # on this process's command stream to the leader
            return send_command(address, body, _remaining(deadline))
        return post(address, route, body, _remaining(deadline))
    except Unsent as error:
        return failure(ClusterUnreachableError, str(error))
    except ClusterUnreachableError as error:
        return failure(CommandTimeoutError, f"{error}{LOST}")


LEADER_WAIT = 0.01
"""Seconds between two looks for a new leader, when a forwarded command waits for one."""


def _leader_of(node: RequestHost, deadline: float) -> str:
    """The leader's address as this node knows it, "" if none other than this node;
    until ``deadline``, wait for one."""
    while True:
        address = node.leader_address()
        if address and address != node.address:
            return address
        if _leads(node) or _remaining(deadline) <= 0:
            return ""
        time.sleep(min(LEADER_WAIT, _remaining(deadline)))


def _leader_moved(node: RequestHost, address: str) -> str:
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
    kind: type[RaftError] = CommandFailedError
    for prefix, found in _OUTCOME_ERRORS.items():
        if outcome.error.startswith(prefix):
            kind = found
    return {**failure(kind, outcome.error), "value": None}


def run_on_node(
    node: RequestHost, call: Callable[[float], Outcome], deadline: float
) -> dict[str, Any]:
    """Run ``call(seconds)`` against the node (a membership change, say); its outcome or
    error as a JSON answer."""
    try:
        outcome = call(_remaining(deadline))
    except FutureTimeout:
        return failure(CommandTimeoutError, TIMED_OUT)
    except RaftError as error:
        return failure(error)
    return outcome_answer(outcome)


def read_command(node: RequestHost, request: Request) -> dict[str, Any]:
    """On the node: a ReadIndex round, then the read-only handler, locally."""
    handler: Callable[..., Any] | None = None
    if commands.is_builtin(request.name):
        return failure(InvalidRequestError, f"command {request.name!r} is not read-only")
    if request.name != READ_INDEX:
        try:
            handler = commands.get(request.name)
        except Exception as error:
            return failure(InvalidRequestError, describe_error(error))
        if not commands.is_read_only(request.name):
            return failure(InvalidRequestError, f"command {request.name!r} is not read-only")
    try:
        index = node.read_index(_remaining(request.deadline))
    except FutureTimeout:
        return failure(CommandTimeoutError, "no read index in time")
    except RaftError as error:
        return failure(error)
    if handler is None:
        return outcome_answer(Outcome(ok=True, value=index))
    context = commands.Context(node.node_id, index, 0, node.machine.alias)
    try:
        return outcome_answer(Outcome(ok=True, value=handler(context, **request.arguments)))
    except Exception as error:
        return outcome_answer(Outcome(ok=False, error=describe_error(error)))


def proposal(request: Request) -> bytes | dict[str, Any]:
    """The log entry's data for a command, or the failure that refuses it (an unknown
    command, bad arguments, too large)."""
    name, arguments = request.name, request.arguments
    if name == CLOCK:
        return failure(InvalidRequestError, f"{CLOCK} is proposed by the leader alone")
    builtin = commands.is_builtin(name)
    tracked = bool(request.client_id) or builtin
    try:
        data = encode_command(
            name,
            arguments,
            request.client_id,
            request.sequence,
            int(time.time() * 1000) if tracked else 0,
            first_unanswered(request.body),
        )
        if not builtin:  # the builtins are always well formed
            commands.check_call(name, arguments, len(data), raft_settings.MAX_COMMAND_SIZE)
    except (WireError, InvalidRequestError) as error:
        return failure(InvalidRequestError, str(error))
    return data
