"""A Celery beat scheduler for a Raft cluster: run a beat on every server, one dispatches.

    celery -A proj beat -S django_raft.contrib.celery.beat:RaftScheduler

Every server runs a beat with this scheduler beside its ``raftnode``. A slot is an
entry's name and a time its schedule fires at (interval schedules fire at the multiples
of their period since the epoch, the same on every server). A beat sends only the slots
the log granted it: the state machine grants each slot once and remembers each entry's
last granted slot, so:

- a slot is dispatched at most once, whatever the beats, failovers or pauses, by the
  beat whose claim was granted. A beat claims only in a tick that began with its node
  answering that it leads; leadership can move between that answer and the claim or
  the send (the claim then goes through the new leader), so a beat may send a moment
  after its node stopped leading, but never a slot another beat sent;
- a slot is never skipped silently: a beat claims every slot after the last one granted,
  up to now, that lies in the catch-up window (at most ``CATCH_UP`` seconds old, and of
  an interval's the latest ``MAX_SLOTS``), in claims of at most
  ``request.MAX_SLOTS_PER_CLAIM`` slots, sending each claim's slots in order before the
  next claim; the slots before the window are skipped with a warning that names the
  entry, their count and their times;
- the window: a beat that dies between a claim and handing its slots to the broker
  loses the slots of that claim it had not sent yet (once per crash of a leader's beat).

Each task is sent with the id ``<entry name>@<slot in ms>`` and the header
``raft_slot``, so a task can tell which slot it runs for. Interval schedules
(``schedule``, numbers, ``timedelta``), ``crontab`` and ``solar`` entries are supported
(a crontab or solar entry with no slot granted yet starts at its next time after the
beat starts; a solar slot is the event's time, computed with ``ephem``). The beat's
clock is its Celery app's (``app.now()``), as for Celery's own beat.

For django-celery-beat's database schedule, see ``dbschedule.RaftDatabaseScheduler``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from celery.beat import ScheduleEntry, Scheduler
from celery.schedules import BaseSchedule, crontab, solar
from celery.schedules import schedule as interval_schedule

logger = logging.getLogger(__name__)

CATCH_UP = 300.0
"""Seconds back a leading beat still dispatches a slot nobody claimed (older: skipped)."""
MAX_SLOTS = 10_000
"""The most slots of an entry one tick dispatches (the latest ones of an interval: older
ones are skipped) or walks (a calendar schedule far behind goes on at the next tick).

It bounds a tick's work per entry to ten claims (log entries) and 10,000 sends, and
covers the whole ``CATCH_UP`` for periods of 30 ms or more."""
IDLE_INTERVAL = 0.25
"""Seconds between checks for leadership while this node does not lead."""
DAY = 86_400_000
"""A day in ms: solar events are searched from a UTC midnight."""
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Window:
    """When an entry's slots may fire; a plain ``beat_schedule`` entry's is always open.

    ``origin_ms`` anchors an interval (slots at ``origin + k * period``); no slot before
    ``not_before_ms`` or from ``expires_ms`` on fires; a ``one_off`` entry fires its
    first slot only (however late) and then no more.
    """

    origin_ms: int = 0
    not_before_ms: int | None = None
    expires_ms: int | None = None
    one_off: bool = False


OPEN = Window()


@dataclass(frozen=True)
class Skipped:
    """Slots due but before the catch-up window: how many, the first and the last (ms)."""

    count: int
    first_ms: int
    last_ms: int


@dataclass(frozen=True)
class Due:
    """An entry's slots due now: those to claim, in order, and those skipped."""

    slots: list[int]
    skipped: Skipped | None = None


def supported(schedule: Any) -> bool:
    """Whether the Raft beat can compute the slots of ``schedule``."""
    return isinstance(schedule, interval_schedule | crontab | solar) or _is_clocked(schedule)


def due_slots(
    schedule: Any, last: int | None, now_ms: int, origin: int = 0, expires_ms: int | None = None
) -> Due:
    """The slots after ``last`` up to ``now_ms`` (and before ``expires_ms``), in order.

    An interval schedule fires at ``origin`` plus the multiples of its period (with no
    ``last``: the latest one); a crontab at its times, in its timezone, a solar schedule
    at its event and a clocked one at its time, after ``last``. The slots older than
    ``CATCH_UP`` seconds, and those of an interval before its latest ``MAX_SLOTS``, are
    skipped. A calendar schedule is walked ``MAX_SLOTS`` slots at most: the rest is due
    at the next call, from the last slot returned or skipped.
    """
    horizon = now_ms - int(CATCH_UP * 1000)
    end = now_ms if expires_ms is None else min(now_ms, expires_ms - 1)
    if isinstance(schedule, interval_schedule):
        period = _period(schedule)
        current = origin + (end - origin) // period * period
        first = current if last is None else _first_after(last, period, origin)
        if current < origin or first > current:
            return Due([])
        start = max(
            first,
            _first_after(horizon - 1, period, origin),
            current - (MAX_SLOTS - 1) * period,
        )
        kept = min(start, current + period)
        skipped = Skipped((kept - first) // period, first, kept - period) if kept > first else None
        return Due(list(range(start, current + 1, period)), skipped)
    slots: list[int] = []
    old: list[int] = []
    moment = last if last is not None else now_ms
    while len(slots) + len(old) < MAX_SLOTS:
        following = next_slot(schedule, moment, origin)
        if following is None or following > end:
            break
        (old if following < horizon else slots).append(following)
        moment = following
    return Due(slots, Skipped(len(old), old[0], old[-1]) if old else None)


def next_slot(schedule: Any, after: int, origin: int = 0) -> int | None:
    """The first slot of ``schedule`` after ``after`` (ms since the epoch); None: no more."""
    if isinstance(schedule, crontab):
        moment = datetime.fromtimestamp(after / 1000, UTC)
        base, delta, _ = schedule.remaining_delta(moment)
        return to_ms(base + delta)
    if isinstance(schedule, solar):
        return _solar_slot(schedule, after)
    if _is_clocked(schedule):
        at = to_ms(schedule.clocked_time)
        return at if at > after else None
    return _first_after(after, _period(schedule), origin)


def _solar_slot(schedule: solar, after: int) -> int:
    """The first event after ``after``, searched from a UTC midnight, in whole seconds.

    ephem's answer moves by a few ms with the moment the search starts from: starting at
    midnight (and with a fixed "now", the estimate is the event's exact time) gives every
    server the same slot for the same event, whatever ``after`` it starts from.
    """
    fixed = solar(schedule.event, schedule.lat, schedule.lon, nowfun=lambda: EPOCH)
    midnight = after // DAY * DAY
    while True:  # twice at most: the next midnight is past ``after``
        start = datetime.fromtimestamp(midnight / 1000, UTC)
        event = to_ms(EPOCH + fixed.remaining_estimate(start)) // 1000 * 1000
        if event > after:
            return event
        midnight += DAY


def _first_after(after: int, period: int, origin: int) -> int:
    """The first of ``origin + k * period`` (k >= 0) after ``after``."""
    if after < origin:
        return origin
    return origin + ((after - origin) // period + 1) * period


def _is_clocked(schedule: Any) -> bool:
    """A django-celery-beat ``clocked`` schedule: one slot, its ``clocked_time``."""
    return isinstance(schedule, BaseSchedule) and isinstance(
        getattr(schedule, "clocked_time", None), datetime
    )


def to_ms(moment: datetime) -> int:
    """Ms since the epoch, exactly (an aware datetime)."""
    return (moment - EPOCH) // timedelta(milliseconds=1)


def _moment(ms: int) -> str:
    """A slot as an ISO 8601 UTC time, to the ms."""
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")


def _period(schedule: Any) -> int:
    return max(1, int(schedule.run_every.total_seconds() * 1000))


class RaftScheduler(Scheduler):
    """Dispatch each slot of the beat schedule once across the cluster (see the module)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._last: dict[str, int] = {}
        self._warned: set[str] = set()
        self._client: Any = None
        self._leading = False
        super().__init__(*args, **kwargs)

    def setup_schedule(self) -> None:
        self.install_default_entries(self.data)
        self.merge_inplace(self.app.conf.beat_schedule)

    def refresh(self) -> None:
        """Bring the schedule up to date before a leading tick (a fixed one: nothing)."""

    def entries(self) -> dict[str, ScheduleEntry]:
        """The entries to dispatch: the ``beat_schedule`` ones."""
        return dict(self.schedule)

    def window(self, name: str) -> Window:
        """When entry ``name`` may fire (a ``beat_schedule`` entry: always)."""
        return OPEN

    def tick(self, *args: Any, **kwargs: Any) -> float:
        """Claim and send what is due when this node leads; return seconds to sleep.

        Now is the app's clock (``app.now()``), read once per tick.
        """
        from ...client.leader import is_leader

        if not is_leader():
            self._leading = False
            return IDLE_INTERVAL
        if not self._leading:  # another beat may have claimed slots meanwhile
            self._leading = True
            self._last.clear()
        self.refresh()
        now_ms = to_ms(self.app.now())
        sleep = self.max_interval
        for name, entry in self.entries().items():
            if not supported(entry.schedule):
                if name not in self._warned:
                    self._warned.add(name)
                    logger.warning("raft beat: %s: schedule not supported: skipped", name)
                continue
            try:
                following = self._dispatch(entry, now_ms)
            except Exception as error:
                logger.warning("raft beat: %s not dispatched yet: %s", name, error)
                return IDLE_INTERVAL
            if following is not None:
                sleep = min(sleep, max(0.0, (following - now_ms) / 1000))
        return sleep

    def _dispatch(self, entry: ScheduleEntry, now_ms: int) -> int | None:
        """Claim and send the entry's due slots; return when its next slot falls (ms)."""
        from ...client import Client
        from ...protocol import request

        window = self.window(entry.name)
        last = self._last.get(entry.name)
        if last is None:
            last = self._stored_last(entry.name)
        floor = None if window.not_before_ms is None else window.not_before_ms - 1
        if window.one_off and last is not None and floor is not None and last > floor:
            return None  # its one slot since the entry last changed was granted
        after = last if floor is None else max(floor, -1 if last is None else last)
        if after is None and not (window.one_off or isinstance(entry.schedule, interval_schedule)):
            after = self._last[entry.name] = now_ms  # first start: from the next fire time
        due = self._due(entry, window, after, now_ms)
        if due.skipped is not None:
            self._skip(entry.name, due.skipped)
            # Never granted, but behind us: this beat goes on from there (and warns once).
            after = self._last[entry.name] = due.skipped.last_ms
        slots = due.slots
        following = next_slot(
            entry.schedule,
            slots[-1] if slots else (now_ms if after is None else after),
            window.origin_ms,
        )
        if window.one_off and slots:
            following = None
        if following is not None and window.expires_ms is not None:
            following = following if following < window.expires_ms else None
        if slots and self._client is None:
            self._client = Client()
        size = request.MAX_SLOTS_PER_CLAIM
        for start in range(0, len(slots), size):
            answer = self._client.do(
                request.BEAT_CLAIM, task=entry.name, slots=slots[start : start + size]
            )
            self._last[entry.name] = int(answer["last"])
            for slot in answer["granted"]:
                self._send(entry, int(slot))
        return following

    def _due(self, entry: ScheduleEntry, window: Window, after: int | None, now_ms: int) -> Due:
        """The slots to claim now, inside the window, and those skipped (one-off: its first)."""
        if not window.one_off:
            return due_slots(entry.schedule, after, now_ms, window.origin_ms, window.expires_ms)
        # Its one slot is fixed by the entry alone, whenever it is computed, so that a beat
        # coming late to lead claims the same one (and the log grants it once).
        first = next_slot(entry.schedule, -1 if after is None else after, window.origin_ms)
        if first is None or first > now_ms:
            return Due([])
        if window.expires_ms is not None and first >= window.expires_ms:
            return Due([])
        return Due([first])

    def _skip(self, name: str, skipped: Skipped) -> None:
        """Warn which slots of ``name`` this beat passes over: due, unclaimed, not sent."""
        logger.warning(
            "raft beat: %s: %d slots skipped, from %s to %s: "
            "before the catch-up window (%g s, %d slots at most)",
            name,
            skipped.count,
            _moment(skipped.first_ms),
            _moment(skipped.last_ms),
            CATCH_UP,
            MAX_SLOTS,
        )

    def _stored_last(self, name: str) -> int | None:
        """The last slot granted as this server's node knows it (the log decides anyway)."""
        from django.db import close_old_connections

        from ...conf import raft_settings
        from ...models import BeatTask

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
