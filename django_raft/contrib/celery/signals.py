"""Forward Raft signals to Celery tasks (the ``SIGNAL_TASKS`` setting).

Signals are sent only in the ``raftnode`` process, on its signal dispatcher thread; each
one named in ``SIGNAL_TASKS`` is sent on as a Celery task (``send_task`` by name, so the
node needs only the broker settings of the project's Celery app, not its tasks) with
the keyword arguments ``signal``, ``node_id``, ``value`` and ``prev_value``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from ... import signals

logger = logging.getLogger(__name__)

_connected: dict[str, Any] = {}


def forward_signals(mapping: Mapping[str, str]) -> None:
    """Connect a receiver sending the task ``mapping[name]`` for each signal ``name``."""
    for name, task in mapping.items():
        signal = getattr(signals, name)
        if name in _connected:
            signal.disconnect(_connected.pop(name))

        def forward(sender: Any, name: str = name, task: str = task, **arguments: Any) -> None:
            from celery import current_app

            arguments.pop("signal", None)
            kwargs = {"signal": name, **{key: arguments.get(key) for key in _FIELDS}}
            try:
                current_app.send_task(task, kwargs=kwargs)
            except Exception:
                logger.exception("raft: could not send %s to Celery task %s", name, task)

        signal.connect(forward, weak=False, dispatch_uid=f"django_raft.celery.{name}")
        _connected[name] = forward


_FIELDS = ("node_id", "value", "prev_value")
