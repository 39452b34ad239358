"""Log entries as people read them: decoded payload, a short preview, size, applied or not,
and the outcome of applying them.

Shared by the admin, the REST API and ``manage.py raftlog``. It only reads the node-local
database.
"""

from __future__ import annotations

import json
from typing import Any

from django.db.models import Model

from .conf import raft_settings
from .core import ConfChange, EntryType, RaftError
from .models import SINGLETON, AppliedState, EntryOutcome, HardState, LogEntry, Snapshot
from .protocol.wire import WireError, decode_command

PREVIEW_LENGTH = 80
SCAN_WINDOW = 100_000
"""A filter by command name reads at most this many entries per request, newest first.

There is no index on the command name (it would cost every append); within this window
the newest matches come first, so a common command's first page is quick, and a rare
one's costs at most a scan of the window. Older entries are searched window by window.
"""
SCAN_MATCHES = 1000
"""The admin's filter by command stops at this many matches (20 pages); the next search
starts below the last of them."""


def applied_index() -> int:
    """The last index applied on this node (0 when nothing is)."""
    row = AppliedState.objects.using(raft_settings.DATABASE).filter(pk=SINGLETON).first()
    return row.applied_index if row is not None else 0


def alias_of(model: type[Model]) -> str:
    """The alias a django_raft model is read from: the log's own tables from
    ``LOG_DATABASE`` (when set), the others from ``DATABASE``."""
    if model in (LogEntry, HardState, Snapshot):
        return raft_settings.log_database
    return str(raft_settings.DATABASE)


def outcomes_joined() -> bool:
    """Whether entries and their outcomes are in one database (one query reads both)."""
    return raft_settings.log_database == raft_settings.DATABASE


def entries() -> Any:
    """Every stored entry, newest first, with its recorded outcome when it is in the same
    database (else ``outcome`` reads it), from the node-local database."""
    rows = LogEntry.objects.using(raft_settings.log_database).order_by("-index")
    return rows.select_related("outcome") if outcomes_joined() else rows


def log_bounds() -> tuple[int | None, int | None]:
    """The first and last stored index, each read from one end of the primary key.

    (Two queries: SQLite answers MIN and MAX from the index only when each is alone.)
    """
    indexes = LogEntry.objects.using(raft_settings.log_database).values_list("index", flat=True)
    return indexes.order_by("index").first(), indexes.order_by("-index").first()


def scan_window(before: int | None = None) -> tuple[int, int]:
    """The indexes ``(first, last)`` a filter by command scans: the ``SCAN_WINDOW`` stored
    entries below ``before`` (from the end of the log when None); empty when
    ``first > last``."""
    first, last = log_bounds()
    if first is None or last is None:
        return 1, 0
    top = last if before is None else min(last, before - 1)
    return max(first, top - SCAN_WINDOW + 1), top


def term_range(term: int) -> tuple[int, int]:
    """The indexes of the entries of ``term``: ``(first, last)``, empty when ``first > last``.

    Terms never decrease along a log, so each term's entries are one run of indexes,
    found by bisecting the primary key: a few point reads instead of a scan of the log.
    """
    first, last = log_bounds()
    if first is None or last is None:
        return 1, 0
    rows = LogEntry.objects.using(raft_settings.log_database)

    def term_at(index: int) -> int:
        found = rows.filter(index=index).values_list("term", flat=True).first()
        return found if found is not None else 0

    def first_at_least(wanted: int) -> int:
        lo, hi = first, last + 1
        while lo < hi:
            mid = (lo + hi) // 2
            if term_at(mid) < wanted:
                lo = mid + 1
            else:
                hi = mid
        return lo

    return first_at_least(term), first_at_least(term + 1) - 1


def decode(entry: LogEntry) -> dict[str, Any]:
    """Decode an entry's data: a command's name and arguments, or a membership change."""
    data = bytes(entry.data)
    if entry.type == EntryType.CONF_CHANGE.value:
        try:
            change = ConfChange.decode(data)
        except (RaftError, ValueError, KeyError, TypeError) as error:
            return {"kind": "undecodable", "error": str(error)}
        return {
            "kind": "membership change",
            "change": change.type.value,
            "node_id": change.node_id,
            "address": change.context,
        }
    if not data:
        return {"kind": "no-op"}
    try:
        name, arguments, client_id, sequence = decode_command(data)
    except WireError as error:
        return {"kind": "undecodable", "error": str(error)}
    payload: dict[str, Any] = {"kind": "command", "name": name, "arguments": arguments}
    if client_id:
        payload.update(client_id=client_id, sequence=sequence)
    return payload


def preview(payload: dict[str, Any]) -> str:
    """A one-line summary of a decoded payload, at most ``PREVIEW_LENGTH`` characters."""
    kind = payload.get("kind")
    if kind == "command":
        text = json.dumps(payload["arguments"], separators=(", ", ": "), ensure_ascii=False)
    elif kind == "membership change":
        text = f"{payload['change']} {payload['node_id']} {payload['address']}".strip()
    elif kind == "undecodable":
        text = f"undecodable: {payload['error']}"
    else:
        text = "(empty: a new leader's first entry)"
    return _cut(text)


def outcome(entry: LogEntry, applied: int) -> dict[str, Any]:
    """What applying the entry gave on this node, as JSON-ready data.

    ``{"status": "error", "error"}`` or ``{"status": "ok", "result"}`` as recorded; with
    nothing recorded, ``{"status": "ok", "result": None}`` at or below the applied index
    (it was applied and gave None), else ``{"status": "pending"}``. A result too long to
    keep whole has ``"truncated": true``, ``result`` None and its JSON's first
    ``MAX_RESULT_LENGTH`` characters in ``result_text``.
    """
    if outcomes_joined():
        try:
            row: EntryOutcome | None = entry.outcome
        except EntryOutcome.DoesNotExist:
            row = None
    else:
        row = EntryOutcome.objects.using(raft_settings.DATABASE).filter(pk=entry.index).first()
    if row is None:
        return {"status": "pending"} if entry.index > applied else {"status": "ok", "result": None}
    if not row.ok:
        return {"status": "error", "error": row.text}
    if row.truncated:
        return {"status": "ok", "result": None, "truncated": True, "result_text": row.text}
    return {"status": "ok", "result": json.loads(row.text)}


def outcome_preview(described: dict[str, Any]) -> str:
    """A one-line summary of an ``outcome``, at most ``PREVIEW_LENGTH`` characters."""
    status = described["status"]
    if status == "error":
        text = f"error: {described['error']}"
    elif status == "pending":
        text = "pending"
    elif "result_text" in described:
        text = f"ok: {described['result_text']}"
    elif described["result"] is None:
        text = "ok"
    else:
        text = "ok: " + json.dumps(described["result"], separators=(", ", ": "), ensure_ascii=False)
    return _cut(text)


def _cut(text: str) -> str:
    return text if len(text) <= PREVIEW_LENGTH else text[: PREVIEW_LENGTH - 1] + "…"


def describe(entry: LogEntry, applied: int) -> dict[str, Any]:
    """The entry as JSON-ready data: index, term, type, command, payload, preview, size,
    whether it is applied and its outcome."""
    payload = decode(entry)
    return {
        "index": entry.index,
        "term": entry.term,
        "type": LogEntry.Type(entry.type).label if entry.type in LogEntry.Type.values else "?",
        "command": entry.command,
        "preview": preview(payload),
        "size": len(entry.data),
        "applied": entry.index <= applied,
        "outcome": outcome(entry, applied),
        "payload": payload,
    }
