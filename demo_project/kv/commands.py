"""The commands of the key-value store: ``kv.set``, ``kv.delete``, ``kv.incr``, ``kv.get``.

Each runs on every node, inside the transaction that applies its log entry, and writes
through ``context.using``, the node's Raft database.
"""

from __future__ import annotations

from django_raft.commands import Context, Handler

from .models import KeyValue


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


def delete(context: Context, key: str) -> bool:
    """Delete ``key``; return whether it existed."""
    deleted, _ = KeyValue.objects.using(context.using).filter(pk=_string("key", key)).delete()
    return deleted > 0


def incr(context: Context, key: str, by: int = 1) -> int:
    """Add ``by`` to the integer stored at ``key`` (0 when absent); return the new value.

    Raise ``ValueError`` when the stored value is not an integer.
    """
    key = _string("key", key)
    if not isinstance(by, int) or isinstance(by, bool):
        raise TypeError(f"by must be an integer, not {type(by).__name__}")
    row = KeyValue.objects.using(context.using).filter(pk=key).first()
    if row is None:
        set_value(context, key, str(by))
        return by
    try:
        current = int(row.value)
    except ValueError:
        raise ValueError(f"the value of {key!r} is not an integer: {row.value[:50]!r}") from None
    result = current + by
    row.value, row.version = str(result), row.version + 1
    row.save(using=context.using, update_fields=["value", "version"])
    return result


def get(context: Context, key: str) -> str | None:
    """Return the value of ``key``, or None: a read that goes through the log."""
    rows = KeyValue.objects.using(context.using).filter(pk=_string("key", key))
    value: str | None = rows.values_list("value", flat=True).first()
    return value


HANDLERS: dict[str, Handler] = {
    "kv.set": set_value,
    "kv.delete": delete,
    "kv.incr": incr,
    "kv.get": get,
}
"""The commands, by name; ``KvConfig.ready`` registers them."""
