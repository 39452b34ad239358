"""Deprecated path, kept for one release: locks live in ``django_raft.client.locks``.

``from django_raft.locks import check_token`` (and ``Lock``, ``lock``) keeps working;
new code imports ``django_raft.lock`` / ``django_raft.client.locks``.
"""

from .client.locks import Lock, check_token, lock

__all__ = ["Lock", "check_token", "lock"]
