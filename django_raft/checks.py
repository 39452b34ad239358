"""System checks: the ``DJANGO_RAFT`` settings, validated as the node validates them.

Each problem has its own id, so that one can be silenced (``SILENCED_SYSTEM_CHECKS``)
without hiding the others; every id is listed in docs/reference.md.
"""

from __future__ import annotations

import inspect
import os
import sys
from collections.abc import Mapping
from typing import Any

from django.apps import apps
from django.core.checks import CheckMessage, Error, Warning, register
from django.db import router
from django.db.models import Model

from . import models
from .conf import _RULES, DEFAULTS, raft_settings
from .core import ConfChange, ConfChangeType, EntryType

TAG = "django_raft"
"""The tag of django_raft's checks (``manage.py check --tag django_raft``)."""

REFERENCE = "docs/reference.md#settings"
"""Where every setting, its default and its valid range are described."""

IDS: dict[str, str] = {
    "not-a-dict": "django_raft.E001",
    "unknown": "django_raft.E002",
    "NODE_ID": "django_raft.E003",
    "ADDRESS": "django_raft.E004",
    "CLUSTER": "django_raft.E005",
    "SECRET": "django_raft.E006",
    "DATABASE": "django_raft.E007",
    "URL_PREFIX": "django_raft.E008",
    "TICK_INTERVAL": "django_raft.E009",
    "HEARTBEAT_INTERVAL": "django_raft.E010",
    "ELECTION_TIMEOUT": "django_raft.E011",
    "ELECTION_TIMEOUT_THRESHOLD_PERCENT": "django_raft.E012",
    "MAX_ENTRIES_PER_REQUEST": "django_raft.E013",
    "ENTRIES_AFTER_SNAPSHOT": "django_raft.E014",
    "SNAPSHOT_THRESHOLD": "django_raft.E015",
    "MAX_SNAPSHOT_CHUNK": "django_raft.E016",
    "REPLICATED_MODELS": "django_raft.E017",
    "COMMAND_TIMEOUT": "django_raft.E018",
    "RPC_TIMEOUT": "django_raft.E019",
    "PRE_VOTE": "django_raft.E020",
    "CHECK_QUORUM": "django_raft.E021",
    "SESSION_TIMEOUT": "django_raft.E022",
    "SIGNAL_TASKS": "django_raft.E023",
    "SLOW_HANDLER_WARNING": "django_raft.E028",
    "LOG_DATABASE": "django_raft.E027",
    "heartbeat-below-tick": "django_raft.E030",
    "tick-too-short": "django_raft.E031",
    "election-not-above-heartbeat": "django_raft.E032",
    "node-not-in-cluster": "django_raft.E033",
    "core-config": "django_raft.E034",
    "replicated-model-unknown": "django_raft.E035",
    "CLIENT_SECRET": "django_raft.E040",
    "ALLOW_WEAK_SECRET": "django_raft.E041",
    "AUTH_WINDOW": "django_raft.E042",
    "TLS_CERT": "django_raft.E043",
    "TLS_KEY": "django_raft.E044",
    "TLS_CA": "django_raft.E045",
    "TLS_CLIENT_AUTH": "django_raft.E046",
    "MAX_COMMAND_SIZE": "django_raft.E047",
    "METRICS_TOKEN": "django_raft.E048",
    "weak-secret": "django_raft.E050",
    "weak-client-secret": "django_raft.E051",
    "tls-pair": "django_raft.E052",
    "tls-client-auth-without-ca": "django_raft.E053",
    "tls-file": "django_raft.E054",
    "empty-secret": "django_raft.W001",
    "even-cluster": "django_raft.W002",
    "handler-writes-unreplicated-model": "django_raft.W003",
    "beat-schedule-local": "django_raft.W004",
    "beat-schedule-partly-replicated": "django_raft.W005",
    "stored-membership-differs": "django_raft.W006",
    "no-pre-vote-nor-check-quorum": "django_raft.E036",
}
"""The id of each problem: a setting's name for a value that breaks its own rule."""

UNLISTED = "django_raft.E099"
"""The id of a setting's problem when the setting has no id of its own above."""

_HINTS: dict[str, str] = {
    "not-a-dict": "Set DJANGO_RAFT to a dict of settings, e.g. {'NODE_ID': 'n1', ...}.",
    "unknown": "Fix the spelling of the key or remove it.",
    "heartbeat-below-tick": "Raise DJANGO_RAFT['HEARTBEAT_INTERVAL'] or lower TICK_INTERVAL.",
    "tick-too-short": "Raise DJANGO_RAFT['TICK_INTERVAL'] (the default is 0.01 s).",
    "election-not-above-heartbeat": (
        "Make DJANGO_RAFT['ELECTION_TIMEOUT'] about three times HEARTBEAT_INTERVAL "
        "(the defaults are 0.15 s and 0.05 s)."
    ),
    "node-not-in-cluster": (
        "Add this node to DJANGO_RAFT['CLUSTER'], or leave CLUSTER empty and start it with "
        "raftnode --join URL."
    ),
    "core-config": "Change the settings the message names.",
    "no-pre-vote-nor-check-quorum": (
        "Turn DJANGO_RAFT['PRE_VOTE'] or CHECK_QUORUM back on (both are on by default)."
    ),
    "weak-secret": (
        "Set DJANGO_RAFT['SECRET'] to the output of "
        '`python -c "import secrets; print(secrets.token_urlsafe(48))"` on every node.'
    ),
    "weak-client-secret": (
        "Set DJANGO_RAFT['CLIENT_SECRET'] to the output of "
        '`python -c "import secrets; print(secrets.token_urlsafe(48))"`, or leave it empty.'
    ),
    "tls-pair": "Set DJANGO_RAFT['TLS_CERT'] and TLS_KEY together.",
    "tls-client-auth-without-ca": "Set DJANGO_RAFT['TLS_CA'], TLS_CERT and TLS_KEY.",
    "tls-file": "Fix the path, or the file's permissions for the user running the node.",
}


def _hint(what: str) -> str:
    if what in _RULES:
        default = DEFAULTS[what]
        fix = f"Set DJANGO_RAFT[{what!r}] to {_RULES[what][1]}"
        fix += f", or leave it out for the default {default!r}." if default != "" else "."
    else:
        fix = _HINTS[what]
    return f"{fix} See {REFERENCE}."


@register(TAG)
def check_settings(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """Report each invalid DJANGO_RAFT setting with its own id, and risky valid ones."""
    messages: list[CheckMessage] = [
        Error(message, hint=_hint(what), id=IDS.get(what, UNLISTED))
        for what, message in raft_settings.coded_problems()
    ]
    if messages:
        return messages
    if raft_settings.NODE_ID and not raft_settings.SECRET:
        messages.append(
            Warning(
                "DJANGO_RAFT['SECRET'] is empty: anyone who can reach a node can speak Raft "
                "to it and submit commands.",
                hint=f"Set the same long random SECRET on every node. See {REFERENCE}.",
                id=IDS["empty-secret"],
            )
        )
    size = len(raft_settings.CLUSTER)
    if size and size % 2 == 0:
        messages.append(
            Warning(
                f"DJANGO_RAFT['CLUSTER'] has {size} founding members: an even-sized cluster "
                f"survives no more failures than one of {size - 1} and needs a larger majority.",
                hint=f"Found the cluster with an odd number of members (3 or 5). See {REFERENCE}.",
                id=IDS["even-cluster"],
            )
        )
    return messages


@register(TAG)
def check_replicated_models(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """Refuse a ``REPLICATED_MODELS`` entry that is not an installed model: the node
    would find out at its first snapshot, long after deployment."""
    if raft_settings.coded_problems():
        return []  # reported by check_settings
    messages: list[CheckMessage] = []
    for label in raft_settings.REPLICATED_MODELS:
        try:
            apps.get_model(label)
        except LookupError:
            messages.append(
                Error(
                    f"DJANGO_RAFT['REPLICATED_MODELS'] names {label!r}, which is not an "
                    "installed model.",
                    hint=f"Fix the label (app_label.ModelName) or install its app. "
                    f"See {REFERENCE}.",
                    id=IDS["replicated-model-unknown"],
                )
            )
    return messages


@register(TAG)
def check_handler_models(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """Warn when a command handler uses a model that snapshots would not carry.

    Best effort: the models a handler names in its code (through its module's globals),
    outside ``REPLICATED_MODELS`` and django_raft's own; only on a node, and nothing when
    the app saves its state with ``commands.state_hooks``.
    """
    from . import commands

    if not raft_settings.NODE_ID or raft_settings.coded_problems():
        return []  # not a node (or bad settings, reported by check_settings)
    if commands.get_state_hooks() is not None:
        return []
    declared = {label.lower() for label in raft_settings.REPLICATED_MODELS}
    messages: list[CheckMessage] = []
    for name in commands.names():
        handler = inspect.unwrap(commands.get(name))
        code = getattr(handler, "__code__", None)
        module = sys.modules.get(getattr(handler, "__module__", "") or "")
        if code is None or module is None:
            continue
        for used in sorted(set(code.co_names)):
            model = getattr(module, used, None)
            if not (isinstance(model, type) and issubclass(model, Model)):
                continue
            label = model._meta.label
            if model._meta.app_label == "django_raft" or label.lower() in declared:
                continue
            messages.append(
                Warning(
                    f"the handler of command {name!r} uses model {label}, which is not in "
                    "DJANGO_RAFT['REPLICATED_MODELS']: a snapshot would not carry its rows.",
                    hint=f"Add {label!r} to REPLICATED_MODELS. See {REFERENCE}.",
                    id=IDS["handler-writes-unreplicated-model"],
                    obj=name,
                )
            )
    return messages


STORED_TAG = "django_raft_stored"
"""The tag of the checks that read the node's database (``manage.py check`` runs them;
``raftnode`` logs the same at its start instead)."""


@register(STORED_TAG)
def check_stored_membership(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """Warn when the membership stored in this node's database disagrees with
    ``ADDRESS``/``CLUSTER`` (a node that moved, or settings that were never updated).

    Reads only, and only a database that exists and was migrated: a check must not
    create a database file.
    """
    if not raft_settings.NODE_ID or raft_settings.coded_problems():
        return []
    log_alias, alias = raft_settings.log_database, raft_settings.DATABASE
    try:
        if not all(_migrated(each) for each in {log_alias, alias}):
            return []
        found = membership_disagreements(
            stored_membership(log_alias, alias),
            raft_settings.NODE_ID,
            raft_settings.ADDRESS,
            raft_settings.CLUSTER,
        )
    except Exception:  # no database to read: nothing to compare
        return []
    if not found:
        return []
    return [
        Warning(
            f"the membership stored in this node's database disagrees with DJANGO_RAFT: "
            f"{'; '.join(found)}.",
            hint="The stored membership is what the cluster uses; membership changes go "
            "through the log (manage.py raftmembers). Update DJANGO_RAFT['ADDRESS'] and "
            f"CLUSTER to match it. See {REFERENCE}.",
            id=IDS["stored-membership-differs"],
        )
    ]


def stored_membership(log_alias: str, alias: str) -> dict[str, str]:
    """The members this node has stored, with their addresses ("" when none is known).

    The membership applied (``Member`` rows in ``alias``), then the membership changes
    in the log (``log_alias``) replayed over it in order: what the node starts with.
    Reads only.
    """
    members = dict(models.Member.objects.using(alias).values_list("node_id", "address"))
    rows = (
        models.LogEntry.objects.using(log_alias)
        .filter(type=EntryType.CONF_CHANGE.value)
        .order_by("index")
        .values_list("data", flat=True)
    )
    for data in rows:
        try:
            change = ConfChange.decode(bytes(data))
        except Exception:  # a stored entry the core would refuse too
            continue
        if change.type is ConfChangeType.REMOVE:
            members.pop(change.node_id, None)
        else:
            members[change.node_id] = change.context or members.get(change.node_id, "")
    return members


def membership_disagreements(
    stored: Mapping[str, str], node_id: str, address: str, cluster: Mapping[str, str]
) -> list[str]:
    """Where the stored membership and the settings (``ADDRESS``, ``CLUSTER``) disagree.

    Nothing when nothing is stored yet. Members missing from ``CLUSTER`` are not named:
    ``CLUSTER`` lists the founders, and others may have joined since.
    """
    if not stored:
        return []
    found = []
    if node_id not in stored:
        found.append(
            f"this node ({node_id!r}) is not among the stored members "
            f"({', '.join(sorted(stored))}): removed, or not added yet"
        )
    elif stored[node_id] and address and stored[node_id] != address:
        found.append(
            f"this node's stored address is {stored[node_id]!r}, its ADDRESS is {address!r}"
        )
    for member, url in sorted(cluster.items()):
        if member not in stored:
            found.append(f"CLUSTER names {member!r}, which is not a stored member")
        elif stored[member] and stored[member] != url and member != node_id:
            found.append(
                f"CLUSTER gives {member!r} the address {url!r}, the stored membership "
                f"{stored[member]!r}"
            )
    return found


def _migrated(alias: str) -> bool:
    """Whether the database ``alias`` exists and holds django_raft's tables."""
    from django.db import connections

    from .models import Member

    connection = connections[alias]
    name = str(connection.settings_dict.get("NAME") or "")
    in_memory = name in ("", ":memory:") or "mode=memory" in name
    if connection.vendor == "sqlite" and not in_memory and not os.path.exists(name):
        return False
    return Member._meta.db_table in connection.introspection.table_names()


BEAT_MODELS = (
    "django_celery_beat.PeriodicTask",
    "django_celery_beat.PeriodicTasks",
    "django_celery_beat.IntervalSchedule",
    "django_celery_beat.CrontabSchedule",
    "django_celery_beat.SolarSchedule",
    "django_celery_beat.ClockedSchedule",
)
"""django-celery-beat's schedule: the tasks, their schedules and the change marker."""
BEAT_REFERENCE = "docs/reference.md#celery"


@register(TAG)
def check_beat_schedule(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """Warn when django-celery-beat's schedule is likely not the same on every server.

    On a node, its tables must be in a database the servers share, or all replicated:
    in the node's own database and not replicated, an edit reaches one server's beat.
    """
    if not raft_settings.NODE_ID or raft_settings.coded_problems():
        return []
    if not apps.is_installed("django_celery_beat"):
        return []
    declared = {label.lower() for label in raft_settings.REPLICATED_MODELS}
    listed = [label for label in BEAT_MODELS if label.lower() in declared]
    if listed and len(listed) < len(BEAT_MODELS):
        missing = ", ".join(label for label in BEAT_MODELS if label not in listed)
        return [
            Warning(
                "DJANGO_RAFT['REPLICATED_MODELS'] lists some of django-celery-beat's models "
                f"but not {missing}: a snapshot would carry tasks without their schedules.",
                hint=f"List all of {', '.join(BEAT_MODELS)}, or none. See {BEAT_REFERENCE}.",
                id=IDS["beat-schedule-partly-replicated"],
            )
        ]
    alias = router.db_for_write(apps.get_model("django_celery_beat.PeriodicTask"))
    if listed or (alias or "default") != raft_settings.DATABASE:
        return []
    return [
        Warning(
            f"django-celery-beat's schedule is in this node's own database ({alias!r}, "
            "DJANGO_RAFT['DATABASE']) and not replicated: an edit (in the admin) reaches "
            "only this server's beat, and after a failover another server's beat "
            "dispatches its own copy of the schedule.",
            hint="Route django_celery_beat to a database every server shares, or list its "
            "models (BEAT_MODELS) in REPLICATED_MODELS and change them only with "
            f"django_raft.contrib.celery.periodic. See {BEAT_REFERENCE}.",
            id=IDS["beat-schedule-local"],
        )
    ]
