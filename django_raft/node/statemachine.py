"""Apply committed entries to the node's database, exactly once, and snapshot the result.

Every run of committed entries is applied in one transaction that also records the
last applied entry (``AppliedState``): after a crash, the node resumes right after the
last run that committed, and entries at or below it are skipped. That transaction does
not wait for the disk (``storage.redoable_transaction``): what it loses, the log redoes.
A run is applied without savepoints, calls of a batch handler together; only when a
handler raises is the run redone with a savepoint per command, so a handler that fails
leaves no trace but its error message, which is the same on every node. The outcomes
worth showing in the admin's log (errors, results other than None) are stored in that
same transaction (``outcome_log``).

A snapshot of the replicated state is the cluster membership (``Member`` rows) plus,
by default, every row of the models named in ``DJANGO_RAFT["REPLICATED_MODELS"]``,
serialised with Django's JSON serializer; an app may replace the latter with its own
pair of functions (``commands.state_hooks``).

Replicated models should not rely on database-assigned primary keys: sequences are
not transactional and are not part of a snapshot, so two nodes could assign different
keys to the same row. Use natural keys, or keys derived from the command.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import math
import struct
import time
from collections.abc import Iterator, Sequence
from functools import partial
from typing import Any

from django.apps import apps
from django.core import serializers
from django.core.management.color import no_style
from django.db import InterfaceError, OperationalError, connections, transaction
from django.db.models import Model
from django.utils import timezone

from .. import commands
from ..conf import raft_settings
from ..core import ConfChange, ConfChangeType, Entry, EntryType, Snapshot
from ..exceptions import ApplyError
from ..models import MAX_ADDRESS_LENGTH, SINGLETON, AppliedState, EntryOutcome, Member
from ..protocol.wire import DecodedCommand, decode_envelope
from . import metrics, outcome_log, sessions, watch
from .outcome import Outcome, describe_error
from .storage import redoable_transaction, write_lock

__all__ = ["Outcome", "StateMachine", "check_snapshot", "describe_error"]

SNAPSHOT_MAGIC = b"django-raft-state/3\n"
"""How a snapshot made by ``StateMachine.save`` starts; a length-prefixed JSON list of
members follows, then the length-prefixed client sessions and locks (``sessions.dump``),
then the replicated state, then the SHA-256 of everything before it. Version 3: sessions
keep a floor and several outcomes; a version 2 snapshot (one outcome per session) is
still restored (``sessions.load`` reads both)."""
_OLD_MAGIC = b"django-raft-state/2\n"
ENVIRONMENT_RETRY_DELAYS = (0.01, 0.05, 0.2)
"""Seconds to wait before applying a run again after the database failed under it (see
``environmental``); after the last, ``ApplyError`` stops the node, which applies the
run again from its log when restarted."""
_SQLITE_ENVIRONMENT = ("locked", "busy", "disk i/o", "full", "readonly", "unable to open")
"""What SQLite's messages say when an ``OperationalError`` is about the database file,
not the statement (SQLite reports both kinds with that one class)."""
_DIGEST_SIZE = 32
logger = logging.getLogger(__name__)

LOAD_BATCH_SIZE = 1000

_APPLIED_TABLE = f'"{AppliedState._meta.db_table}"'
# The applied index is read and written once per run: the ORM would cost more than SQL.
_SELECT_APPLIED = f"SELECT applied_index, applied_term FROM {_APPLIED_TABLE} WHERE id = %s"
_UPDATE_APPLIED = f"UPDATE {_APPLIED_TABLE} SET applied_index = %s, applied_term = %s WHERE id = %s"
_INSERT_APPLIED = (
    f"INSERT INTO {_APPLIED_TABLE} (id, applied_index, applied_term) VALUES (%s, %s, %s)"
)

_LENGTH = struct.Struct(">Q")


class StateMachine:
    """The replicated state of one node, in the database ``alias``."""

    def __init__(self, alias: str | None = None, node_id: str = "") -> None:
        self.alias = raft_settings.DATABASE if alias is None else alias
        self.node_id = node_id

    def applied(self) -> tuple[int, int]:
        """Return the index and term of the last applied entry ((0, 0) when none)."""
        with connections[self.alias].cursor() as cursor:
            cursor.execute(_SELECT_APPLIED, [SINGLETON])
            row = cursor.fetchone()
        return (row[0], row[1]) if row is not None else (0, 0)

    def addresses(self) -> dict[str, str]:
        """Return the address of every member that has one, by node id."""
        rows = Member.objects.using(self.alias).exclude(address="").order_by("node_id")
        return dict(rows.values_list("node_id", "address"))

    # -- applying entries --------------------------------------------------------------

    def apply(self, entries: Sequence[Entry]) -> dict[int, Outcome]:
        """Apply a run of committed entries in one transaction; return their outcomes.

        Entries at or below the applied index are skipped and get no outcome. The rest
        must follow it without a gap. A NORMAL entry runs its command's handler; one
        that fails (raises, returns something that is not JSON, names no registered
        command, or cannot be decoded) leaves no change and its outcome carries the
        error. A CONF_CHANGE entry updates ``Member``; the empty NORMAL entry a new
        leader appends does nothing.

        The run is first applied without a savepoint per entry, consecutive calls of a
        batch handler together. Only when a handler raises (or returns what is not
        JSON) is that transaction rolled back and the run applied again with a savepoint
        per entry. Either way the outcomes are those of applying entry by entry, so
        every node gets the same ones however its runs were cut.
        """
        if not entries:
            return {}
        for delay in (*ENVIRONMENT_RETRY_DELAYS, None):
            try:
                return self._apply_once(entries)
            except (OperationalError, InterfaceError) as error:
                if not self.environmental(error):
                    raise
                if delay is None:
                    raise ApplyError(
                        f"entries {entries[0].index}-{entries[-1].index} could not be "
                        f"applied: the database failed ({error}); nothing was recorded"
                    ) from error
                logger.warning(
                    "raft: applying entries %d-%d failed in the database (%s); trying again",
                    entries[0].index,
                    entries[-1].index,
                    error,
                )
                time.sleep(delay)
        raise AssertionError("unreachable")

    def forget_outcomes(self, index: int) -> None:
        """Delete the outcomes recorded for entries up to ``index`` (compacted away)."""
        with redoable_transaction(self.alias):
            EntryOutcome.objects.using(self.alias).filter(pk__lte=index)._raw_delete(self.alias)

    def environmental(self, error: BaseException) -> bool:
        """Whether a database error says nothing about the command that met it: a lock
        held too long, a lost connection, a full or failing disk. Such an error is never
        recorded as a command's outcome, since another node would not meet it."""
        if isinstance(error, InterfaceError):
            return True
        if not isinstance(error, OperationalError):
            return False
        if connections[self.alias].vendor != "sqlite":
            return True  # PostgreSQL reports a statement's own errors with other classes
        text = str(error).lower()
        return any(marker in text for marker in _SQLITE_ENVIRONMENT)

    def _apply_once(self, entries: Sequence[Entry]) -> dict[int, Outcome]:
        try:
            with redoable_transaction(self.alias):
                return self._apply_run(entries, fast=True)
        except _Redo:
            pass
        with redoable_transaction(self.alias):
            return self._apply_run(entries, fast=False)

    def _apply_run(self, entries: Sequence[Entry], fast: bool) -> dict[int, Outcome]:
        applied, _ = self.applied()
        todo = [entry for entry in entries if entry.index > applied]
        for expected, entry in enumerate(todo, applied + 1):
            if entry.index != expected:
                raise ValueError(
                    f"entry {entry.index} cannot be applied: the next one is {expected}"
                )
        if not todo:
            return {}
        calls = [self._decode(entry) for entry in todo]
        run = sessions.Run(self.alias)
        run.load(call.client_id for call in calls if isinstance(call, DecodedCommand))
        outcomes: dict[int, Outcome] = {}
        execute = partial(self._apply_one, run=run, fast=fast)
        recorder = watch.Recorder(self.alias)
        with run.active(), recorder.recording():
            position = 0
            while position < len(todo):
                entry, call = todo[position], calls[position]
                watch.at(entry.index)
                if isinstance(call, Outcome):
                    outcomes[entry.index] = call
                elif call is None:
                    outcomes[entry.index] = self._apply_conf(entry, fast)
                elif fast and commands.is_batch(call.name):
                    position = self._apply_group(todo, calls, position, call.name, run, outcomes)
                    continue
                elif sessions.is_tracked(call):
                    outcomes[entry.index] = sessions.apply(run, entry, call, execute)
                else:
                    outcomes[entry.index] = execute(entry, call)
                position += 1
            run.save()
        last = todo[-1]
        notes = recorder.notes(todo, calls, lambda index: outcomes[index].ok)
        outcome_log.record(self.alias, outcomes, notes)
        self._set_applied(last.index, last.term)
        return outcomes

    def _apply_group(
        self,
        todo: list[Entry],
        calls: list[DecodedCommand | Outcome | None],
        position: int,
        name: str,
        run: sessions.Run,
        outcomes: dict[int, Outcome],
    ) -> int:
        """Apply consecutive calls of batch command ``name`` from ``position`` on with one
        call of its handler (fast path); return the position after them.

        A session's command joins once its session admits it (a retry or a replay is
        answered from the session without running). The group ends before a command
        whose session and number are already in it (a retry, which must see the first
        one's outcome) and before an expiry sweep. Should the handler read the log time
        while its calls span several, the run is redone entry by entry.
        """
        group: list[tuple[Entry, DecodedCommand, sessions.Admitted | None]] = []
        clients: set[tuple[str, int]] = set()
        moves = 0
        while position < len(todo):
            entry, call = todo[position], calls[position]
            if not isinstance(call, DecodedCommand) or call.name != name:
                break
            admitted = None
            if sessions.is_tracked(call):
                if (call.client_id, call.sequence) in clients or (
                    group and run.sweep_due(call.time_ms)
                ):
                    break
                answer = sessions.admit(run, entry, call)
                if not isinstance(answer, sessions.Admitted):
                    outcomes[entry.index] = answer
                    position += 1
                    continue
                admitted = answer
                clients.add((call.client_id, call.sequence))
            if not group:
                moves = run.moves  # the log time its first call runs at
            group.append((entry, call, admitted))
            position += 1
        if not group:
            return position
        run.ambiguous_time = run.moves != moves
        watch.at(*(entry.index for entry, _, _ in group))
        watch.ran(*(entry.index for entry, _, _ in group))
        try:
            results = self._apply_batch(
                group[0][0],
                name,
                commands.get(name),
                [_call(entry, call) for entry, call, _ in group],
                fast=True,
            )
        finally:
            run.ambiguous_time = False
        if run.time_read:
            raise _Redo
        for entry, call, admitted in group:
            outcome = outcomes[entry.index] = results[entry.index]
            if admitted is not None:
                sessions.answer(run, call, admitted, outcome)
        return position

    def _decode(self, entry: Entry) -> DecodedCommand | Outcome | None:
        """The command an entry carries, None for a membership change, else its outcome."""
        if entry.type is EntryType.CONF_CHANGE:
            return None
        if not entry.data:
            return Outcome(ok=True)
        try:
            command = decode_envelope(entry.data)
        except Exception as error:
            if self.environmental(error):
                raise
            return Outcome(ok=False, error=describe_error(error))
        return command

    def _apply_conf(self, entry: Entry, fast: bool) -> Outcome:
        if fast:
            self._apply_conf_change(ConfChange.decode(entry.data))
            return Outcome(ok=True)
        try:
            with transaction.atomic(using=self.alias):
                self._apply_conf_change(ConfChange.decode(entry.data))
        except Exception as error:
            if self.environmental(error):
                raise
            return Outcome(ok=False, error=describe_error(error))
        return Outcome(ok=True)

    def _apply_one(
        self, entry: Entry, command: DecodedCommand, *, run: sessions.Run, fast: bool
    ) -> Outcome:
        """Apply one command with its handler, looked up once: a builtin's (with the
        sessions' context), or an application's (its batch handler, if so)."""
        name = command.name
        watch.ran(entry.index)
        try:
            handler = commands.get(name)
        except commands.UnknownCommandError as error:
            return Outcome(ok=False, error=describe_error(error))
        if commands.is_builtin(name):
            context = sessions.BuiltinContext(run, entry.index, command.client_id)
            return handler(context, **command.arguments)  # an Outcome
        if commands.is_batch(name):
            calls = [_call(entry, command)]
            return self._apply_batch(entry, name, handler, calls, fast)[entry.index]
        return self._apply_call(entry, name, handler, command.arguments, fast)

    def _apply_call(
        self,
        entry: Entry,
        name: str,
        handler: commands.Handler,
        arguments: dict[str, Any],
        fast: bool,
    ) -> Outcome:
        context = commands.Context(self.node_id, entry.index, entry.term, self.alias)
        started = time.perf_counter()
        if fast:
            try:
                return Outcome(ok=True, value=_as_json(handler(context, **arguments)))
            except Exception as error:
                if self.environmental(error):
                    raise
                raise _Redo from error
            finally:
                self._timed(name, started, entry.index, 1)
        try:
            with transaction.atomic(using=self.alias):
                value = _as_json(handler(context, **arguments))
        except Exception as error:
            if self.environmental(error):
                raise
            _raised(name, entry.index)
            return Outcome(ok=False, error=describe_error(error))
        finally:
            self._timed(name, started, entry.index, 1)
        return Outcome(ok=True, value=value)

    def _apply_batch(
        self,
        entry: Entry,
        name: str,
        handler: commands.Handler,
        calls: list[commands.Call],
        fast: bool,
    ) -> dict[int, Outcome]:
        context = commands.Context(self.node_id, entry.index, entry.term, self.alias)
        started = time.perf_counter()
        try:
            if fast:
                return _batch_outcomes(calls, handler(context, calls))
            with transaction.atomic(using=self.alias):
                return _batch_outcomes(calls, handler(context, calls))
        except Exception as error:
            if self.environmental(error):
                raise
            if fast:
                raise _Redo from error
            _raised(name, entry.index)
            return {entry.index: Outcome(ok=False, error=describe_error(error))}
        finally:
            self._timed(name, started, entry.index, len(calls))

    def _timed(self, name: str, started: float, index: int, count: int) -> None:
        """Record a handler's time; warn when it ran past ``SLOW_HANDLER_WARNING``.

        Apply is ordered, so the commands after it waited as long.
        """
        seconds = time.perf_counter() - started
        metrics.observe_handler(name, seconds)
        if seconds >= raft_settings.SLOW_HANDLER_WARNING:
            logger.warning(
                "raft: node %s: the handler of %r took %.3f s on entry %d%s (longer than"
                " SLOW_HANDLER_WARNING, %s s); the commands after it waited for it",
                self.node_id,
                name,
                seconds,
                index,
                f" and the {count - 1} after it" if count > 1 else "",
                raft_settings.SLOW_HANDLER_WARNING,
            )

    def _apply_conf_change(self, change: ConfChange) -> None:
        members = Member.objects.using(self.alias).filter(node_id=change.node_id)
        if change.type is ConfChangeType.REMOVE:
            members.delete()
            return
        role = Member.Role.VOTER if change.type is ConfChangeType.ADD_VOTER else Member.Role.LEARNER
        values: dict[str, Any] = {"role": role, "updated_at": timezone.now()}
        address = _address(change.context)
        if address:
            values["address"] = address
        if not members.update(**values):
            Member.objects.using(self.alias).create(
                node_id=change.node_id, role=role, address=address
            )

    def _set_applied(self, index: int, term: int) -> None:
        with connections[self.alias].cursor() as cursor:
            cursor.execute(_UPDATE_APPLIED, [index, term, SINGLETON])
            if not cursor.rowcount:
                cursor.execute(_INSERT_APPLIED, [SINGLETON, index, term])

    # -- snapshots ---------------------------------------------------------------------

    def save(self) -> bytes:
        """Return the replicated state as bytes, for a snapshot at the applied index."""
        return self.save_applied()[1]

    def save_applied(self) -> tuple[int, bytes]:
        """Return the applied index and the replicated state as of it, read together.

        One read transaction sees both, so it may run in another thread while the loop
        goes on applying (on PostgreSQL it runs at REPEATABLE READ for that).
        """
        using = self.alias
        connection = connections[using]
        # Inside a caller's transaction (a test, a single-threaded host) that one's view holds.
        outermost = not connection.in_atomic_block
        with transaction.atomic(using=using):
            if connection.vendor == "postgresql" and outermost:
                with connection.cursor() as cursor:
                    cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            index, _ = self.applied()
            members = list(
                Member.objects.using(using)
                .order_by("node_id")
                .values_list("node_id", "address", "role")
            )
            tracked = sessions.dump(using)
            hooks = commands.get_state_hooks()
            state = hooks.save(using) if hooks is not None else _dump_models(using)
        header = json.dumps(members, separators=(",", ":")).encode()
        parts = (SNAPSHOT_MAGIC, _LENGTH.pack(len(header)), header, _LENGTH.pack(len(tracked)))
        body = b"".join((*parts, tracked, state))
        return index, body + hashlib.sha256(body).digest()

    def catch_up(self, snapshot: Snapshot) -> bool:
        """Restore ``snapshot`` if the state is behind it; return whether it was.

        A node that stopped after persisting a snapshot received from the leader but
        before restoring it has a log that starts after the snapshot, and a state from
        before it: the core will never hand it the entries in between. Call this at
        startup with the stored snapshot, before the core is built.
        """
        metadata = snapshot.metadata
        if metadata.index == 0 or self.applied()[0] >= metadata.index:
            return False
        self.restore(snapshot.data, metadata.index, metadata.term)
        return True

    def restore(self, data: bytes, index: int, term: int) -> None:
        """Replace the replicated state by a snapshot's, applied up to (index, term).

        All of it in one transaction: the members, the state and the applied index.
        """
        members, tracked, state = _split_snapshot(data)
        using = self.alias
        with write_lock(using), transaction.atomic(using=using, durable=True):
            Member.objects.using(using).all()._raw_delete(using)
            # Outcomes go with the state: entries up to the snapshot have left the log.
            EntryOutcome.objects.using(using).all()._raw_delete(using)
            Member.objects.using(using).bulk_create(
                Member(node_id=node_id, address=_address(address), role=role)
                for node_id, address, role in members
            )
            sessions.load(tracked, using)
            hooks = commands.get_state_hooks()
            if hooks is not None:
                hooks.restore(state, using)
            else:
                _load_models(state, using)
            self._set_applied(index, term)


def _raised(name: str, index: int) -> None:
    """Log, with its traceback, the error a handler raised (its outcome keeps only the
    message; every node logs the same)."""
    logger.warning("raft: the handler of %r raised on entry %d", name, index, exc_info=True)


def _call(entry: Entry, command: DecodedCommand) -> commands.Call:
    return commands.Call(entry.index, entry.term, command.arguments)


class _Redo(Exception):
    """A handler raised on the fast path: apply the run again, entry by entry."""


def _batch_outcomes(calls: list[commands.Call], results: Any) -> dict[int, Outcome]:
    """Pair a batch handler's results with its calls; raise when they do not pair up."""
    results = list(results)
    if len(results) != len(calls):
        raise ValueError(f"the batch handler returned {len(results)} results for {len(calls)}")
    outcomes = {}
    for call, result in zip(calls, results, strict=True):
        if isinstance(result, Exception):
            outcomes[call.index] = Outcome(ok=False, error=describe_error(result))
        else:
            outcomes[call.index] = Outcome(ok=True, value=_as_json(result))
    return outcomes


def _as_json(value: Any) -> Any:
    """Return ``value`` as a caller gets it from the wire: JSON, the same on every node.

    Raise ``TypeError``/``ValueError`` when it is not JSON (NaN and infinities are not).
    """
    kind = type(value)
    if value is None or kind is str or kind is bool or kind is int:
        return value
    if kind is float and math.isfinite(value):
        return value
    return json.loads(json.dumps(value, allow_nan=False))


def _address(context: str) -> str:
    """The member address a membership change carries; "" if it cannot be one."""
    if len(context) > MAX_ADDRESS_LENGTH or "\x00" in context:
        return ""
    return context


def _split_snapshot(data: bytes) -> tuple[list[tuple[str, str, str]], bytes, bytes]:
    """Members, sessions and the replicated state; ``ValueError`` unless it is whole."""
    start = len(SNAPSHOT_MAGIC)
    whole = len(data) >= start + _LENGTH.size + _DIGEST_SIZE
    if not data.startswith((SNAPSHOT_MAGIC, _OLD_MAGIC)) or not whole:
        raise ValueError("not a django-raft snapshot (no header)")
    body, digest = data[:-_DIGEST_SIZE], data[-_DIGEST_SIZE:]
    if not hmac.compare_digest(hashlib.sha256(body).digest(), digest):
        raise ValueError("the snapshot's checksum does not match its content")
    (length,) = _LENGTH.unpack_from(body, start)
    start += _LENGTH.size
    if start + length > len(body):
        raise ValueError("truncated django-raft snapshot")
    try:
        members = json.loads(body[start : start + length])
        rows = [(str(node_id), str(address), str(role)) for node_id, address, role in members]
    except (TypeError, ValueError) as error:
        raise ValueError(f"malformed members in django-raft snapshot: {error}") from None
    start += length
    if len(body) < start + _LENGTH.size:
        raise ValueError("truncated django-raft snapshot")
    (length,) = _LENGTH.unpack_from(body, start)
    start += _LENGTH.size
    if start + length > len(body):
        raise ValueError("truncated django-raft snapshot")
    return rows, body[start : start + length], body[start + length :]


def check_snapshot(snapshot: Snapshot) -> str | None:
    """Say why a snapshot received from the leader is unusable, or None if it is whole.

    Checked before anything of it is stored: the format and checksum, members that
    match the membership its metadata names, and (for the model dump) state that parses
    as rows of the replicated models. A snapshot refused here changes nothing.
    """
    try:
        members, _, state = _split_snapshot(snapshot.data)
    except ValueError as error:
        return str(error)
    conf = snapshot.metadata.conf_state
    roles = {node_id: role for node_id, _, role in members}
    expected = {voter: Member.Role.VOTER for voter in conf.voters}
    expected.update({learner: Member.Role.LEARNER for learner in conf.learners})
    if len(roles) != len(members) or roles != expected:
        return "the snapshot's members do not match its metadata"
    if commands.get_state_hooks() is not None:
        return None
    labels = {label.lower() for label in raft_settings.REPLICATED_MODELS}
    try:
        rows = json.loads(state)
    except (ValueError, RecursionError):
        return "the snapshot's state is not JSON"
    if not isinstance(rows, list) or not all(
        isinstance(row, dict)
        and isinstance(row.get("model"), str)
        and row["model"].lower() in labels
        and isinstance(row.get("fields"), dict)
        for row in rows
    ):
        return "the snapshot's state is not rows of the replicated models"
    return None


def replicated_models() -> list[type[Model]]:
    """Return the models named in ``DJANGO_RAFT["REPLICATED_MODELS"]``, in that order."""
    return [apps.get_model(label) for label in raft_settings.REPLICATED_MODELS]


def _dump_models(using: str) -> bytes:
    def rows() -> Iterator[Model]:
        for model in replicated_models():
            yield from model._base_manager.using(using).order_by("pk").iterator(chunk_size=2000)

    return serializers.serialize("json", rows()).encode()


def _load_models(state: bytes, using: str) -> None:
    """Replace every row of the replicated models by those ``_dump_models`` wrote."""
    models = replicated_models()
    allowed = set(models)
    for model in reversed(models):
        model._base_manager.using(using).all()._raw_delete(using)
    batch: list[Model] = []
    with_m2m = []

    def flush() -> None:
        if batch:
            type(batch[0])._base_manager.using(using).bulk_create(batch)
            batch.clear()

    for item in serializers.deserialize("json", state, using=using):
        obj = item.object
        model = type(obj)
        if model not in allowed:
            raise ValueError(f"the snapshot holds {model._meta.label} rows, not a replicated model")
        if model._meta.parents:
            # Multi-table inheritance cannot be bulk created.
            flush()
            item.save(using=using)
            continue
        if batch and (type(batch[0]) is not model or len(batch) >= LOAD_BATCH_SIZE):
            flush()
        batch.append(obj)
        if item.m2m_data:
            with_m2m.append(item)
    flush()
    for item in with_m2m:
        for field, values in (item.m2m_data or {}).items():
            getattr(item.object, field).set(values)
    connection = connections[using]
    statements = connection.ops.sequence_reset_sql(no_style(), models)
    if statements:
        with connection.cursor() as cursor:
            for statement in statements:
                cursor.execute(statement)
