"""The Raft beat after a blackout, through a real node in this process: a 50 ms entry
gets every slot of the catch-up window dispatched once, and the slots before it are
skipped with a warning that counts them; a crontab days behind is skipped over ticks.

The beats (``RaftScheduler``) ask the node whether it leads and claim their slots
through the log, as beside ``raftnode``; only their clock, the Celery app's ``now()``,
is moved by hand (no 70 s sleep), and ``send_task`` records what would reach the broker.
"""

from __future__ import annotations

import logging
import re
from datetime import UTC, datetime
from typing import Any

import pytest

celery = pytest.importorskip("celery")

from celery.schedules import crontab  # noqa: E402

from django_raft import models  # noqa: E402
from django_raft.contrib.celery.beat import CATCH_UP, MAX_SLOTS, RaftScheduler  # noqa: E402
from django_raft.node import sessions  # noqa: E402
from tests.node.test_node import Running, running, start  # noqa: E402, F401  (fixtures)

pytestmark = pytest.mark.django_db(transaction=True)

T0 = int(datetime(2026, 1, 1, tzinfo=UTC).timestamp() * 1000)
PERIOD = 50
BEAT_LOGGER = "django_raft.contrib.celery.beat"


class Beats:
    """Beats of one Celery app whose clock the test sets, and the tasks they sent."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, schedule: Any = PERIOD / 1000) -> None:
        self.app = celery.Celery(set_as_current=False)
        self.app.conf.timezone = "UTC"
        self.app.conf.result_expires = None
        self.app.conf.beat_schedule = {"job": {"task": "t.job", "schedule": schedule}}
        self.now_ms = T0
        self.sent: list[int] = []
        monkeypatch.setattr(
            self.app, "now", lambda: datetime.fromtimestamp(self.now_ms / 1000, UTC)
        )
        monkeypatch.setattr(self.app, "send_task", self.record)

    def record(self, name: str, **options: Any) -> None:
        slot = options["headers"]["raft_slot"]
        assert name == "t.job" and options["task_id"] == f"job@{slot}"
        self.sent.append(slot)

    def beat(self) -> RaftScheduler:
        return RaftScheduler(app=self.app)

    def run(self, beat: RaftScheduler, until_ms: int) -> None:
        """Tick ``beat`` every 20 ms of the clock up to ``until_ms``."""
        while self.now_ms < until_ms:
            self.now_ms = min(self.now_ms + 20, until_ms)
            beat.tick()


def claims() -> int:
    return models.LogEntry.objects.filter(command=sessions.BEAT_CLAIM).count()


def skipped(caplog: pytest.LogCaptureFixture) -> list[int]:
    """The counts of the skip warnings, in order."""
    found = (re.match(r"raft beat: job: (\d+) slots skipped", text) for text in warnings(caplog))
    return [int(match[1]) for match in found if match]


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        record.getMessage()
        for record in caplog.records
        if record.name == BEAT_LOGGER and record.levelno >= logging.WARNING
    ]


@pytest.fixture
def beats(running: Running, monkeypatch: pytest.MonkeyPatch) -> Beats:  # noqa: F811
    return Beats(monkeypatch)


def test_a_50_ms_entry_across_a_70_s_blackout_dispatches_every_slot_once(
    beats: Beats, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, BEAT_LOGGER)
    first = beats.beat()
    beats.run(first, T0 + 1000)
    assert beats.sent == list(range(T0, T0 + 1001, PERIOD))
    # No beat ticks for 70 s; then the next one to lead, with no memory, catches up.
    beats.now_ms += 70_000
    before = claims()
    second = beats.beat()
    second.tick()
    assert claims() - before == 2  # 1,400 slots: two claims of at most 1,000
    beats.run(second, beats.now_ms + 1000)
    # The first beat, back with its old memory, sends nothing twice.
    first.tick()
    beats.run(first, beats.now_ms + 1000)
    last = beats.now_ms // PERIOD * PERIOD
    assert beats.sent == list(range(T0, last + 1, PERIOD))  # each once, in order, none missing
    assert warnings(caplog) == []


def test_slots_before_the_catch_up_window_are_skipped_counted_and_logged_once(
    beats: Beats, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, BEAT_LOGGER)
    beat = beats.beat()
    beats.run(beat, T0 + 1000)
    beats.now_ms += 400_010  # 8,000 slots due; the window holds those of the last CATCH_UP s
    before = claims()
    beat.tick()
    window_start = beats.now_ms - int(CATCH_UP * 1000)
    kept_from = -(-window_start // PERIOD) * PERIOD
    assert claims() - before == 6
    beats.run(beat, beats.now_ms + 1000)
    last = beats.now_ms // PERIOD * PERIOD
    assert beats.sent == [
        *range(T0, T0 + 1001, PERIOD),
        *range(kept_from, last + 1, PERIOD),
    ]
    assert (kept_from - (T0 + 1000)) // PERIOD - 1 == 2000
    [warning] = warnings(caplog)
    assert warning.startswith(
        "raft beat: job: 2000 slots skipped, from 2026-01-01T00:00:01.050+00:00 "
        "to 2026-01-01T00:01:41.000+00:00"
    )


def test_a_crontab_days_behind_is_skipped_over_ticks_each_slot_counted_once(
    running: Running,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, BEAT_LOGGER)
    minutely = Beats(monkeypatch, crontab())
    beat = minutely.beat()
    minutely.run(beat, T0 + 60_000)  # a crontab never granted starts at its next time
    assert minutely.sent == [T0 + 60_000]
    minutely.now_ms += 10 * 86_400_000  # 14,400 minutes due; the window holds the last 5
    beat.tick()
    assert minutely.sent == [T0 + 60_000] and skipped(caplog) == [MAX_SLOTS]
    minutely.run(beat, minutely.now_ms + 1000)
    assert skipped(caplog) == [MAX_SLOTS, 14_400 - 5 - MAX_SLOTS]  # then never again
    last = minutely.now_ms // 60_000 * 60_000
    assert minutely.sent == [T0 + 60_000, *range(last - 4 * 60_000, last + 1, 60_000)]
