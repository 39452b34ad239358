"""Submit commands to the cluster from any process: ``Client``, ``do`` and ``status``.

A ``Client`` (what ``django_raft.do`` uses) knows every member's address, the
``ADDRESS`` setting's first, then ``CLUSTER`` and the membership it learns from the
nodes' answers; it remembers which node led last, tries the others when one does not
answer, and retries until its deadline. Retries are safe because every command carries
its session's ``(client_id, sequence)``: the state machine applies it at most once. In
a ``raftnode`` process the client hands commands to the node directly (``local``).

A client has one session for its whole process, shared by every thread, with many
commands outstanding at once (Raft thesis §6.3): it is opened through the log by the
first command that needs it, reopened by one thread for all when it expires, and a
forked child (Celery prefork, gunicorn ``--preload``) opens its own instead of sharing
its parent's. Each command also tells the cluster the lowest sequence number whose
answer the client has not seen (``first_unanswered``), so the nodes forget the outcomes
below it; at most ``MAX_OUTSTANDING`` numbers are given out above it, and a thread that
would pass that waits for the oldest outstanding command to be answered.

``Client.ado`` and ``Client.aread_index`` are ``do`` and ``read_index`` for async code
(``django_raft.client.aio``): the same decisions (``Attempts``, the session's numbers)
and the same session; only the waiting differs.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import threading
import time
import weakref
from dataclasses import dataclass, field
from typing import Any

from django.core.signals import setting_changed

from ..conf import raft_settings
from ..core import NotLeaderError, ProposalDroppedError, RaftError
from ..exceptions import (
    ClusterUnreachableError,
    CommandTimeoutError,
    InvalidRequestError,
    NodeStoppedError,
    OverloadedError,
)
from ..protocol import asend, local
from ..protocol.answers import LOST, failure, leaves_open, raise_for, settled
from ..protocol.request import (
    MAX_OUTSTANDING,
    MAX_TIMEOUT,
    OPEN_SESSION,
    READ_INDEX,
    TIMEOUT_RULE,
)
from ..protocol.send import NO_ADDRESS, Unsent, post, send_command

__all__ = ["Client", "default_client", "do", "status"]


def _remaining(deadline: float) -> float:
    return max(0.0, deadline - time.monotonic())


ATTEMPT_TIMEOUT = 2.0
"""Seconds one attempt waits for a node before the client tries another."""
RETRY_PAUSE = 0.05
MIN_ATTEMPT = 0.1
"""Seconds a retry needs at least: with less left, none is sent and the call ends with
what the attempts so far were told. A command sent with a few milliseconds to go would
rarely be answered in time, and an unanswered command may have been applied: it would
turn a truthful "not applied" into "may have"."""
POLL = 0.005
"""Seconds between two looks, in async code, at a session being opened or at a free
sequence number by another caller (both rare: the first command, and
``MAX_OUTSTANDING`` outstanding)."""
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

NO_SESSION = "no session could be opened in time; nothing was sent"
TOO_MANY = (
    f"{MAX_OUTSTANDING} commands of this process are outstanding above its oldest "
    "unanswered one; nothing was sent"
)
READ_INDEX_BODY: dict[str, Any] = {"name": READ_INDEX, "arguments": {}, "read": True}
LEARN_BODY: dict[str, Any] = {"addresses": True}
"""What a client asks a node's ``status`` route to learn the members' addresses."""


def check_name(command: object) -> None:
    """Refuse a command name that is not a non-empty string (nothing is sent)."""
    if not isinstance(command, str) or not command:
        raise InvalidRequestError("a command name is a non-empty string")


def session_body(
    command: str, arguments: dict[str, Any], session: _Session, sequence: int, floor: int
) -> dict[str, Any]:
    """The body of ``command`` sent as number ``sequence`` of ``session``."""
    return {
        "name": command,
        "arguments": arguments,
        "client_id": session.client_id,
        "sequence": sequence,
        "first_unanswered": floor,
    }


def local_node(address: str) -> local.LocalNode | None:
    """The node of this process when ``address`` is its own (then a call is a
    ``submit``, no request), else None."""
    node = local.current()
    return node if node is not None and address in ("", node.address) else None


class Attempts:
    """The attempts of one call, whoever sends them (``Client`` blocking, the async
    client awaiting): which node to try next, what each answer means for the call, and
    the answer that tells the truth about the command at the end.

    Once an attempt may have reached the log, a failure is a ``CommandTimeoutError``
    whatever later attempts were told (``settled``). Without ``retry`` (no session),
    nothing is sent again after such an attempt. A read appends nothing, whatever
    happens. The caller loops: ``next()`` (None at the deadline), send, ``unreachable``
    for a send that raised, ``settle`` (None: stop; else seconds to pause), then
    ``learn`` the members if ``learn`` says so, and ``answer()``.
    """

    def __init__(
        self,
        client: Client,
        body: dict[str, Any],
        deadline: float,
        retry: bool = False,
        local_first: bool = False,
    ) -> None:
        self.client = client
        self.body = body
        self.deadline = deadline
        self.retry = retry
        self.local_first = local_first
        self.read = bool(body.get("read"))
        self.last: dict[str, Any] = failure(ClusterUnreachableError, "no node answered in time")
        self.lost = ""
        """Why an earlier attempt may have been applied ("" while none may have)."""
        self.learn = False
        """Whether the leader that answered is unknown: the caller asks the members."""
        self._count = itertools.count()

    def next(self) -> tuple[str, dict[str, Any], float] | None:
        """The next attempt's address, payload and seconds; None past the deadline, or
        for a retry, with less than ``MIN_ATTEMPT`` left."""
        remaining = _remaining(self.deadline)
        attempt = next(self._count)
        if remaining <= 0 or (attempt and remaining < MIN_ATTEMPT):
            return None
        seconds = min(remaining, ATTEMPT_TIMEOUT)
        address = self.client._pick(attempt, self.local_first)
        return address, {**self.body, "timeout": seconds}, seconds

    def unreachable(self, address: str, error: ClusterUnreachableError) -> dict[str, Any]:
        """The answer of an attempt whose send raised ``error``: nothing applied when it
        was ``Unsent`` (or a read), else the command may have been."""
        self.client._suspect(address)
        if isinstance(error, Unsent) or self.read:
            return failure(ClusterUnreachableError, str(error))
        return failure(CommandTimeoutError, f"{error}{LOST}")

    def settle(self, address: str, answer: dict[str, Any]) -> float | None:
        """Take in an attempt's answer: None when the call ends with it, else the
        seconds to pause before the next attempt."""
        self.last = answer
        if answer.get("ok"):
            self.learn = self.client._remember(answer)
            return None
        if not self.read and leaves_open(answer):
            self.lost = str(answer.get("error", ""))
        error_type = answer.get("error_type") or ""
        if error_type not in _RETRYABLE_NAMES or (self.lost and not self.retry):
            return None
        if error_type == "CommandTimeoutError":
            return 0.0
        self.client._forget(address)
        return min(RETRY_PAUSE, _remaining(self.deadline))

    def answer(self) -> dict[str, Any]:
        """The call's answer: the last one, unless it hides that an earlier attempt may
        have been applied."""
        return settled(self.last, self.lost)


@dataclass
class Client:
    """Submits commands to the cluster. Its options are its own, never a handler's.

    ``timeout``: seconds ``do()`` keeps trying (default ``COMMAND_TIMEOUT``);
    ``session``: carry a session so that retries apply a command at most once (without
    one, a command is sent once and a lost answer is a ``CommandTimeoutError``);
    ``session_timeout``: seconds of log time an idle session lives (``SESSION_TIMEOUT``).
    One client keeps one session for its process, shared by its threads (see the module).
    """

    timeout: float | None = None
    session: bool = True
    session_timeout: float | None = None
    _addresses: dict[str, str] = field(default_factory=dict, repr=False)
    _leader: str = field(default="", repr=False)
    _suspects: dict[str, float] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _session: _Session | None = field(default=None, repr=False)
    _numbers: threading.Condition = field(default_factory=threading.Condition, repr=False)
    """Guards the session's numbers; notified when an answer may move the floor."""
    _opening: threading.Lock = field(default_factory=threading.Lock, repr=False)
    """Held by the one thread that opens the session."""

    def __post_init__(self) -> None:
        if self.timeout is not None and not 0 < self.timeout <= MAX_TIMEOUT:
            raise InvalidRequestError(TIMEOUT_RULE)
        if self.session_timeout is not None and not 0 < self.session_timeout <= 30 * 86400:
            raise InvalidRequestError("session_timeout must be in (0, 30 days]")
        _clients[id(self)] = self

    def do(self, command: str, /, **arguments: Any) -> Any:
        """Run ``command`` through the log with ``arguments``; return its handler's result."""
        check_name(command)
        deadline = time.monotonic() + self._seconds()
        if not self.session:
            return raise_for(self._attempts({"name": command, "arguments": arguments}, deadline))
        for first_try in (True, False):
            session = self._current(deadline)
            sequence, floor = self._take(session, deadline)
            body = session_body(command, arguments, session, sequence, floor)
            try:
                answer = self._attempts(body, deadline, retry=True)
            finally:
                self._answered(session, sequence)
            if self._again(answer, session, first_try):
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
        deadline = time.monotonic() + self._seconds()
        return int(raise_for(self._attempts(READ_INDEX_BODY, deadline, True, local_first=True)))

    async def ado(self, command: str, /, **arguments: Any) -> Any:
        """``do()`` for async code: the same session, retries and errors, awaited without
        blocking the event loop (``django_raft.client.aio``)."""
        check_name(command)
        deadline = time.monotonic() + self._seconds()
        if not self.session:
            body = {"name": command, "arguments": arguments}
            return raise_for(await self._aattempts(body, deadline))
        for first_try in (True, False):
            session = await self._acurrent(deadline)
            sequence, floor = await self._atake(session, deadline)
            body = session_body(command, arguments, session, sequence, floor)
            try:
                answer = await self._aattempts(body, deadline, retry=True)
            finally:
                self._answered(session, sequence)
            if self._again(answer, session, first_try):
                continue
            return raise_for(answer)
        raise AssertionError("unreachable")

    async def aread_index(self) -> int:
        """``read_index()`` for async code."""
        deadline = time.monotonic() + self._seconds()
        answer = await self._aattempts(READ_INDEX_BODY, deadline, True, local_first=True)
        return int(raise_for(answer))

    # -- sessions

    def open_session(self, deadline: float | None = None) -> str:
        """Open a new session through the log; return its client id (a session apart
        from the one ``do()`` uses, for ``send``)."""
        deadline = time.monotonic() + self._seconds() if deadline is None else deadline
        return str(raise_for(self._attempts(self._open_session_body(), deadline, retry=True)))

    def _open_session_body(self) -> dict[str, Any]:
        timeout = self.session_timeout or raft_settings.SESSION_TIMEOUT
        return {"name": OPEN_SESSION, "arguments": {"timeout_ms": int(timeout * 1000)}}

    def send(self, command: str, arguments: dict[str, Any], client_id: str, sequence: int) -> Any:
        """Run ``command`` as number ``sequence`` of session ``client_id``, retrying until
        the deadline: however often it is sent, it is applied at most once.

        It sends no ack floor, which tells the nodes that every lower number of the
        session was answered: use it with a session of its own (``open_session``), never
        with the one this client's ``do()`` shares between threads."""
        body = {
            "name": command,
            "arguments": arguments,
            "client_id": client_id,
            "sequence": sequence,
        }
        return raise_for(self._attempts(body, time.monotonic() + self._seconds(), retry=True))

    def _current(self, deadline: float) -> _Session:
        """This process's session: opened on first use by one thread while the others
        wait, and opened anew in a forked child (its parent's is not its own)."""
        session = self._mine()
        if session is not None:
            return session
        if not self._opening.acquire(timeout=_remaining(deadline)):
            raise ClusterUnreachableError(NO_SESSION)
        try:
            return self._mine() or self._opened(self.open_session(deadline))
        finally:
            self._opening.release()

    def _mine(self) -> _Session | None:
        """This process's open session, if it has one."""
        session = self._session
        return session if session is not None and session.pid == os.getpid() else None

    def _opened(self, client_id: str) -> _Session:
        """Make the session just opened (``client_id``) this process's."""
        session = self._session = _Session(client_id, os.getpid())
        return session

    def _take(self, session: _Session, deadline: float) -> tuple[int, int]:
        """The next sequence number of ``session`` and the floor to send with it; waits
        while ``MAX_OUTSTANDING`` numbers are outstanding above the floor."""
        with self._numbers:
            while (taken := self._try_take(session)) is None:
                remaining = _remaining(deadline)
                if remaining <= 0:
                    raise OverloadedError(TOO_MANY)
                self._numbers.wait(remaining)
            return taken

    def _try_take(self, session: _Session) -> tuple[int, int] | None:
        """``_take`` without waiting: None while ``MAX_OUTSTANDING`` are outstanding.
        Call it holding ``_numbers``."""
        if session.next - session.floor() >= MAX_OUTSTANDING:
            return None
        sequence = session.next
        session.next += 1
        session.waiting.add(sequence)
        return sequence, session.floor()

    def _answered(self, session: _Session, sequence: int) -> None:
        """``sequence`` is no longer awaited (answered, or given up: never sent again)."""
        with self._numbers:
            session.waiting.discard(sequence)
            self._numbers.notify_all()

    def _again(self, answer: dict[str, Any], session: _Session, first_try: bool) -> bool:
        """Whether to send a command again in a new session: its session had expired
        (so it was not applied), and this was its first try."""
        if answer.get("error_type") != "SessionExpiredError":
            return False
        self._expired(session)
        return first_try

    def _expired(self, session: _Session) -> None:
        """``session`` expired: the next command opens a new one (unless a thread did)."""
        with self._numbers:
            if self._session is session:
                self._session = None

    def _after_fork(self) -> None:
        """In a forked child: drop the parent's session and the locks its threads held."""
        self._session = None
        self._numbers = threading.Condition()
        self._opening = threading.Lock()
        self._lock = threading.Lock()

    @property
    def client_id(self) -> str:
        """This process's session id ("" before its first command)."""
        session = self._session
        return session.client_id if session and session.pid == os.getpid() else ""

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
        """Send until an answer that is not worth retrying, or the deadline (``Attempts``
        decides which node, whether to go on and what the answer says)."""
        attempts = Attempts(self, body, deadline, retry, local_first)
        while (attempt := attempts.next()) is not None:
            address, payload, seconds = attempt
            node = local_node(address)
            try:
                if node is not None:
                    answer = node.submit(payload)
                else:
                    answer = send_command(address, payload, seconds)
            except ClusterUnreachableError as error:
                answer = attempts.unreachable(address, error)
            pause = attempts.settle(address, answer)
            if pause is None:
                break
            if pause:
                time.sleep(pause)
        if attempts.learn:
            self.learn()
        return attempts.answer()

    # -- the same, awaited (``ado``, ``aread_index``)

    async def _acurrent(self, deadline: float) -> _Session:
        """``_current`` awaited: the one opener holds the same lock as a thread would
        (taken without waiting; others poll), so a process opens one session."""
        while (session := self._mine()) is None:
            if self._opening.acquire(blocking=False):
                try:
                    if (session := self._mine()) is None:
                        body = self._open_session_body()
                        opened = await self._aattempts(body, deadline, True)
                        session = self._opened(str(raise_for(opened)))
                    return session
                finally:
                    self._opening.release()
            if _remaining(deadline) <= 0:
                raise ClusterUnreachableError(NO_SESSION)
            await asyncio.sleep(POLL)
        return session

    async def _atake(self, session: _Session, deadline: float) -> tuple[int, int]:
        """``_take`` awaited."""
        while True:
            with self._numbers:
                taken = self._try_take(session)
            if taken is not None:
                return taken
            if _remaining(deadline) <= 0:
                raise OverloadedError(TOO_MANY)
            await asyncio.sleep(POLL)

    async def _aattempts(
        self,
        body: dict[str, Any],
        deadline: float,
        retry: bool = False,
        local_first: bool = False,
    ) -> dict[str, Any]:
        """``_attempts`` awaited: the same ``Attempts`` decide; no thread per call (in a
        ``raftnode`` process, its node's blocking ``submit`` runs in one)."""
        attempts = Attempts(self, body, deadline, retry, local_first)
        while (attempt := attempts.next()) is not None:
            address, payload, seconds = attempt
            node = local_node(address)
            try:
                if node is not None:
                    answer = await asyncio.to_thread(node.submit, payload)
                else:
                    answer = await asend.send_command(address, payload, seconds)
            except ClusterUnreachableError as error:
                answer = attempts.unreachable(address, error)
            pause = attempts.settle(address, answer)
            if pause is None:
                break
            if pause:
                await asyncio.sleep(pause)
        if attempts.learn:
            await self._alearn()
        return attempts.answer()

    async def _alearn(self, timeout: float = 1.0) -> None:
        """``learn`` awaited."""
        for address in self.addresses():
            try:
                value = raise_for(await asend.post(address, "status", LEARN_BODY, timeout))
            except RaftError:
                continue
            if self._learnt(value):
                return

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
        addresses = self.addresses()
        if not addresses:
            node = local.current()
            if node is not None:
                return node.address
            raise ClusterUnreachableError(NO_ADDRESS)
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

    def _remember(self, answer: dict[str, Any]) -> bool:
        """Remember the leader an answer names; whether its address is unknown and the
        members should be asked (``learn``)."""
        leader = answer.get("leader")
        if isinstance(leader, str) and leader:
            with self._lock:
                known = self._addresses.get(leader) or raft_settings.CLUSTER.get(leader)
            if known:
                self._leader = known
            elif not self._leader:
                return True
        return False

    def _forget(self, address: str) -> None:
        if self._leader == address:
            self._leader = ""

    def learn(self, timeout: float = 1.0) -> None:
        """Ask the nodes for the members' addresses and the leader."""
        for address in self.addresses():
            try:
                value = raise_for(post(address, "status", LEARN_BODY, timeout))
            except RaftError:
                continue
            if self._learnt(value):
                return

    def _learnt(self, value: Any) -> bool:
        """Take in a node's status (asked with ``LEARN_BODY``); whether it had the members."""
        learnt = value.get("addresses") if isinstance(value, dict) else None
        if not isinstance(learnt, dict):
            return False
        with self._lock:
            self._addresses.update(
                {str(k): str(v) for k, v in learnt.items() if isinstance(v, str)}
            )
            leader = self._addresses.get(str(value.get("leader", "")))
        if leader:
            self._leader = leader
        return True


@dataclass
class _Session:
    """A process's session: its id, the process that opened it, the next sequence number
    and those given out whose answers are still awaited."""

    client_id: str
    pid: int
    next: int = 1
    waiting: set[int] = field(default_factory=set)

    def floor(self) -> int:
        """The first unanswered sequence number (the next one when none is awaited)."""
        return min(self.waiting) if self.waiting else self.next


_clients: weakref.WeakValueDictionary[int, Client] = weakref.WeakValueDictionary()
"""Every live client, for ``_after_fork``."""


def _after_fork() -> None:
    for client in list(_clients.values()):
        client._after_fork()


os.register_at_fork(after_in_child=_after_fork)

_RETRYABLE_NAMES = frozenset(kind.__name__ for kind in _RETRYABLE) | {"StopError"}  # older nodes
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
    """The client ``django_raft.do`` uses (one per process, with one session)."""
    global _default
    with _default_lock:
        if _default is None:
            _default = Client()
        return _default


def do(command: str, /, **arguments: Any) -> Any:
    """Run ``command`` through the log with ``arguments``; return its handler's result.

    It returns once the entry is committed and applied. Every keyword is the handler's:
    options (timeout, sessions) belong to a client: ``django_raft.Client(timeout=...)``.
    It tries every known member and retries until ``COMMAND_TIMEOUT``; the command's
    session makes the retries safe. The errors it raises are in docs/reference.md.
    """
    return default_client().do(command, **arguments)


def status(address: str | None = None, timeout: float = 2.0) -> dict[str, Any]:
    """Return a node's name, state, term, leader, commit and applied index and members."""
    node = local.current()
    if node is not None and address is None:
        return node.status()
    target = address or raft_settings.ADDRESS
    if not target:
        raise ClusterUnreachableError(
            "no node to ask: set DJANGO_RAFT['ADDRESS'] (RAFT_ADDRESS) to this server's node,"
            " or pass one: status('http://...')"
        )
    try:
        answer = post(target, "status", {}, timeout)
    except Unsent as error:  # named by its public class, as every caller knows it
        raise ClusterUnreachableError(str(error)) from error.__cause__
    value = raise_for(answer)
    if not isinstance(value, dict):
        raise ClusterUnreachableError(f"bad status answer {value!r}")
    return value
