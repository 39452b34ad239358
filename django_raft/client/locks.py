"""Locks with fencing tokens, kept in the replicated state.

``django_raft.lock(name, ttl=...)`` takes a lock through the log and yields its fencing
token: the index of the log entry that granted it, so tokens of one lock strictly
increase from holder to holder. The lock's time to live is counted in log time
(``django_raft.replicated``) from the entry that granted it; it is released by
``release()``, when the TTL has passed and another client asks for it, or when the
holder's session expires.

What a holder may assume (a lease, as in Chubby and etcd): the cluster grants the lock
to no one else until ``ttl`` seconds after the granting entry was proposed, which is
after the client sent its request. So the client counts the lease from the moment it
*sent* the request: it holds the lock until ``Lock.expires`` (``time.monotonic()``),
and an acquisition or renewal answered after that raises ``LockNotHeldError`` instead
of entering the block. That assumes clocks that run at about the same rate; a holder
that pauses (GC, swap, SIGSTOP) inside the block can still outlive its lease unknowingly,
so a handler that must not take a stale holder's writes checks the token it was given
with ``check_token``::

    with django_raft.lock("reports", ttl=30) as token:
        django_raft.do("reports.publish", token=token, text="...")

    @django_raft.command("reports.publish")
    def publish(context, token, text):
        django_raft.locks.check_token(context, "reports", token)  # StaleTokenError if not
        ...
"""

from __future__ import annotations

import contextlib
import itertools
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from .. import replicated
from ..commands import Context
from ..exceptions import InvalidRequestError, LockNotHeldError, RaftError
from ..protocol.request import LOCK_ACQUIRE, LOCK_RELEASE
from .client import Client, default_client

__all__ = ["Lock", "check_token", "lock"]

RETRY_PAUSE = 0.05
_owners = itertools.count(1)


class Lock:
    """A named lock; ``acquire()`` returns the fencing token, ``release()`` gives it back.

    The holder is this object (within its client's session): share it between threads
    and they hold the lock together; give each its own and they exclude each other."""

    def __init__(self, name: str, ttl: float, *, client: Client | None = None) -> None:
        if not isinstance(name, str) or not 0 < len(name) <= 200:
            raise InvalidRequestError("a lock name is a string of 1 to 200 characters")
        if isinstance(ttl, bool) or not isinstance(ttl, int | float) or not 0 < ttl <= 86400:
            raise InvalidRequestError("ttl must be a number of seconds in (0, 86400]")
        self.name = name
        self.ttl = ttl
        self.client = client or default_client()
        self.owner = f"{next(_owners):x}"
        """Which holder of the client's session this is: every thread of a process shares
        the session, so two ``Lock`` objects (two threads, two requests) exclude each
        other as two processes do."""
        self.token = 0
        self.expires = 0.0
        """The ``time.monotonic()`` until which the lock is held for sure (see the module)."""

    def acquire(self, blocking: bool = True, timeout: float | None = None) -> int:
        """Take the lock; return its fencing token (0 if not ``blocking`` and it is taken).

        Raise ``LockNotHeldError`` if it could not be taken within ``timeout`` seconds,
        or if it was granted after its TTL, counted from the request, had passed.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            sent = time.monotonic()
            answer = self.client.do(LOCK_ACQUIRE, **self.request())
            if self.granted(answer, sent):
                if (late := self.too_late()) is not None:
                    self._give_back()
                    raise late
                return self.token
            if not blocking:
                return 0
            if self.gave_up(deadline):
                raise self.taken()
            time.sleep(RETRY_PAUSE)

    def renew(self) -> int:
        """Extend the TTL of a lock this client holds; raise ``LockNotHeldError`` if lost."""
        token = self.acquire(blocking=False)
        self.check_renewed(token)
        return token

    def release(self) -> bool:
        """Give the lock back; return whether it was still held with this token."""
        if not self.token:
            return False
        return bool(self.client.do(LOCK_RELEASE, **self.release_arguments()))

    # -- the decisions, shared with the async lock (``aio.AsyncLock``)

    def request(self) -> dict[str, Any]:
        """The arguments of an acquisition (or renewal) of this lock."""
        return {"name": self.name, "ttl_ms": int(self.ttl * 1000), "owner": self.owner}

    def granted(self, answer: Any, sent: float) -> bool:
        """Take in the answer to an acquisition sent at ``sent`` (``time.monotonic()``):
        whether it granted the lock, held until ``sent + ttl``."""
        if not answer["acquired"]:
            return False
        self.token, self.expires = int(answer["token"]), sent + self.ttl
        return True

    def too_late(self) -> LockNotHeldError | None:
        """The error of a grant that came after its lease had ended, or None."""
        late = time.monotonic() - self.expires
        if late < 0:
            return None
        return LockNotHeldError(
            f"lock {self.name!r} was granted {late + self.ttl:.3f} s after the "
            f"request, past its TTL of {self.ttl:g} s: another client may hold it"
        )

    def gave_up(self, deadline: float | None) -> bool:
        """Whether an acquisition that waits until ``deadline`` is over."""
        return deadline is not None and time.monotonic() >= deadline

    def taken(self) -> LockNotHeldError:
        """The error of an acquisition that gave up."""
        return LockNotHeldError(f"lock {self.name!r} is held by another client")

    def check_renewed(self, token: int) -> None:
        """Raise ``LockNotHeldError`` unless a renewal gave back the token held."""
        if token != self.token or not token:
            raise LockNotHeldError(f"lock {self.name!r} was lost (token {self.token})")

    def release_arguments(self) -> dict[str, Any]:
        """The arguments of a release of the token held; from now on it is not."""
        token, self.token, self.expires = self.token, 0, 0.0
        return {"name": self.name, "token": token, "owner": self.owner}

    def remaining(self) -> float:
        """Seconds the lease surely lasts from now (0 when it may have ended)."""
        return max(0.0, self.expires - time.monotonic()) if self.token else 0.0

    def _give_back(self) -> None:
        """Release a grant that came too late, if nobody took the lock since (best effort:
        the lock expires by itself)."""
        with contextlib.suppress(RaftError):
            self.release()
        self.token, self.expires = 0, 0.0


@contextmanager
def lock(
    name: str, ttl: float, *, timeout: float | None = None, client: Client | None = None
) -> Iterator[int]:
    """Hold lock ``name`` for the block; yield its fencing token."""
    held = Lock(name, ttl, client=client)
    token = held.acquire(timeout=timeout)
    try:
        yield token
    finally:
        held.release()


def check_token(context: Context, name: str, token: int) -> None:
    """In a handler: raise ``StaleTokenError`` unless ``token`` is lock ``name``'s current
    token, still held and not past its TTL in log time (the same answer on every node)."""
    replicated.check_token(context.using, name, token)
