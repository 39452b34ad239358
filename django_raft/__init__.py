"""django-raft: the Raft consensus protocol as a Django reusable app.

Add ``"django_raft"`` to ``INSTALLED_APPS`` and configure it with the
``DJANGO_RAFT`` settings dict. The consensus core lives in ``django_raft.core``
and does not depend on Django.
"""

from typing import Any

__all__ = ["command", "do", "register", "status"]


def __getattr__(name: str) -> Any:
    # Lazy, so that importing django_raft (for the AppConfig) loads no models.
    if name in ("do", "status"):
        from . import client

        return getattr(client, name)
    if name in ("command", "register"):
        from . import commands

        return getattr(commands, name)
    raise AttributeError(f"module 'django_raft' has no attribute {name!r}")
