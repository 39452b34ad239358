"""Record what applying each log entry gave, for the admin's log (``EntryOutcome`` rows).

The state machine calls ``record`` in the transaction that applies a run of entries, so
the rows commit with the handlers' writes and the applied index, and every node records
the same ones. Only outcomes that say something are stored: an error, a result other
than None (its JSON cut to ``MAX_RESULT_LENGTH`` characters), rows changed or a command
that did not run (the notes ``watch.Recorder`` takes, for watches). An entry at or below
the applied index without a row was applied, gave None and changed nothing seen; one
above it is pending. That keeps the apply path to one INSERT per run, and none for
commands that return nothing and change nothing.
"""

from __future__ import annotations

import functools
import json
from json.encoder import encode_basestring
from typing import Any

from django.db import connections

from ..models import MAX_RESULT_LENGTH, EntryOutcome
from .outcome import Outcome

__all__ = ["ROWS_PER_INSERT", "record"]

ROWS_PER_INSERT = 160
"""Rows per INSERT (6 parameters each: within SQLite's 999)."""
_WIDTH = 6

_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def record(
    alias: str, outcomes: dict[int, Outcome], notes: dict[int, tuple[str, bool]] | None = None
) -> None:
    """Store the outcomes of a run that say something: errors, results other than None,
    and those with ``notes`` (by index: the rows changed as JSON, whether it ran)."""
    rows: list[Any] = []
    notes = notes or {}
    for index, outcome in outcomes.items():
        changes, ran = notes.get(index, ("", True))
        if not outcome.ok:
            rows += (index, False, outcome.error, False, changes, ran)
        elif outcome.value is not None or index in notes:
            text = _json(outcome.value)
            cut = len(text) > MAX_RESULT_LENGTH
            rows += (index, True, text[:MAX_RESULT_LENGTH] if cut else text, cut, changes, ran)
    if not rows:
        return
    connection = connections[alias]
    connection.ensure_connection()
    step = _WIDTH * ROWS_PER_INSERT
    for start in range(0, len(rows), step):
        chunk = rows[start : start + step]
        statement = _insert(connection.vendor, len(chunk) // _WIDTH)
        if connection.vendor == "sqlite":
            # Straight to sqlite3: Django's cursor would rewrite every %s of the statement.
            connection.connection.execute(statement, chunk)
        else:
            with connection.cursor() as cursor:
                cursor.execute(statement, chunk)


def _json(value: Any) -> str:
    """``value`` (already JSON, as ``statemachine._as_json`` returns it) as compact JSON."""
    kind = type(value)
    if kind is int:
        return str(value)
    if kind is str:
        return encode_basestring(value)
    return _encode(value)


@functools.cache
def _insert(vendor: str, count: int) -> str:
    """An INSERT of ``count`` outcome rows, in the placeholders of ``vendor``'s driver.

    There should be no row yet for an entry being applied; should one be left over, it is
    replaced rather than an error that would stop the node applying.
    """
    placeholder = "?" if vendor == "sqlite" else "%s"
    row = "(" + ", ".join([placeholder] * _WIDTH) + ")"
    index, *others = [f'"{field.column}"' for field in EntryOutcome._meta.concrete_fields]
    updates = ", ".join(f"{column} = excluded.{column}" for column in others)
    return (
        f'INSERT INTO "{EntryOutcome._meta.db_table}" ({index}, {", ".join(others)}) '
        f"VALUES {', '.join([row] * count)} ON CONFLICT ({index}) DO UPDATE SET {updates}"
    )
