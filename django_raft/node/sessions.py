"""Client sessions applied by the state machine: exactly-once commands (Raft thesis §6.3).

A client process opens one session through the log (``OPEN_SESSION``); its id is the
index of that entry, so a replayed opening makes a new session and never revives an old
one. Each of its commands then carries ``(client_id, sequence, first_unanswered)``: many
may be outstanding at once (every thread of the process shares the session), and
``first_unanswered`` is the client's ack floor, the lowest number whose answer it has not
seen. Applying a command records its outcome in the same transaction as the handler's
writes, and the session keeps the outcome of every number at or above the greatest
floor its commands carried, forgetting the older ones. A command whose outcome is kept is
a retry and gets it without running again; a number below the floor was answered
already and is refused (``REPLAYED``); a number ``MAX_OUTSTANDING`` or more above the
floor is refused too (``OVERLOADED``, not applied: the client waits instead of sending
it), which bounds what a session holds. A command without a floor (an older client, one
command at a time) has its own number for floor: only its outcome is kept.

The session row keeps the outcome of the command applied last in its own columns, and the
others it must keep in a JSON object (``outcomes``), empty while the client has one
command in flight: one at a time costs no more than before.

Time here is **log time**: the leader stamps its clock (milliseconds) on every
session-tracked command when it proposes it, and the log time is the greatest stamp
applied so far, so every node computes the same expiries whatever its own clock says.
A session expires once the log time passes its last command plus its timeout (chosen
by the client when it opened the session); expired sessions are swept at most once a
second of log time, and the locks they hold are released. Sessions and locks travel in
snapshots with the membership.

The state machine reads the sessions and the log clock once per run of entries and
writes them once at its end (``Run``), with the outcome of reading and writing them
entry by entry.

The builtin commands' handlers (open a session, keep it alive, take and release a lock,
claim beat slots) live here too, beside the state they change, and are registered in
``commands`` on import: the state machine dispatches them like an application's, with a
``BuiltinContext``. Those of registrations (keys that live while their session renews
them) and of the clock entry live in ``registrations``, whose expiry the sweep runs too.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, NamedTuple

from django.db import connection, connections

from .. import commands, replicated
from ..core import Entry
from ..models import SINGLETON, BeatTask, ClientSession, Lock, LogClock
from ..protocol.request import (
    BEAT_CLAIM,
    CLOCK,
    KEEP_ALIVE,
    LOCK_ACQUIRE,
    LOCK_RELEASE,
    MAX_OUTSTANDING,
    MAX_SLOTS_PER_CLAIM,
    OPEN_SESSION,
)
from ..protocol.wire import DecodedCommand
from . import registrations
from .outcome import Outcome

__all__ = [
    "BuiltinContext",
    "dump",
    "is_tracked",
    "load",
]

MAX_OWNER_LENGTH = 32
"""Characters of a lock's ``owner`` at most (a session id and it fit a lock's holder)."""
_OWNER_RULE = f"ValueError: owner must be a string of at most {MAX_OWNER_LENGTH} characters, no '/'"
SWEEP_INTERVAL_MS = 1000
"""Expired sessions are looked for at most this often, in log time."""
MAX_TIMEOUT_MS = 30 * 24 * 3600 * 1000

EXPIRED = "SessionExpiredError"
REPLAYED = "ReplayedCommandError"
OVERLOADED = "OverloadedError"

# A session row as ``Run`` holds it: the columns of ``_SESSION_COLUMNS`` after client_id,
# with ``outcomes`` parsed ({sequence: [ok, value JSON, error]}).
_LAST, _LAST_OK, _LAST_VALUE, _LAST_ERROR, _TIMEOUT, _EXPIRES, _FLOOR, _KEPT = range(8)


def is_tracked(command: DecodedCommand) -> bool:
    """Whether the command goes through the session path (a session's or a built-in)."""
    return bool(command.client_id) or commands.is_builtin(command.name)


class Run:
    """The sessions and the log clock as one run of entries changes them.

    Read once (the clock, and with ``load`` the sessions of every client the run names),
    kept here while the run is applied, written once by ``save`` at its end: the run's
    outcome is that of reading and writing them entry by entry. While a run is active
    (``active()``), ``log_time`` answers from it. An expiry sweep writes the pending
    sessions first, then deletes in the database, as entry by entry.
    """

    def __init__(self, using: str) -> None:
        self.using = using
        self._clock_read = False
        self._stored_clock: tuple[int, int] | None = None  # None: no row yet
        self._now = 0
        self._swept = 0
        self._sessions: dict[str, list[Any] | None] = {}  # None: no such session
        self._dirty: dict[str, list[Any]] = {}
        self.moves = 0
        """How many times the log time moved in this run."""
        self.time_read = False
        """Set when ``log_time`` is asked for while ``ambiguous_time`` is set."""
        self.ambiguous_time = False
        """Set by the state machine while a batch handler runs calls of several log times."""

    def active(self) -> AbstractContextManager[None]:
        """Make ``log_time`` answer from this run on this thread for the block."""
        return replicated.applying(self.using, self)

    def time(self) -> int:
        """The log time as of the entries applied so far in this run."""
        if self.ambiguous_time:
            self.time_read = True
        self._read_clock()
        return self._now

    def load(self, client_ids: Iterable[str]) -> None:
        """Read the sessions of ``client_ids`` not read yet, with one query per 500."""
        wanted = [client for client in set(client_ids) if client and client not in self._sessions]
        for start in range(0, len(wanted), 500):
            chunk = wanted[start : start + 500]
            for client in chunk:
                self._sessions[client] = None
            statement = _SELECT_SESSIONS.format(places=", ".join(["%s"] * len(chunk)))
            with connections[self.using].cursor() as cursor:
                cursor.execute(statement, chunk)
                for client, *row in cursor.fetchall():
                    row[_KEPT] = _parse_kept(row[_KEPT])
                    self._sessions[client] = row

    def session(self, client_id: str) -> list[Any] | None:
        """``[last_sequence, last_ok, last_value, last_error, timeout_ms, expires_ms,
        floor, outcomes]``, ``outcomes`` parsed: ``{sequence: [ok, value JSON, error]}``."""
        if client_id not in self._sessions:
            self.load([client_id])
        return self._sessions[client_id]

    def write(self, client_id: str, row: list[Any]) -> None:
        """Set the session's row (new or changed); stored by ``save``."""
        self._sessions[client_id] = row
        self._dirty[client_id] = row

    def sweep_due(self, stamp: int) -> bool:
        """Whether a command stamped ``stamp`` will sweep expired sessions first."""
        self._read_clock()
        return max(self._now, stamp) - self._swept >= SWEEP_INTERVAL_MS

    def advance(self, stamp: int) -> int:
        """Move the log time to ``stamp`` if later; sweep expired sessions when due."""
        due = self.sweep_due(stamp)
        if stamp > self._now:
            self._now = stamp
            self.moves += 1
        if due:
            self._write_sessions()
            expired = ClientSession.objects.using(self.using).filter(expires_ms__lte=self._now)
            ids = list(expired.values_list("client_id", flat=True))
            if ids:
                _release_locks_of(self.using, ids)
                expired.delete()
                for client in ids:
                    self._sessions[client] = None
            registrations.sweep(self.using, self._now, ids)
            self._swept = self._now
        return self._now

    def save(self) -> None:
        """Write the sessions and the clock this run changed."""
        self._write_sessions()
        clock = (self._now, self._swept)
        if self._clock_read:
            registrations.publish(self.using, self._now)
        if not self._clock_read or clock == self._stored_clock:
            return  # not read (no session-tracked command), or unchanged
        with connections[self.using].cursor() as cursor:
            if self._stored_clock is None:
                cursor.execute(_INSERT_CLOCK, [SINGLETON, *clock])
            else:
                cursor.execute(_UPDATE_CLOCK, [*clock, SINGLETON])
        self._stored_clock = clock

    def _read_clock(self) -> None:
        if self._clock_read:
            return
        with connections[self.using].cursor() as cursor:
            cursor.execute(_SELECT_CLOCK, [SINGLETON])
            row = cursor.fetchone()
        self._stored_clock = None if row is None else (row[0], row[1])
        self._now, self._swept = self._stored_clock or (0, 0)
        self._clock_read = True

    def _write_sessions(self) -> None:
        rows = [
            [client, *row[:_KEPT], _dump_kept(row[_KEPT])] for client, row in self._dirty.items()
        ]
        self._dirty = {}
        for start in range(0, len(rows), _SESSIONS_PER_UPSERT):
            chunk = rows[start : start + _SESSIONS_PER_UPSERT]
            statement = _UPSERT_SESSIONS.format(places=", ".join([_SESSION_PLACES] * len(chunk)))
            with connections[self.using].cursor() as cursor:
                cursor.execute(statement, [value for row in chunk for value in row])


class Admitted(NamedTuple):
    """A session-tracked command that is to run: the log time it runs at, its session's
    timeout, and whether it runs in a session (a session's opening runs in none: it has
    no outcome to record)."""

    now: int
    timeout_ms: int
    in_session: bool = True


Execute = Callable[[Entry, DecodedCommand], Outcome]
"""Runs a command (its entry, the command) with its handler and gives its outcome."""


def apply(run: Run, entry: Entry, command: DecodedCommand, execute: Execute) -> Outcome:
    """Apply a session-tracked command: at most once per (client id, sequence).

    Once admitted, it runs with ``execute``, and its outcome becomes its session's last."""
    admitted = admit(run, entry, command)
    if not isinstance(admitted, Admitted):
        return admitted
    outcome = execute(entry, command)
    if admitted.in_session:
        answer(run, command, admitted, outcome)
    return outcome


def admit(run: Run, entry: Entry, command: DecodedCommand) -> Admitted | Outcome:
    """Advance the log time to the command's; then either its outcome without running it
    (a retry, a replay, no session, too far above the floor) or that it is to run (a
    session's opening, outside any session).

    Admitting a command moves its session's floor and expiry at once (neither depends
    on its outcome), so the next command of the session is admitted as it would be
    after this one's outcome is recorded: several commands of one session may run in
    one call of a batch handler, as long as no number comes twice (``answer`` records
    them in order)."""

    now = run.advance(command.time_ms)
    if command.name in (OPEN_SESSION, CLOCK):
        return Admitted(now, 0, False)  # it opens a session, or moves the clock: no session
    if not command.client_id:
        return Outcome(ok=False, error=f"{EXPIRED}: {command.name} needs a session")
    row = run.session(command.client_id)
    if row is None or row[_EXPIRES] <= now:  # gone, or past its time (swept later)
        return Outcome(
            ok=False, error=f"{EXPIRED}: session {command.client_id} expired or does not exist"
        )
    sequence, floor = command.sequence, row[_FLOOR]
    if sequence < floor:
        return Outcome(
            ok=False,
            error=f"{REPLAYED}: command {sequence} of session {command.client_id} was "
            f"answered before: its client has seen every answer below {floor}",
        )
    if sequence == row[_LAST]:
        return _recorded(row[_LAST_OK], row[_LAST_VALUE], row[_LAST_ERROR])
    kept = row[_KEPT].get(sequence) if row[_KEPT] else None
    if kept is not None:
        return _recorded(*kept)
    floor = max(floor, command.first_unanswered or sequence)
    if sequence - floor >= MAX_OUTSTANDING:
        return Outcome(
            ok=False,
            error=f"{OVERLOADED}: command {sequence} of session {command.client_id} is "
            f"{MAX_OUTSTANDING} or more above the first unanswered one ({floor}); not applied",
        )
    row[_FLOOR], row[_EXPIRES] = floor, now + row[_TIMEOUT]
    run.write(command.client_id, row)
    return Admitted(now, row[_TIMEOUT])


def _recorded(ok: bool, value: str, error: str) -> Outcome:
    """The outcome a session kept: ``ok``, the value's JSON, the error message."""
    return Outcome(ok=bool(ok), value=json.loads(value) if ok else None, error=error)


def answer(run: Run, command: DecodedCommand, admitted: Admitted, outcome: Outcome) -> None:
    """Record the outcome of an admitted command as its session's last, keep the
    previous last while it is at or above the floor, and forget the outcomes below it."""
    row = run.session(command.client_id)
    assert row is not None  # admitted in this run: it exists
    floor = row[_FLOOR]  # as ``admit`` moved it, for this command or a later one
    kept = row[_KEPT]
    if kept and min(kept) < floor:
        kept = {number: outcome for number, outcome in kept.items() if number >= floor}
    if row[_LAST] >= floor:  # still unanswered for all the session knows: keep it
        kept[row[_LAST]] = [row[_LAST_OK], row[_LAST_VALUE], row[_LAST_ERROR]]
    value = json.dumps(outcome.value) if outcome.ok else "null"
    run.write(
        command.client_id,
        [
            command.sequence,
            outcome.ok,
            value,
            outcome.error,
            row[_TIMEOUT],
            row[_EXPIRES],  # as ``admit`` moved it, too
            floor,
            kept,
        ],
    )


def _parse_kept(text: str) -> dict[int, list[Any]]:
    """The ``outcomes`` column as ``{sequence: [ok, value JSON, error]}``."""
    if text == "{}" or not text:
        return {}
    return {int(number): outcome for number, outcome in json.loads(text).items()}


def _dump_kept(kept: dict[int, list[Any]]) -> str:
    return json.dumps(kept, separators=(",", ":")) if kept else "{}"


def _sql(template: str) -> str:
    """``template`` with the tables and columns of the models, quoted for any database
    (the hot path's statements: the ORM costs more than the queries themselves)."""
    quote = connection.ops.quote_name
    names = {
        "session": quote(ClientSession._meta.db_table),
        "clock": quote(LogClock._meta.db_table),
        "places": "{places}",
    }
    return template.format(**names)


_SESSION_COLUMNS = (
    "client_id, last_sequence, last_ok, last_value, last_error, timeout_ms, expires_ms, "
    "floor, outcomes"
)
_SESSION_PLACES = "(" + ", ".join(["%s"] * 9) + ")"
_SESSIONS_PER_UPSERT = 100
"""Sessions per upsert (9 parameters each: within SQLite's 999)."""
_SELECT_SESSIONS = _sql(
    f"SELECT {_SESSION_COLUMNS} FROM {{session}} WHERE client_id IN ({{places}})"
)
_UPSERT_SESSIONS = _sql(
    f"INSERT INTO {{session}} ({_SESSION_COLUMNS}) VALUES {{places}} "
    "ON CONFLICT (client_id) DO UPDATE SET last_sequence = excluded.last_sequence, "
    "last_ok = excluded.last_ok, last_value = excluded.last_value, "
    "last_error = excluded.last_error, timeout_ms = excluded.timeout_ms, "
    "expires_ms = excluded.expires_ms, floor = excluded.floor, outcomes = excluded.outcomes"
)
_SELECT_CLOCK = _sql("SELECT time_ms, swept_ms FROM {clock} WHERE id = %s")
_INSERT_CLOCK = _sql("INSERT INTO {clock} (id, time_ms, swept_ms) VALUES (%s, %s, %s)")
_UPDATE_CLOCK = _sql("UPDATE {clock} SET time_ms = %s, swept_ms = %s WHERE id = %s")


# -- builtin commands ---------------------------------------------------------------------


@dataclass(slots=True)
class BuiltinContext:
    """What a builtin command's handler knows of its entry: more than an application's
    ``commands.Context``, since it changes the sessions themselves."""

    run: Run
    index: int
    client_id: str

    @property
    def using(self) -> str:
        """The database alias of the replicated state."""
        return self.run.using

    @property
    def now(self) -> int:
        """The log time as of this entry: ``admit`` advanced it before the handler runs."""
        return self.run.time()


def _open(context: BuiltinContext, /, **arguments: Any) -> Outcome:
    """Open a session: its id is this entry's index."""
    timeout = arguments.get("timeout_ms")
    if type(timeout) is not int or not 0 < timeout <= MAX_TIMEOUT_MS:
        return Outcome(ok=False, error=f"ValueError: timeout_ms must be in (0, {MAX_TIMEOUT_MS}]")
    client_id = str(context.index)
    # The defaults of ClientSession's fields: a session that has run no command yet.
    context.run.write(client_id, [0, True, "null", "", timeout, context.now + timeout, 0, {}])
    return Outcome(ok=True, value=client_id)


def _keep_alive(context: BuiltinContext, /, **arguments: Any) -> Outcome:
    """Nothing but the session's bookkeeping, which extends its life."""
    return Outcome(ok=True)


def _holder(context: BuiltinContext, arguments: dict[str, Any]) -> str | None:
    """Who takes or gives back a lock: the session, or with ``owner`` (a ``Lock`` object
    of the client's, since one session serves every thread of a process) the session's
    owner ``client_id/owner``; None when ``owner`` is malformed."""
    owner = arguments.get("owner", "")
    if not isinstance(owner, str) or len(owner) > MAX_OWNER_LENGTH or "/" in owner:
        return None
    return f"{context.client_id}/{owner}" if owner else context.client_id


def _release_locks_of(using: str, client_ids: list[str]) -> None:
    """Release the locks held by these sessions, or by owners in them (expired sessions)."""
    gone = set(client_ids)
    held = Lock.objects.using(using).exclude(holder="").values_list("name", "holder")
    names = [name for name, holder in held if holder.partition("/")[0] in gone]
    if names:
        Lock.objects.using(using).filter(name__in=names).update(holder="")
        for name in names:
            commands.changed(Lock, name)  # update() sends no signal: tell the watches


def _acquire(context: BuiltinContext, /, **arguments: Any) -> Outcome:
    """Take the lock if free, expired or already the holder's; its token is this entry's
    index."""
    using, client_id, now = context.using, _holder(context, arguments), context.now
    name, ttl = arguments.get("name"), arguments.get("ttl_ms")
    if not isinstance(name, str) or not 0 < len(name) <= 200:
        return Outcome(ok=False, error="ValueError: a lock name is a string of 1 to 200 characters")
    if type(ttl) is not int or not 0 < ttl <= MAX_TIMEOUT_MS:
        return Outcome(ok=False, error=f"ValueError: ttl_ms must be in (0, {MAX_TIMEOUT_MS}]")
    if client_id is None:
        return Outcome(ok=False, error=_OWNER_RULE)
    lock = Lock.objects.using(using).filter(pk=name).first()
    if lock is None:
        lock = Lock(name=name)
    elif lock.holder and lock.holder != client_id and lock.expires_ms > now:
        return Outcome(
            ok=True,
            value={"acquired": False, "token": lock.token, "expires_ms": lock.expires_ms},
        )
    if lock.holder != client_id or not lock.token:
        lock.token = context.index
    lock.holder = client_id
    lock.expires_ms = now + ttl
    lock.save(using=using)
    return Outcome(ok=True, value={"acquired": True, "token": lock.token, "expires_ms": now + ttl})


def _release(context: BuiltinContext, /, **arguments: Any) -> Outcome:
    """Release the lock if this session holds it with this token."""
    name, token, holder = arguments.get("name"), arguments.get("token"), _holder(context, arguments)
    if not isinstance(name, str) or type(token) is not int:
        return Outcome(ok=False, error="ValueError: name must be a string, token an integer")
    if holder is None:
        return Outcome(ok=False, error=_OWNER_RULE)
    locks = Lock.objects.using(context.using).filter(pk=name, holder=holder, token=token)
    released = locks.update(holder="")
    if released:
        commands.changed(Lock, name)
    return Outcome(ok=True, value=bool(released))


def _claim(context: BuiltinContext, /, **arguments: Any) -> Outcome:
    """Claim beat slots (``_claim_slots``)."""
    return _claim_slots(context.using, arguments)


def _claim_slots(using: str, arguments: dict[str, Any]) -> Outcome:
    """Grant the slots after the task's last claimed one; each slot is granted once."""

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


commands._register_builtin(OPEN_SESSION, _open)
commands._register_builtin(KEEP_ALIVE, _keep_alive)
commands._register_builtin(LOCK_ACQUIRE, _acquire)
commands._register_builtin(LOCK_RELEASE, _release)
commands._register_builtin(BEAT_CLAIM, _claim)


# -- snapshots ---------------------------------------------------------------------------


def dump(using: str) -> bytes:
    """The sessions, the locks, the periodic tasks' slots, the registrations and the log
    clock, as JSON."""
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
                "floor",
                "outcomes",
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
        "registrations": registrations.dump(using),
    }
    return json.dumps(state, separators=(",", ":")).encode()


def load(data: bytes, using: str) -> None:
    """Replace the sessions, locks, slots, registrations and log clock by those ``dump``
    wrote (a snapshot without registrations has none).

    Sessions of an older snapshot (no floor, no other outcomes: one command at a time)
    get their last sequence for floor."""
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
            floor=newer[0] if newer else sequence,
            outcomes=newer[1] if newer else "{}",
        )
        for client_id, sequence, ok, value, error, timeout, expires, *newer in state["sessions"]
    )
    Lock.objects.using(using).bulk_create(
        Lock(name=name, holder=holder, token=token, expires_ms=expires)
        for name, holder, token, expires in state["locks"]
    )
    BeatTask.objects.using(using).bulk_create(
        BeatTask(name=name, last_slot_ms=last) for name, last in state.get("beat", [])
    )
    registrations.load(state.get("registrations", []), using, time_ms)
