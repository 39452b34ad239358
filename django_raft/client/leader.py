"""Leader-only work: run something on one server of the cluster, the leader's.

``leadership()`` says whether this server's node leads now, does not, or cannot be told
(and why); ``is_leader()`` is its yes or no, and warns when the no means "cannot tell".
``@leader_only`` makes a function (or a management command's ``handle``) do nothing
unless this server's node leads. ``LeaderWork(target)`` runs ``target(stop)`` in a
thread of the ``raftnode`` process while the node leads: started when it becomes leader,
asked to stop (``stop`` is set) as soon as the ``leader_changed`` signal says it no
longer leads. Leadership can be lost at any moment: work whose writes must never
overlap a successor's takes a lock and passes its fencing token (``django_raft.locks``).
"""

from __future__ import annotations

import enum
import functools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from .. import exceptions, signals
from ..core import RaftError
from ..protocol import local

__all__ = ["LeaderState", "LeaderWork", "Leadership", "is_leader", "leader_only", "leadership"]

logger = logging.getLogger("django_raft.leader")  # the name the docs give

F = TypeVar("F", bound=Callable[..., Any])

WARN_INTERVAL = 60.0
"""Seconds between two warnings of ``is_leader()`` for the same reason: it is polled
(a beat asks every few seconds), and one line a minute says enough."""


class LeaderState(enum.Enum):
    """Whether this server's node leads."""

    LEADER = "leader"
    NOT_LEADER = "not_leader"
    UNKNOWN = "unknown"
    """The node could not be asked, or failed to answer: it may lead or not."""


@dataclass(frozen=True, slots=True)
class Leadership:
    """What ``leadership()`` found: the ``state``, and the ``reason`` when it is UNKNOWN."""

    state: LeaderState
    reason: str = ""


def leadership(timeout: float = 1.0) -> Leadership:
    """Whether this server's node leads now, does not, or cannot be told (and why).

    It asks this process's node in ``raftnode``, else the node at ``ADDRESS``; a node
    that cannot be reached, or fails to answer, is UNKNOWN, never NOT_LEADER.
    """
    from .client import status

    try:
        state = status(timeout=timeout).get("state")
    except RaftError as error:
        # Named by its public class (a subclass of the transport says nothing to the reader).
        kind = next(c for c in type(error).__mro__ if getattr(exceptions, c.__name__, 0) is c)
        return Leadership(LeaderState.UNKNOWN, f"{kind.__name__}: {error}")
    if state == "leader":
        return Leadership(LeaderState.LEADER)
    if not isinstance(state, str) or not state:
        return Leadership(LeaderState.UNKNOWN, f"the node's status has no state: {state!r}")
    return Leadership(LeaderState.NOT_LEADER)


_warned: dict[str, float] = {}
"""When ``is_leader()`` last warned, by reason."""
_warned_lock = threading.Lock()


def is_leader(timeout: float = 1.0) -> bool:
    """Whether this server's node is the leader now.

    False both when it is not and when it cannot be told (``leadership()`` tells the two
    apart); the second is logged as a warning with the reason, once a minute per reason.
    """
    found = leadership(timeout)
    if found.state is LeaderState.UNKNOWN and _first_in_interval(found.reason):
        logger.warning(
            "raft: is_leader() is False: cannot tell whether this node leads: %s", found.reason
        )
    return found.state is LeaderState.LEADER


def _first_in_interval(reason: str) -> bool:
    """Whether ``reason`` was not warned of in the last ``WARN_INTERVAL`` (and note it now)."""
    now = time.monotonic()
    with _warned_lock:
        for old in [r for r, at in _warned.items() if now - at >= WARN_INTERVAL]:
            del _warned[old]
        if reason in _warned:
            return False
        _warned[reason] = now
        return True


def leader_only(function: F) -> F:
    """Decorator: call ``function`` only when this server's node leads; else return None.

    A skip is logged: at INFO when the node does not lead, as a warning (with the reason)
    when it cannot be told whether it leads.
    """

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        found = leadership()
        if found.state is LeaderState.UNKNOWN:
            logger.warning(
                "raft: %s skipped: cannot tell whether this node leads: %s",
                function.__qualname__,
                found.reason,
            )
            return None
        if found.state is LeaderState.NOT_LEADER:
            logger.info("raft: %s skipped: this node does not lead", function.__qualname__)
            return None
        return function(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


class LeaderWork:
    """Run ``target(stop)`` in a thread while this process's node leads.

    ``stop`` is a ``threading.Event`` set when leadership is lost (or ``close()`` is
    called); the target must return promptly once it is set. Create it in the
    ``raftnode`` process, e.g. in a ``ready()`` guarded by the command being run.
    """

    def __init__(self, target: Callable[[threading.Event], Any], name: str = "") -> None:
        self.target = target
        self.name = name or getattr(target, "__qualname__", "leader-work")
        self._lock = threading.Lock()
        self._stop: threading.Event | None = None
        self._thread: threading.Thread | None = None
        signals.leader_changed.connect(self._changed, weak=False)
        node = local.current()
        if node is not None and node.status().get("state") == "leader":
            self._start()

    @property
    def running(self) -> bool:
        """Whether the target runs now."""
        thread = self._thread
        return thread is not None and thread.is_alive()

    def _changed(self, sender: Any, node_id: str, value: str, **kwargs: Any) -> None:
        if value == node_id:
            self._start()
        else:
            self._halt()

    def _start(self) -> None:
        with self._lock:
            if self.running:
                return
            stop = self._stop = threading.Event()
            self._thread = threading.Thread(
                target=self._run, args=(stop,), name=f"raft-leader-{self.name}", daemon=True
            )
            self._thread.start()

    def _run(self, stop: threading.Event) -> None:
        try:
            self.target(stop)
        except Exception:
            logger.exception("raft: leader work %s failed", self.name)

    def _halt(self) -> None:
        with self._lock:
            if self._stop is not None:
                self._stop.set()

    def close(self, timeout: float = 5.0) -> None:
        """Stop the work and forget the signal."""
        signals.leader_changed.disconnect(self._changed)
        self._halt()
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
