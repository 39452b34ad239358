"""Change django-celery-beat's schedule through the log, for servers that share no database.

With django-celery-beat's six models (``checks.BEAT_MODELS``) in ``REPLICATED_MODELS``
and this module imported in an ``AppConfig.ready()`` (it registers the two commands on
every node), each edit is a command: applied on every node alike, carried in snapshots::

    from . import periodic

    periodic.save("refresh-flags", "myapp.tasks.refresh_flags", interval=(1, "minutes"))
    periodic.save("nightly", "myapp.tasks.nightly", crontab="30 3 * * *", timezone="Europe/Paris")
    periodic.save("nightly", "myapp.tasks.nightly", crontab="30 3 * * *", enabled=False)
    periodic.delete("nightly")

A ``save`` replaces the whole task (the keywords left out take their defaults). The row's
``date_changed`` and django-celery-beat's change marker are stamped with the log time,
the same on every node, so every server's beat sees the edit alike. Bad arguments raise
``ValueError`` before anything is sent; the handler checks them again (a command that
fails changes nothing).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from django_celery_beat.models import (
    SOLAR_SCHEDULES,
    ClockedSchedule,
    CrontabSchedule,
    IntervalSchedule,
    PeriodicTask,
    PeriodicTasks,
    SolarSchedule,
)

import django_raft

from ...commands import Context
from ...replicated import log_time

SAVE = "django_raft.beat.save_task"
DELETE = "django_raft.beat.delete_task"
PERIODS = ("days", "hours", "minutes", "seconds", "microseconds")
EVENTS = tuple(event for event, _ in SOLAR_SCHEDULES)
MAX_NAME = 200


def save(
    name: str,
    task: str,
    *,
    interval: tuple[int, str] | None = None,
    crontab: str | None = None,
    timezone: str = "UTC",
    solar: tuple[str, float, float] | None = None,
    clocked: datetime | None = None,
    args: Sequence[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
    enabled: bool = True,
    one_off: bool = False,
    start_time: datetime | None = None,
    expires: datetime | None = None,
    queue: str | None = None,
    priority: int | None = None,
    description: str = "",
) -> None:
    """Create or replace periodic task ``name`` on every node; one schedule of:
    ``interval=(every, period)``, ``crontab="m h dom mon dow"`` (in ``timezone``),
    ``solar=(event, latitude, longitude)``, ``clocked=<aware datetime>`` (one-off)."""
    arguments = {
        "name": name,
        "task": task,
        "schedule": _schedule_argument(interval, crontab, timezone, solar, clocked),
        "args": list(args),
        "kwargs": dict(kwargs or {}),
        "enabled": enabled,
        "one_off": one_off or clocked is not None,
        "start_time": _iso(start_time),
        "expires": _iso(expires),
        "queue": queue,
        "priority": priority,
        "description": description,
    }
    validated(arguments)
    django_raft.do(SAVE, **arguments)


def delete(name: str) -> bool:
    """Delete periodic task ``name`` on every node; whether it existed."""
    _check(isinstance(name, str) and 0 < len(name) <= MAX_NAME, "name: 1 to 200 characters")
    deleted: bool = django_raft.do(DELETE, name=name)
    return deleted


@django_raft.command(SAVE)
def save_task(context: Context, **arguments: Any) -> int:
    """Apply a ``save``: the task's row and its schedule's; returns the task's id."""
    fields = validated(arguments)
    using = context.using
    kind, spec = fields.pop("schedule")
    model = SCHEDULE_MODELS[kind]
    schedule = model.objects.using(using).filter(**spec).first()
    if schedule is None:
        schedule = model.objects.using(using).create(**spec)
    row = PeriodicTask.objects.using(using).filter(name=fields["name"]).first()
    row = row or PeriodicTask(name=fields["name"])
    for field, value in fields.items():
        setattr(row, field, value)
    for other in SCHEDULE_MODELS:
        setattr(row, other, schedule if other == kind else None)
    row.save(using=using)
    _stamp(using, row.pk)
    task_id: int = row.pk
    return task_id


@django_raft.command(DELETE)
def delete_task(context: Context, name: str) -> bool:
    """Apply a ``delete``: whether the task existed."""
    rows = PeriodicTask.objects.using(context.using).filter(name=name)
    existed = rows.exists()
    if existed:
        rows.delete()
        _stamp(context.using, None)
    return existed


SCHEDULE_MODELS: dict[str, Any] = {
    "interval": IntervalSchedule,
    "crontab": CrontabSchedule,
    "solar": SolarSchedule,
    "clocked": ClockedSchedule,
}


def validated(arguments: Mapping[str, Any]) -> dict[str, Any]:
    """The model fields of a ``save``'s arguments; ValueError naming the first bad one."""
    known = {
        "name",
        "task",
        "schedule",
        "args",
        "kwargs",
        "enabled",
        "one_off",
        "start_time",
        "expires",
        "queue",
        "priority",
        "description",
    }
    _check(set(arguments) == known, f"arguments: exactly {', '.join(sorted(known))}")
    name, task = arguments["name"], arguments["task"]
    _check(isinstance(name, str) and 0 < len(name) <= MAX_NAME, "name: 1 to 200 characters")
    _check(isinstance(task, str) and 0 < len(task) <= MAX_NAME, "task: 1 to 200 characters")
    _check(isinstance(arguments["args"], list), "args: a list")
    _check(isinstance(arguments["kwargs"], dict), "kwargs: a dict")
    for flag in ("enabled", "one_off"):
        _check(isinstance(arguments[flag], bool), f"{flag}: True or False")
    queue, priority = arguments["queue"], arguments["priority"]
    _check(queue is None or (isinstance(queue, str) and 0 < len(queue) <= 200), "queue")
    _check(
        priority is None or (type(priority) is int and 0 <= priority <= 255),
        "priority: None or 0 to 255",
    )
    _check(isinstance(arguments["description"], str), "description: a string")
    kind, spec = _schedule(arguments["schedule"])
    _check(kind != "clocked" or arguments["one_off"], "a clocked task is one_off")
    try:
        encoded = json.dumps(arguments["args"]), json.dumps(arguments["kwargs"])
    except (TypeError, ValueError) as error:
        raise ValueError(f"args and kwargs: JSON ({error})") from None
    return {
        "name": name,
        "task": task,
        "schedule": (kind, spec),
        "args": encoded[0],
        "kwargs": encoded[1],
        "enabled": arguments["enabled"],
        "one_off": arguments["one_off"],
        "start_time": _moment(arguments["start_time"], "start_time"),
        "expires": _moment(arguments["expires"], "expires"),
        "queue": queue,
        "priority": priority,
        "description": arguments["description"],
    }


def _schedule_argument(
    interval: tuple[int, str] | None,
    crontab: str | None,
    timezone: str,
    solar: tuple[str, float, float] | None,
    clocked: datetime | None,
) -> dict[str, Any]:
    given = {
        "interval": None if interval is None else list(interval),
        "crontab": None if crontab is None else {"fields": crontab, "timezone": timezone},
        "solar": None if solar is None else list(solar),
        "clocked": _iso(clocked),
    }
    return {kind: value for kind, value in given.items() if value is not None}


def _schedule(argument: Any) -> tuple[str, dict[str, Any]]:
    """The schedule model and its fields, from ``{kind: value}`` with one kind."""
    _check(
        isinstance(argument, dict) and len(argument) == 1 and set(argument) <= set(SCHEDULE_MODELS),
        "one schedule: interval, crontab, solar or clocked",
    )
    [(kind, value)] = argument.items()
    if kind == "interval":
        _check(
            isinstance(value, list)
            and len(value) == 2
            and type(value[0]) is int
            and value[0] >= 1
            and value[1] in PERIODS,
            f"interval: (every >= 1, one of {', '.join(PERIODS)})",
        )
        return kind, {"every": value[0], "period": value[1]}
    if kind == "crontab":
        fields = value.get("fields") if isinstance(value, dict) else None
        parts = fields.split() if isinstance(fields, str) else []
        _check(len(parts) == 5, 'crontab: five fields, "minute hour day month weekday"')
        try:
            zone = ZoneInfo(value.get("timezone"))
        except (TypeError, ValueError, ZoneInfoNotFoundError):
            raise ValueError("timezone: a time zone name, e.g. 'Europe/Paris'") from None
        minute, hour, day_of_month, month_of_year, day_of_week = parts
        spec = {
            "minute": minute,
            "hour": hour,
            "day_of_month": day_of_month,
            "month_of_year": month_of_year,
            "day_of_week": day_of_week,
            "timezone": zone,
        }
        try:  # the schedule celery would build from these fields
            CrontabSchedule(**spec).schedule  # noqa: B018
        except Exception as error:
            raise ValueError(f"crontab: {error}") from None
        return kind, spec
    if kind == "solar":
        _check(
            isinstance(value, list)
            and len(value) == 3
            and value[0] in EVENTS
            and all(type(number) in (int, float) for number in value[1:])
            and -90 <= value[1] <= 90
            and -180 <= value[2] <= 180,
            f"solar: (one of {', '.join(EVENTS)}, latitude, longitude)",
        )
        places = Decimal("0.000001")
        latitude, longitude = (Decimal(str(number)).quantize(places) for number in value[1:])
        return kind, {"event": value[0], "latitude": latitude, "longitude": longitude}
    return kind, {"clocked_time": _moment(value, "clocked")}


def _moment(value: Any, what: str) -> datetime | None:
    """An aware datetime from ISO text (None stays None)."""
    if value is None and what != "clocked":
        return None
    try:
        moment = datetime.fromisoformat(value)
    except (TypeError, ValueError):
        raise ValueError(f"{what}: an ISO 8601 time with its offset") from None
    _check(moment.tzinfo is not None, f"{what}: an ISO 8601 time with its offset")
    return moment


def _iso(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    _check(isinstance(moment, datetime) and moment.tzinfo is not None, "times: aware datetimes")
    return moment.isoformat()


def _stamp(using: str, task_id: int | None) -> None:
    """Stamp the change with the log time: the same on every node."""
    changed = datetime.fromtimestamp(log_time(using) / 1000, UTC)
    if task_id is not None:
        PeriodicTask.objects.using(using).filter(pk=task_id).update(date_changed=changed)
    PeriodicTasks.objects.using(using).update_or_create(ident=1, defaults={"last_update": changed})


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)
