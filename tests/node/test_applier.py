"""The applier thread: runs applied in order, joined when they wait together, callers
answered, the loop told, and what is queued at a stop answered truthfully."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from typing import Any

import pytest

from django_raft.core import Entry, EntryType, Snapshot, SnapshotMetadata
from django_raft.exceptions import CommandTimeoutError
from django_raft.node.applier import Applied, Applier, Restore, Run, Waiting
from django_raft.node.dispatch import Completer
from django_raft.node.outcome import Outcome


class RecordingMachine:
    """Records what it is asked to apply; the first run waits for ``release``."""

    node_id = "n1"
    alias = "recording"
    """No database: the watches of this alias are woken, and there are none."""

    def __init__(self) -> None:
        self.calls: list[Any] = []
        self.entered = threading.Event()
        self.release = threading.Event()

    def apply(self, entries: Sequence[Entry]) -> dict[int, Outcome]:
        self.entered.set()
        self.release.wait(10)
        self.calls.append([entry.index for entry in entries])
        return {entry.index: Outcome(ok=True, value=entry.index) for entry in entries}

    def restore(self, data: bytes, index: int, term: int) -> None:
        self.calls.append(("restore", index))

    def forget_outcomes(self, index: int) -> None:
        self.calls.append(("forget", index))


@pytest.fixture
def applier() -> Iterator[tuple[Applier, RecordingMachine, list[Applied]]]:
    machine = RecordingMachine()
    reports: list[Applied] = []
    completer = Completer("test-complete")
    completer.start()
    applier = Applier(
        "test-apply",
        machine,  # type: ignore[arg-type]
        completer,
        report=reports.append,
        leader=lambda: "n2",
        failed=lambda error: None,
    )
    applier.start()
    yield applier, machine, reports
    machine.release.set()
    applier.stop(5)
    completer.stop()


def run(first: int, last: int, term: int = 1) -> tuple[Run, dict[int, Future[Outcome]]]:
    entries = tuple(Entry(i, 1, EntryType.NORMAL, b"x") for i in range(first, last + 1))
    futures: dict[int, Future[Outcome]] = {i: Future() for i in range(first, last + 1)}
    waiting = {i: Waiting(term, future) for i, future in futures.items()}
    return Run(entries, waiting), futures


def test_runs_that_wait_together_are_applied_as_one_in_order(
    applier: tuple[Applier, RecordingMachine, list[Applied]],
) -> None:
    worker, machine, reports = applier
    first, _ = run(1, 2)
    worker.hand_over(first)
    assert machine.entered.wait(5)  # the first run is in hand: the next ones queue
    later = [run(3, 4), run(5, 5), run(6, 8)]
    for job, _ in later:
        worker.hand_over(job)
    machine.release.set()
    for _, futures in later:
        for index, future in futures.items():
            assert future.result(5).value == index
    assert machine.calls == [[1, 2], [3, 4, 5, 6, 7, 8]]
    assert [report.index for report in reports] == [2, 8]


def test_a_snapshot_between_runs_is_restored_in_its_place(
    applier: tuple[Applier, RecordingMachine, list[Applied]],
) -> None:
    worker, machine, reports = applier
    worker.hand_over(run(1, 1)[0])
    assert machine.entered.wait(5)
    worker.hand_over(run(2, 3)[0])
    snapshot = Snapshot(SnapshotMetadata(10, 2), b"state")
    worker.hand_over(Restore(snapshot))
    last, futures = run(11, 12)
    worker.hand_over(last)
    machine.release.set()
    assert futures[12].result(5).ok
    assert machine.calls == [[1], [2, 3], ("restore", 10), [11, 12]]
    assert [(r.index, r.restored) for r in reports] == [
        (1, False),
        (3, False),
        (10, True),
        (12, False),
    ]


def test_a_proposal_replaced_by_another_leader_s_entry_is_told_so(
    applier: tuple[Applier, RecordingMachine, list[Applied]],
) -> None:
    worker, machine, _ = applier
    machine.release.set()
    job, futures = run(1, 1, term=7)  # proposed in term 7; the entry is of term 1
    worker.hand_over(job)
    error = futures[1].exception(5)
    assert type(error).__name__ == "NotLeaderError"


def test_what_is_queued_at_a_stop_is_answered_as_committed_not_applied_here() -> None:
    machine = RecordingMachine()
    completer = Completer("test-complete")
    completer.start()
    worker = Applier("test-apply", machine, completer, lambda a: None, lambda: "", lambda e: None)  # type: ignore[arg-type]
    worker.start()
    worker.hand_over(run(1, 1)[0])
    assert machine.entered.wait(5)
    queued, futures = run(2, 3)
    worker.hand_over(queued)
    stopping = threading.Thread(target=worker.stop, args=(5,))
    stopping.start()
    machine.release.set()
    stopping.join(10)
    try:
        for future in futures.values():
            assert isinstance(future.exception(5), CommandTimeoutError)
        assert machine.calls == [[1]]
    finally:
        completer.stop()
