"""The commands of the key-value store: ``kv.set``, ``kv.delete``, ``kv.incr``, ``kv.get``.

Each runs on every node, inside the transaction that applies its log entry, and writes
through ``context.using``, the node's Raft database. ``kv.set`` and ``kv.incr`` are
batch handlers: a run of them is written with one read and one upsert.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from django_raft.client.locks import check_token
from django_raft.commands import Call, Context, Handler

from .models import KeyValue

Checked = TypeVar("Checked", bound=tuple[Any, ...])


def _string(name: str, value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a string, not {type(value).__name__}")
    return value


def set_value(context: Context, key: str, value: str) -> int:
    """Set ``key`` to ``value``; return the key's new version."""
    key, value = _string("key", key), _string("value", value)
    rows = KeyValue.objects.using(context.using)
    row = rows.filter(pk=key).first()
    if row is None:
        rows.create(key=key, value=value, version=1)
        return 1
    row.value, row.version = value, row.version + 1
    row.save(using=context.using, update_fields=["value", "version"])
    return row.version


def _set_arguments(key: str, value: str) -> tuple[str, str]:
    """Check one call's arguments as ``set_value`` would (same errors)."""
    return _string("key", key), _string("value", value)


def _checked(
    calls: Sequence[Call], check: Callable[..., Checked]
) -> tuple[list[Any], list[Checked | None]]:
    """Check each call's arguments with ``check``: the results so far (the error of a
    call with bad arguments, None for the others) and what each call checked to (None
    for the bad ones)."""
    results: list[Any] = []
    checked: list[Checked | None] = []
    for call in calls:
        try:
            checked.append(check(**call.arguments))
        except TypeError as error:
            checked.append(None)
            results.append(error)
            continue
        results.append(None)
    return results, checked


def set_values(context: Context, calls: Sequence[Call]) -> list[Any]:
    """``kv.set`` for a run of calls: one query reads the keys, one upsert writes them.

    Each result is the key's new version, or the error of a call with bad arguments
    (which changes nothing), exactly as calling ``set_value`` once per call would give.
    """
    results, checked = _checked(calls, _set_arguments)
    values: dict[str, tuple[str, int]] = {}
    keys = {item[0] for item in checked if item is not None}
    rows = KeyValue.objects.using(context.using)
    versions = dict(rows.filter(pk__in=keys).values_list("key", "version"))
    for position, item in enumerate(checked):
        if item is None:
            continue
        key, value = item
        version = versions.get(key, 0) + 1
        versions[key] = version
        values[key] = (value, version)
        results[position] = version
        context.changed(KeyValue, key, call=calls[position])  # bulk_create sends no signal
    _write(context, values)
    return results


def _write(context: Context, values: dict[str, tuple[str, int]]) -> None:
    """Store each key's value and version with one upsert."""
    if values:
        KeyValue.objects.using(context.using).bulk_create(
            [KeyValue(key=k, value=v, version=n) for k, (v, n) in values.items()],
            update_conflicts=True,
            unique_fields=["key"],
            update_fields=["value", "version"],
        )


def delete(context: Context, key: str) -> bool:
    """Delete ``key``; return whether it existed."""
    deleted, _ = KeyValue.objects.using(context.using).filter(pk=_string("key", key)).delete()
    return deleted > 0


def incr(context: Context, key: str, by: int = 1) -> int:
    """Add ``by`` to the integer stored at ``key`` (0 when absent); return the new value.

    Raise ``ValueError`` when the stored value is not an integer.
    """
    key, by = _incr_arguments(key, by)
    row = KeyValue.objects.using(context.using).filter(pk=key).first()
    if row is None:
        set_value(context, key, str(by))
        return by
    result = _integer(key, row.value) + by
    row.value, row.version = str(result), row.version + 1
    row.save(using=context.using, update_fields=["value", "version"])
    return result


def _incr_arguments(key: str, by: int = 1) -> tuple[str, int]:
    """Check one call's arguments as ``incr`` would (same errors)."""
    key = _string("key", key)
    if not isinstance(by, int) or isinstance(by, bool):
        raise TypeError(f"by must be an integer, not {type(by).__name__}")
    return key, by


def incr_values(context: Context, calls: Sequence[Call]) -> list[Any]:
    """``kv.incr`` for a run of calls: one query reads the keys, one upsert writes them.

    Each result is the new value, or the error of a call that fails (bad arguments, a
    stored value that is not an integer), which changes nothing: as calling ``incr``
    once per call would give.
    """
    results, checked = _checked(calls, _incr_arguments)
    keys = {item[0] for item in checked if item is not None}
    rows = KeyValue.objects.using(context.using).filter(pk__in=keys)
    stored = {
        key: (value, version) for key, value, version in rows.values_list("key", "value", "version")
    }
    values: dict[str, tuple[str, int]] = {}
    for position, item in enumerate(checked):
        if item is None:
            continue
        key, by = item
        row = stored.get(key)
        try:
            if row is None:
                result, version = by, 1
            else:
                result, version = _integer(key, row[0]) + by, row[1] + 1
            stored[key] = values[key] = (str(result), version)
        except ValueError as error:
            results[position] = error
            continue
        results[position] = result
        context.changed(KeyValue, key, call=calls[position])
    _write(context, values)
    return results


def _integer(key: str, value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"the value of {key!r} is not an integer: {value[:50]!r}") from None


def get(context: Context, key: str) -> str | None:
    """Return the value of ``key``, or None: a read that goes through the log."""
    rows = KeyValue.objects.using(context.using).filter(pk=_string("key", key))
    value: str | None = rows.values_list("value", flat=True).first()
    return value


def fenced_set(context: Context, key: str, value: str, lock: str, token: int) -> int:
    """Set ``key`` only for the current holder of ``lock`` (``StaleTokenError`` if not)."""
    check_token(context, lock, token)
    return set_value(context, key, value)


def read(context: Context, key: str) -> str | None:
    """Return the value of ``key`` from this node's database: a read-only command."""
    return get(context, key)


HANDLERS: dict[str, Handler] = {
    "kv.set": set_value,
    "kv.delete": delete,
    "kv.incr": incr,
    "kv.get": get,
    "kv.fenced_set": fenced_set,
    "kv.read": read,
}
"""The commands, by name; ``KvConfig.ready`` registers them."""

BATCH_HANDLERS: dict[str, Handler] = {"kv.set": set_values, "kv.incr": incr_values}
"""Commands whose handler takes a run of calls (they replace the same name above)."""

READ_ONLY: frozenset[str] = frozenset({"kv.read"})
"""Commands that only read: run on one node after a ReadIndex round, never logged."""
