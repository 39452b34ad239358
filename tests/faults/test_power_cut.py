"""Power cuts of SQLite nodes on a filesystem that loses what was not fsynced.

The filesystem (``tests.faults.lazyfs``) first, on its own: a cut keeps exactly what
was synced. Then three raftnode processes, each on a mount of its own, under client
load: the power of a follower, of the leader alone (a minority), of the leader and a
follower (a majority), then of every node is cut, each with kill -9 of its node at the
same instant; every node restarts on what its disk kept. Nothing acknowledged may be
lost (the history stays linearizable, counters exact) and every node must rejoin with
the same rows and log. The negative control: a disk that acknowledges fsync without
syncing makes the same check fail.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.faults.power import CUTS, Mount, power_cut_run

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.usefixtures("fuse")]


@pytest.fixture
def mount(tmp_path: Path) -> Mount:
    return Mount(tmp_path / "disk", tmp_path / "mount", tmp_path / "lazyfs.log", "lazy")


def cut_and_remount(mount: Mount) -> None:
    assert mount.process is not None
    os.killpg(mount.process.pid, 9)
    mount.detach()
    mount.start()


def test_a_cut_keeps_what_was_synced_and_drops_the_rest(mount: Mount) -> None:
    mount.start()
    try:
        synced, unsynced = mount.mountpoint / "synced", mount.mountpoint / "unsynced"
        with synced.open("wb") as out:
            out.write(b"a" * 10_000)
            out.flush()
            os.fsync(out.fileno())
            out.write(b"b" * 100)  # after the sync
            out.flush()
        with unsynced.open("wb") as out:
            out.write(b"lost")
        assert synced.read_bytes() == b"a" * 10_000 + b"b" * 100  # the cache is read
        assert unsynced.read_bytes() == b"lost"
        assert (mount.backing / "synced").stat().st_size == 10_000

        cut_and_remount(mount)

        assert synced.read_bytes() == b"a" * 10_000
        assert unsynced.exists()  # names are kept: created files are journaled metadata
        assert unsynced.read_bytes() == b""
    finally:
        mount.stop()


def test_a_truncation_is_lost_too_unless_synced(mount: Mount) -> None:
    mount.start()
    try:
        path = mount.mountpoint / "file"
        with path.open("wb") as out:
            out.write(bytes(range(256)) * 40)
            os.fsync(out.fileno())
        with path.open("r+b") as out:
            out.truncate(100)
            out.seek(5000)
            out.write(b"end")  # extends with zeros, not with the old bytes
        data = path.read_bytes()
        assert len(data) == 5003 and data[100:5000] == bytes(4900) and data[-3:] == b"end"

        cut_and_remount(mount)

        assert path.read_bytes() == bytes(range(256)) * 40
    finally:
        mount.stop()


def test_power_cuts_of_one_node_a_minority_a_majority_and_all_lose_nothing_acknowledged(
    tmp_path: Path,
) -> None:
    report = power_cut_run(tmp_path, CUTS, "lazy", say=lambda line: None)
    summary = report.summary()
    assert [f["fault"] for f in report.faults] == [f"power-cut-{c}" for c in CUTS], summary
    assert report.acknowledged_writes >= 100, summary
    assert report.ok, summary


def test_a_disk_that_acknowledges_fsync_without_syncing_makes_the_check_fail(
    tmp_path: Path,
) -> None:
    # The negative control: the same check must see what such a disk loses.
    try:
        report = power_cut_run(
            tmp_path, ("all",), "nosync", say=lambda line: None, converge_timeout=10.0
        )
    except RuntimeError as error:  # no leader at all after the cut
        assert "no leader" in str(error), error
        return
    summary = report.summary()
    assert not report.ok, summary
    lost = report.verdict is False or bool(report.counter_problems)
    diverged = bool(report.differences or report.failures)  # or a node did not rejoin
    assert lost or diverged, summary
