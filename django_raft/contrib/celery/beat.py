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
(``schedule``, numbers, ``timedelta``) and ``crontab`` entries are supported (a crontab
entry with no slot granted yet starts at its next time after the beat starts); solar
schedules are not (logged and skipped).
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from typing import Any

from celery.beat import ScheduleEntry, Scheduler
from celery.schedules import crontab
from celery.schedules import schedule as interval_schedule

logger = logging.getLogger(__name__)

CATCH_UP = 300.0
"""Seconds back a newly leading beat dispatches the slots nobody claimed."""
IDLE_INTERVAL = 0.25
"""Seconds between checks for leadership while this node does not lead."""


MAX_SLOTS = 1000
"""The most slots computed at once (a schedule far behind is caught up over ticks)."""


def due_slots(schedule: Any, last: int | None, now_ms: int) -> list[int]:
    """The slots (ms since the epoch) after ``last`` up to ``now_ms``, in order.

    An interval schedule fires at the multiples of its period since the epoch (with no
    ``last``: the latest one); a crontab at its times, in its timezone, after ``last``.
    """
    if isinstance(schedule, crontab):
        slots: list[int] = []
        moment = last if last is not None else now_ms
        while len(slots) < MAX_SLOTS:
            moment = next_slot(schedule, moment)
            if moment > now_ms:
                break
            slots.append(moment)
        return slots
    period = _period(schedule)
    current = now_ms // period * period
    if last is None:
        return [current]
    start = max(last + period, current - (MAX_SLOTS - 1) * period)
    return list(range(start, current + 1, period))


def next_slot(schedule: Any, after: int) -> int:
    """The first slot of ``schedule`` after ``after`` (ms since the epoch)."""
    if isinstance(schedule, crontab):
        moment = datetime.fromtimestamp(after / 1000, UTC)
        base, delta, _ = schedule.remaining_delta(moment)
        return int((base + delta).timestamp() * 1000)
    period = _period(schedule)
    return (after // period + 1) * period


def _period(schedule: Any) -> int:
    return max(1, int(schedule.run_every.total_seconds() * 1000))


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
            if not isinstance(entry.schedule, interval_schedule | crontab):
                if name not in self._warned:
                    self._warned.add(name)
                    logger.warning("raft beat: %s: neither interval nor crontab: skipped", name)
                continue
            try:
                following = self._dispatch(entry, now_ms)
            except Exception as error:
                logger.warning("raft beat: %s not dispatched yet: %s", name, error)
                return IDLE_INTERVAL
            sleep = min(sleep, max(0.0, (following - now_ms) / 1000))
        return sleep

    def _dispatch(self, entry: ScheduleEntry, now_ms: int) -> int:
        """Claim and send the entry's due slots; return when its next slot falls (ms)."""
        from django_raft import sessions
        from django_raft.client import Client

        last = self._last.get(entry.name)
        if last is None:
            last = self._stored_last(entry.name)
        if last is None and isinstance(entry.schedule, crontab):
            last = self._last[entry.name] = now_ms  # first start: from the next fire time
        slots = due_slots(entry.schedule, last, now_ms)
        dropped = [slot for slot in slots if slot < now_ms - CATCH_UP * 1000]
        if dropped:
            logger.warning(
                "raft beat: %s: %d slots older than %s s dropped",
                entry.name,
                len(dropped),
                CATCH_UP,
            )
            slots = slots[len(dropped) :]
        following = next_slot(entry.schedule, slots[-1] if slots else (last or now_ms))
        if not slots:
            return following
        if self._client is None:
            self._client = Client()
        answer = self._client.do(
            sessions.BEAT_CLAIM, task=entry.name, slots=slots[-sessions.MAX_SLOTS_PER_CLAIM :]
        )
        self._last[entry.name] = int(answer["last"])
        for slot in answer["granted"]:
            self._send(entry, int(slot))
        return following

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
