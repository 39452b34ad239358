"""The node's durable Raft state in Django models: the core's ``Storage`` and its writes.

``DjangoStorage`` reads and writes the log (``LogEntry``), the hard state and the latest
snapshot in the database ``DJANGO_RAFT["DATABASE"]``, with the semantics of the core's
``MemoryStorage``. Each write is one transaction. The node process is the only writer,
so what the core reads on every call (hard state, first and last index and term, the
snapshot) is kept in memory together with the most recent entries; older entries are
read from the database by index range, so a long log is never loaded whole.

``make_durable(alias)`` makes every commit on that database reach stable storage before
it returns, which Raft requires before any message that depends on it is sent.
"""

from __future__ import annotations

import hashlib
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, replace
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.db import DatabaseError, IntegrityError, OperationalError, connections, transaction
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.backends.signals import connection_created
from django.db.models import QuerySet
from django.utils import timezone
from google.protobuf.message import DecodeError

from .. import models
from ..conf import raft_settings
from ..core import (
    CompactedError,
    ConfChange,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Snapshot,
    SnapshotMetadata,
    UnavailableError,
    bootstrap,
)
from ..proto import raft_pb2

__all__ = [
    "DiskSyncError",
    "DjangoStorage",
    "IdentityError",
    "LogNotEmptyError",
    "check_identity",
    "claim_identity",
    "cluster_id_of",
    "make_durable",
    "redoable_transaction",
    "write_lock",
]

TAIL_SIZE = 4096
"""How many of the most recent entries are kept in memory by default."""
TAIL_BYTES = 32 << 20
"""Bytes of entry data the in-memory tail holds at most (one entry always stays): large
commands must not keep ``TAIL_SIZE`` times their size in every node's memory."""

BATCH_SIZE = 1000
"""Rows per INSERT on backends written to through the ORM (neither SQLite nor PostgreSQL)."""
SQLITE_ROWS_PER_INSERT = 500
"""Log rows per INSERT statement on SQLite (fewer when its variable limit is lower)."""


def _sqlite_variables(connection: BaseDatabaseWrapper) -> int:
    """How many ``?`` one SQLite statement may hold (999 on old builds, 32,766 on new)."""
    raw = connection.connection
    if raw is not None and hasattr(raw, "getlimit"):
        return int(raw.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER))
    return 999


class DiskSyncError(OSError):
    """A node's SQLite file could not be written back and synced (a checkpoint failed):
    the node stops rather than trying again (see ``checkpoint``)."""


class LogNotEmptyError(RuntimeError):
    """``bootstrap`` was asked of a node that already has Raft state."""


class IdentityError(ImproperlyConfigured):
    """The database belongs to another node, or to another cluster."""


@dataclass(slots=True)
class _State:
    """The in-memory copy of what the database holds, replaced only after a commit.

    The log holds the entries ``offset + 1 .. last``; ``offset`` is the last compacted
    index (0 when none) and ``offset_term`` its term. ``tail`` holds the entries
    ``tail_start .. last`` (never more than the tail size, never at or below ``offset``);
    ``cached_bytes`` is the size of their data.
    """

    hard_state: HardState
    snapshot: SnapshotMetadata
    snapshot_saved: bool
    offset: int
    offset_term: int
    last: int
    last_term: int
    tail_start: int
    tail: list[Entry]
    cached_bytes: int = 0

    def copy(self) -> _State:
        return replace(self, tail=list(self.tail))

    def truncate_tail(self, first: int) -> None:
        """Forget cached entries from ``first`` on."""
        if first < self.tail_start:
            self.tail_start, self.tail, self.cached_bytes = first, [], 0
        else:
            self.cached_bytes -= _size(self.tail[first - self.tail_start :])
            del self.tail[first - self.tail_start :]

    def drop_tail_through(self, index: int) -> None:
        """Forget cached entries up to and including ``index``."""
        if index >= self.tail_start:
            self.cached_bytes -= _size(self.tail[: index + 1 - self.tail_start])
            del self.tail[: index + 1 - self.tail_start]
            self.tail_start = index + 1

    def bound_tail(self, size: int, max_bytes: int) -> None:
        """Keep at most ``size`` entries and ``max_bytes`` of data (one entry always)."""
        excess = max(0, len(self.tail) - size)
        dropped = _size(self.tail[:excess])
        while self.cached_bytes - dropped > max_bytes and excess < len(self.tail) - 1:
            dropped += len(self.tail[excess].data)
            excess += 1
        if excess:
            del self.tail[:excess]
            self.tail_start += excess
            self.cached_bytes -= dropped


def _size(entries: Sequence[Entry]) -> int:
    return sum(len(entry.data) for entry in entries)


def _entry(index: int, term: int, kind: int, data: Any) -> Entry:
    # PostgreSQL hands BinaryField values back as memoryview.
    return Entry(index=index, term=term, type=EntryType(kind), data=bytes(data))


_ENTRY_FIELDS = ("index", "term", "type", "data")
_INSERT_COLUMNS = ("index", "term", "type", "command", "data")


def _command_name(entry: Entry) -> str:
    """The command an entry carries, for the admin; "" when it carries none."""
    if entry.type is not EntryType.NORMAL or not entry.data:
        return ""
    try:
        # Only the name is needed: parsing the arguments (``wire.decode_command``) would
        # cost several times as much, on every entry written.
        name: str = raft_pb2.Command.FromString(entry.data).name
    except DecodeError:
        return ""
    if len(name) > models.MAX_COMMAND_LENGTH or not name.isprintable():
        return ""
    return name


class DjangoStorage:
    """The core's ``Storage`` over Django models, plus the writes a node makes.

    Not thread-safe: the node's loop thread is its only user. Every write is one
    transaction (``atomic(durable=True)``: never nested in a caller's transaction, so a
    return means committed), and the in-memory copy changes only once it committed.
    """

    def __init__(
        self, alias: str | None = None, *, tail_size: int = TAIL_SIZE, tail_bytes: int = TAIL_BYTES
    ) -> None:
        if tail_size < 1:
            raise ValueError(f"tail_size must be at least 1, not {tail_size}")
        self.alias = raft_settings.log_database if alias is None else alias
        self.tail_size = tail_size
        self.tail_bytes = tail_bytes
        self._snapshot_data: bytes | None = None
        self._state = self._load()
        self._commit_unwritten = False
        """Whether the commit index in memory is ahead of the stored one."""
        self.identity: tuple[str, str] = ("", "")
        """The node id and cluster id this database was claimed for (``claim_identity``),
        once the node process has claimed it."""

    # -- loading -----------------------------------------------------------------------

    def _load(self) -> _State:
        using = self.alias
        hard = (
            models.HardState.objects.using(using)
            .filter(pk=models.SINGLETON)
            .values_list("term", "vote", "commit")
            .first()
        )
        hard_state = HardState() if hard is None else HardState(*hard)
        snapshot, saved, offset, offset_term = SnapshotMetadata(), False, 0, 0
        row = (
            models.Snapshot.objects.using(using)
            .filter(pk=models.SINGLETON)
            .values_list(
                "index",
                "term",
                "voters",
                "learners",
                "removed",
                "compacted_index",
                "compacted_term",
            )
            .first()
        )
        if row is not None:
            index, term, voters, learners, removed, offset, offset_term = row
            snapshot = SnapshotMetadata(
                index, term, ConfState(tuple(voters), tuple(learners), tuple(removed))
            )
            saved = True
        tail = [
            _entry(*row)
            for row in models.LogEntry.objects.using(using)
            .filter(index__gt=offset)
            .order_by("-index")
            .values_list(*_ENTRY_FIELDS)[: self.tail_size]
        ]
        tail.reverse()
        last, last_term = (tail[-1].index, tail[-1].term) if tail else (offset, offset_term)
        if tail and tail[0].index != last - len(tail) + 1:
            raise RuntimeError(f"the stored log has a gap below index {last}")
        state = _State(
            hard_state=hard_state,
            snapshot=snapshot,
            snapshot_saved=saved,
            offset=offset,
            offset_term=offset_term,
            last=last,
            last_term=last_term,
            tail_start=last - len(tail) + 1,
            tail=tail,
            cached_bytes=_size(tail),
        )
        state.bound_tail(self.tail_size, self.tail_bytes)
        return state

    # -- the Storage protocol ----------------------------------------------------------

    def initial_state(self) -> tuple[HardState, ConfState]:
        """Return the stored hard state and the membership as of the snapshot."""
        state = self._state
        return state.hard_state, state.snapshot.conf_state

    def snapshot(self) -> Snapshot:
        """Return the latest snapshot (index 0 and empty data when there is none).

        Its data is read from the database once and then kept: the core asks for the
        snapshot after every Ready (to see whether one is due) and per chunk sent.
        """
        metadata = self._state.snapshot
        if metadata.index == 0:
            return Snapshot(metadata)
        if self._snapshot_data is None:
            data = (
                models.Snapshot.objects.using(self.alias)
                .values_list("data", flat=True)
                .get(pk=models.SINGLETON)
            )
            self._snapshot_data = bytes(data)
        return Snapshot(metadata, self._snapshot_data)

    def conf_entries(self, lo: int, hi: int) -> list[Entry]:
        """Return the CONF_CHANGE entries in [lo, hi)."""
        state = self._state
        lo = max(lo, state.offset + 1)
        hi = min(hi, state.last + 1)
        if lo >= hi:
            return []
        rows = (
            models.LogEntry.objects.using(self.alias)
            .filter(type=EntryType.CONF_CHANGE.value, index__gte=lo, index__lt=hi)
            .order_by("index")
            .values_list(*_ENTRY_FIELDS)
        )
        return [_entry(*row) for row in rows]

    def first_index(self) -> int:
        """Return the first readable index (one past the last compacted one)."""
        return self._state.offset + 1

    def last_index(self) -> int:
        """Return the last stored index."""
        return self._state.last

    def term(self, index: int) -> int:
        """Return the term at ``index``; raise when compacted or not yet written."""
        return self._term(self._state, index)

    def _term(self, state: _State, index: int) -> int:
        if index < state.offset:
            raise CompactedError(index)
        if index > state.last:
            raise UnavailableError(index)
        if index == state.offset:
            return state.offset_term
        if index >= state.tail_start:
            return state.tail[index - state.tail_start].term
        term: int = (
            models.LogEntry.objects.using(self.alias)
            .values_list("term", flat=True)
            .get(index=index)
        )
        return term

    def entries(self, lo: int, hi: int, max_count: int) -> list[Entry]:
        """Return entries in [lo, hi), capped at ``max_count`` (at least one)."""
        state = self._state
        if lo <= state.offset:
            raise CompactedError(lo)
        if hi > state.last + 1:
            raise UnavailableError(hi - 1)
        hi = min(hi, lo + max(1, max_count))
        if lo >= hi:
            return []
        start = state.tail_start
        if lo >= start:
            return state.tail[lo - start : hi - start]
        rows = (
            models.LogEntry.objects.using(self.alias)
            .filter(index__gte=lo, index__lt=min(hi, start))
            .order_by("index")
            .values_list(*_ENTRY_FIELDS)[: min(hi, start) - lo]
        )
        result = [_entry(*row) for row in rows]
        if hi > start:
            result.extend(state.tail[: hi - start])
        return result

    # -- writes ------------------------------------------------------------------------

    def persist(
        self,
        hard_state: HardState | None = None,
        entries: Sequence[Entry] = (),
        snapshot: Snapshot | None = None,
    ) -> None:
        """Write what a Ready hands over, in one transaction.

        ``snapshot`` (received from the leader) is installed first, as in Figure 13: the
        entries that follow it are kept if the log holds its last entry with the same
        term, otherwise the whole log is replaced by it. ``entries`` then replace every
        stored entry from the first one's index on; a gap after the last stored entry is
        a bug in the caller and raises ``ValueError``. ``hard_state`` is stored as given.
        Everything is synced to disk before this returns, except a change of the commit
        index alone: it is volatile state (Figure 2; a restart recomputes it), so it is
        only written with the next write, or by ``write_commit``.
        """
        stored = self._state.hard_state
        if hard_state == stored:
            hard_state = None
        if hard_state is None and not entries and snapshot is None:
            return
        if (
            not entries
            and snapshot is None
            and hard_state is not None
            and (hard_state.term, hard_state.vote) == (stored.term, stored.vote)
        ):
            self._state.hard_state = hard_state
            self._commit_unwritten = True
            return
        if hard_state is None and self._commit_unwritten:
            hard_state = stored
        state = self._state.copy()
        with write_lock(self.alias), transaction.atomic(using=self.alias, durable=True):
            self._write(state, hard_state, entries, snapshot)
        self._commit_unwritten = False
        self._commit(state, snapshot)

    def write_commit(self) -> None:
        """Store the commit index if it moved since the last write, without a disk sync.

        Only for those who read it from the database (the admin): the node
        itself never needs it (a restart takes the applied index as committed).
        """
        if not self._commit_unwritten:
            return
        with redoable_transaction(self.alias):
            self._save_hard_state(self._state.hard_state)
        self._commit_unwritten = False

    def create_snapshot(self, snapshot: Snapshot) -> None:
        """Record a snapshot the node made of its own state; the log is left as it is.

        A snapshot not newer than the stored one is ignored.
        """
        state = self._state
        index = snapshot.metadata.index
        if index <= state.snapshot.index:
            return
        if index > state.last:
            raise UnavailableError(index)
        state = state.copy()
        with write_lock(self.alias), transaction.atomic(using=self.alias, durable=True):
            self._save_snapshot(state, snapshot)
        self._commit(state, snapshot)

    def compact(self, index: int) -> None:
        """Discard entries up to and including ``index``, keeping its term.

        Only entries a snapshot covers may go: anything else would be lost for good.
        """
        state = self._state
        if index <= state.offset:
            return
        if index > state.last:
            raise UnavailableError(index)
        if index > state.snapshot.index:
            raise ValueError(
                f"cannot compact to {index}: the snapshot covers only up to {state.snapshot.index}"
            )
        state = state.copy()
        with write_lock(self.alias), transaction.atomic(using=self.alias, durable=True):
            self._compact(state, index)
        self._commit(state, None)

    def bootstrap(
        self,
        voters: Sequence[str],
        addresses: Mapping[str, str],
        node_id: str | None = None,
    ) -> tuple[HardState, list[Entry]]:
        """Write the log a brand-new cluster starts with; return what was written.

        It is ``core.bootstrap(voters)`` with each voter's address as the context of its
        membership change, so that every node learns the addresses from the log. Refuse
        (``LogNotEmptyError``) when this node already has any Raft state. With
        ``node_id``, the database is claimed for that node of the new cluster in the
        same transaction (``claim_identity``).
        """
        hard_state, entries = bootstrap(voters)
        changes = [ConfChange.decode(entry.data) for entry in entries]
        missing = [change.node_id for change in changes if not addresses.get(change.node_id)]
        if missing:
            raise ValueError(f"bootstrap: no address for {', '.join(map(repr, missing))}")
        entries = [
            replace(entry, data=replace(change, context=addresses[change.node_id]).encode())
            for entry, change in zip(entries, changes, strict=True)
        ]
        state = self._state.copy()
        using = self.alias
        with write_lock(using), transaction.atomic(using=using, durable=True):
            if (
                state.last
                or state.snapshot_saved
                or models.LogEntry.objects.using(using).exists()
                or models.HardState.objects.using(using).exists()
                or models.Snapshot.objects.using(using).exists()
            ):
                raise LogNotEmptyError(
                    f"cannot bootstrap: database {using!r} already holds Raft state "
                    f"(last index {state.last}, term {state.hard_state.term}); only a "
                    "brand-new node is bootstrapped"
                )
            if node_id is not None:
                _claim(using, node_id, cluster_id_of(addresses, voters))
            self._write(state, hard_state, entries, None)
        self._commit(state, None)
        return hard_state, entries

    def _commit(self, state: _State, snapshot: Snapshot | None) -> None:
        """Adopt ``state`` once its transaction committed."""
        if snapshot is not None and state.snapshot is snapshot.metadata:
            self._snapshot_data = snapshot.data
        self._state = state

    def _write(
        self,
        state: _State,
        hard_state: HardState | None,
        entries: Sequence[Entry],
        snapshot: Snapshot | None,
    ) -> None:
        if snapshot is not None:
            self._install_snapshot(state, snapshot)
        if entries:
            self._append(state, entries)
        if hard_state is not None:
            self._save_hard_state(hard_state)
            state.hard_state = hard_state

    def _install_snapshot(self, state: _State, snapshot: Snapshot) -> None:
        index, term = snapshot.metadata.index, snapshot.metadata.term
        if index <= state.snapshot.index:
            return
        if state.offset <= index <= state.last and self._term(state, index) == term:
            self._save_snapshot(state, snapshot)
            self._compact(state, index)
            return
        self._log().all()._raw_delete(self.alias)
        state.offset = state.last = index
        state.offset_term = state.last_term = term
        state.tail_start, state.tail, state.cached_bytes = index + 1, [], 0
        self._save_snapshot(state, snapshot)

    def _append(self, state: _State, entries: Sequence[Entry]) -> None:
        first = entries[0].index
        if first > state.last + 1:
            raise ValueError(f"gap in log: have up to {state.last}, got {first}")
        if first <= state.offset:
            entries = entries[state.offset + 1 - first :]
            if not entries:
                return
            first = entries[0].index
        if first <= state.last:
            self._log().filter(index__gte=first)._raw_delete(self.alias)
        self._insert(entries)
        state.truncate_tail(first)
        if len(entries) >= self.tail_size:
            state.tail_start = entries[-self.tail_size].index
            state.tail = list(entries[-self.tail_size :])
            state.cached_bytes = _size(state.tail)
        else:
            state.tail.extend(entries)
            state.cached_bytes += _size(entries)
        state.bound_tail(self.tail_size, self.tail_bytes)
        state.last, state.last_term = entries[-1].index, entries[-1].term

    def _insert(self, entries: Sequence[Entry]) -> None:
        """Insert log rows in as few statements as the backend allows.

        The ORM's ``bulk_create`` spends most of its time compiling SQL, several times
        what the database takes to write the rows; entries are written on every Ready.
        """
        rows = [
            (entry.index, entry.term, entry.type.value, _command_name(entry), entry.data)
            for entry in entries
        ]
        connection = connections[self.alias]
        quote = connection.ops.quote_name
        table = quote(models.LogEntry._meta.db_table)
        columns = ", ".join(quote(column) for column in _INSERT_COLUMNS)
        with connection.cursor() as cursor:
            if connection.vendor == "postgresql" and hasattr(cursor.cursor, "copy"):
                # psycopg 3: COPY streams the rows, with no statement to parse or plan.
                with cursor.cursor.copy(f"COPY {table} ({columns}) FROM STDIN") as copy:
                    for row in rows:
                        copy.write_row(row)
                return
            if connection.vendor == "sqlite":
                # Many rows per statement: executemany gives up the interpreter once per
                # row, and under load each time costs a wait behind the other threads
                # (500 rows: 1 ms on an idle process, 100 ms and more on a busy one).
                width = len(_INSERT_COLUMNS)
                per_statement = max(
                    1, min(SQLITE_ROWS_PER_INSERT, _sqlite_variables(connection) // width)
                )
                row_sql = "(" + ", ".join(["%s"] * width) + ")"
                for start in range(0, len(rows), per_statement):
                    chunk = rows[start : start + per_statement]
                    cursor.execute(
                        f"INSERT INTO {table} ({columns}) VALUES "
                        + ", ".join([row_sql] * len(chunk)),
                        [value for row in chunk for value in row],
                    )
                return
        self._log().bulk_create(
            [models.LogEntry(**dict(zip(_INSERT_COLUMNS, row, strict=True))) for row in rows],
            batch_size=BATCH_SIZE,
        )

    def _compact(self, state: _State, index: int) -> None:
        if index <= state.offset:
            return
        term = self._term(state, index)
        self._log().filter(index__lte=index)._raw_delete(self.alias)
        models.Snapshot.objects.using(self.alias).filter(pk=models.SINGLETON).update(
            compacted_index=index, compacted_term=term
        )
        state.offset, state.offset_term = index, term
        state.drop_tail_through(index)

    def _save_snapshot(self, state: _State, snapshot: Snapshot) -> None:
        metadata = snapshot.metadata
        values = {
            "index": metadata.index,
            "term": metadata.term,
            "voters": list(metadata.conf_state.voters),
            "learners": list(metadata.conf_state.learners),
            "removed": list(metadata.conf_state.removed),
            "data": snapshot.data,
            "created_at": timezone.now(),
            "compacted_index": state.offset,
            "compacted_term": state.offset_term,
        }
        rows = models.Snapshot.objects.using(self.alias).filter(pk=models.SINGLETON)
        if not rows.update(**values):
            models.Snapshot.objects.using(self.alias).create(pk=models.SINGLETON, **values)
        state.snapshot, state.snapshot_saved = metadata, True

    def _save_hard_state(self, hard_state: HardState) -> None:
        """Write the hard state row: raw SQL, since it is written on most Readies and the
        ORM's UPDATE costs several times what the database takes to run it."""
        connection = connections[self.alias]
        quote = connection.ops.quote_name
        meta = models.HardState._meta
        term, vote, commit = hard_state.term, hard_state.vote, hard_state.commit
        with connection.cursor() as cursor:
            cursor.execute(
                f"UPDATE {quote(meta.db_table)} SET {quote('term')} = %s, {quote('vote')} = %s,"
                f" {quote('commit')} = %s WHERE {quote(meta.pk.column)} = %s",
                [term, vote, commit, models.SINGLETON],
            )
            if cursor.rowcount:
                return
        models.HardState.objects.using(self.alias).create(
            pk=models.SINGLETON, term=term, vote=vote, commit=commit
        )

    def _log(self) -> QuerySet[models.LogEntry]:
        return models.LogEntry.objects.using(self.alias)


# -- whose database this is ------------------------------------------------------------


def cluster_id_of(addresses: Mapping[str, str], voters: Sequence[str] | None = None) -> str:
    """The id of the cluster founded with ``voters`` (all of ``addresses`` by default).

    Derived from the founding members and their addresses, so that every founder, each
    bootstrapping its own database from the same ``CLUSTER``, records the same id.
    """
    ids = sorted(addresses if voters is None else voters)
    founding = "\n".join(f"{node_id}={addresses.get(node_id, '')}" for node_id in ids)
    return hashlib.sha256(b"django-raft/cluster/1\n" + founding.encode()).hexdigest()[:32]


def _describe(alias: str) -> str:
    """The database ``alias`` as an operator knows it: its alias and name (file)."""
    return f"{alias!r} ({connections[alias].settings_dict.get('NAME')})"


def _stored_identity(alias: str) -> tuple[str, str] | None:
    try:
        row = (
            models.NodeIdentity.objects.using(alias)
            .filter(pk=models.SINGLETON)
            .values_list("node_id", "cluster_id")
            .first()
        )
    except DatabaseError as error:
        if models.NodeIdentity._meta.db_table in connections[alias].introspection.table_names():
            raise
        raise ImproperlyConfigured(
            f"database {_describe(alias)} lacks django_raft's tables (or their latest "
            f"migration): run `manage.py migrate --database {alias}` first"
        ) from error
    return None if row is None else (row[0], row[1])


def check_identity(alias: str, node_id: str, cluster_id: str = "") -> tuple[str, str] | None:
    """Refuse (``IdentityError``) a database recorded for another node or cluster.

    Reads only. ``cluster_id`` (when known, e.g. from the member a node joins through) is
    compared with the recorded one when that is known too. Return the recorded
    ``(node_id, cluster_id)``, or None when nothing is recorded yet.
    """
    stored = _stored_identity(alias)
    if stored is None:
        return None
    owner, owner_cluster = stored
    if owner != node_id:
        raise IdentityError(
            f"database {_describe(alias)} belongs to node {owner!r}, not to node {node_id!r}: "
            "each node needs a database of its own (DJANGO_RAFT['DATABASE'] and LOG_DATABASE). "
            "Nothing was written."
        )
    if cluster_id and owner_cluster and owner_cluster != cluster_id:
        raise IdentityError(
            f"database {_describe(alias)} holds node {owner!r} of cluster {owner_cluster}, "
            f"not of cluster {cluster_id}: a node joins another cluster only with a new "
            "(migrated, empty) database. Nothing was written."
        )
    return stored


def claim_identity(alias: str, node_id: str, cluster_id: str = "") -> None:
    """Record the database ``alias`` as node ``node_id``'s (of ``cluster_id``, if known).

    Refuse (``IdentityError``, nothing written) a database recorded for another node or
    cluster, even one claimed by another process at the same moment. A known cluster id
    fills in one recorded as unknown.
    """
    try:
        with write_lock(alias), transaction.atomic(using=alias, durable=True):
            _claim(alias, node_id, cluster_id)
    except (IntegrityError, OperationalError):
        # Another process claimed it meanwhile (SQLite refuses a writer whose read is
        # stale): what it recorded says whether this node may go on.
        check_identity(alias, node_id, cluster_id)
        raise


def _claim(alias: str, node_id: str, cluster_id: str) -> None:
    stored = check_identity(alias, node_id, cluster_id)
    rows = models.NodeIdentity.objects.using(alias)
    if stored is None:
        rows.create(pk=models.SINGLETON, node_id=node_id, cluster_id=cluster_id)
    elif cluster_id and not stored[1]:
        rows.filter(pk=models.SINGLETON).update(cluster_id=cluster_id)


# -- durability ------------------------------------------------------------------------


def make_durable(alias: str | None = None) -> None:
    """Make every commit on the database ``alias`` durable before it returns.

    SQLite: each connection (the open one, and every one opened later) is switched to
    ``journal_mode=WAL`` with ``synchronous=FULL``, so a commit is fsynced. PostgreSQL:
    a commit is durable unless ``synchronous_commit`` (or ``fsync``) is off, which is
    refused with ``ImproperlyConfigured``. Other backends are refused too.
    """
    alias = raft_settings.DATABASE if alias is None else alias
    connection = connections[alias]
    if connection.vendor not in ("sqlite", "postgresql"):
        raise ImproperlyConfigured(
            f"django_raft supports SQLite and PostgreSQL, not {connection.vendor!r} "
            f"(database {alias!r})"
        )
    connection_created.connect(_on_connection_created, dispatch_uid="django_raft.make_durable")
    _durable_aliases.add(alias)
    if connection.connection is None:
        connection.ensure_connection()  # runs _on_connection_created
    else:
        _make_connection_durable(connection)


_durable_aliases: set[str] = set()
_write_locks: dict[str, threading.RLock] = {}
_write_locks_guard = threading.Lock()


def write_lock(alias: str) -> AbstractContextManager[object]:
    """What a thread of this process holds while it writes to the database ``alias``.

    SQLite takes one writer at a time, and a transaction that read before another
    connection committed cannot write at all: the node's loop (the log) and its applier
    (the state) would fail each other's transactions when they share a file. So every
    writer of one SQLite file takes the same lock; writers of different files, or of a
    server database (which locks rows), do not wait for each other.
    """
    connection = connections[alias]
    if connection.vendor != "sqlite":
        return nullcontext()
    name = str(connection.settings_dict["NAME"])
    with _write_locks_guard:
        return _write_locks.setdefault(name, threading.RLock())


@contextmanager
def redoable_transaction(alias: str) -> Iterator[None]:
    """A transaction whose commit need not wait for the disk: its writes can be redone.

    For applying committed entries: the log they come from is durable, the applied
    index commits with their effects, so a commit lost to a power failure (never to a
    crash of the process alone) is applied again from the log on restart, with the same
    outcome. Both backends write their log in order, so the next durable commit (the
    next entries persisted) makes this one durable too. That saves one disk sync per
    Ready. SQLite runs the transaction with ``synchronous=NORMAL`` (safe in WAL mode,
    which ``make_durable`` set), PostgreSQL with ``synchronous_commit`` off.
    """
    connection = connections[alias]
    relax = (
        connection.vendor == "sqlite"
        and alias in _durable_aliases
        and not connection.in_atomic_block  # SQLite refuses the change inside one
    )
    with write_lock(alias):
        if relax:
            with connection.cursor() as cursor:
                cursor.execute("PRAGMA synchronous=NORMAL")
        try:
            with transaction.atomic(using=alias, durable=True):
                if connection.vendor == "postgresql":
                    with connection.cursor() as cursor:
                        cursor.execute("SET LOCAL synchronous_commit = off")
                yield
        finally:
            if relax:
                with connection.cursor() as cursor:
                    cursor.execute("PRAGMA synchronous=FULL")


CHECKPOINT_INTERVAL = 1.0
"""Seconds between two checkpoints of a node's SQLite files (``checkpoint``) at most."""
CHECKPOINT_BYTES = 4 << 20
"""Bytes of entries applied that make a checkpoint due sooner: each copies about this
much (SQLite's own automatic checkpoints come every 1,000 pages, 4 MiB)."""
_checkpointed: dict[str, float] = {}
_unchecked = 0
"""Bytes of entries applied since the last checkpoint."""


def checkpoint(applied: int) -> None:
    """Copy the write-ahead log of each of the node's SQLite files into the file and
    sync it, once ``CHECKPOINT_BYTES`` of entries were applied (``applied``: by the run
    just applied) or ``CHECKPOINT_INTERVAL`` passed; raise ``DiskSyncError`` if that
    fails. The apply thread calls it after each run: never the loop, which a long
    checkpoint would hold up.

    SQLite would checkpoint by itself after a commit (``wal_autocheckpoint``) and ignore
    a failure there: a failed sync of the state's file (whose commits wait for no sync,
    ``redoable_transaction``) would pass unseen. After a failed sync the kernel's cache
    no longer says what the disk holds, so the node must stop, not try again (what
    PostgreSQL learnt from "fsyncgate"): ``make_durable`` turns the automatic
    checkpoints off, and this does them instead. A checkpoint runs beside the writers
    (``PASSIVE``): it takes no ``write_lock``.
    """
    global _unchecked
    _unchecked += applied
    heavy = _unchecked >= CHECKPOINT_BYTES
    if heavy:
        _unchecked = 0
    now = time.monotonic()
    for alias in sorted(_durable_aliases):
        connection = connections[alias]
        if connection.vendor != "sqlite" or connection.is_in_memory_db():  # type: ignore[attr-defined]
            continue
        name = str(connection.settings_dict["NAME"])
        if not heavy and now - _checkpointed.get(name, 0.0) < CHECKPOINT_INTERVAL:
            continue
        _checkpointed[name] = now
        try:
            with connection.cursor() as cursor:
                cursor.execute("PRAGMA wal_checkpoint(PASSIVE)")
                cursor.fetchall()
        except OperationalError as error:
            code = getattr(error.__cause__, "sqlite_errorname", "")
            if code.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
                continue  # another connection's turn: the next run checkpoints
            raise DiskSyncError(
                f"the SQLite file {name} could not be synced to its disk ({error}): the "
                "node stops rather than trusting what the disk holds. Fix the disk, then "
                "restart it: whatever was not synced is applied again from the log, or "
                "comes from the other members"
            ) from error


def _on_connection_created(sender: Any, connection: BaseDatabaseWrapper, **kwargs: Any) -> None:
    if connection.alias in _durable_aliases:
        _make_connection_durable(connection)


def _make_connection_durable(connection: BaseDatabaseWrapper) -> None:
    with connection.cursor() as cursor:
        if connection.vendor == "sqlite":
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=FULL")
            cursor.execute("PRAGMA wal_autocheckpoint=0")  # ``checkpoint`` does it
            return
        for setting in ("synchronous_commit", "fsync"):
            cursor.execute(f"SHOW {setting}")
            (value,) = cursor.fetchone()
            if value == "off":
                raise ImproperlyConfigured(
                    f"PostgreSQL database {connection.alias!r} has {setting}=off, so a "
                    "commit may be lost on a crash and Raft could lose acknowledged entries "
                    f"or vote twice in a term. Turn {setting} on (it is the default)."
                )
