"""What runs in web, shell and worker processes: the client of the cluster.

``Client``/``do``/``status`` (``client``), linearizable reads (``reads``), locks with
fencing tokens (``locks``), their async twins (``aio``: ``ado``, ``aread``, ``alock``,
``awatch``), leader-only work (``leader``), and the monitor and cluster
operations the admin, the API and the management commands use (``monitor``,
``operations``). It speaks ``django_raft.protocol`` and never imports the node.
"""

from ..protocol.answers import raise_for
from ..protocol.send import post
from .client import Client, default_client, do, status

__all__ = ["Client", "default_client", "do", "post", "raise_for", "status"]
