"""Watches, on the node's side: what each applied entry changed, and the events to read.

- **Recording** (the apply thread): while a run of entries is applied, a ``Recorder``
  gathers the rows each entry's handler changed, from Django's ``post_save`` and
  ``post_delete`` on the state database and from ``commands.changed`` (writes that send
  no signal); the state machine stores them with the entries' outcomes
  (``EntryOutcome.changes``), with whether each command ran (``EntryOutcome.ran``: a
  session's retry answered from its record did not), in the run's own transaction.
- **Waking**: the applier reports each applied index (``reporting``); watch threads
  wait for it (``wait_past``) instead of polling the database.
- **Reading** (``read``): the events after an index, up to the applied one, from the
  log (``LogEntry``, in ``LOG_DATABASE``) and the outcomes (``EntryOutcome``, in
  ``DATABASE``); ``WatchCompacted`` when the log no longer holds them.

The changes of a batch handler's call are the entries' it names (``commands.changed``
with ``call=``); what it changes without naming a call counts for every call of the
batch, a superset that may differ from node to node with how the runs were cut (never
missing a change).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from json.encoder import encode_basestring as _string
from typing import Any

from django.apps import apps
from django.db.models import Model
from django.db.models.signals import post_delete, post_save

from .. import commands
from ..core import Entry
from ..models import SINGLETON, AppliedState, EntryOutcome, LogEntry, Snapshot
from ..protocol.wire import DecodedCommand, WireError, decode_envelope

__all__ = [
    "BUILTIN_PREFIX",
    "OWN_WATCHED",
    "PAGE",
    "Filter",
    "Recorder",
    "WatchCompacted",
    "advanced",
    "applied",
    "at",
    "known_applied",
    "ran",
    "read",
    "reporting",
    "wait_past",
]

OWN_WATCHED = frozenset({"lock", "registration"})
"""django_raft's own models whose changes watches see; its other models are bookkeeping."""
BUILTIN_PREFIX = "django_raft."
"""The names of django_raft's own commands start so: delivered only when a filter asks."""
PAGE = 500
"""Entries read from the log at once by a watch."""


# -- recording (apply thread) -------------------------------------------------------


class Recorder:
    """The rows the entries of one run changed, and which of its commands ran."""

    def __init__(self, alias: str) -> None:
        self.alias = alias
        self.targets: tuple[int, ...] = ()
        """The entries being applied now (several: a batch handler's call)."""
        self.changes: dict[int, dict[tuple[str, str], None]] = {}
        self.ran: set[int] = set()

    def add(self, label: str, pk: str, index: int | None = None) -> None:
        """Record that row ``pk`` of ``label`` changed, by entry ``index`` (None: by the
        entries being applied)."""
        for target in self.targets if index is None else (index,):
            self.changes.setdefault(target, {})[(label, pk)] = None

    @contextmanager
    def recording(self) -> Iterator[Recorder]:
        """Gather the changes made on this thread meanwhile."""
        _connect()
        previous = getattr(_active, "recorder", None)
        _active.recorder = self
        try:
            with commands.changes_to(self.add):
                yield self
        finally:
            _active.recorder = previous

    def notes(
        self, entries: Sequence[Entry], calls: Sequence[Any], ok: Callable[[int], bool]
    ) -> dict[int, tuple[str, bool]]:
        """What to store beside the outcomes, by index: the changes (JSON, "" for none)
        of the commands that succeeded, and whether each command ran; only for the
        entries with something to say (changes, or a command that did not run)."""
        found: dict[int, tuple[str, bool]] = {}
        for entry, call in zip(entries, calls, strict=True):
            if not isinstance(call, DecodedCommand):
                continue
            index = entry.index
            ran = index in self.ran
            rows = self.changes.get(index) if ran and ok(index) else None
            if rows or not ran:
                found[index] = (_encode(rows or ()), ran)
        return found


def _encode(rows: Iterable[tuple[str, str]]) -> str:
    """``rows`` as a JSON list of pairs (``json.dumps`` takes several times as long)."""
    return "[" + ",".join(f"[{_string(label)},{_string(pk)}]" for label, pk in rows) + "]"


_active = threading.local()


def at(*indices: int) -> None:
    """The entries applied next on this thread (their handler's changes are theirs)."""
    recorder: Recorder | None = getattr(_active, "recorder", None)
    if recorder is not None:
        recorder.targets = indices


def ran(*indices: int) -> None:
    """These entries' commands run (not answered from their session's record)."""
    recorder: Recorder | None = getattr(_active, "recorder", None)
    if recorder is not None:
        recorder.ran.update(indices)


def _changed(sender: type[Model], instance: Model, using: str, **kwargs: Any) -> None:
    recorder: Recorder | None = getattr(_active, "recorder", None)
    if recorder is not None and using == recorder.alias:
        recorder.add(sender._meta.label_lower, str(instance.pk))


_connected = threading.Lock()
_connected_models: set[type[Model]] = set()


def _connect() -> None:
    """Listen to saves and deletes of every model but django_raft's bookkeeping ones
    (connected per model: a model nobody listens to keeps Django's fast deletes)."""
    if len(_connected_models) == len(apps.get_models()):
        return
    with _connected:
        for model in apps.get_models():
            if model in _connected_models:
                continue
            _connected_models.add(model)
            meta = model._meta
            if meta.app_label == "django_raft" and meta.model_name not in OWN_WATCHED:
                continue
            post_save.connect(_changed, sender=model, weak=False, dispatch_uid="raft-watch")
            post_delete.connect(_changed, sender=model, weak=False, dispatch_uid="raft-watch")


# -- waking (applier → watch threads) -----------------------------------------------

_applied: dict[str, int] = {}
_advanced = threading.Condition()


def advanced(alias: str, index: int) -> None:
    """Everything up to ``index`` is applied (committed) in database ``alias``."""
    with _advanced:
        if index > _applied.get(alias, 0):
            _applied[alias] = index
        _advanced.notify_all()


def reporting(machine: Any, report: Callable[[Any], None]) -> Callable[[Any], None]:
    """``report`` (the applier's, taking an ``Applied``) that also wakes the watches of
    ``machine``'s database."""
    alias = machine.alias

    def inner(applied: Any) -> None:
        report(applied)
        advanced(alias, applied.index)

    return inner


def wait_past(alias: str, index: int, timeout: float) -> None:
    """Wait until an index past ``index`` is applied in ``alias``, or ``timeout`` passed."""
    with _advanced:
        _advanced.wait_for(lambda: _applied.get(alias, 0) > index, timeout)


def known_applied(alias: str) -> int:
    """The applied index the applier last reported for ``alias`` (0: none yet); committed."""
    return _applied.get(alias, 0)


def applied(alias: str) -> int:
    """The applied index as stored in ``alias`` (committed)."""
    value = (
        AppliedState.objects.using(alias)
        .filter(pk=SINGLETON)
        .values_list("applied_index", flat=True)
    )
    return int(value.first() or 0)


# -- reading (watch threads) --------------------------------------------------------


class WatchCompacted(Exception):
    """The entries after the watch's index were compacted; ``first_index`` is the oldest
    index a watch may still start after."""

    def __init__(self, first_index: int) -> None:
        super().__init__(first_index)
        self.first_index = first_index


@dataclass(frozen=True, slots=True)
class Filter:
    """Which entries a watch wants: each filter given narrows (all must match).

    ``commands``: command names; ``models``: model labels (``app_label.modelname``),
    with ``pk`` one row of them. Without either, every command but django_raft's own.
    """

    commands: frozenset[str] = frozenset()
    models: frozenset[str] = frozenset()
    pk: str | None = None

    def wants(self, command: str, changes: list[list[str]]) -> bool:
        """Whether an entry of ``command`` that changed ``changes`` is an event."""
        if self.commands and command not in self.commands:
            return False
        if self.models:
            return self.touched(changes)
        return bool(self.commands) or not command.startswith(BUILTIN_PREFIX)

    def touched(self, changes: list[list[str]]) -> bool:
        """Whether ``changes`` hold a row the model filter names."""
        return any(
            label in self.models and (self.pk is None or pk == self.pk) for label, pk in changes
        )


def first_index(log_alias: str) -> int:
    """The oldest index a watch may start after: the last compacted one."""
    rows = Snapshot.objects.using(log_alias).filter(pk=SINGLETON)
    return int(rows.values_list("compacted_index", flat=True).first() or 0)


def read(
    state_alias: str, log_alias: str, after: int, upto: int, wanted: Filter
) -> tuple[list[dict[str, Any]], int]:
    """The events after ``after`` up to ``upto`` (applied), at most ``PAGE`` entries'
    worth, and the index read through. Raise ``WatchCompacted`` when some of those
    entries may have left the log.

    The outcomes are read before the log, and the compaction after both: the log is
    compacted before the outcomes are forgotten, so when the log still starts at or
    before ``after``, both reads saw every row of the range.
    """
    through = min(upto, after + PAGE)
    if through <= after:
        return [], after
    outcomes = {
        row[0]: row[1:]
        for row in EntryOutcome.objects.using(state_alias)
        .filter(pk__gt=after, pk__lte=through)
        .values_list("pk", "ok", "text", "truncated", "changes", "ran")
    }
    entries = LogEntry.objects.using(log_alias).filter(
        index__gt=after, index__lte=through, type=LogEntry.Type.NORMAL
    )
    if wanted.models:
        entries = entries.filter(
            index__in=[
                index
                for index, (_, _, _, changes, _) in outcomes.items()
                if changes and wanted.touched(json.loads(changes))
            ]
        )
    if wanted.commands:
        entries = entries.filter(command__in=wanted.commands)
    elif not wanted.models:
        entries = entries.exclude(command="").exclude(command__startswith=BUILTIN_PREFIX)
    rows = list(entries.order_by("index").values_list("index", "term", "command", "data"))
    compacted = first_index(log_alias)
    if compacted > after:
        raise WatchCompacted(compacted + 1)
    events = []
    for index, term, name, data in rows:
        event = _event(index, term, bytes(data), outcomes.get(index))
        if event is not None and wanted.wants(name, event["changes"]):
            events.append(event)
    return events, through


def _event(
    index: int, term: int, data: bytes, outcome: tuple[Any, ...] | None
) -> dict[str, Any] | None:
    """An entry as an event's fields; None when it is no change (its session answered it
    without running it) or cannot be decoded."""
    try:
        command = decode_envelope(data)
    except WireError:
        return None
    ok, result, error = True, None, ""
    changes: list[list[str]] = []
    if outcome is not None:
        ok, text, truncated, changed, did_run = outcome
        if not did_run:
            return None
        if not ok:
            error = text
        elif not truncated:
            result = json.loads(text)
        changes = json.loads(changed) if changed else []
    return {
        "index": index,
        "term": term,
        "command": command.name,
        "arguments": command.arguments,
        "ok": ok,
        "result": result,
        "error": error,
        "changes": changes,
    }
