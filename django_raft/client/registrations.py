"""Announcements: keys that live while this process lives (etcd leases, ZooKeeper ephemeral nodes).

``django_raft.announce(key, value, ttl=...)`` registers ``key`` with a JSON value in the
replicated state, held by this process's session; one keeper thread per process renews
all the process's announcements (and its elections' locks) in one command every third
of the shortest TTL. When the process stops renewing (killed, paused, cut off) the key is
gone on every node once its TTL has passed in log time, and watches see it go::

    with django_raft.announce("workers/" + socket.gethostname(), {"pid": os.getpid()}, ttl=10):
        serve()

    alive = django_raft.announcements("workers/")  # {key: Announced(...)}, linearizable

A key another live process announced is refused (``KeyTakenError``). An announcement
lost while the process could not renew it (a pause longer than its TTL, its session
expired) is announced again by the keeper, with a new token, unless another process took
the key meanwhile: then ``lost`` is set and it stays withdrawn.

Renewals are not changes: watches see an announcement made, its value updated, and its
removal (withdrawn or expired), never a keep-alive.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import threading
import time
from dataclasses import dataclass
from typing import Any

from django.db import transaction

from .. import replicated
from ..conf import raft_settings
from ..exceptions import InvalidRequestError, KeyTakenError, RaftError
from ..models import Registration
from ..protocol.request import (
    ANNOUNCE,
    ANNOUNCE_RENEW,
    ANNOUNCE_WITHDRAW,
    MAX_ANNOUNCE_TTL_MS,
    MAX_ANNOUNCED_KEY,
    MAX_ANNOUNCED_VALUE,
    MIN_ANNOUNCE_TTL_MS,
)
from .client import Client, default_client
from .locks import Lock
from .reads import read

__all__ = ["Announced", "Announcement", "announce", "announcements"]

logger = logging.getLogger(__name__)

DEFAULT_TTL = 10.0
"""Seconds an announcement lives unrenewed, unless ``announce`` is given another."""
RETRY_PAUSE = 0.2
"""Seconds before the keeper tries again after a renewal that failed."""


@dataclass(frozen=True, slots=True)
class Announced:
    """A live registration as ``announcements()`` lists it: its key, value, the session
    holding it, its token (the index of the entry that announced it), its TTL in seconds
    and when it expires in log time (ms) unless renewed."""

    key: str
    value: Any
    holder: str
    token: int
    ttl: float
    expires_ms: int


def _check(key: Any, value: Any, ttl: Any) -> str:
    """``value``'s JSON, or ``InvalidRequestError`` for a bad key, value or TTL."""
    if not isinstance(key, str) or not 0 < len(key) <= MAX_ANNOUNCED_KEY:
        raise InvalidRequestError(f"a key is a string of 1 to {MAX_ANNOUNCED_KEY} characters")
    low, high = MIN_ANNOUNCE_TTL_MS / 1000, MAX_ANNOUNCE_TTL_MS / 1000
    if isinstance(ttl, bool) or not isinstance(ttl, int | float) or not low <= ttl <= high:
        raise InvalidRequestError(f"ttl must be a number of seconds in [{low:g}, {high:g}]")
    try:
        text = json.dumps(value, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as error:
        raise InvalidRequestError(f"the value of {key!r} is not JSON: {error}") from None
    if len(text) > MAX_ANNOUNCED_VALUE:
        raise InvalidRequestError(f"the value's JSON is over {MAX_ANNOUNCED_VALUE} characters")
    return text


class Announcement:
    """A key this process announced: ``update(value)``, ``withdraw()``, a context manager.

    ``token`` is the index of the entry that announced it; ``lost`` is set once it was
    lost for good (see the module); ``remaining()`` is how long it surely lives without
    another renewal. Made by ``announce()``."""

    def __init__(
        self, key: str, value: Any, ttl: float, client: Client, guard: Lock | None = None
    ) -> None:
        self.key = key
        self.value = value
        self.ttl = float(ttl)
        self.client = client
        self.guard = guard
        """The lock whose holder this is (an election's), renewed with it, or None."""
        self.token = 0
        self.expires = 0.0
        """The ``time.monotonic()`` until which it lives for sure (a renewal's send time
        plus the TTL)."""
        self.lost = threading.Event()

    def __enter__(self) -> Announcement:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.withdraw()

    def __repr__(self) -> str:
        return f"<Announcement {self.key!r} token {self.token}>"

    def update(self, value: Any) -> None:
        """Give the key a new value (the same registration, the same token)."""
        _check(self.key, value, self.ttl)
        self._put(value)

    def withdraw(self) -> bool:
        """Remove the key now; return whether it was still this process's."""
        _keeper.remove(self)
        token, self.token, self.expires = self.token, 0, 0.0
        if not token:
            return False
        return bool(self.client.do(ANNOUNCE_WITHDRAW, key=self.key, token=token))

    def remaining(self) -> float:
        """Seconds it surely lives from now without a renewal (0 when it may be gone)."""
        return max(0.0, self.expires - time.monotonic()) if self.token else 0.0

    def _put(self, value: Any) -> None:
        """Announce the key with ``value`` (through the guard's lock, if any)."""
        arguments: dict[str, Any] = {"key": self.key, "value": value}
        arguments["ttl_ms"] = int(self.ttl * 1000)
        if self.guard is not None:
            guard = self.guard
            arguments.update(lock=guard.name, owner=guard.owner, token=guard.token)
        sent = time.monotonic()
        answer = self.client.do(ANNOUNCE, **arguments)
        if not answer["announced"]:
            raise KeyTakenError(
                f"key {self.key!r} is announced by another process (session "
                f"{answer['holder']}); nothing changed"
            )
        self.value, self.token, self.expires = value, int(answer["token"]), sent + self.ttl

    def _renewed(self, sent: float) -> None:
        self.expires = sent + self.ttl
        if self.guard is not None:
            self.guard.expires = sent + self.guard.ttl


def announce(
    key: str, value: Any, ttl: float = DEFAULT_TTL, *, client: Client | None = None
) -> Announcement:
    """Announce ``key`` with the JSON ``value`` while this process lives (see the module).

    Raise ``InvalidRequestError`` (nothing sent) for a key of more than 200 characters, a
    TTL outside [1, 86400] seconds or a value that is not JSON (of at most 16,384
    characters), and ``KeyTakenError`` when another live process holds the key.
    """
    _check(key, value, ttl)
    announcement = Announcement(key, value, ttl, client or default_client())
    _keeper.check_free(announcement)
    announcement._put(value)
    _keeper.add(announcement)
    return announcement


def announcements(
    prefix: str = "", *, stale: bool = False, timeout: float | None = None
) -> dict[str, Announced]:
    """The live registrations whose keys start with ``prefix``, by key.

    Read from this server's database after a read index (``django_raft.read()``): it
    lists every announcement acknowledged before the call and none expired in log time.
    ``stale=True`` reads without the round trip.
    """
    if not isinstance(prefix, str):
        raise InvalidRequestError("prefix must be a string")
    alias = raft_settings.DATABASE
    with read(stale=stale, timeout=timeout), transaction.atomic(using=alias):
        now = replicated.log_time(alias)
        rows = Registration.objects.using(alias).filter(expires_ms__gt=now)
        if prefix:  # LIKE may ignore case: the prefix is checked again below
            rows = rows.filter(key__startswith=prefix)
        return {
            row.key: Announced(
                row.key,
                json.loads(row.value),
                row.holder,
                row.token,
                row.ttl_ms / 1000,
                row.expires_ms,
            )
            for row in rows.order_by("key")
            if row.key.startswith(prefix)
        }


class _Keeper:
    """The process's keeper thread: renews every announcement, one command per client."""

    def __init__(self) -> None:
        self._held: dict[int, Announcement] = {}
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None
        self._next = math.inf

    def check_free(self, announcement: Announcement) -> None:
        """Refuse a second announcement of a key this process already announced."""
        with self._changed:
            taken = any(
                held.key == announcement.key and held.client is announcement.client
                for held in self._held.values()
            )
        if taken:
            raise InvalidRequestError(
                f"key {announcement.key!r} is already announced by this process: update it"
            )

    def add(self, announcement: Announcement) -> None:
        with self._changed:
            self._held[id(announcement)] = announcement
            self._next = min(self._next, time.monotonic() + announcement.ttl / 3)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="django-raft-keeper", daemon=True
                )
                self._thread.start()
            self._changed.notify_all()

    def remove(self, announcement: Announcement) -> None:
        with self._changed:
            self._held.pop(id(announcement), None)

    def _run(self) -> None:
        while True:
            with self._changed:
                while not self._held or time.monotonic() < self._next:
                    wait = self._next - time.monotonic() if self._held else None
                    self._changed.wait(wait)
                held = list(self._held.values())
            period = min(announcement.ttl for announcement in held) / 3
            renewed = True
            for client in {id(a.client): a.client for a in held}.values():
                renewed &= self._renew(client, [a for a in held if a.client is client])
            with self._changed:
                self._next = time.monotonic() + (period if renewed else RETRY_PAUSE)

    def _renew(self, client: Client, held: list[Announcement]) -> bool:
        """Renew ``held`` (all ``client``'s) in one command; handle those lost."""
        guards = [a.guard for a in held if a.guard is not None]
        sent = time.monotonic()
        try:
            answer = client.do(
                ANNOUNCE_RENEW,
                keys=[a.key for a in held],
                locks=[[g.name, g.owner, g.token, int(g.ttl * 1000)] for g in guards],
            )
        except RaftError as error:
            logger.warning("raft: announcements could not be renewed (%s); trying again", error)
            return False
        lost, lost_locks = set(answer["lost"]), set(answer["lost_locks"])
        for announcement in held:
            guard = announcement.guard
            if announcement.key in lost or (guard is not None and guard.name in lost_locks):
                self._lost(announcement, announcement.key not in lost)
            else:
                announcement._renewed(sent)
        return True

    def _lost(self, announcement: Announcement, registered: bool) -> None:
        """An announcement (``registered``: still, while its lock is lost) was lost:
        announce it again, unless it belongs to an election (whose lock is lost: the key
        is withdrawn, best effort) or another process took the key."""
        if announcement.guard is not None:
            self.remove(announcement)
            token, announcement.token, announcement.expires = announcement.token, 0, 0.0
            announcement.guard.token, announcement.guard.expires = 0, 0.0
            announcement.lost.set()
            if registered:
                with contextlib.suppress(RaftError):
                    announcement.client.do(ANNOUNCE_WITHDRAW, key=announcement.key, token=token)
            return
        try:
            announcement._put(announcement.value)
        except KeyTakenError:
            self.remove(announcement)
            announcement.token, announcement.expires = 0, 0.0
            announcement.lost.set()
        except RaftError as error:
            logger.warning("raft: %r could not be announced again (%s)", announcement, error)

    def _after_fork(self) -> None:
        """A forked child renews nothing of its parent's (its session is another)."""
        self._held = {}
        self._changed = threading.Condition()
        self._thread = None
        self._next = math.inf


_keeper = _Keeper()
os.register_at_fork(after_in_child=_keeper._after_fork)
