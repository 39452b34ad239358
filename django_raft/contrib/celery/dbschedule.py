"""The Raft beat with django-celery-beat's database schedule.

    celery -A proj beat -S django_raft.contrib.celery.dbschedule:RaftDatabaseScheduler

Needs ``pip install django-raft[celery-beat-db]`` and ``django_celery_beat`` in
``INSTALLED_APPS``. The schedule is the enabled ``PeriodicTask`` rows (interval,
crontab, solar and clocked) plus the project's ``beat_schedule`` (a row wins over an
entry of the same name); it is read again when django-celery-beat's change marker
(``PeriodicTasks.last_update``) moves, so an edit in the admin takes effect at the
leader's next tick, and at least every ``RELOAD`` seconds. Dispatch is
``RaftScheduler``'s: each slot is claimed through the log before it is sent.

A row maps to a ``Window``: no slot before its ``start_time`` (which also anchors an
interval: slots at ``start_time + k * period``) or before its last change
(``date_changed``: an enabled or edited task starts afresh, and nothing it missed while
disabled is caught up), none from its ``expires`` on; a ``one_off`` task fires its first
slot since its last change, once; a clocked task fires once at its time, however late.

The scheduler only reads the tables: what was dispatched lives in the log, so it leaves
``last_run_at``, ``total_run_count`` and ``enabled`` as they are (a one-off task that
fired stays enabled and does not fire again). The tables must be the same on every
server: in a database all servers share, or replicated (docs/reference.md, "Celery").
"""

from __future__ import annotations

import json
import logging
import time
from datetime import datetime
from typing import Any

from celery.beat import ScheduleEntry
from django.apps import apps
from django.core.exceptions import ImproperlyConfigured
from django.db import DatabaseError, InterfaceError, close_old_connections
from django.utils import timezone

from .beat import OPEN, RaftScheduler, Window, to_ms

logger = logging.getLogger(__name__)

RELOAD = 300.0
"""Seconds after which the schedule is read again even if its change marker did not move."""
MAX_INTERVAL = 5.0
"""The longest sleep between ticks unless ``beat_max_loop_interval`` says otherwise."""
NO_CHANGE = object()


class RaftDatabaseScheduler(RaftScheduler):
    """``RaftScheduler`` over django-celery-beat's ``PeriodicTask`` rows (see the module)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if not apps.is_installed("django_celery_beat"):
            raise ImproperlyConfigured(
                "RaftDatabaseScheduler reads django-celery-beat's schedule: "
                "pip install django-raft[celery-beat-db] and add 'django_celery_beat' "
                "to INSTALLED_APPS (or use django_raft.contrib.celery.beat:RaftScheduler)"
            )
        self._rows: dict[str, ScheduleEntry] = {}
        self._windows: dict[str, Window] = {}
        self._change: Any = NO_CHANGE
        self._read_at = float("-inf")
        self._refused: dict[str, str] = {}
        super().__init__(*args, **kwargs)
        self.max_interval = (
            kwargs.get("max_interval") or self.app.conf.beat_max_loop_interval or MAX_INTERVAL
        )

    def entries(self) -> dict[str, ScheduleEntry]:
        """The ``beat_schedule`` entries and the enabled rows (a row wins on a name)."""
        return {**self.schedule, **self._rows}

    def window(self, name: str) -> Window:
        """A row's window (start, last change, expiry, one-off); an entry's is open."""
        return self._windows.get(name, OPEN)

    def refresh(self) -> None:
        """Read the rows again when they changed (or ``RELOAD`` s passed)."""
        from django_celery_beat.models import PeriodicTask, PeriodicTasks

        close_old_connections()
        try:
            change = PeriodicTasks.last_change()
            if change == self._change and time.monotonic() - self._read_at < RELOAD:
                return
            rows = list(PeriodicTask.objects.enabled())
        except (DatabaseError, InterfaceError) as error:
            logger.warning("raft beat: database schedule not read (kept as it was): %s", error)
            return
        if self._change is not NO_CHANGE and change != self._change:
            logger.info("raft beat: the database schedule changed")
        self.load(rows)
        self._change, self._read_at = change, time.monotonic()

    def load(self, rows: list[Any]) -> None:
        """Take ``rows`` (enabled ``PeriodicTask``s) as the database schedule."""
        entries: dict[str, ScheduleEntry] = {}
        windows: dict[str, Window] = {}
        for row in rows:
            try:
                entries[row.name], windows[row.name] = self._entry(row), row_window(row)
            except Exception as error:
                if self._refused.get(row.name) != str(error):
                    self._refused[row.name] = str(error)
                    logger.warning("raft beat: periodic task %s skipped: %s", row.name, error)
        self._rows, self._windows = entries, windows

    def _entry(self, row: Any) -> ScheduleEntry:
        """The beat entry of a ``PeriodicTask`` row; ValueError when the row is unusable."""
        if row.scheduler is None:
            raise ValueError("no schedule set (interval, crontab, solar or clocked)")
        args, kwargs = json.loads(row.args or "[]"), json.loads(row.kwargs or "{}")
        headers = json.loads(row.headers or "{}")
        if not (isinstance(args, list) and isinstance(kwargs, dict) and isinstance(headers, dict)):
            raise ValueError("args must be a JSON list, kwargs and headers JSON objects")
        options: dict[str, Any] = {
            option: getattr(row, option)
            for option in ("queue", "exchange", "routing_key", "priority")
            if getattr(row, option) is not None
        }
        if row.expires_:  # a message not run by then is dropped (django-celery-beat's way)
            options["expires"] = row.expires_
        options["headers"] = {**headers, "periodic_task_name": row.name}
        return ScheduleEntry(
            name=row.name,
            task=row.task,
            schedule=row.schedule,
            args=tuple(args),
            kwargs=kwargs,
            options=options,
            app=self.app,
        )


def row_window(row: Any) -> Window:
    """When a ``PeriodicTask`` row's slots may fire (see the module)."""
    expires = None if row.expires is None else to_ms(_aware(row.expires))
    if row.clocked is not None:
        return Window(expires_ms=expires, one_off=True)
    start = None if row.start_time is None else to_ms(_aware(row.start_time))
    changed = to_ms(_aware(row.date_changed))
    return Window(
        origin_ms=0 if start is None else start,
        not_before_ms=changed if start is None else max(start, changed),
        expires_ms=expires,
        one_off=bool(row.one_off),
    )


def _aware(moment: datetime) -> datetime:
    """A stored datetime made aware (naive ones are in Django's ``TIME_ZONE``)."""
    if timezone.is_naive(moment):
        return timezone.make_aware(moment, timezone.get_default_timezone())
    return moment
