"""Celery tasks and decorators for a Raft cluster.

``submit_async(command, **arguments)`` runs a command from a Celery worker: it opens a
session of its own for the command (one log entry) and sends the task
``django_raft.submit`` with the session's id, so however often the task runs (retries,
redelivery of an unacknowledged message), the command is applied at most once.

``@leader_only_task(lock, ttl=...)`` (under ``@app.task``) runs the task only on the
server whose node leads, holding the lock ``lock``; the function gets the lock's fencing
token as ``fencing_token`` to pass to the commands it runs, so that a handler refuses
the writes of a run that lost the lock (``django_raft.locks.check_token``).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

from celery import shared_task
from celery.result import AsyncResult

logger = logging.getLogger(__name__)


@shared_task(name="django_raft.submit", acks_late=True)
def submit(command: str, arguments: dict[str, Any], client_id: str, sequence: int = 1) -> Any:
    """Run ``command`` as number ``sequence`` of session ``client_id`` (at most once)."""
    from ...client import default_client

    return default_client().send(command, arguments, client_id, sequence)


def submit_async(command: str, /, **arguments: Any) -> AsyncResult:
    """Send ``command`` to a Celery worker; it is applied at most once, however often
    the task runs. Its result is the handler's (when a result backend is set)."""
    from ...client import default_client

    client_id = default_client().open_session()
    result: AsyncResult = submit.delay(command, arguments, client_id, 1)
    return result


def leader_only_task(lock: str, ttl: float) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: run the function only where the node leads, holding ``lock``.

    Elsewhere (or when another run holds the lock) it returns None without running.
    The function receives ``fencing_token=<the lock's token>``.
    """

    def decorator(function: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            from ...client.leader import is_leader
            from ...client.locks import Lock

            if not is_leader():
                logger.info("raft: %s skipped: this node does not lead", function.__qualname__)
                return None
            held = Lock(lock, ttl)
            token = held.acquire(blocking=False)
            if not token:
                logger.info("raft: %s skipped: lock %r is held", function.__qualname__, lock)
                return None
            try:
                return function(*args, fencing_token=token, **kwargs)
            finally:
                held.release()

        return wrapper

    return decorator
