"""The slots of the Raft beat scheduler: the same on every server, none skipped silently.

A slot is due when it falls after the last one granted, up to now; it is claimed when it
is in the catch-up window (at most ``CATCH_UP`` s old, and of an interval's the latest
``MAX_SLOTS``), and skipped, counted, when it is before it.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

celery = pytest.importorskip("celery")

from celery.schedules import crontab, schedule  # noqa: E402

from django_raft.contrib.celery.beat import (  # noqa: E402
    CATCH_UP,
    MAX_SLOTS,
    Due,
    Skipped,
    due_slots,
    next_slot,
)

APP = celery.Celery(set_as_current=False)
APP.conf.timezone = "UTC"
WINDOW_MS = int(CATCH_UP * 1000)


def ms(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp() * 1000)


def every(milliseconds: int) -> schedule:
    return schedule(timedelta(milliseconds=milliseconds), app=APP)


T0 = ms("2026-01-01T00:00:00")


def test_interval_slots_are_multiples_of_the_period_since_the_epoch() -> None:
    every_10s = every(10_000)
    now = ms("2026-01-01T00:01:07")
    assert due_slots(every_10s, None, now) == Due([ms("2026-01-01T00:01:00")])
    assert due_slots(every_10s, ms("2026-01-01T00:00:30"), now) == Due(
        [ms("2026-01-01T00:00:40"), ms("2026-01-01T00:00:50"), ms("2026-01-01T00:01:00")]
    )
    assert due_slots(every_10s, ms("2026-01-01T00:01:00"), now) == Due([])
    assert next_slot(every_10s, now) == ms("2026-01-01T00:01:10")


def test_a_50_ms_interval_70_s_behind_has_every_slot_due() -> None:
    due = due_slots(every(50), T0, T0 + 70_000 + 13)
    assert due == Due(list(range(T0 + 50, T0 + 70_000 + 1, 50)))
    assert len(due.slots) == 1400  # more than one claim: sessions.MAX_SLOTS_PER_CLAIM


def test_an_interval_far_behind_keeps_the_catch_up_seconds_and_counts_the_rest() -> None:
    now = T0 + 400_000 + 7
    due = due_slots(every(50), T0, now)
    # Kept: the slots at most CATCH_UP s old; skipped: every one before, counted.
    kept_from = T0 + 100_050  # the first multiple of 50 ms at or after now - 300 s
    assert kept_from - 50 < now - WINDOW_MS <= kept_from
    assert due.slots == list(range(kept_from, T0 + 400_000 + 1, 50))
    assert due.skipped == Skipped(2000, T0 + 50, kept_from - 50)
    assert len(due.slots) + due.skipped.count == 8000  # every slot due, one way or the other


def test_a_very_fast_interval_keeps_its_latest_max_slots_and_counts_the_rest() -> None:
    now = T0 + 200_000
    due = due_slots(every(10), T0, now)  # 20,000 slots due in 200 s: the slot bound wins
    assert due.slots == list(range(now - (MAX_SLOTS - 1) * 10, now + 1, 10))
    assert due.skipped == Skipped(20_000 - MAX_SLOTS, T0 + 10, now - MAX_SLOTS * 10)


def test_an_interval_never_granted_starts_at_its_latest_slot_if_in_the_window() -> None:
    hourly = every(3600_000)
    assert due_slots(hourly, None, T0 + WINDOW_MS) == Due([T0])
    assert due_slots(hourly, None, T0 + WINDOW_MS + 1) == Due([], Skipped(1, T0, T0))


def test_no_slot_from_the_expiry_on_is_due_or_skipped() -> None:
    expires = T0 + 1000
    # Long after: the nine slots before the expiry are skipped, none after it is counted.
    assert due_slots(every(100), T0, T0 + 500_000, expires_ms=expires) == Due(
        [], Skipped(9, T0 + 100, T0 + 900)
    )
    assert due_slots(every(100), T0, T0 + 950, expires_ms=expires).slots == list(
        range(T0 + 100, T0 + 901, 100)
    )


def test_crontab_slots_are_its_times_after_the_last_one_in_the_window() -> None:
    quarterly = crontab(minute="*/15", app=APP)
    last = ms("2026-01-01T00:00:00")
    now = ms("2026-01-01T01:05:00")
    assert due_slots(quarterly, last, now) == Due(
        [ms("2026-01-01T01:00:00")],  # exactly CATCH_UP s old: still in
        Skipped(3, ms("2026-01-01T00:15:00"), ms("2026-01-01T00:45:00")),
    )
    assert next_slot(quarterly, now) == ms("2026-01-01T01:15:00")
    nightly = crontab(hour=3, minute=30, app=APP)
    assert due_slots(nightly, ms("2026-01-01T12:00:00"), ms("2026-01-03T03:32:00")) == Due(
        [ms("2026-01-03T03:30:00")],
        Skipped(1, ms("2026-01-02T03:30:00"), ms("2026-01-02T03:30:00")),
    )


def test_a_crontab_far_behind_is_walked_max_slots_at_a_time_none_lost() -> None:
    minutely = crontab(app=APP)
    last = ms("2026-01-01T00:00:00")
    now = ms("2026-01-11T00:00:30")  # 14,400 minutes later
    first = due_slots(minutely, last, now)
    assert first == Due([], Skipped(MAX_SLOTS, last + 60_000, last + MAX_SLOTS * 60_000))
    second = due_slots(minutely, last + MAX_SLOTS * 60_000, now)  # from the last skipped
    assert second.skipped == Skipped(
        14_400 - MAX_SLOTS - 5, last + (MAX_SLOTS + 1) * 60_000, now - 30_000 - 5 * 60_000
    )
    assert second.slots == list(range(now - 30_000 - 4 * 60_000, now, 60_000))
