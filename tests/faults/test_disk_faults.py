"""A full disk under the leader's log: the node stops serving, nothing acknowledged is
lost, and once the disk is fixed it restarts and rejoins.

The leader's log file (``LOG_DATABASE``) on a ``tests.faults.lazyfs`` mount starts
failing every write with ENOSPC under client load, for 3 s; then the disk is fixed and
the node restarted; a failed sync of a follower's state file stops it too. Every
combination (ENOSPC and EIO on writes, EIO on fsync; the log and the state file; leader
and follower): ``scripts/faults --disk-faults enospc-write,eio-write,eio-fsync``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.faults.disk import Observation, disk_fault_run
from tests.faults.run import Report

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.usefixtures("fuse")]


@pytest.fixture(scope="module")
def full_log_disk(
    tmp_path_factory: pytest.TempPathFactory, fuse: None
) -> tuple[Report, Observation]:
    workdir = tmp_path_factory.mktemp("disk")
    return disk_fault_run(workdir, "enospc-write", "log", "leader", held=3.0, say=lambda x: None)


def test_a_leader_whose_log_disk_is_full_stops_and_nothing_acknowledged_is_lost(
    full_log_disk: tuple[Report, Observation],
) -> None:
    report, observed = full_log_disk
    summary = observed.summary() + "\n" + report.summary()
    # It stops rather than going on without a log.
    assert observed.exited, summary
    assert any("disk is full" in line for line in observed.log), summary
    assert observed.acknowledged_during > 0, summary  # the others went on meanwhile
    assert report.ok, summary  # linearizable, counters exact, back with identical log


def test_a_node_stopped_by_its_disk_exits_with_a_failure_status(
    full_log_disk: tuple[Report, Observation],
) -> None:
    """A supervisor that restarts failed processes restarts it (once the disk is fixed)."""
    _, observed = full_log_disk
    assert observed.exited and observed.returncode not in (0, None), observed.summary()
    assert any("stopped after a failure" in line for line in observed.log), observed.summary()


def test_a_failed_sync_of_the_state_file_stops_the_node_and_loses_nothing(
    tmp_path: Path,
) -> None:
    """The state's commits wait for no sync (they are redone from the log), so its
    file is synced only when it is checkpointed: a failure there must stop the node
    too, never pass unseen (SQLite ignores the failures of its own checkpoints)."""
    report, observed = disk_fault_run(
        tmp_path, "eio-fsync", "state", "follower", held=3.0, say=lambda x: None
    )
    summary = observed.summary() + "\n" + report.summary()
    assert observed.exited and observed.returncode not in (0, None), summary
    assert any("could not be synced to its disk" in line for line in observed.log), summary
    assert report.ok, summary
