"""A Celery beat scheduler for a Raft cluster: run a beat on every server, one dispatches.

    celery -A proj beat -S django_raft.contrib.celery.beat:RaftScheduler

Every server runs a beat with this scheduler beside its ``raftnode``. Only the beat whose
node leads dispatches, and only the slots it first claimed through the log: a slot is
an entry's name and a time its schedule fires at (interval schedules fire at the
multiples of their period since the epoch, the same on every server). The state machine
grants each slot once and remembers each entry's last granted slot, so:

- a slot is never dispatched twice, whatever the beats, failovers or pauses;
- a slot is never skipped: a beat that comes to lead claims every slot after the last
  one granted, up to now, before dispatching them in order; slots older than
  ``CATCH_UP`` seconds when a leader's beat gets to them are dropped (logged);
- the window: a beat that dies between claiming a slot and handing the task to the
  broker loses that slot (milliseconds, once per crash of a leader's beat).

Each task is sent with the id ``<entry name>@<slot in ms>`` and the header
``raft_slot``, so a task can tell which slot it runs for. Interval schedules
(``schedule``, numbers, ``timedelta``) are supported; crontab entries are not yet (they
are logged and skipped).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from celery.beat import ScheduleEntry, Scheduler
from celery.schedules import schedule as interval_schedule

logger = logging.getLogger(__name__)

CATCH_UP = 300.0
"""Seconds back a newly leading beat dispatches the slots nobody claimed."""
IDLE_INTERVAL = 0.25
"""Seconds between checks for leadership while this node does not lead."""


class RaftScheduler(Scheduler):
    """Dispatch each slot of the beat schedule once across the cluster (see the module)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._last: dict[str, int] = {}
        self._warned: set[str] = set()
        self._client: Any = None
        super().__init__(*args, **kwargs)

    def setup_schedule(self) -> None:
        self.install_default_entries(self.data)
        self.merge_inplace(self.app.conf.beat_schedule)

    def tick(self, *args: Any, **kwargs: Any) -> float:
        """Claim and send what is due when this node leads; return seconds to sleep."""
        from django_raft.leader import is_leader

        if not is_leader():
            return IDLE_INTERVAL
        now_ms = int(time.time() * 1000)
        sleep = self.max_interval
        for name, entry in list(self.schedule.items()):
            period = self._period(entry)
            if period is None:
                continue
            try:
                self._dispatch(entry, period, now_ms)
            except Exception as error:
                logger.warning("raft beat: %s not dispatched yet: %s", name, error)
                return IDLE_INTERVAL
            following = (now_ms // period + 1) * period
            sleep = min(sleep, max(0.0, (following - now_ms) / 1000))
        return sleep

    def _period(self, entry: ScheduleEntry) -> int | None:
        schedule = entry.schedule
        if isinstance(schedule, interval_schedule) and type(schedule) is interval_schedule:
            return max(1, int(schedule.run_every.total_seconds() * 1000))
        if entry.name not in self._warned:
            self._warned.add(entry.name)
            logger.warning("raft beat: %s is not an interval schedule: skipped", entry.name)
        return None

    def _dispatch(self, entry: ScheduleEntry, period: int, now_ms: int) -> None:
        from django_raft import sessions
        from django_raft.client import Client

        current = now_ms // period * period
        last = self._last.get(entry.name)
        if last is None:
            last = self._stored_last(entry.name)
        if last is None:
            slots = [current]
        else:
            oldest = max(last + period, current - int(CATCH_UP * 1000) // period * period)
            if oldest > last + period:
                logger.warning(
                    "raft beat: %s: slots from %s to %s are older than %s s: dropped",
                    entry.name,
                    last + period,
                    oldest - period,
                    CATCH_UP,
                )
            slots = list(range(oldest, current + 1, period))
        if not slots:
            return
        if self._client is None:
            self._client = Client()
        answer = self._client.do(
            sessions.BEAT_CLAIM, task=entry.name, slots=slots[-sessions.MAX_SLOTS_PER_CLAIM :]
        )
        self._last[entry.name] = int(answer["last"])
        for slot in answer["granted"]:
            self._send(entry, int(slot))

    def _stored_last(self, name: str) -> int | None:
        """The last slot granted as this server's node knows it (the log decides anyway)."""
        from django.db import close_old_connections

        from django_raft.conf import raft_settings
        from django_raft.models import BeatTask

        close_old_connections()
        rows = BeatTask.objects.using(raft_settings.DATABASE).filter(pk=name)
        last: int | None = rows.values_list("last_slot_ms", flat=True).first()
        return last

    def _send(self, entry: ScheduleEntry, slot: int) -> None:
        options = dict(entry.options)
        options["task_id"] = f"{entry.name}@{slot}"
        options["headers"] = {**options.get("headers", {}), "raft_slot": slot}
        logger.info("raft beat: sending %s for slot %s", entry.task, slot)
        self.app.send_task(entry.task, args=entry.args, kwargs=entry.kwargs, **options)
