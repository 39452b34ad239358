"""The ``DJANGO_RAFT`` settings dict, read lazily, validated in one place.

``raft_settings.NAME`` returns the user's value or the default. The object re-reads the
dict when Django's ``setting_changed`` fires (``override_settings`` in tests). Every
check lives in ``coded_problems()`` (a setting's own rule in ``_RULES``), which the system
checks and ``manage.py raftnode`` (through ``problems()``) share, together with the
core's own ``Config.validate``. Every setting is documented in docs/reference.md.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.core.signals import setting_changed

from .core import Config, ConfigError

MIN_SECRET_LENGTH = 32
"""Characters a secret needs outside development (``secrets.token_urlsafe(48)`` has 64)."""

DEFAULTS: dict[str, Any] = {
    "NODE_ID": "",
    "ADDRESS": "",
    "CLUSTER": {},
    "SECRET": "",
    "CLIENT_SECRET": "",
    "ALLOW_WEAK_SECRET": False,
    "AUTH_WINDOW": 30.0,
    "TLS_CERT": "",
    "TLS_KEY": "",
    "TLS_CA": "",
    "TLS_CLIENT_AUTH": False,
    "MAX_COMMAND_SIZE": 1 << 20,
    "DATABASE": "default",
    "LOG_DATABASE": "",
    "URL_PREFIX": "raft/",
    "TICK_INTERVAL": 0.01,
    "HEARTBEAT_INTERVAL": 0.05,
    "ELECTION_TIMEOUT": 0.15,
    "ELECTION_TIMEOUT_THRESHOLD_PERCENT": 0.8,
    "MAX_ENTRIES_PER_REQUEST": 2000,
    "ENTRIES_AFTER_SNAPSHOT": 200,
    "SNAPSHOT_THRESHOLD": 10_000,
    "MAX_SNAPSHOT_CHUNK": 1 << 20,
    "REPLICATED_MODELS": [],
    "COMMAND_TIMEOUT": 5.0,
    "SLOW_HANDLER_WARNING": 1.0,
    "SESSION_TIMEOUT": 3600.0,
    "RPC_TIMEOUT": 1.0,
    "PRE_VOTE": True,
    "CHECK_QUORUM": True,
    "SIGNAL_TASKS": {},
    "METRICS_TOKEN": "",
}
"""Every setting, with go-raft's defaults where go-raft had one."""


def _positive_number(value: Any) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value > 0
    )


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def is_node_url(value: Any) -> bool:
    """Whether ``value`` is an http:// or https:// URL with a host (a node's address)."""
    if not isinstance(value, str):
        return False
    try:
        parts = urlsplit(value)
        port = parts.port  # raises ValueError when out of range or not a number
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname) and port != 0


_SIGNAL_NAMES = frozenset(
    (
        "state_changed",
        "leader_changed",
        "term_changed",
        "committed",
        "peer_added",
        "peer_removed",
        "removed",
        "heartbeat",
        "heartbeat_interval",
        "election_timeout_threshold",
    )
)
"""The signals of ``django_raft.signals`` (a test checks that the two agree)."""

_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "NODE_ID": (lambda v: isinstance(v, str) and bool(v) and v.isprintable(), "a non-empty string"),
    "ADDRESS": (is_node_url, "an http:// or https:// URL where the other nodes reach this one"),
    "CLUSTER": (
        lambda v: (
            isinstance(v, dict)
            and all(isinstance(k, str) and k and is_node_url(u) for k, u in v.items())
        ),
        "a dict of node id -> http(s) URL (the founding members)",
    ),
    "SECRET": (lambda v: isinstance(v, str), "a string shared by every node of the cluster"),
    "CLIENT_SECRET": (lambda v: isinstance(v, str), "a string shared by nodes and clients"),
    "ALLOW_WEAK_SECRET": (lambda v: isinstance(v, bool), "True or False"),
    "AUTH_WINDOW": (
        lambda v: _positive_number(v) and v <= 3600,
        "a number of seconds in (0, 3600]",
    ),
    "TLS_CERT": (lambda v: isinstance(v, str), 'the path of a PEM certificate (chain), or ""'),
    "TLS_KEY": (lambda v: isinstance(v, str), 'the path of the certificate\'s PEM key, or ""'),
    "TLS_CA": (lambda v: isinstance(v, str), 'the path of a PEM CA bundle, or ""'),
    "TLS_CLIENT_AUTH": (lambda v: isinstance(v, bool), "True or False"),
    "MAX_COMMAND_SIZE": (_positive_int, "a positive number of bytes"),
    "DATABASE": (lambda v: isinstance(v, str) and v in settings.DATABASES, "an alias in DATABASES"),
    "LOG_DATABASE": (
        lambda v: v == "" or (isinstance(v, str) and v in settings.DATABASES),
        'an alias in DATABASES, or "" (the log lives in DATABASE)',
    ),
    "URL_PREFIX": (
        lambda v: isinstance(v, str) and not v.startswith("/") and (v == "" or v.endswith("/")),
        'a relative path ending in "/" (or "")',
    ),
    "TICK_INTERVAL": (_positive_number, "a positive number of seconds"),
    "HEARTBEAT_INTERVAL": (_positive_number, "a positive number of seconds"),
    "ELECTION_TIMEOUT": (_positive_number, "a positive number of seconds"),
    "ELECTION_TIMEOUT_THRESHOLD_PERCENT": (
        lambda v: _positive_number(v) and v <= 1,
        "a fraction in (0, 1]",
    ),
    "MAX_ENTRIES_PER_REQUEST": (_positive_int, "a positive integer"),
    "ENTRIES_AFTER_SNAPSHOT": (
        lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0,
        "a non-negative integer",
    ),
    "SNAPSHOT_THRESHOLD": (_positive_int, "a positive integer"),
    "MAX_SNAPSHOT_CHUNK": (
        lambda v: _positive_int(v) and v <= 32 << 20,
        "a positive number of bytes, at most 32 MiB (a chunk travels in one frame)",
    ),
    "REPLICATED_MODELS": (
        lambda v: (
            isinstance(v, list | tuple) and all(isinstance(m, str) and m.count(".") == 1 for m in v)
        ),
        'a list of "app_label.ModelName" strings',
    ),
    "COMMAND_TIMEOUT": (_positive_number, "a positive number of seconds"),
    "SLOW_HANDLER_WARNING": (_positive_number, "a positive number of seconds"),
    # Seconds of log time a client's session lives without a command (sessions.py).
    "SESSION_TIMEOUT": (
        lambda v: _positive_number(v) and 0.001 <= v <= 30 * 86400,
        "a number of seconds from 0.001 to 30 days",
    ),
    "RPC_TIMEOUT": (_positive_number, "a positive number of seconds"),
    "PRE_VOTE": (lambda v: isinstance(v, bool), "True or False"),
    "CHECK_QUORUM": (lambda v: isinstance(v, bool), "True or False"),
    # Signals the raftnode process forwards to Celery tasks (contrib/celery/signals.py).
    "SIGNAL_TASKS": (
        lambda v: (
            isinstance(v, dict)
            and all(k in _SIGNAL_NAMES and isinstance(t, str) and t for k, t in v.items())
        ),
        "a dict of signal name (from django_raft.signals) -> Celery task name",
    ),
    # The bearer token the metrics route asks for ("": it answers anyone).
    "METRICS_TOKEN": (
        lambda v: isinstance(v, str) and (v == "" or (v.isascii() and v.isprintable())),
        'a string of printable ASCII characters (a bearer token), or "" (public metrics)',
    ),
}


PROBLEMS: tuple[str, ...] = (
    "not-a-dict",
    "unknown",
    "heartbeat-below-tick",
    "tick-too-short",
    "election-not-above-heartbeat",
    "no-pre-vote-nor-check-quorum",
    "node-not-in-cluster",
    "core-config",
    "weak-secret",
    "weak-client-secret",
    "tls-pair",
    "tls-client-auth-without-ca",
    "tls-file",
)
"""The problems ``coded_problems`` reports that are not one setting's own rule."""


class RaftSettings:
    """Attribute access to ``settings.DJANGO_RAFT`` merged over ``DEFAULTS``."""

    def __init__(self) -> None:
        self._cached: dict[str, Any] | None = None

    def _user(self) -> dict[str, Any]:
        if self._cached is None:
            user = getattr(settings, "DJANGO_RAFT", {})
            self._cached = dict(user) if isinstance(user, dict) else {"__invalid__": user}
        return self._cached

    def __getattr__(self, name: str) -> Any:
        if name not in DEFAULTS:
            raise AttributeError(f"unknown DJANGO_RAFT setting {name!r}")
        return self._user().get(name, DEFAULTS[name])

    def reload(self) -> None:
        """Forget the cached dict; the next access reads settings again."""
        self._cached = None

    @property
    def log_database(self) -> str:
        """The alias of the database that holds the log: ``LOG_DATABASE`` or ``DATABASE``."""
        return str(self.LOG_DATABASE or self.DATABASE)

    def problems(self, node: bool = False) -> list[str]:
        """Return one message per invalid setting; ``node`` adds what a node needs to run."""
        return [message for _, message in self.coded_problems(node)]

    def coded_problems(self, node: bool = False) -> list[tuple[str, str]]:
        """Return ``(what, message)`` per invalid setting, ``what`` naming the problem.

        ``what`` is the setting's name when its value breaks its own rule, otherwise
        one of ``PROBLEMS`` (the system checks give each its own id).
        """
        user = self._user()
        if "__invalid__" in user:
            return [
                (
                    "not-a-dict",
                    f"DJANGO_RAFT must be a dict, not {type(user['__invalid__']).__name__}",
                )
            ]
        found = [
            (
                "unknown",
                f"DJANGO_RAFT[{name!r}]: unknown setting (known: {', '.join(sorted(DEFAULTS))})",
            )
            for name in user
            if name not in DEFAULTS
        ]
        for name, (rule, expected) in _RULES.items():
            value = getattr(self, name)
            if name in ("NODE_ID", "ADDRESS") and value == "" and not node:
                continue
            if not rule(value):
                found.append((name, f"DJANGO_RAFT[{name!r}] must be {expected}, not {value!r}"))
        if found:
            return found
        if self.HEARTBEAT_INTERVAL < self.TICK_INTERVAL:
            found.append(
                (
                    "heartbeat-below-tick",
                    "DJANGO_RAFT['HEARTBEAT_INTERVAL'] must be at least TICK_INTERVAL",
                )
            )
        longest = max(self.HEARTBEAT_INTERVAL, self.ELECTION_TIMEOUT)
        if not math.isfinite(longest / self.TICK_INTERVAL):
            found.append(
                (
                    "tick-too-short",
                    "DJANGO_RAFT['TICK_INTERVAL'] is too short to count HEARTBEAT_INTERVAL and "
                    "ELECTION_TIMEOUT in ticks",
                )
            )
        elif self.ticks(self.ELECTION_TIMEOUT) <= self.ticks(self.HEARTBEAT_INTERVAL):
            # Compared in ticks, as the core counts them: 54 ms is not longer than 50 ms
            # when both are 5 ticks of 10 ms.
            found.append(
                (
                    "election-not-above-heartbeat",
                    "DJANGO_RAFT['ELECTION_TIMEOUT'] must be greater than HEARTBEAT_INTERVAL, "
                    "by at least one TICK_INTERVAL",
                )
            )
        if not self.PRE_VOTE and not self.CHECK_QUORUM:
            found.append(
                (
                    "no-pre-vote-nor-check-quorum",
                    "DJANGO_RAFT['PRE_VOTE'] and CHECK_QUORUM are both off: then nothing "
                    "stops a node that missed its removal, or came back from a partition, "
                    "from forcing new terms again and again (each new term restarts a "
                    "snapshot transfer to a lagging follower from its start), and the "
                    "cluster may never settle. Keep at least one of them on",
                )
            )
        if node and self.CLUSTER and self.NODE_ID not in self.CLUSTER:
            found.append(
                (
                    "node-not-in-cluster",
                    f"DJANGO_RAFT['NODE_ID'] {self.NODE_ID!r} is not in CLUSTER; a node joining "
                    "an existing cluster leaves CLUSTER empty and is given --join",
                )
            )
        found.extend(self.security_problems(node))
        if not found:
            try:
                self.core_config("validation").validate()
            except ConfigError as error:
                found.append(("core-config", f"DJANGO_RAFT: {error}"))
        return found

    def security_problems(self, node: bool) -> list[tuple[str, str]]:
        """Secrets too weak to run a node with, and TLS files that do not make a set."""
        found: list[tuple[str, str]] = []
        if any(
            not isinstance(getattr(self, name), str)
            for name in ("SECRET", "CLIENT_SECRET", "TLS_CERT", "TLS_KEY", "TLS_CA")
        ):
            return found  # their own rules report them
        generate = 'generate one with: python -c "import secrets; print(secrets.token_urlsafe(48))"'
        if node and not self.ALLOW_WEAK_SECRET and len(self.SECRET) < MIN_SECRET_LENGTH:
            found.append(
                (
                    "weak-secret",
                    f"DJANGO_RAFT['SECRET'] has {len(self.SECRET)} characters; a node needs at "
                    f"least {MIN_SECRET_LENGTH} ({generate}, or set ALLOW_WEAK_SECRET in "
                    "development)",
                )
            )
        client = self.CLIENT_SECRET
        if client and not self.ALLOW_WEAK_SECRET and len(client) < MIN_SECRET_LENGTH:
            found.append(
                (
                    "weak-client-secret",
                    f"DJANGO_RAFT['CLIENT_SECRET'] has {len(client)} characters; it needs at "
                    f"least {MIN_SECRET_LENGTH} ({generate})",
                )
            )
        if bool(self.TLS_CERT) != bool(self.TLS_KEY):
            found.append(
                ("tls-pair", "DJANGO_RAFT['TLS_CERT'] and TLS_KEY go together: set both or neither")
            )
        if self.TLS_CLIENT_AUTH and not (self.TLS_CA and self.TLS_CERT):
            found.append(
                (
                    "tls-client-auth-without-ca",
                    "DJANGO_RAFT['TLS_CLIENT_AUTH'] needs TLS_CA (to verify the clients' "
                    "certificates) and TLS_CERT/TLS_KEY (for this node's own)",
                )
            )
        for name in ("TLS_CERT", "TLS_KEY", "TLS_CA"):
            path = getattr(self, name)
            if path and not os.access(path, os.R_OK):
                found.append(("tls-file", f"DJANGO_RAFT[{name!r}]: cannot read {path!r}"))
        return found

    def ticks(self, seconds: float) -> int:
        """Convert a duration to whole ticks (at least one)."""
        return max(1, round(seconds / self.TICK_INTERVAL))

    def core_config(self, node_id: str | None = None, applied: int = 0) -> Config:
        """Build the core's ``Config`` from these settings."""
        return Config(
            id=node_id or self.NODE_ID,
            election_tick=self.ticks(self.ELECTION_TIMEOUT),
            heartbeat_tick=self.ticks(self.HEARTBEAT_INTERVAL),
            applied=applied,
            max_entries_per_message=self.MAX_ENTRIES_PER_REQUEST,
            snapshot_threshold=self.SNAPSHOT_THRESHOLD,
            entries_after_snapshot=self.ENTRIES_AFTER_SNAPSHOT,
            max_snapshot_chunk=self.MAX_SNAPSHOT_CHUNK,
            pre_vote=self.PRE_VOTE,
            check_quorum=self.CHECK_QUORUM,
        )


raft_settings = RaftSettings()


def _reload(*, setting: str, **kwargs: Any) -> None:
    if setting == "DJANGO_RAFT":
        raft_settings.reload()


setting_changed.connect(_reload)
