"""The documented path of the locks API: ``Lock``, ``lock`` and ``check_token``.

The code lives in ``django_raft.client.locks``; handlers import ``check_token`` from
here (``from django_raft.locks import check_token``), as the README shows.
"""

from .client.locks import Lock, check_token, lock

__all__ = ["Lock", "check_token", "lock"]
