"""The Raft beat over django-celery-beat's rows: the slots each kind of row fires, once.

Rows are ``PeriodicTask`` instances as the scheduler reads them; slots are claimed through
the state machine's own claim (``sessions._claim_slots``) on the test database, so two
schedulers taking turns behave as two leaders' beats do.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from django.conf import settings
from django.test import override_settings

celery = pytest.importorskip("celery")
pytest.importorskip("django_celery_beat")

from django_raft.contrib.celery.beat import (  # noqa: E402
    CATCH_UP,
    Due,
    Skipped,
    due_slots,
    next_slot,
)
from django_raft.contrib.celery.dbschedule import RaftDatabaseScheduler, row_window  # noqa: E402
from django_raft.node import sessions  # noqa: E402
from tests.contrib.celery_beat_app import celery_beat_installed  # noqa: E402

APP = celery.Celery(set_as_current=False)
APP.conf.timezone = "UTC"
APP.conf.result_expires = None


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def ms(text: str) -> int:
    return int(at(text).timestamp() * 1000)


@pytest.fixture(scope="module")
def models() -> Iterator[Any]:
    """django_celery_beat's models (the demo project does not install the app)."""
    with celery_beat_installed():
        from django_celery_beat import models

        yield models


class Log:
    """Claims as the state machine applies them (one database: one cluster)."""

    def do(self, command: str, *, task: str, slots: list[int]) -> Any:
        assert command == sessions.BEAT_CLAIM
        outcome = sessions._claim_slots("default", {"task": task, "slots": slots})
        assert outcome.ok, outcome.error
        return outcome.value


class Beat(RaftDatabaseScheduler):
    """A leader's beat at a chosen time, recording what it sends."""

    def __init__(self) -> None:
        super().__init__(app=APP)
        self._client = Log()
        self.sent: list[str] = []

    def _send(self, entry: Any, slot: int) -> None:
        self.sent.append(f"{entry.name}@{slot}")

    def run(self, rows: list[Any], now: str) -> list[int]:
        """Dispatch what is due at ``now``; the slots sent."""
        self.load(rows)
        before = len(self.sent)
        for entry in self.entries().values():
            self._dispatch(entry, ms(now))
        return [int(sent.rsplit("@", 1)[1]) for sent in self.sent[before:]]


def task(
    models: Any, name: str = "job", changed: str = "2026-01-01T00:00:03", **fields: Any
) -> Any:
    row = models.PeriodicTask(name=name, task="myapp.job", **fields)
    row.date_changed = at(changed)
    return row


def every(models: Any, seconds: int) -> Any:
    return models.IntervalSchedule(every=seconds, period="seconds")


@pytest.mark.django_db
def test_interval_rows_fire_from_their_change_and_failover_neither_repeats_nor_skips(
    models: Any,
) -> None:
    row = task(models, interval=every(models, 10))
    first, second = Beat(), Beat()
    # Created at 00:00:03: the slot at 00:00:00 is before it, not caught up.
    assert first.run([row], "2026-01-01T00:00:25") == [
        ms("2026-01-01T00:00:10"),
        ms("2026-01-01T00:00:20"),
    ]
    assert first.run([row], "2026-01-01T00:00:26") == []
    # The first beat's node stops leading; the second one's comes to lead 21 s later.
    assert second.run([row], "2026-01-01T00:00:47") == [
        ms("2026-01-01T00:00:30"),
        ms("2026-01-01T00:00:40"),
    ]
    # The first one, leading again with an old memory, sends nothing twice.
    first._leading = False
    first._last.clear()
    assert first.run([row], "2026-01-01T00:00:51") == [ms("2026-01-01T00:00:50")]


@pytest.mark.django_db
def test_start_time_anchors_an_interval_and_an_edit_starts_the_row_afresh(models: Any) -> None:
    row = task(models, interval=every(models, 10), start_time=at("2026-01-01T00:00:05"))
    beat = Beat()
    assert beat.run([row], "2026-01-01T00:00:04") == []
    assert beat.run([row], "2026-01-01T00:00:26") == [
        ms("2026-01-01T00:00:05"),
        ms("2026-01-01T00:00:15"),
        ms("2026-01-01T00:00:25"),
    ]
    # Disabled at 00:00:30 (no row), enabled again at 00:01:02: nothing missed is sent.
    assert beat.run([], "2026-01-01T00:00:58") == []
    row.date_changed = at("2026-01-01T00:01:02")
    assert beat.run([row], "2026-01-01T00:01:16") == [
        ms("2026-01-01T00:01:05"),
        ms("2026-01-01T00:01:15"),
    ]


@pytest.mark.django_db
def test_expires_stops_the_slots(models: Any) -> None:
    row = task(models, interval=every(models, 10), expires=at("2026-01-01T00:00:30"))
    beat = Beat()
    assert beat.run([row], "2026-01-01T00:00:55") == [
        ms("2026-01-01T00:00:10"),
        ms("2026-01-01T00:00:20"),
    ]
    assert beat._dispatch(beat.entries()["job"], ms("2026-01-01T00:00:56")) is None  # no next slot
    assert beat.entries()["job"].options["expires"] == at("2026-01-01T00:00:30")


@pytest.mark.django_db
def test_a_one_off_row_fires_its_first_slot_once_however_late(models: Any) -> None:
    row = task(models, interval=every(models, 60), one_off=True)
    beat, late = Beat(), Beat()
    assert beat.run([row], "2026-01-01T00:00:59") == []
    assert beat.run([row], "2026-01-01T00:01:00") == [ms("2026-01-01T00:01:00")]
    assert beat.run([row], "2026-01-01T00:02:00") == []
    # A beat coming to lead long after (past the catch-up) computes the same slot: refused.
    late_now = datetime.fromtimestamp(ms("2026-01-01T00:01:00") / 1000 + CATCH_UP * 3, UTC)
    assert late.run([row], late_now.isoformat()[:19]) == []
    # Enabled again (an edit): it fires once more.
    row.date_changed = at("2026-01-01T00:30:00")
    assert beat.run([row], "2026-01-01T00:31:30") == [ms("2026-01-01T00:30:00")]
    assert beat.run([row], "2026-01-01T00:33:30") == []


@pytest.mark.django_db
def test_a_clocked_row_fires_once_at_its_time_even_long_past(models: Any) -> None:
    future = task(
        models,
        name="later",
        clocked=models.ClockedSchedule(clocked_time=at("2026-01-01T12:00:00")),
        one_off=True,
    )
    past = task(
        models,
        name="missed",
        clocked=models.ClockedSchedule(clocked_time=at("2025-12-31T00:00:00")),
        one_off=True,
    )
    beat = Beat()
    assert beat.run([future, past], "2026-01-01T00:00:10") == [ms("2025-12-31T00:00:00")]
    beat.load([future])
    assert beat._dispatch(beat.entries()["later"], ms("2026-01-01T11:00:00")) == ms(
        "2026-01-01T12:00:00"
    )
    assert beat.run([future, past], "2026-01-01T12:00:00") == [ms("2026-01-01T12:00:00")]
    assert beat.run([future, past], "2026-01-02T00:00:00") == []
    assert Beat().run([future, past], "2026-01-03T00:00:00") == []
    assert beat.sent == [
        f"missed@{ms('2025-12-31T00:00:00')}",
        f"later@{ms('2026-01-01T12:00:00')}",
    ]


@pytest.mark.django_db
def test_a_crontab_row_fires_at_its_times_in_its_timezone(models: Any) -> None:
    nine_in_paris = models.CrontabSchedule(minute="0", hour="9", timezone=ZoneInfo("Europe/Paris"))
    row = task(models, crontab=nine_in_paris, changed="2026-01-01T00:00:00")
    beat = Beat()
    assert beat.run([row], "2026-01-01T07:59:59") == []
    assert beat.run([row], "2026-01-01T08:00:00") == [ms("2026-01-01T08:00:00")]  # UTC+1
    assert next_slot(row.schedule, ms("2026-07-01T00:00:00")) == ms("2026-07-01T07:00:00")


def test_a_row_becomes_a_beat_entry_with_its_options(models: Any) -> None:
    row = task(
        models,
        interval=every(models, 5),
        args='[1, "a"]',
        kwargs='{"b": 2}',
        queue="slow",
        priority=3,
        headers='{"h": "v"}',
        expire_seconds=30,
    )
    entry = Beat()._entry(row)
    assert (entry.task, entry.args, entry.kwargs) == ("myapp.job", (1, "a"), {"b": 2})
    assert entry.options == {
        "queue": "slow",
        "priority": 3,
        "expires": 30,
        "headers": {"h": "v", "periodic_task_name": "job"},
    }
    assert row_window(row).not_before_ms == ms("2026-01-01T00:00:03")


def test_a_row_that_cannot_run_is_skipped_and_the_others_kept(models: Any) -> None:
    good = task(models, name="good", interval=every(models, 5))
    bad_args = task(models, name="bad-args", interval=every(models, 5), args="{not json")
    no_schedule = task(models, name="no-schedule")
    beat = Beat()
    beat.load([good, bad_args, no_schedule])
    assert list(beat.entries()) == ["good"]


def test_solar_slots_are_the_same_whatever_the_search_starts_from() -> None:
    pytest.importorskip("ephem")
    sunrise = celery.schedules.solar("sunrise", 48.8566, 2.3522, app=APP)
    slot = next_slot(sunrise, ms("2026-03-01T00:00:00"))
    assert slot is not None and slot % 1000 == 0
    assert abs(slot - ms("2026-03-01T06:32:43")) < 2000  # sunrise in Paris that day
    for start in ("2026-02-28T07:00:00", "2026-02-28T23:59:59", "2026-03-01T03:17:41"):
        assert next_slot(sunrise, ms(start)) == slot
    following = next_slot(sunrise, slot)
    assert following is not None and 23 * 3600_000 < following - slot < 25 * 3600_000
    # A day late, the first one is out of the catch-up window.
    assert due_slots(sunrise, ms("2026-02-28T12:00:00"), following) == Due(
        [following], Skipped(1, slot, slot)
    )


def test_interval_slots_follow_their_origin_after_a_period_change() -> None:
    every_7s = celery.schedules.schedule(timedelta(seconds=7), app=APP)
    # Granted up to 00:00:10 on a 10 s period; now 7 s from an origin at 00:00:01.
    assert due_slots(
        every_7s, ms("2026-01-01T00:00:10"), ms("2026-01-01T00:00:30"), ms("2026-01-01T00:00:01")
    ).slots == [
        ms("2026-01-01T00:00:15"),
        ms("2026-01-01T00:00:22"),
        ms("2026-01-01T00:00:29"),
    ]


# -- the system checks: the schedule must be the same on every server ---------------------

NODE: dict[str, Any] = {
    "NODE_ID": "n1",
    "ADDRESS": "http://127.0.0.1:8001",
    "CLUSTER": {
        "n1": "http://127.0.0.1:8001",
        "n2": "http://127.0.0.1:8002",
        "n3": "http://127.0.0.1:8003",
    },
    "SECRET": "beat-check-secret-" + "s" * 32,
    "REPLICATED_MODELS": ["kv.KeyValue"],
}


class SharedSchedule:
    """A router that puts django-celery-beat's tables in a shared ``schedule`` database."""

    def db_for_write(self, model: Any, **hints: Any) -> str | None:
        return "schedule" if model._meta.app_label == "django_celery_beat" else None


def beat_warnings(models: Any, raft: dict[str, Any], **more: Any) -> list[tuple[str, str]]:
    from django.core import checks

    with override_settings(DJANGO_RAFT=raft, **more):
        found = checks.run_checks()
    return [
        (str(m.id), m.msg) for m in found if str(m.id) in {"django_raft.W004", "django_raft.W005"}
    ]


def test_the_check_warns_when_the_schedule_is_in_the_node_s_own_database(models: Any) -> None:
    [(code, message)] = beat_warnings(models, NODE)
    assert code == "django_raft.W004" and "'default'" in message
    assert beat_warnings(models, {**NODE, "NODE_ID": "", "CLUSTER": {}}) == []  # not a node
    shared = "tests.contrib.test_celery_beat_db.SharedSchedule"
    assert beat_warnings(models, NODE, DATABASE_ROUTERS=[shared]) == []


def test_the_check_wants_all_of_the_schedule_replicated_or_none(models: Any) -> None:
    from django_raft.checks import BEAT_MODELS

    everything = {**NODE, "REPLICATED_MODELS": ["kv.KeyValue", *BEAT_MODELS]}
    assert beat_warnings(models, everything) == []
    tasks_only = {**NODE, "REPLICATED_MODELS": ["kv.KeyValue", "django_celery_beat.PeriodicTask"]}
    [(code, message)] = beat_warnings(models, tasks_only)
    assert code == "django_raft.W005" and "django_celery_beat.IntervalSchedule" in message


def test_without_django_celery_beat_the_scheduler_says_what_to_install() -> None:
    from django.core.exceptions import ImproperlyConfigured

    without = [app for app in settings.INSTALLED_APPS if app != "django_celery_beat"]
    with override_settings(INSTALLED_APPS=without), pytest.raises(ImproperlyConfigured) as raised:
        RaftDatabaseScheduler(app=APP)
    assert "django-raft[celery-beat-db]" in str(raised.value)
