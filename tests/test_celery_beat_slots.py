"""The slots of the Raft beat scheduler: the same on every server, none skipped."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

celery = pytest.importorskip("celery")

from celery.schedules import crontab, schedule  # noqa: E402

from django_raft.contrib.celery.beat import due_slots, next_slot  # noqa: E402

APP = celery.Celery(set_as_current=False)
APP.conf.timezone = "UTC"


def ms(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp() * 1000)


def test_interval_slots_are_multiples_of_the_period_since_the_epoch() -> None:
    every_10s = schedule(timedelta(seconds=10), app=APP)
    now = ms("2026-01-01T00:01:07")
    assert due_slots(every_10s, None, now) == [ms("2026-01-01T00:01:00")]
    assert due_slots(every_10s, ms("2026-01-01T00:00:30"), now) == [
        ms("2026-01-01T00:00:40"),
        ms("2026-01-01T00:00:50"),
        ms("2026-01-01T00:01:00"),
    ]
    assert due_slots(every_10s, ms("2026-01-01T00:01:00"), now) == []
    assert next_slot(every_10s, now) == ms("2026-01-01T00:01:10")


def test_crontab_slots_are_its_times_after_the_last_one() -> None:
    quarterly = crontab(minute="*/15", app=APP)
    last = ms("2026-01-01T00:00:00")
    now = ms("2026-01-01T01:05:00")
    assert due_slots(quarterly, last, now) == [
        ms("2026-01-01T00:15:00"),
        ms("2026-01-01T00:30:00"),
        ms("2026-01-01T00:45:00"),
        ms("2026-01-01T01:00:00"),
    ]
    assert next_slot(quarterly, now) == ms("2026-01-01T01:15:00")
    nightly = crontab(hour=3, minute=30, app=APP)
    assert due_slots(nightly, ms("2026-01-01T12:00:00"), ms("2026-01-03T12:00:00")) == [
        ms("2026-01-02T03:30:00"),
        ms("2026-01-03T03:30:00"),
    ]
