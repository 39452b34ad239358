"""A database router that keeps the Raft tables and the replicated models node-local.

A project whose ``default`` database is shared between servers adds a second, local
database for the node and points ``DJANGO_RAFT['DATABASE']`` at it::

    DATABASES = {"default": {...shared...}, "raft": {...this server only...}}
    DATABASE_ROUTERS = ["django_raft.routers.RaftRouter"]
    DJANGO_RAFT = {"DATABASE": "raft", "REPLICATED_MODELS": ["flags.Flag"], ...}

Reads and writes of django_raft's models and of every replicated model then go to
that alias, and their migrations run only there (``manage.py migrate --database raft``).
With ``DJANGO_RAFT['LOG_DATABASE']`` set, the log's own tables (the entries, the hard
state, the snapshot) go to that alias instead (``manage.py migrate --database <it>``).
"""

from __future__ import annotations

from typing import Any

from django.db.models import Model

from .conf import raft_settings

_LOG_MODELS = frozenset({"logentry", "hardstate", "snapshot"})
"""django_raft's models that live in ``LOG_DATABASE`` (the log, the hard state and the
latest snapshot)."""


def _alias(app_label: str, model_name: str | None) -> str:
    if app_label == "django_raft" and model_name in _LOG_MODELS:
        return raft_settings.log_database
    return str(raft_settings.DATABASE)


def _node_local(app_label: str, model_name: str | None) -> bool:
    if app_label == "django_raft":
        return True
    if model_name is None:
        return False
    wanted = f"{app_label}.{model_name}".lower()
    return any(name.lower() == wanted for name in raft_settings.REPLICATED_MODELS)


class RaftRouter:
    """Route django_raft's models and ``REPLICATED_MODELS`` to ``DJANGO_RAFT['DATABASE']``."""

    def db_for_read(self, model: type[Model], **hints: Any) -> str | None:
        """The node's database for the models it owns; no opinion otherwise."""
        meta = model._meta
        if not _node_local(meta.app_label, meta.model_name):
            return None
        return _alias(meta.app_label, meta.model_name)

    db_for_write = db_for_read

    def allow_relation(self, obj1: Model, obj2: Model, **hints: Any) -> bool | None:
        """Relations may not cross between the node's database and another one."""
        first = _node_local(obj1._meta.app_label, obj1._meta.model_name)
        second = _node_local(obj2._meta.app_label, obj2._meta.model_name)
        return None if first == second else False

    def allow_migrate(
        self, db: str, app_label: str, model_name: str | None = None, **hints: Any
    ) -> bool | None:
        """Create node-local tables only in the node's database, and only there."""
        if _node_local(app_label, model_name):
            if model_name is None:
                return db in (raft_settings.DATABASE, raft_settings.log_database)
            return db == _alias(app_label, model_name)
        return None
