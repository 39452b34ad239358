"""Full and failing disks: what a node does when its SQLite files cannot be written.

Three raftnode processes, each with its state machine (``db.sqlite3``) and its log
(``log.sqlite3``, ``LOG_DATABASE``) on a ``tests.faults.lazyfs`` mount, under client
load. One node's disk then fails for a while (``enospc-write``, ``eio-write`` or
``eio-fsync``, on its log file, its state file, or both), then is fixed; a node that
stopped meanwhile is restarted. What the node did is recorded (did it exit, with what
status, after how long, with which log lines), and the run is concluded like any
fault run: nothing acknowledged lost, every node back with identical rows and log.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.faults.cluster import FaultCluster, kill_group, status_of
from tests.faults.power import Mount
from tests.faults.run import ClientProcess, Report, conclude, start_clients

FILES = {"log": "log.sqlite3", "state": "db.sqlite3", "both": ""}
NOTABLE = re.compile(r"ERROR|CRITICAL|WARNING|Traceback|Error:|rror\b")


@dataclass
class Observation:
    """What the node whose disk failed did."""

    fault: str
    files: str
    role: str
    node: str = ""
    exited: bool = False
    returncode: int | None = None
    exited_after_s: float | None = None
    serving: bool = True
    """Whether a node that did not exit still answered its status once the disk was fixed
    (one that did not was killed, then restarted like the ones that exited)."""
    log: list[str] = field(default_factory=list)
    """Notable lines of its log from the fault on (deduplicated, numbers masked)."""
    acknowledged_during: int = 0
    """Writes acknowledged by anyone while the fault lasted."""
    injected: list[str] = field(default_factory=list)
    """What the filesystem failed (its log: the first, 10th, 100th... of each kind)."""

    def summary(self) -> str:
        what = (
            f"exited with status {self.returncode} after {self.exited_after_s:.1f} s"
            if self.exited and self.exited_after_s is not None
            else "kept running" + ("" if self.serving else " but served nothing (killed)")
        )
        lines = [
            f"{self.fault} on {self.files} file(s) of the {self.role} {self.node}: {what}; "
            f"{self.acknowledged_during} writes acknowledged meanwhile"
        ]
        lines += [f"    injected: {line}" for line in self.injected[-6:]]
        lines += [f"    | {line}" for line in self.log[:12]]
        return "\n".join(lines)


def disk_fault_run(
    workdir: Path,
    fault: str,
    files: str = "both",
    role: str = "leader",
    held: float = 4.0,
    load: float = 3.0,
    snapshot_threshold: int = 200,
    say: Any = print,
) -> tuple[Report, Observation]:
    """One disk fault on the ``role`` node's ``files`` for ``held`` seconds."""
    report = Report(0)
    observed = Observation(fault, files, role)
    cluster = FaultCluster(
        workdir, proxies=False, LOG_DATABASE="raft_log", SNAPSHOT_THRESHOLD=snapshot_threshold
    )
    mounts: dict[str, Mount] = {}
    processes: list[ClientProcess] = []
    try:
        for node in cluster.nodes:
            backing = workdir / f"{node.node_id}-disk"
            backing.mkdir()
            for name, data in node.files().items():
                (backing / name).write_bytes(data)
            node.data_dir = workdir / f"{node.node_id}-mount"
            control = workdir / f"{node.node_id}-control"
            control.write_text("")
            mounts[node.node_id] = Mount(
                backing, node.data_dir, workdir / f"{node.node_id}-lazyfs.log", "lazy", control
            )
            mounts[node.node_id].start()
        cluster.start()
        origin = time.monotonic()
        processes, _ = start_clients(
            cluster, workdir, 0, origin, origin + 600, 2, 2, False, "route"
        )
        time.sleep(1.5 + load)
        leader = cluster.leader()
        victim = leader if role == "leader" else next(n for n in cluster.nodes if n is not leader)
        observed.node = victim.node_id
        log_size = victim.log_path.stat().st_size
        switch = mounts[victim.node_id].control
        assert switch is not None and victim.process is not None
        began = time.monotonic()
        switch.write_text(f"{fault} {FILES[files]}")
        while time.monotonic() < began + held:
            if victim.process.poll() is not None and not observed.exited:
                observed.exited = True
                observed.returncode = victim.process.returncode
                observed.exited_after_s = time.monotonic() - began
            time.sleep(0.02)
        switch.write_text("")
        ended = time.monotonic()
        if not observed.exited:
            observed.serving = status_of(victim.address, 2.0) is not None
            if not observed.serving:
                victim.kill()  # alive but serving nothing: the operator restarts it
        with victim.log_path.open("rb") as log:
            log.seek(log_size)
            lines = log.read().decode(errors="replace").splitlines()
        seen: set[str] = set()
        for line in lines:
            masked = re.sub(r"\d+", "N", line.split(" ", 2)[-1])[:200]
            if NOTABLE.search(line) and masked not in seen:
                seen.add(masked)
                observed.log.append(masked)
        observed.injected = [
            line.removeprefix("lazyfs: injected ")
            for line in mounts[victim.node_id].log.read_text().splitlines()
            if line.startswith("lazyfs: injected")
        ]
        say(f"  {fault} on {files} of {role} {victim.node_id}: exited {observed.exited}")
        time.sleep(load)
        conclude(cluster, processes, None, report, origin, converge_timeout=60.0)
        history = [op for process in processes for op in process.ops()]
        observed.acknowledged_during = sum(
            op.status == "ok" and op.f != "read" and began <= op.complete <= ended for op in history
        )
    finally:
        for process in processes:
            kill_group(process.process)
        cluster.close()
        for mount in mounts.values():
            mount.stop()
    return report, observed


KINDS = ("enospc-write", "eio-write", "eio-fsync", "eio-fsync-drop")


def matrix(
    workdir: Path,
    kinds: tuple[str, ...] = KINDS,
    files: tuple[str, ...] = ("log", "state"),
    roles: tuple[str, ...] = ("leader", "follower"),
    say: Any = print,
) -> list[tuple[Report, Observation]]:
    """Every combination, one run each (in sub-directories of ``workdir``)."""
    found = []
    for kind in kinds:
        for where in files:
            for role in roles:
                directory = workdir / f"{kind}-{where}-{role}"
                directory.mkdir(parents=True)
                report, observed = disk_fault_run(directory, kind, where, role, say=say)
                say(observed.summary())
                say(report.summary())
                found.append((report, observed))
    return found
