"""Editing django-celery-beat's schedule through the log (``contrib.celery.periodic``):
bad arguments are refused before anything is sent, and the handlers write the same rows,
stamped with the log time, that the Raft database scheduler then reads.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from django.db import connection

celery = pytest.importorskip("celery")
pytest.importorskip("django_celery_beat")

import django_raft  # noqa: E402
from django_raft import commands  # noqa: E402
from django_raft.commands import Context  # noqa: E402
from django_raft.models import SINGLETON, LogClock  # noqa: E402
from tests.contrib.celery_beat_app import celery_beat_installed  # noqa: E402

APP = celery.Celery(set_as_current=False)
APP.conf.timezone = "UTC"
APP.conf.result_expires = None
LOG_TIME = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def periodic() -> Iterator[Any]:
    """The module, with django_celery_beat installed (the demo project does not); its
    commands are registered only meanwhile."""
    with (
        celery_beat_installed(),
        commands.preserved(),
    ):
        periodic = importlib.import_module("django_raft.contrib.celery.periodic")
        assert periodic.SAVE in commands.names()
        yield periodic
    sys.modules.pop(periodic.__name__)


@pytest.fixture
def sent(periodic: Any, monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, dict[str, Any]]]:
    """The commands ``periodic`` sends (instead of sending them)."""
    calls: list[tuple[str, dict[str, Any]]] = []

    def do(command: str, /, **arguments: Any) -> Any:
        calls.append((command, arguments))
        return True

    monkeypatch.setattr(django_raft, "do", do)
    return calls


@pytest.fixture
def tables(periodic: Any, transactional_db: None) -> Iterator[None]:
    """django-celery-beat's tables in the test database, and a log time."""
    from django_celery_beat import models

    # The test database has them when it was set up while the app was installed.
    existing = set(connection.introspection.table_names())
    created = [
        model
        for model in (
            models.IntervalSchedule,
            models.CrontabSchedule,
            models.SolarSchedule,
            models.ClockedSchedule,
            models.PeriodicTask,
            models.PeriodicTasks,
        )
        if model._meta.db_table not in existing
    ]
    with connection.schema_editor() as editor:
        for model in created:
            editor.create_model(model)
    LogClock.objects.update_or_create(
        pk=SINGLETON, defaults={"time_ms": int(LOG_TIME.timestamp() * 1000)}
    )
    try:
        yield
    finally:
        with connection.schema_editor() as editor:
            for model in reversed(created):
                editor.delete_model(model)


@pytest.mark.parametrize(
    ("keywords", "message"),
    [
        ({}, "one schedule"),
        ({"interval": (0, "seconds")}, "interval"),
        ({"interval": (5, "fortnights")}, "interval"),
        ({"interval": (5, "seconds"), "crontab": "* * * * *"}, "one schedule"),
        ({"crontab": "61 * * * *"}, "crontab"),
        ({"crontab": "* * *"}, "five fields"),
        ({"crontab": "0 3 * * *", "timezone": "Mars/Olympus"}, "timezone"),
        ({"solar": ("noonish", 0.0, 0.0)}, "solar"),
        ({"solar": ("sunrise", 91.0, 0.0)}, "solar"),
        ({"clocked": datetime(2026, 1, 1)}, "aware"),
        ({"interval": (5, "seconds"), "kwargs": {"when": datetime.now(UTC)}}, "JSON"),
        ({"interval": (5, "seconds"), "priority": 256}, "priority"),
        ({"interval": (5, "seconds"), "start_time": datetime(2026, 1, 1)}, "aware"),
    ],
)
def test_bad_arguments_are_refused_before_anything_is_sent(
    periodic: Any, sent: list[Any], keywords: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        periodic.save("job", "myapp.job", **keywords)
    assert sent == []


def test_a_save_sends_one_command_with_json_arguments(periodic: Any, sent: list[Any]) -> None:
    at = datetime(2026, 1, 2, 9, 0, tzinfo=UTC)
    periodic.save("once", "myapp.job", clocked=at, kwargs={"n": 1})
    periodic.delete("once")
    [(command, arguments), (deleted, by_name)] = sent
    assert command == periodic.SAVE and deleted == periodic.DELETE
    assert arguments["schedule"] == {"clocked": "2026-01-02T09:00:00+00:00"}
    assert arguments["one_off"] is True  # a clocked task is
    assert by_name == {"name": "once"}


def test_the_handlers_write_the_rows_the_scheduler_reads(periodic: Any, tables: None) -> None:
    from django_celery_beat.models import PeriodicTask, PeriodicTasks

    from django_raft.contrib.celery.dbschedule import RaftDatabaseScheduler

    context = Context(node_id="n1", index=7, term=2)
    save = {
        "name": "nightly",
        "task": "myapp.nightly",
        "schedule": {"crontab": {"fields": "30 3 * * *", "timezone": "Europe/Paris"}},
        "args": [1],
        "kwargs": {},
        "enabled": True,
        "one_off": False,
        "start_time": None,
        "expires": None,
        "queue": "slow",
        "priority": None,
        "description": "",
    }
    first = periodic.save_task(context, **save)
    assert periodic.save_task(context, **save) == first  # replaced, not added
    row = PeriodicTask.objects.get(name="nightly")
    assert (row.crontab.hour, row.crontab.minute, row.crontab.timezone) == (
        "3",
        "30",
        ZoneInfo("Europe/Paris"),
    )
    assert row.date_changed == LOG_TIME and PeriodicTasks.last_change() == LOG_TIME

    beat = RaftDatabaseScheduler(app=APP)
    beat.refresh()
    entry = beat.entries()["nightly"]
    assert (entry.task, entry.args, entry.options["queue"]) == ("myapp.nightly", (1,), "slow")
    assert beat.window("nightly").not_before_ms == int(LOG_TIME.timestamp() * 1000)

    periodic.save_task(context, **{**save, "schedule": {"interval": [10, "seconds"]}})
    row = PeriodicTask.objects.get(name="nightly")
    assert row.crontab is None and row.interval.every == 10
    periodic.save_task(context, **{**save, "enabled": False})
    beat._read_at = float("-inf")
    beat.refresh()
    assert "nightly" not in beat.entries()

    with pytest.raises(ValueError, match="clocked task is one_off"):
        periodic.save_task(context, **{**save, "schedule": {"clocked": LOG_TIME.isoformat()}})
    assert periodic.delete_task(context, name="nightly") is True
    assert periodic.delete_task(context, name="nightly") is False
    assert not PeriodicTask.objects.exists()
