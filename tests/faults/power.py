"""Power cuts: nodes whose SQLite files live on ``tests.faults.lazyfs`` mounts.

Each node's directory is a FUSE mount over a backing directory of its own. A cut of
some nodes kills their filesystems (what was not fsynced is lost) and their
``raftnode`` processes with SIGKILL at the same instant, remounts the filesystems over
what was synced, and restarts the nodes, while client processes keep writing, reading
and incrementing. Then the run is concluded like any fault run
(``tests.faults.run.conclude``): linearizable history, counters exact, every node
converged with identical rows and log.

Cuts, on three nodes: ``follower`` (one follower), ``leader`` (the leader alone: a
minority), ``majority`` (the leader and a follower), ``all``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.faults.cluster import FaultCluster, Node, kill_group
from tests.faults.run import ClientProcess, Report, conclude, start_clients
from tests.integration.cluster import ROOT

CUTS = ("follower", "leader", "majority", "all")
MOUNT_TIMEOUT = 20.0


def fuse_problem() -> str:
    """Why FUSE mounts cannot be made here ("" when they can)."""
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse does not exist (a container without the FUSE device)"
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        return "/dev/fuse is not readable and writable by this user"
    if shutil.which("fusermount3") is None:
        return "fusermount3 is missing (Debian's fuse3: scripts/install-fuse)"
    try:
        import mfusepy  # type: ignore[import-untyped, import-not-found, unused-ignore]  # noqa: F401
    except (ImportError, OSError) as error:
        return f"mfusepy cannot be loaded ({error}); pip install mfusepy"
    return ""


class Mount:
    """A lazyfs process mounting ``backing`` on ``mountpoint``."""

    def __init__(
        self, backing: Path, mountpoint: Path, log: Path, mode: str, control: Path | None = None
    ) -> None:
        self.backing = backing
        self.mountpoint = mountpoint
        self.log = log
        self.mode = mode
        self.control = control
        self.process: subprocess.Popen[bytes] | None = None
        self.stats = log.with_suffix(".stats")

    def unsynced(self) -> int:
        """The bytes a cut would lose now (as of the last 50 ms)."""
        try:
            return int(self.stats.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return 0

    def start(self) -> None:
        self.backing.mkdir(parents=True, exist_ok=True)
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "tests.faults.lazyfs", str(self.backing)]
        command += [str(self.mountpoint), "--mode", self.mode, "--stats", str(self.stats)]
        if self.control is not None:
            command += ["--control", str(self.control)]
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + MOUNT_TIMEOUT
        while not os.path.ismount(self.mountpoint):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"lazyfs did not mount {self.mountpoint}; see {self.log}")
            time.sleep(0.02)

    def detach(self) -> None:
        """Wait for a killed filesystem process; unmount (lazily) what it left."""
        kill_group(self.process)
        subprocess.run(
            ["fusermount3", "-u", "-z", str(self.mountpoint)], capture_output=True, check=False
        )

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=10)
        self.detach()


def cut(victims: list[Node], mounts: dict[str, Mount]) -> None:
    """Pull the plug: each victim's filesystem and node get SIGKILL back to back."""
    for node in victims:
        for process in (mounts[node.node_id].process, node.process):
            if process is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
    for node in victims:
        node.kill()
        mounts[node.node_id].detach()


def choose(cluster: FaultCluster, kind: str) -> list[Node]:
    leader = cluster.leader()
    followers = [n for n in cluster.nodes if n is not leader]
    return {
        "follower": [followers[0]],
        "leader": [leader],
        "majority": [leader, followers[0]],
        "all": list(cluster.nodes),
    }[kind]


def power_cut_run(
    workdir: Path,
    cuts: tuple[str, ...] = CUTS,
    mode: str = "lazy",
    seed: int = 0,
    load: float = 3.0,
    clients: int = 2,
    threads: int = 2,
    say: Any = print,
    converge_timeout: float = 90.0,
) -> Report:
    """Cut the power of ``cuts`` in turn under load (``load`` seconds before each and
    after the last); conclude; the report (``faults`` lists the cuts)."""
    report = Report(seed)
    cluster = FaultCluster(workdir, proxies=False)
    mounts: dict[str, Mount] = {}
    processes: list[ClientProcess] = []
    try:
        for node in cluster.nodes:
            backing = workdir / f"{node.node_id}-disk"
            backing.mkdir()
            for name, data in node.files().items():
                (backing / name).write_bytes(data)
            node.data_dir = workdir / f"{node.node_id}-mount"
            mounts[node.node_id] = Mount(
                backing, node.data_dir, workdir / f"{node.node_id}-lazyfs.log", mode
            )
            mounts[node.node_id].start()
        cluster.start()
        origin = time.monotonic()
        processes, _ = start_clients(
            cluster, workdir, seed, origin, origin + 600, clients, threads, False, "route"
        )
        time.sleep(1.5)  # the clients import Django
        for kind in cuts:
            time.sleep(load)
            victims = choose(cluster, kind)
            lost = sum(mounts[n.node_id].unsynced() for n in victims)
            at = time.monotonic()
            cut(victims, mounts)
            for node in victims:
                mounts[node.node_id].start()
                node.start(wait=False)
            for node in victims:
                try:
                    node.wait_answering()
                except RuntimeError as error:
                    lines = node.log_path.read_text(errors="replace").strip().splitlines()
                    report.failures.append(f"after the cut of {kind}: {error}: {lines[-1]}")
            if report.failures:
                return report
            report.faults.append(
                {
                    "fault": f"power-cut-{kind}",
                    "nodes": [n.node_id for n in victims],
                    "at": at,
                    "held_s": round(time.monotonic() - at, 3),
                    "unsynced_bytes": lost,
                }
            )
            say(
                f"  {at - origin:6.1f} s  cut {kind:<9} {','.join(n.node_id for n in victims)}"
                f"  back after {time.monotonic() - at:.1f} s, {lost} unsynced bytes dropped"
            )
        time.sleep(load)
        conclude(cluster, processes, None, report, origin, converge_timeout)
    finally:
        for process in processes:
            kill_group(process.process)
        cluster.close()
        for mount in mounts.values():
            mount.stop()
    return report
