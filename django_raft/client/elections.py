"""Named elections among any processes (etcd's ``concurrency.Election``, kazoo's ``Election``).

An election ``name`` is a lock ``election/<name>`` and an announcement of the same key
carrying the leader's value. ``campaign(value)`` blocks until this campaigner holds the
lock, then announces the value through it, and returns the lock's fencing token; the
process's keeper thread renews both in one command (``client.registrations``). The
leader stays the leader until it resigns, or stops renewing for a TTL (killed, paused,
cut off): then the lock passes, in log time, to the next campaigner, with a greater
token::

    election = django_raft.Election("nightly-report")
    token = election.campaign({"host": socket.gethostname()})
    try:
        django_raft.do("reports.publish", token=token, ...)  # the handler calls check_token
    finally:
        election.resign()

A leader that paused past its TTL learns it lost: ``is_leader()`` is false once its
lease (counted from when its last renewal was sent) may have passed, and ``lost`` is set
once the keeper found the lock gone. Work it already started cannot be taken back, so
a handler that must refuse a former leader's writes checks the token
(``django_raft.locks.check_token(context, "election/<name>", token)``): exactly one
token is valid at any log time.

``@elected("name")`` runs a function (a management command's ``handle``, a Celery task)
only while elected: campaign, run, resign.
"""

from __future__ import annotations

import functools
import inspect
import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from django.db import transaction

from .. import replicated
from ..conf import raft_settings
from ..exceptions import (
    InvalidRequestError,
    LockNotHeldError,
    NotElectedError,
    RaftError,
    StaleTokenError,
)
from ..models import Lock as LockRow
from ..models import Registration
from . import registrations
from .client import Client, default_client
from .locks import Lock
from .reads import read

__all__ = ["PREFIX", "Election", "elected"]

PREFIX = "election/"
"""The lock and the announcement of election ``name`` are named ``PREFIX + name``."""
DEFAULT_TTL = 10.0
"""Seconds a leader that stopped renewing stays the leader, unless told otherwise."""
MAX_POLL = 0.5
"""Seconds a campaigner waits at most between two looks at a vacant leadership."""

F = TypeVar("F", bound=Callable[..., Any])


class Election:
    """Election ``name``: ``campaign``, ``proclaim``, ``resign``, ``leader``, ``observe``.

    One ``Election`` object is one campaigner (threads of a process campaign apart with
    an object each). ``ttl``: seconds the leadership outlives its last renewal.
    """

    def __init__(self, name: str, *, ttl: float = DEFAULT_TTL, client: Client | None = None):
        if not isinstance(name, str) or not 0 < len(PREFIX + name) <= 200:
            raise InvalidRequestError(
                f"an election's name is a string of 1 to {200 - len(PREFIX)} characters"
            )
        registrations._check(PREFIX + name, None, ttl)
        self.name = name
        self.key = PREFIX + name
        self.ttl = float(ttl)
        self.client = client or default_client()
        self._lock = Lock(self.key, ttl, client=self.client)
        self._announcement: registrations.Announcement | None = None

    def __repr__(self) -> str:
        return f"<Election {self.name!r} token {self.token}>"

    @property
    def token(self) -> int:
        """This campaigner's fencing token while it leads (0 when it does not)."""
        return self._lock.token if self._announcement is not None else 0

    @property
    def lost(self) -> threading.Event | None:
        """Set once the keeper found this leadership lost (None before ``campaign``)."""
        return self._announcement.lost if self._announcement is not None else None

    def is_leader(self) -> bool:
        """Whether this campaigner surely leads now: elected, not found lost, and its
        lease (from its last renewal's sending) not past."""
        announcement = self._announcement
        return (
            announcement is not None
            and not announcement.lost.is_set()
            and announcement.remaining() > 0
            and self._lock.remaining() > 0
        )

    def campaign(self, value: Any, timeout: float | None = None) -> int:
        """Block until elected; announce ``value``; return the fencing token.

        ``timeout``: seconds to try (None: forever; 0: once); ``NotElectedError`` when
        another leads at the end of it. A campaigner that leads already proclaims
        ``value`` and returns its token.
        """
        registrations._check(self.key, value, self.ttl)
        if self.is_leader():
            self.proclaim(value)
            return self.token
        self._forget()
        deadline = None if timeout is None else time.monotonic() + timeout
        poll = min(MAX_POLL, self.ttl / 4)
        while True:
            if self._vacant():
                token = self._try(value)
                if token:
                    return token
            left = _left(deadline)
            if left <= 0:
                raise NotElectedError(f"election {self.name!r} is led by another campaigner")
            time.sleep(min(poll, left))

    def proclaim(self, value: Any) -> None:
        """Announce a new value as the leader; ``NotElectedError`` if not (any more)."""
        registrations._check(self.key, value, self.ttl)
        announcement = self._announcement
        if announcement is None or not self.is_leader():
            raise NotElectedError(f"not the leader of election {self.name!r}")
        try:
            announcement.update(value)
        except StaleTokenError:
            announcement.lost.set()
            raise NotElectedError(f"the leadership of election {self.name!r} was lost") from None

    def resign(self) -> bool:
        """Give the leadership up (withdraw the value, release the lock); return whether
        this campaigner still led."""
        announcement, self._announcement = self._announcement, None
        if announcement is None:
            return False
        led = not announcement.lost.is_set()
        withdrawn = announcement.withdraw() if led else False
        released = self._lock.release()
        return led and (withdrawn or released)

    def leader(
        self, *, stale: bool = False, timeout: float | None = None
    ) -> tuple[Any, int] | None:
        """The leader's value and fencing token, read after a read index (``read()``);
        None while nobody leads."""
        return self._leader(stale, timeout)[1]

    def observe(self, timeout: float | None = None) -> Iterator[Any]:
        """Yield the leader's value now, then each time it changes (a new value
        proclaimed, a new leader elected); nothing while nobody leads. Built on
        ``django_raft.watch``, it follows the cluster across failovers; ``timeout`` is
        the watch's."""
        from .watch import watch

        index, current = self._leader(False, None)
        if current is not None:
            yield current[0]
        for _event in watch(
            after=index, models="django_raft.registration", pk=self.key, timeout=timeout
        ):
            _, now = self._leader(False, None)
            if now is not None and now != current:
                yield now[0]
            current = now

    def _leader(self, stale: bool, timeout: float | None) -> tuple[int, tuple[Any, int] | None]:
        """The read index and the leader as of it: a live announcement whose lock is held
        with the same token, within its TTL."""
        alias = raft_settings.DATABASE
        with read(stale=stale, timeout=timeout) as index, transaction.atomic(using=alias):
            now = replicated.log_time(alias)
            row = Registration.objects.using(alias).filter(pk=self.key).first()
            lock = LockRow.objects.using(alias).filter(pk=self.key).first()
        if (
            row is None
            or lock is None
            or row.expires_ms <= now
            or not lock.holder
            or lock.token != row.token
            or lock.expires_ms <= now
        ):
            return index, None
        return index, (json.loads(row.value), row.token)

    def _vacant(self) -> bool:
        """Whether nobody seems to lead (or it cannot be read here: then try anyway)."""
        try:
            return self._leader(False, None)[1] is None
        except RaftError:
            return True

    def _try(self, value: Any) -> int:
        """Take the lock and announce ``value`` through it; the token, or 0."""
        try:
            token = self._lock.acquire(blocking=False)
        except LockNotHeldError:
            return 0  # granted too late: given back
        if not token:
            return 0
        announcement = registrations.Announcement(
            self.key, value, self.ttl, self.client, self._lock
        )
        try:
            announcement._put(value)
        except StaleTokenError:  # the lease passed before the announcement
            self._lock.release()
            return 0
        except BaseException:
            self._lock.release()
            raise
        self._announcement = announcement
        registrations._keeper.add(announcement)
        return token

    def _forget(self) -> None:
        """Drop a leadership that was lost (the keeper stopped renewing it)."""
        if self._announcement is not None:
            registrations._keeper.remove(self._announcement)
            self._announcement = None
            self._lock.token, self._lock.expires = 0, 0.0


def _left(deadline: float | None) -> float:
    """Seconds left before ``deadline`` (infinite for None)."""
    return float("inf") if deadline is None else deadline - time.monotonic()


def _default_value() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def elected(
    name: str,
    *,
    value: Any = None,
    ttl: float = DEFAULT_TTL,
    timeout: float | None = None,
    client: Client | None = None,
) -> Callable[[F], F]:
    """Decorator: run the function only while elected in election ``name``.

    Each call campaigns (announcing ``value``, by default ``host:pid``), runs the
    function once elected, and resigns when it returns or raises. ``timeout=None`` waits
    to be elected (a standby that takes over); ``timeout=0`` tries once and, when
    another leads, returns None without running the function (a task every worker runs,
    run by one). A function with a parameter named ``election`` gets the ``Election``:
    its ``token`` for handlers' ``check_token``, ``is_leader()`` to check between steps.

    Leadership lost mid-run (the process paused or was cut off for a TTL) does not stop
    the function: nothing can safely interrupt it. Another campaigner may be elected
    meanwhile, and the lost leader's token is refused by ``check_token``: pass it to the
    commands whose effects must come from the leader alone.
    """

    def decorator(function: F) -> F:
        wants = "election" in inspect.signature(function).parameters

        @functools.wraps(function)
        def run(*args: Any, **kwargs: Any) -> Any:
            election = Election(name, ttl=ttl, client=client)
            try:
                election.campaign(_default_value() if value is None else value, timeout)
            except NotElectedError:
                if timeout is not None and timeout <= 0:
                    return None
                raise
            try:
                if wants:
                    kwargs["election"] = election
                return function(*args, **kwargs)
            finally:
                election.resign()

        return run  # type: ignore[return-value]

    return decorator
