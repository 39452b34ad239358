"""django-raft: the Raft consensus protocol as a Django reusable app.

Add ``"django_raft"`` to ``INSTALLED_APPS`` and configure it with the
``DJANGO_RAFT`` settings dict. The consensus core lives in ``django_raft.core``
and does not depend on Django.
"""

from typing import Any

__version__ = "0.1.0"
"""This release's version (read by ``pyproject.toml`` when the package is built)."""

__all__ = [
    "Announcement",
    "Client",
    "Election",
    "Event",
    "LeaderState",
    "LeaderWork",
    "Leadership",
    "Lock",
    "ado",
    "alock",
    "announce",
    "announcements",
    "aread",
    "awatch",
    "command",
    "do",
    "elected",
    "is_leader",
    "leader_only",
    "leadership",
    "lock",
    "read",
    "register",
    "status",
    "watch",
]

_HOMES = {
    "ado": "client.aio",
    "alock": "client.aio",
    "aread": "client.aio",
    "awatch": "client.aio",
    "Client": "client.client",
    "do": "client.client",
    "status": "client.client",
    "Lock": "client.locks",
    "lock": "client.locks",
    "read": "client.reads",
    "LeaderState": "client.leader",
    "LeaderWork": "client.leader",
    "Leadership": "client.leader",
    "is_leader": "client.leader",
    "leader_only": "client.leader",
    "leadership": "client.leader",
    "Event": "client.watch",
    "watch": "client.watch",
    "Announcement": "client.registrations",
    "announce": "client.registrations",
    "announcements": "client.registrations",
    "Election": "client.elections",
    "elected": "client.elections",
}


def __getattr__(name: str) -> Any:
    # Lazy, so that importing django_raft (for the AppConfig) loads no models.
    if name in _HOMES:
        from importlib import import_module

        return getattr(import_module(f".{_HOMES[name]}", __name__), name)
    if name in ("command", "register"):
        from . import commands

        return getattr(commands, name)
    raise AttributeError(f"module 'django_raft' has no attribute {name!r}")
