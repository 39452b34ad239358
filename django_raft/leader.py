"""Leader-only work: run something on one server of the cluster, the leader's.

``is_leader()`` says whether this server's node leads now. ``@leader_only`` makes a
function (or a management command's ``handle``) do nothing unless this server's node
leads. ``LeaderWork(target)`` runs ``target(stop)`` in a thread of the ``raftnode``
process while the node leads: started when it becomes leader, asked to stop (``stop``
is set) as soon as the ``leader_changed`` signal says it no longer leads. Leadership
can be lost at any moment: work whose writes must never overlap a successor's takes a
lock and passes its fencing token (``django_raft.locks``).
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from . import signals
from .core import RaftError

__all__ = ["LeaderWork", "is_leader", "leader_only"]

logger = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])


def is_leader(timeout: float = 1.0) -> bool:
    """Whether this server's node is the leader now (False when it cannot be asked)."""
    from .client import status

    try:
        return bool(status(timeout=timeout).get("state") == "leader")
    except RaftError:
        return False


def leader_only(function: F) -> F:
    """Decorator: call ``function`` only when this server's node leads; else return None."""

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if not is_leader():
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
        from .runner import RaftNode

        node = RaftNode.current
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
