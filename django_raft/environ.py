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
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
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
