"""Drop cached values when replicated rows change, in every process that caches them.

Each process (web worker, Celery worker) that caches what it derives from replicated
models says which keys depend on which model, usually in its ``AppConfig.ready()``::

    from django_raft.contrib.cache import invalidate_on_change

    invalidate_on_change("flags.Flag", lambda pk: f"flag:{pk}")   # a key per row
    invalidate_on_change("flags.Flag", "flags:all")                # one key for any row

A daemon thread of the process watches the changes of those models (``django_raft.watch``)
and deletes the keys from the Django cache (``cache=``: its alias) as each change is
applied. It resumes after the last change it saw when its member fails; when what
followed was compacted away, it drops everything it manages (the keys it names; for
keys computed per row, the ``clear`` given, else the whole cache alias) and goes on from
the present. A row changed by a write that sends no Django signal is seen only when its
handler declares it (``context.changed``).

Start it before caching (``ready()`` is early enough): changes applied before it started
are not seen. In a process forked after it started, it starts again in the child.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from django.core.cache import caches
from django.db.models import Model

from ..client.client import Client
from ..client.watch import Event, Watch, watch
from ..exceptions import RaftError, WatchCompactedError

__all__ = ["CacheInvalidator", "invalidate_on_change", "invalidator", "on_change"]

logger = logging.getLogger(__name__)

Key = str | Iterable[str] | Callable[[str], str | Iterable[str]]
"""A cache key, keys, or a function of the changed row's primary key (a string) giving them."""
RETRY_PAUSE = 1.0
"""Seconds before watching again after the cluster could not be reached."""
POLL = 0.5
"""Seconds the thread waits for a change before it looks whether it is to stop."""


@dataclass(frozen=True, slots=True)
class _Rule:
    label: str
    callback: Callable[[str, Event], None]
    reset: Callable[[], None]


class CacheInvalidator:
    """Runs the callbacks of changed rows, from a watch on a daemon thread."""

    def __init__(self, client: Client | None = None) -> None:
        self.client = client
        self._rules: list[_Rule] = []
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._pid = 0
        self._stop = threading.Event()
        self._changed = threading.Event()
        self._progress = threading.Condition()
        self.last_index: int | None = None
        """The index the watch went through (None before it started)."""
        self.ready = threading.Event()
        """Set once the watch is open: changes applied from then on are seen."""

    def on_change(
        self,
        model: type[Model] | str,
        callback: Callable[[str, Event], None],
        reset: Callable[[], None],
    ) -> None:
        """Call ``callback(pk, event)`` for each row of ``model`` a command changes, and
        ``reset()`` when changes may have been missed (compacted); start if not running."""
        label = model.lower() if isinstance(model, str) else model._meta.label_lower
        with self._lock:
            self._rules.append(_Rule(label, callback, reset))
        self._changed.set()
        self.start()

    def start(self) -> None:
        """Start the thread (again, in a forked child)."""
        with self._lock:
            if self._thread is not None and self._pid == os.getpid() and self._thread.is_alive():
                return
            self._pid = os.getpid()
            self._stop.clear()
            self.ready.clear()
            self._thread = threading.Thread(target=self._run, name="raft-cache", daemon=True)
            self._thread.start()

    def wait(self, index: int, timeout: float) -> bool:
        """Wait until the callbacks of the changes up to ``index`` ran; whether they did."""
        with self._progress:
            return self._progress.wait_for(
                lambda: self.last_index is not None and self.last_index >= index, timeout
            )

    def _went_through(self, index: int | None) -> None:
        with self._progress:
            self.last_index = index
            self._progress.notify_all()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._watch()
            except WatchCompactedError as error:
                logger.warning("raft: cache invalidation missed changes (%s); resetting", error)
                self._reset_all()
                self._went_through(error.applied_index)
            except RaftError as error:
                logger.warning("raft: cache invalidation cannot watch: %s; retrying", error)
                self._stop.wait(RETRY_PAUSE)

    def _watch(self) -> None:
        with self._lock:
            rules = list(self._rules)
        self._changed.clear()
        labels = sorted({rule.label for rule in rules})
        with watch(self.last_index, models=labels, timeout=POLL, client=self.client) as open_:
            self._follow(open_, rules)

    def _follow(self, open_: Watch, rules: list[_Rule]) -> None:
        self._went_through(open_.last_index)
        self.ready.set()
        while not self._stop.is_set() and not self._changed.is_set():
            for event in open_:
                for label, pk in event.changes:
                    for rule in rules:
                        if rule.label == label:
                            _safely(rule.callback, pk, event)
                self._went_through(open_.last_index)
            self._went_through(open_.last_index)

    def _reset_all(self) -> None:
        with self._lock:
            rules = list(self._rules)
        for reset in dict.fromkeys(rule.reset for rule in rules):
            _safely(reset)


def _safely(function: Callable[..., Any], *arguments: Any) -> None:
    try:
        function(*arguments)
    except Exception:
        logger.exception("raft: a cache invalidation callback raised")


_default = CacheInvalidator()


def _after_fork() -> None:
    """In a forked child: the parent's thread is not there; start this process's own."""
    _default._lock = threading.Lock()
    _default._progress = threading.Condition()
    _default._thread = None
    if _default._rules:
        _default.start()


os.register_at_fork(after_in_child=_after_fork)


def invalidator() -> CacheInvalidator:
    """This process's invalidator (the one ``invalidate_on_change`` and ``on_change`` use)."""
    return _default


def on_change(
    model: type[Model] | str,
    callback: Callable[[str, Event], None],
    *,
    reset: Callable[[], None] | None = None,
) -> None:
    """Call ``callback(pk, event)`` in this process whenever a command changes a row of
    ``model``; ``reset()`` (if given) when changes may have been missed."""
    _default.on_change(model, callback, reset or (lambda: None))


def invalidate_on_change(
    model: type[Model] | str,
    key: Key,
    *,
    cache: str = "default",
    clear: Callable[[], None] | None = None,
) -> None:
    """Delete ``key`` from cache ``cache`` in this process whenever a command changes a
    row of ``model``: a key, keys, or ``key(pk)`` giving the keys of the changed row.

    When changes may have been missed: the keys named are deleted; for ``key(pk)``,
    ``clear()`` runs if given, else the whole cache alias is cleared.
    """

    def keys(pk: str) -> list[str]:
        found = key(pk) if callable(key) else key
        return [found] if isinstance(found, str) else list(found)

    def delete(pk: str, event: Event) -> None:
        caches[cache].delete_many(keys(pk))

    def reset() -> None:
        if not callable(key):
            caches[cache].delete_many(keys(""))
        elif clear is not None:
            clear()
        else:
            caches[cache].clear()

    _default.on_change(model, delete, reset)
