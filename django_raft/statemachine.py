"""Apply committed entries to the node's database, exactly once, and snapshot the result.

Every run of committed entries is applied in one transaction that also records the
last applied entry (``AppliedState``): after a crash, the node resumes right after the
last run that committed, and entries at or below it are skipped. That transaction does
not wait for the disk (``storage.redoable_transaction``): what it loses, the log redoes.
Each command runs in its own savepoint, so a handler that fails leaves no trace but its
error message, which is the same on every node.

A snapshot of the replicated state is the cluster membership (``Member`` rows) plus,
by default, every row of the models named in ``DJANGO_RAFT["REPLICATED_MODELS"]``,
serialised with Django's JSON serializer; an app may replace the latter with its own
pair of functions (``commands.state_hooks``).

Replicated models should not rely on database-assigned primary keys: sequences are
not transactional and are not part of a snapshot, so two nodes could assign different
keys to the same row. Use natural keys, or keys derived from the command.
"""

from __future__ import annotations

import json
import math
import re
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from django.apps import apps
from django.core import serializers
from django.core.management.color import no_style
from django.db import connections, transaction
from django.db.models import Model
from django.utils import timezone

from . import commands
from .conf import raft_settings
from .core import ConfChange, ConfChangeType, Entry, EntryType, Snapshot
from .models import MAX_ADDRESS_LENGTH, SINGLETON, AppliedState, Member
from .storage import redoable_transaction
from .wire import decode_command

__all__ = ["Outcome", "StateMachine", "describe_error"]

SNAPSHOT_MAGIC = b"django-raft-state/1\n"
"""How a snapshot made by ``StateMachine.save`` starts; a length-prefixed JSON list of
members follows, then the replicated state."""

MAX_ERROR_LENGTH = 2000
LOAD_BATCH_SIZE = 1000

_LENGTH = struct.Struct(">Q")
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


@dataclass(frozen=True, slots=True)
class Outcome:
    """What applying one entry gave: ``value`` when ``ok``, else the ``error`` message."""

    ok: bool
    value: Any = None
    error: str = ""


def describe_error(error: BaseException) -> str:
    """Describe ``error`` the same way on every node: class name and message only.

    No traceback, and no memory addresses (``<object at 0x...>``), which differ between
    processes.
    """
    name = type(error).__name__
    try:
        message = _ADDRESS.sub("", str(error))
    except Exception:
        message = ""
    text = f"{name}: {message}" if message else name
    return text[:MAX_ERROR_LENGTH]


class StateMachine:
    """The replicated state of one node, in the database ``alias``."""

    def __init__(self, alias: str | None = None, node_id: str = "") -> None:
        self.alias = raft_settings.DATABASE if alias is None else alias
        self.node_id = node_id

    def applied(self) -> tuple[int, int]:
        """Return the index and term of the last applied entry ((0, 0) when none)."""
        rows = AppliedState.objects.using(self.alias).filter(pk=SINGLETON)
        row = rows.values_list("applied_index", "applied_term").first()
        return row if row is not None else (0, 0)

    def addresses(self) -> dict[str, str]:
        """Return the address of every member that has one, by node id."""
        rows = Member.objects.using(self.alias).exclude(address="").order_by("node_id")
        return dict(rows.values_list("node_id", "address"))

    # -- applying entries --------------------------------------------------------------

    def apply(self, entries: Sequence[Entry]) -> dict[int, Outcome]:
        """Apply a run of committed entries in one transaction; return their outcomes.

        Entries at or below the applied index are skipped and get no outcome. The rest
        must follow it without a gap. A NORMAL entry runs its command's handler in a
        savepoint; one that fails (raises, returns something that is not JSON, names no
        registered command, or cannot be decoded) is rolled back and its outcome carries
        the error. A CONF_CHANGE entry updates ``Member``; the empty NORMAL entry a new
        leader appends does nothing.
        """
        outcomes: dict[int, Outcome] = {}
        if not entries:
            return outcomes
        with redoable_transaction(self.alias):
            applied, _ = self.applied()
            last: Entry | None = None
            for entry in entries:
                if entry.index <= applied:
                    continue
                expected = last.index + 1 if last is not None else applied + 1
                if entry.index != expected:
                    raise ValueError(
                        f"entry {entry.index} cannot be applied: the next one is {expected}"
                    )
                outcomes[entry.index] = self._apply_entry(entry)
                last = entry
            if last is not None:
                self._set_applied(last.index, last.term)
        return outcomes

    def _apply_entry(self, entry: Entry) -> Outcome:
        if entry.type is EntryType.NORMAL and not entry.data:
            return Outcome(ok=True)
        try:
            with transaction.atomic(using=self.alias):
                if entry.type is EntryType.CONF_CHANGE:
                    self._apply_conf_change(ConfChange.decode(entry.data))
                    return Outcome(ok=True)
                value = self._run_command(entry)
        except Exception as error:
            return Outcome(ok=False, error=describe_error(error))
        return Outcome(ok=True, value=value)

    def _run_command(self, entry: Entry) -> Any:
        name, arguments, _client_id, _sequence = decode_command(entry.data)
        handler = commands.get(name)
        context = commands.Context(self.node_id, entry.index, entry.term, self.alias)
        return _as_json(handler(context, **arguments))

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
        rows = AppliedState.objects.using(self.alias).filter(pk=SINGLETON)
        if not rows.update(applied_index=index, applied_term=term):
            AppliedState.objects.using(self.alias).create(
                pk=SINGLETON, applied_index=index, applied_term=term
            )

    # -- snapshots ---------------------------------------------------------------------

    def save(self) -> bytes:
        """Return the replicated state as bytes, for a snapshot at the applied index."""
        using = self.alias
        with transaction.atomic(using=using):
            members = list(
                Member.objects.using(using)
                .order_by("node_id")
                .values_list("node_id", "address", "role")
            )
            hooks = commands.get_state_hooks()
            state = hooks.save(using) if hooks is not None else _dump_models(using)
        header = json.dumps(members, separators=(",", ":")).encode()
        return b"".join((SNAPSHOT_MAGIC, _LENGTH.pack(len(header)), header, state))

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
        members, state = _split_snapshot(data)
        using = self.alias
        with transaction.atomic(using=using, durable=True):
            Member.objects.using(using).all()._raw_delete(using)
            Member.objects.using(using).bulk_create(
                Member(node_id=node_id, address=_address(address), role=role)
                for node_id, address, role in members
            )
            hooks = commands.get_state_hooks()
            if hooks is not None:
                hooks.restore(state, using)
            else:
                _load_models(state, using)
            self._set_applied(index, term)


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


def _split_snapshot(data: bytes) -> tuple[list[tuple[str, str, str]], bytes]:
    start = len(SNAPSHOT_MAGIC)
    if not data.startswith(SNAPSHOT_MAGIC) or len(data) < start + _LENGTH.size:
        raise ValueError("not a django-raft snapshot (no header)")
    (length,) = _LENGTH.unpack_from(data, start)
    start += _LENGTH.size
    if start + length > len(data):
        raise ValueError("truncated django-raft snapshot")
    try:
        members = json.loads(data[start : start + length])
        rows = [(str(node_id), str(address), str(role)) for node_id, address, role in members]
    except (TypeError, ValueError) as error:
        raise ValueError(f"malformed members in django-raft snapshot: {error}") from None
    return rows, data[start + length :]


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
