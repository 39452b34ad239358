"""A short seeded fault run of real processes, checked for linearizability.

Three raftnode processes, each behind a proxy, three client processes writing,
reading (``read()`` then the database, and the read route) and incrementing, while the
nemesis kills, pauses, partitions (minority, bridge, one-way), slows the network and
replaces members (remove, add as a learner, promote).
The history must be linearizable, every counter must hold its acknowledged increments
exactly once, and the nodes' rows and logs must be identical; the planted stale reader
(no read index) must be caught. The nodes snapshot every 500 entries through it all, and
a run that took no snapshot fails too: compaction under partitions stays covered.
Longer runs: ``scripts/faults --seed N --seconds S``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.faults.run import run

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SEED = 2
MEMBERSHIP = ("member", "kill-leader", "pause", "partition")
"""Seed 2 draws from these: member, pause, kill-leader, pause, member."""
"""Its schedule: kill, member, pause, latency, member, partition, pause, pause."""


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
    assert max(report.snapshots.values()) > 0, summary
    # The control: reads of a node's database without the read index are stale under
    # these faults, and the checker says so.
    assert report.planted_reads > 0, summary
    assert report.planted_verdict is False, summary


def test_members_replaced_under_faults_keep_every_check_and_never_disrupt(
    tmp_path: Path,
) -> None:
    """Replace members (remove, learner, promote) between leader kills and pauses,
    through the proxies: still linearizable, exact counters, identical nodes, and no
    removed node moved the others' term while it ran."""
    report = run(
        SEED,
        25.0,
        tmp_path,
        MEMBERSHIP,
        planted=False,
        say=lambda line: None,
    )
    summary = report.summary()
    replaced = [f for f in report.faults if f["fault"] == "member"]
    assert len(replaced) >= 2, summary
    assert all(f["disrupted"] == 0 for f in replaced), summary
    assert report.acknowledged_writes >= 100, summary
    assert max(report.snapshots.values()) > 0, summary
    assert report.ok, summary
