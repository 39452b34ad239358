"""Registrations applied by the state machine: keys that live while their session renews them.

A client session announces a key with a JSON value and a time to live (``ANNOUNCE``);
its process renews all its keys, and the locks of its elections, in one entry every
third of the TTL or so (``ANNOUNCE_RENEW``). A registration is gone, on every node at
the same entry, once the log time passes its expiry or its session expires: the expiry
sweep of the sessions (``sessions.Run.advance``) and every clock entry (``CLOCK``, which
the leader proposes while registrations exist and nobody writes: ``node.clock``) delete
it through the ORM, so that the changes recorded per entry (and the watches) see it go.
Renewals move the expiry with an update and are not seen as changes.

A key held by another live session is refused (``announced: false``), unless the
announcement names a lock the session holds with its current token (an election's
leader takes the election's key from the one before it): then the registration's token
is the lock's fencing token.

What the leader needs to know to propose clock entries (how many registrations exist,
the shortest TTL, the next expiry, the log time) is published here by the apply thread
after each run (``publish``), and read by the loop without a query (``summary``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from django.db.models import Count, F, Min, Q

from .. import commands
from ..models import Lock, Registration
from ..protocol.request import (
    ANNOUNCE,
    ANNOUNCE_RENEW,
    ANNOUNCE_WITHDRAW,
    CLOCK,
    MAX_ANNOUNCE_TTL_MS,
    MAX_ANNOUNCED_KEY,
    MAX_ANNOUNCED_VALUE,
    MAX_RENEWED,
    MIN_ANNOUNCE_TTL_MS,
)
from .outcome import Outcome


class BuiltinContext(Protocol):
    """What these handlers read of their entry (``sessions.BuiltinContext`` is one; the
    sessions call this module's ``dump``, ``load``, ``publish`` and ``sweep``, so it is
    named here by its shape, not imported)."""

    @property
    def using(self) -> str: ...

    @property
    def now(self) -> int: ...

    index: int
    client_id: str


__all__ = ["Summary", "dump", "load", "log_time", "publish", "refresh", "summary", "sweep"]

_KEY_RULE = f"ValueError: a key is a string of 1 to {MAX_ANNOUNCED_KEY} characters"
_TTL_RULE = (
    f"ValueError: ttl_ms must be an integer in [{MIN_ANNOUNCE_TTL_MS}, {MAX_ANNOUNCE_TTL_MS}]"
)


@dataclass(frozen=True, slots=True)
class Summary:
    """The registrations of a database, as the clock needs them: how many, the shortest
    TTL and the earliest expiry (ms of log time; 0 when there are none)."""

    count: int
    min_ttl_ms: int
    next_expiry_ms: int


_summaries: dict[str, Summary] = {}
_log_times: dict[str, int] = {}
_touched: set[str] = set()
"""Aliases whose registrations changed in the run being applied."""


def summary(using: str) -> Summary | None:
    """The registrations as of the last run applied (None: not known yet)."""
    return _summaries.get(using)


def log_time(using: str) -> int | None:
    """The log time as of the last run applied that read it (None: not known yet)."""
    return _log_times.get(using)


def refresh(using: str, now: int | None = None) -> Summary:
    """Count the registrations again (one query), and publish the log time ``now``."""
    found = Registration.objects.using(using).aggregate(
        count=Count("pk"), ttl=Min("ttl_ms"), expiry=Min("expires_ms")
    )
    current = Summary(found["count"], found["ttl"] or 0, found["expiry"] or 0)
    _summaries[using] = current
    _touched.discard(using)
    if now is not None:
        _log_times[using] = now
    return current


def publish(using: str, now: int) -> None:
    """At the end of a run (apply thread): the log time, and the summary if the run
    changed registrations."""
    _log_times[using] = now
    if using in _touched or using not in _summaries:
        refresh(using)


def sweep(using: str, now: int, sessions: Iterable[str] = ()) -> int:
    """Delete, through the ORM, the registrations past their expiry at log time ``now``
    and those of the ``sessions`` that expired; return how many went."""
    gone = Q(expires_ms__lte=now)
    ended = list(sessions)
    if ended:
        gone |= Q(holder__in=ended)
    deleted, _ = Registration.objects.using(using).filter(gone).delete()
    if deleted:
        _touched.add(using)
    return deleted


# -- builtin commands ---------------------------------------------------------------------


def _lock_holder(context: BuiltinContext, owner: Any) -> str | None:
    """The holder's id of a lock of this session (``client_id/owner``), as locks name it."""
    if not isinstance(owner, str) or len(owner) > 32 or "/" in owner:
        return None
    return f"{context.client_id}/{owner}" if owner else context.client_id


def _announce(context: BuiltinContext, /, **arguments: Any) -> Outcome:
    """Announce ``key`` for this session: new, its own again, or taken over with a lock."""
    using, now, client = context.using, context.now, context.client_id
    key, ttl = arguments.get("key"), arguments.get("ttl_ms")
    if not isinstance(key, str) or not 0 < len(key) <= MAX_ANNOUNCED_KEY:
        return Outcome(ok=False, error=_KEY_RULE)
    if type(ttl) is not int or not MIN_ANNOUNCE_TTL_MS <= ttl <= MAX_ANNOUNCE_TTL_MS:
        return Outcome(ok=False, error=_TTL_RULE)
    try:
        value = json.dumps(arguments.get("value"), separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError):
        return Outcome(ok=False, error="ValueError: the value must be JSON")
    if len(value) > MAX_ANNOUNCED_VALUE:
        return Outcome(
            ok=False, error=f"ValueError: the value's JSON is over {MAX_ANNOUNCED_VALUE} characters"
        )
    guard = None
    if "lock" in arguments:
        name, token = arguments.get("lock"), arguments.get("token")
        holder = _lock_holder(context, arguments.get("owner", ""))
        if not isinstance(name, str) or type(token) is not int or holder is None:
            return Outcome(ok=False, error="ValueError: lock, owner and token are malformed")
        held = Lock.objects.using(using).filter(
            pk=name, holder=holder, token=token, expires_ms__gt=now
        )
        if not held.exists():
            return Outcome(
                ok=False, error=f"StaleTokenError: token {token} of lock {name!r} is stale"
            )
        guard = token
    row = Registration.objects.using(using).filter(pk=key).first()
    live = row is not None and row.expires_ms > now
    if row is not None and live and row.holder != client and guard is None:
        return Outcome(
            ok=True,
            value={"announced": False, "holder": row.holder, "token": row.token},
        )
    if row is not None and live and row.holder == client and guard in (None, row.token):
        token = row.token  # the same registration, with a new value
    else:
        token = guard or context.index
    Registration(
        key=key, value=value, holder=client, ttl_ms=ttl, expires_ms=now + ttl, token=token
    ).save(using=using)
    _touched.add(using)
    return Outcome(ok=True, value={"announced": True, "token": token, "expires_ms": now + ttl})


def _renew(context: BuiltinContext, /, **arguments: Any) -> Outcome:
    """Renew this session's live registrations ``keys`` and held ``locks``; say which
    were lost (an expired one is never renewed: it is gone for everyone already)."""
    using, now, client = context.using, context.now, context.client_id
    keys, locks = arguments.get("keys", []), arguments.get("locks", [])
    if (
        not isinstance(keys, list)
        or not isinstance(locks, list)
        or len(keys) > MAX_RENEWED
        or len(locks) > MAX_RENEWED
        or not all(isinstance(key, str) for key in keys)
        or not all(_is_lock_lease(lease) for lease in locks)
    ):
        return Outcome(
            ok=False,
            error=f"ValueError: keys are at most {MAX_RENEWED} strings, locks at most "
            f"{MAX_RENEWED} [name, owner, token, ttl_ms]",
        )
    held = Registration.objects.using(using).filter(pk__in=keys, holder=client, expires_ms__gt=now)
    renewed = set(held.values_list("key", flat=True))
    if renewed:
        held.update(expires_ms=F("ttl_ms") + now)
        _touched.add(using)
    lost_locks = []
    for name, owner, token, ttl in locks:
        holder = _lock_holder(context, owner)
        lease = Lock.objects.using(using).filter(
            pk=name, holder=holder, token=token, expires_ms__gt=now
        )
        if holder is None or not lease.update(expires_ms=now + ttl):
            lost_locks.append(name)
    lost = [key for key in keys if key not in renewed]
    return Outcome(ok=True, value={"lost": lost, "lost_locks": lost_locks})


def _is_lock_lease(lease: Any) -> bool:
    return (
        isinstance(lease, list)
        and len(lease) == 4
        and isinstance(lease[0], str)
        and isinstance(lease[1], str)
        and type(lease[2]) is int
        and type(lease[3]) is int
        and 0 < lease[3] <= MAX_ANNOUNCE_TTL_MS
    )


def _withdraw(context: BuiltinContext, /, **arguments: Any) -> Outcome:
    """Delete this session's registration ``key`` if its token is ``token``."""
    key, token = arguments.get("key"), arguments.get("token")
    if not isinstance(key, str) or type(token) is not int:
        return Outcome(ok=False, error="ValueError: key must be a string, token an integer")
    mine = Registration.objects.using(context.using).filter(
        pk=key, holder=context.client_id, token=token
    )
    deleted, _ = mine.delete()
    if deleted:
        _touched.add(context.using)
    return Outcome(ok=True, value=bool(deleted))


def _clock(context: BuiltinContext, /, **arguments: Any) -> Outcome:
    """The log time moved to the leader's clock (``sessions.admit`` did it): delete the
    registrations that expired by it."""
    sweep(context.using, context.now)
    return Outcome(ok=True)


commands._register_builtin(ANNOUNCE, _announce)
commands._register_builtin(ANNOUNCE_RENEW, _renew)
commands._register_builtin(ANNOUNCE_WITHDRAW, _withdraw)
commands._register_builtin(CLOCK, _clock)


# -- snapshots ---------------------------------------------------------------------------


def dump(using: str) -> list[list[Any]]:
    """The registrations, for ``sessions.dump``."""
    rows = Registration.objects.using(using).order_by("pk")
    fields = ("key", "value", "holder", "ttl_ms", "expires_ms", "token")
    return [list(row) for row in rows.values_list(*fields)]


def load(rows: list[list[Any]], using: str, now: int) -> None:
    """Replace the registrations by ``rows`` (what ``dump`` wrote) at log time ``now``."""
    Registration.objects.using(using).all()._raw_delete(using)
    Registration.objects.using(using).bulk_create(
        Registration(
            key=key, value=value, holder=holder, ttl_ms=ttl, expires_ms=expires, token=token
        )
        for key, value, holder, ttl, expires, token in rows
    )
    refresh(using, now)
