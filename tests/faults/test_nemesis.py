"""A short seeded fault run of real processes, checked for linearizability.

Three raftnode processes behind per-link proxies, three client processes writing,
reading (``read()`` then the database, and the read route) and incrementing, while the
nemesis kills, pauses, partitions (minority, bridge, one-way) and slows the network.
The history must be linearizable, every counter must hold its acknowledged increments
exactly once, and the nodes' rows and logs must be identical; the planted stale reader
(no read index) must be caught. Longer runs: ``scripts/faults --seed N --seconds S``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.faults.run import run

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SEED = 2
"""Its schedule: kill, partition, pause, bridge, kill, one-way, pause, bridge."""


def test_a_seeded_fault_run_is_linearizable_and_the_planted_stale_reads_are_caught(
    tmp_path: Path,
) -> None:
    report = run(SEED, 30.0, tmp_path, say=lambda line: None)
    summary = report.summary()
    assert len(report.faults) >= 4, summary
    assert report.acknowledged_writes >= 200, summary
    assert report.verdict is True, summary
    assert not report.counter_problems, summary
    assert not report.differences, summary
    # The control: reads of a node's database without the read index are stale under
    # these faults, and the checker says so.
    assert report.planted_reads > 0, summary
    assert report.planted_verdict is False, summary
