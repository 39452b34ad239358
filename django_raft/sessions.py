"""Client sessions applied by the state machine: exactly-once commands (Raft thesis §6.3).

A client opens a session through the log (``OPEN_SESSION``); its id is the index of
that entry, so a replayed opening makes a new session and never revives an old one.
Each of its commands then carries ``(client_id, sequence)``. Applying one records the
sequence number and the outcome in the same transaction as the handler's writes; a
command whose number is the last one recorded is a retry and gets the recorded outcome
without running again, and a lower number is refused. A client has one command in
flight per session (``django_raft.do`` keeps one session per thread).

Time here is **log time**: the leader stamps its clock (milliseconds) on every
session-tracked command when it proposes it, and the log time is the greatest stamp
applied so far, so every node computes the same expiries whatever its own clock says.
A session expires once the log time passes its last command plus its timeout (chosen
by the client when it opened the session); expired sessions are swept at most once a
second of log time, and the locks they hold are released. Sessions and locks travel in
snapshots with the membership.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from django.db import connection, connections

from .models import SINGLETON, BeatTask, ClientSession, Lock, LogClock
from .wire import DecodedCommand

if TYPE_CHECKING:
    from .core import Entry
    from .statemachine import Outcome, StateMachine

__all__ = [
    "LOCK_ACQUIRE",
    "LOCK_RELEASE",
    "OPEN_SESSION",
    "dump",
    "is_tracked",
    "load",
    "log_time",
]

OPEN_SESSION = "django_raft.session.open"
"""Opens a session; arguments ``timeout_ms``; the result is the new client id."""
LOCK_ACQUIRE = "django_raft.lock.acquire"
"""Arguments ``name``, ``ttl_ms``; the result says whether the lock was taken, and its token."""
LOCK_RELEASE = "django_raft.lock.release"
"""Arguments ``name``, ``token``; the result says whether the lock was released."""
KEEP_ALIVE = "django_raft.session.keep_alive"
"""Extends a session's life; no arguments."""
BEAT_CLAIM = "django_raft.beat.claim"
"""Arguments ``task``, ``slots`` (increasing ms); the result lists the slots granted."""
BUILTIN = frozenset((OPEN_SESSION, LOCK_ACQUIRE, LOCK_RELEASE, KEEP_ALIVE, BEAT_CLAIM))
MAX_SLOTS_PER_CLAIM = 1000

SWEEP_INTERVAL_MS = 1000
"""Expired sessions are looked for at most this often, in log time."""
MAX_TIMEOUT_MS = 30 * 24 * 3600 * 1000

EXPIRED = "SessionExpiredError"
REPLAYED = "ReplayedCommandError"


def is_tracked(command: DecodedCommand) -> bool:
    """Whether the command goes through the session path (a session's or a built-in)."""
    return bool(command.client_id) or command.name in BUILTIN


def log_time(using: str) -> int:
    """The log time (ms) as of the last applied session-tracked command."""
    row = LogClock.objects.using(using).filter(pk=SINGLETON).values_list("time_ms", flat=True)
    return row.first() or 0


def apply(machine: StateMachine, entry: Entry, command: DecodedCommand, fast: bool) -> Outcome:
    """Apply a session-tracked command: at most once per (client id, sequence)."""
    from .statemachine import Outcome

    using = machine.alias
    now = _advance_clock(using, command.time_ms)
    if command.name == OPEN_SESSION:
        return _open(using, entry.index, command.arguments, now)
    if not command.client_id:
        return Outcome(ok=False, error=f"{EXPIRED}: {command.name} needs a session")
    with connections[using].cursor() as cursor:
        cursor.execute(_SELECT_SESSION, [command.client_id])
        row = cursor.fetchone()
    if row is None or row[5] <= now:  # gone, or past its time (swept later)
        return Outcome(
            ok=False, error=f"{EXPIRED}: session {command.client_id} expired or does not exist"
        )
    last_sequence, last_ok, last_value, last_error, timeout_ms, _ = row
    if command.sequence <= last_sequence:
        if command.sequence == last_sequence:
            value = json.loads(last_value) if last_ok else None
            return Outcome(ok=bool(last_ok), value=value, error=last_error)
        return Outcome(
            ok=False,
            error=f"{REPLAYED}: command {command.sequence} of session {command.client_id} "
            f"was answered before {last_sequence}",
        )
    outcome = _run(machine, entry, command, fast, now)
    value = json.dumps(outcome.value) if outcome.ok else "null"
    with connections[using].cursor() as cursor:
        cursor.execute(
            _UPDATE_SESSION,
            [
                command.sequence,
                outcome.ok,
                value,
                outcome.error,
                now + timeout_ms,
                command.client_id,
            ],
        )
    return outcome


def _run(
    machine: StateMachine, entry: Entry, command: DecodedCommand, fast: bool, now: int
) -> Outcome:
    from . import commands
    from .commands import Call
    from .statemachine import Outcome, describe_error

    name, arguments = command.name, command.arguments
    if name == KEEP_ALIVE:
        return Outcome(ok=True)
    if name == LOCK_ACQUIRE:
        return _acquire(machine.alias, entry.index, command.client_id, arguments, now)
    if name == LOCK_RELEASE:
        return _release(machine.alias, command.client_id, arguments)
    if name == BEAT_CLAIM:
        return _claim_slots(machine.alias, arguments)
    try:
        commands.get(name)
    except Exception as error:
        return Outcome(ok=False, error=describe_error(error))
    if commands.is_batch(name):
        return machine._apply_batch(entry, name, [Call(entry.index, entry.term, arguments)], fast)[
            entry.index
        ]
    return machine._apply_call(entry, name, arguments, fast)


def _advance_clock(using: str, stamp: int) -> int:
    """Move the log time to ``stamp`` if later; sweep expired sessions when due."""
    clocks = LogClock.objects.using(using)
    with connections[using].cursor() as cursor:
        cursor.execute(_SELECT_CLOCK, [SINGLETON])
        row = cursor.fetchone()
    if row is None:
        clocks.create(pk=SINGLETON)
        row = (0, 0)
    now, swept = max(row[0], stamp), row[1]
    if now - swept >= SWEEP_INTERVAL_MS:
        expired = ClientSession.objects.using(using).filter(expires_ms__lte=now)
        ids = list(expired.values_list("client_id", flat=True))
        if ids:
            Lock.objects.using(using).filter(holder__in=ids).update(holder="")
            expired.delete()
        swept = now
    if (now, swept) != tuple(row):
        with connections[using].cursor() as cursor:
            cursor.execute(_UPDATE_CLOCK, [now, swept, SINGLETON])
    return now


def _sql(template: str) -> str:
    """``template`` with the tables and columns of the models, quoted for any database
    (the hot path's statements: the ORM costs more than the queries themselves)."""
    quote = connection.ops.quote_name
    names = {
        "session": quote(ClientSession._meta.db_table),
        "clock": quote(LogClock._meta.db_table),
    }
    return template.format(**names)


_SELECT_SESSION = _sql(
    "SELECT last_sequence, last_ok, last_value, last_error, timeout_ms, expires_ms "
    "FROM {session} "
    "WHERE client_id = %s"
)
_UPDATE_SESSION = _sql(
    "UPDATE {session} SET last_sequence = %s, last_ok = %s, last_value = %s, "
    "last_error = %s, expires_ms = %s WHERE client_id = %s"
)
_SELECT_CLOCK = _sql("SELECT time_ms, swept_ms FROM {clock} WHERE id = %s")
_UPDATE_CLOCK = _sql("UPDATE {clock} SET time_ms = %s, swept_ms = %s WHERE id = %s")


def _open(using: str, index: int, arguments: dict[str, Any], now: int) -> Outcome:
    from .statemachine import Outcome

    timeout = arguments.get("timeout_ms")
    if type(timeout) is not int or not 0 < timeout <= MAX_TIMEOUT_MS:
        return Outcome(ok=False, error=f"ValueError: timeout_ms must be in (0, {MAX_TIMEOUT_MS}]")
    client_id = str(index)
    ClientSession.objects.using(using).create(
        client_id=client_id, timeout_ms=timeout, expires_ms=now + timeout
    )
    return Outcome(ok=True, value=client_id)


def _acquire(
    using: str, index: int, client_id: str, arguments: dict[str, Any], now: int
) -> Outcome:
    """Take the lock if free, expired or already ours; its token is this entry's index."""
    from .statemachine import Outcome

    name, ttl = arguments.get("name"), arguments.get("ttl_ms")
    if not isinstance(name, str) or not 0 < len(name) <= 200:
        return Outcome(ok=False, error="ValueError: a lock name is a string of 1 to 200 characters")
    if type(ttl) is not int or not 0 < ttl <= MAX_TIMEOUT_MS:
        return Outcome(ok=False, error=f"ValueError: ttl_ms must be in (0, {MAX_TIMEOUT_MS}]")
    lock = Lock.objects.using(using).filter(pk=name).first()
    if lock is None:
        lock = Lock(name=name)
    elif lock.holder and lock.holder != client_id and lock.expires_ms > now:
        return Outcome(
            ok=True,
            value={"acquired": False, "token": lock.token, "expires_ms": lock.expires_ms},
        )
    if lock.holder != client_id or not lock.token:
        lock.token = index
    lock.holder = client_id
    lock.expires_ms = now + ttl
    lock.save(using=using)
    return Outcome(ok=True, value={"acquired": True, "token": lock.token, "expires_ms": now + ttl})


def _release(using: str, client_id: str, arguments: dict[str, Any]) -> Outcome:
    from .statemachine import Outcome

    name, token = arguments.get("name"), arguments.get("token")
    if not isinstance(name, str) or type(token) is not int:
        return Outcome(ok=False, error="ValueError: name must be a string, token an integer")
    locks = Lock.objects.using(using).filter(pk=name, holder=client_id, token=token)
    released = locks.update(holder="")
    return Outcome(ok=True, value=bool(released))


def _claim_slots(using: str, arguments: dict[str, Any]) -> Outcome:
    """Grant the slots after the task's last claimed one; each slot is granted once."""
    from .statemachine import Outcome

    task, slots = arguments.get("task"), arguments.get("slots")
    if not isinstance(task, str) or not 0 < len(task) <= 200:
        return Outcome(ok=False, error="ValueError: task is a name of 1 to 200 characters")
    if (
        not isinstance(slots, list)
        or not 0 < len(slots) <= MAX_SLOTS_PER_CLAIM
        or any(type(slot) is not int or slot < 0 for slot in slots)
        or slots != sorted(set(slots))
    ):
        return Outcome(ok=False, error="ValueError: slots are increasing integers (ms)")
    row = BeatTask.objects.using(using).filter(pk=task).first()
    last = row.last_slot_ms if row is not None else -1
    granted = [slot for slot in slots if slot > last]
    if granted:
        BeatTask.objects.using(using).update_or_create(
            name=task, defaults={"last_slot_ms": granted[-1]}
        )
    return Outcome(ok=True, value={"granted": granted, "last": max(last, slots[-1])})


def check_token(using: str, name: str, token: int, now: int | None = None) -> None:
    """Raise ``StaleTokenError`` unless ``token`` is the current, held token of ``name``.

    Deterministic: the lock's state and the log time are replicated state.
    """
    from .exceptions import StaleTokenError

    lock = Lock.objects.using(using).filter(pk=name).values_list("holder", "token", "expires_ms")
    row = lock.first()
    now = log_time(using) if now is None else now
    if row is None or not row[0] or row[1] != token or row[2] <= now:
        current = row[1] if row else 0
        raise StaleTokenError(f"token {token} of lock {name!r} is stale (current {current})")


# -- snapshots ---------------------------------------------------------------------------


def dump(using: str) -> bytes:
    """The sessions, the locks, the periodic tasks' slots and the log clock, as JSON."""
    clock = LogClock.objects.using(using).filter(pk=SINGLETON).values_list("time_ms", "swept_ms")
    state = {
        "clock": list(clock.first() or (0, 0)),
        "sessions": [
            list(row)
            for row in ClientSession.objects.using(using)
            .order_by("pk")
            .values_list(
                "client_id",
                "last_sequence",
                "last_ok",
                "last_value",
                "last_error",
                "timeout_ms",
                "expires_ms",
            )
        ],
        "locks": [
            list(row)
            for row in Lock.objects.using(using)
            .order_by("pk")
            .values_list("name", "holder", "token", "expires_ms")
        ],
        "beat": [
            list(row)
            for row in BeatTask.objects.using(using)
            .order_by("pk")
            .values_list("name", "last_slot_ms")
        ],
    }
    return json.dumps(state, separators=(",", ":")).encode()


def load(data: bytes, using: str) -> None:
    """Replace the sessions, locks, slots and log clock by those ``dump`` wrote."""
    state = json.loads(data) if data else {"clock": [0, 0], "sessions": [], "locks": []}
    ClientSession.objects.using(using).all()._raw_delete(using)
    Lock.objects.using(using).all()._raw_delete(using)
    LogClock.objects.using(using).all()._raw_delete(using)
    BeatTask.objects.using(using).all()._raw_delete(using)
    time_ms, swept_ms = state["clock"]
    LogClock.objects.using(using).create(pk=SINGLETON, time_ms=time_ms, swept_ms=swept_ms)
    ClientSession.objects.using(using).bulk_create(
        ClientSession(
            client_id=client_id,
            last_sequence=sequence,
            last_ok=ok,
            last_value=value,
            last_error=error,
            timeout_ms=timeout,
            expires_ms=expires,
        )
        for client_id, sequence, ok, value, error, timeout, expires in state["sessions"]
    )
    Lock.objects.using(using).bulk_create(
        Lock(name=name, holder=holder, token=token, expires_ms=expires)
        for name, holder, token, expires in state["locks"]
    )
    BeatTask.objects.using(using).bulk_create(
        BeatTask(name=name, last_slot_ms=last) for name, last in state.get("beat", [])
    )
