"""Build a node's ``DJANGO_RAFT`` dict from environment variables (the twelve-factor way).

One ``settings.py`` then serves every server of the cluster; what differs between
servers (its id, its address, the secret) comes from the environment::

    from .environ import settings_from_env

    DJANGO_RAFT = settings_from_env({"REPLICATED_MODELS": ["myapp.Flag"]})

Each setting ``NAME`` of ``django_raft.conf.DEFAULTS`` is read from ``RAFT_NAME`` and
parsed after the type of its default: text as is, numbers as numbers, booleans as
``true``/``false``, ``CLUSTER`` as ``id=URL`` pairs separated by commas and lists as
comma-separated items. Other ``RAFT_*`` variables are ignored. A malformed value raises
``ImproperlyConfigured`` naming the variable and the form it expects; whether a
well-formed value is valid (a URL, a positive timeout) is left to ``manage.py check``.

For development, ``local_node()`` runs several nodes of one project on one machine: the
node id picks its port and its SQLite file (see its docstring).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from django.core.exceptions import ImproperlyConfigured

PREFIX = "RAFT_"
"""The prefix of the variables read by default."""

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def settings_from_env(
    base: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    prefix: str = PREFIX,
) -> dict[str, Any]:
    """Return ``base`` updated with every ``DJANGO_RAFT`` setting found in ``environ``.

    ``base`` holds what is the same on every node (``REPLICATED_MODELS``, timeouts);
    ``environ`` defaults to ``os.environ``. Raise ``ImproperlyConfigured`` for a value
    that cannot be parsed, naming the variable and the expected form.
    """
    from .conf import DEFAULTS  # here: settings modules import this one, conf reads settings

    environ = os.environ if environ is None else environ
    result = dict(base or {})
    for name, default in DEFAULTS.items():
        variable = prefix + name
        if variable in environ:
            result[name] = parse(variable, environ[variable], default)
    return result


@dataclass(frozen=True)
class LocalNode:
    """One node of a cluster on this machine: its id, port and database file name."""

    node_id: str
    port: int
    cluster: dict[str, str]
    """Every node's id and address."""

    @property
    def address(self) -> str:
        """Where this node listens, on 127.0.0.1."""
        return self.cluster[self.node_id]

    @property
    def database(self) -> str:
        """The node's own SQLite file name, e.g. ``db-n2.sqlite3``."""
        return f"db-{self.node_id}.sqlite3"

    @property
    def settings(self) -> dict[str, Any]:
        """``NODE_ID``, ``ADDRESS`` and ``CLUSTER`` for ``DJANGO_RAFT``."""
        return {"NODE_ID": self.node_id, "ADDRESS": self.address, "CLUSTER": dict(self.cluster)}


def local_node(
    size: int = 3,
    port: int = 8001,
    environ: Mapping[str, str] | None = None,
    prefix: str = PREFIX,
) -> LocalNode:
    """The node of a ``size``-node cluster on this machine that this process is (development).

    The nodes are ``n1`` to ``n<size>``; ``RAFT_NODE_ID`` says which one this process
    is (``n1`` when unset, as for a web process or a shell), and node ``nK`` listens on
    127.0.0.1 at ``port + K - 1`` (``RAFT_LOCAL_PORT`` overrides ``port``). Use its
    ``settings`` in ``DJANGO_RAFT`` and its ``database`` as the SQLite file name, so that
    each node has a database of its own. Raise ``ImproperlyConfigured`` for another id.
    """
    environ = os.environ if environ is None else environ
    first = port
    if prefix + "LOCAL_PORT" in environ:
        first = parse(prefix + "LOCAL_PORT", environ[prefix + "LOCAL_PORT"], port)
    ids = [f"n{k}" for k in range(1, size + 1)]
    node_id = environ.get(prefix + "NODE_ID", "").strip() or ids[0]
    if node_id not in ids:
        _fail(prefix + "NODE_ID", node_id, f"one of {', '.join(ids)} for local_node(size={size})")
    if not 0 < first <= 65536 - size:
        _fail(prefix + "LOCAL_PORT", str(first), f"a port from 1 to {65536 - size}")
    cluster = {n: f"http://127.0.0.1:{first + k}" for k, n in enumerate(ids)}
    return LocalNode(node_id, first + ids.index(node_id), cluster)


def parse(variable: str, text: str, default: Any) -> Any:
    """Parse ``text``, the value of ``variable``, into the type of ``default``."""
    if isinstance(default, bool):
        lowered = text.strip().lower()
        if lowered in _TRUE or lowered in _FALSE:
            return lowered in _TRUE
        return _fail(variable, text, "true or false (also 1/0, yes/no, on/off)")
    if isinstance(default, int):
        try:
            return int(text.strip())
        except ValueError:
            return _fail(variable, text, "a whole number, e.g. 10000")
    if isinstance(default, float):
        try:
            value = float(text.strip())
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            return _fail(variable, text, "a number of seconds, e.g. 0.15")
        return value
    if isinstance(default, dict):
        return _cluster(variable, text)
    if isinstance(default, list | tuple):
        return [item.strip() for item in text.split(",") if item.strip()]
    return text


def _cluster(variable: str, text: str) -> dict[str, str]:
    expected = (
        "id=URL pairs separated by commas, e.g. n1=http://10.0.0.1:8001,n2=http://10.0.0.2:8001"
    )
    members: dict[str, str] = {}
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        node_id, separator, address = (part.strip() for part in item.partition("="))
        if not separator or not node_id or not address:
            _fail(variable, text, expected + f" ({item!r} is not id=URL)")
        if node_id in members:
            _fail(variable, text, expected + f" ({node_id!r} appears twice)")
        members[node_id] = address
    return members


def _fail(variable: str, text: str, expected: str) -> Any:
    raise ImproperlyConfigured(f"{variable} must be {expected}; it is {text!r}")
