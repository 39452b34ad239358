"""A fault run: record a history under the nemesis, heal, converge, check it.

    scripts/faults                          # 60 s of every fault, a random seed
    scripts/faults --seed 7 --seconds 300   # replay seed 7's schedule, longer
    scripts/faults --faults kill,pause      # only these faults
    scripts/faults --runs 5                 # five runs, seeds seed, seed+1, ...
    scripts/faults --power follower,all     # power cuts (tests.faults.power), FUSE needed
    scripts/faults --power all --disk nosync           # their negative control: fails
    scripts/faults --disk-faults enospc-write,eio-fsync  # full and failing disks
    (--clients N --threads N; --keep keeps the work directory; --json PATH)

Three ``raftnode`` processes of the demo project on 127.0.0.1 (SQLite, durable), each
behind a proxy that tells its senders apart; client processes (``tests.faults.client``)
write, read linearizably and increment while the nemesis (``tests.faults.nemesis``)
kills, pauses, partitions and slows. Then everything is healed, the nodes converge, and:

- the history, with a final read of every key from the converged databases, is
  checked for linearizability (``tests.faults.checker``), key by key;
- every counter holds at least its acknowledged increments and at most those plus
  the unknown ones (nothing acknowledged lost, nothing applied twice);
- every node's replicated rows are identical, and so are the log entries they hold.

Every node snapshots its state and compacts its log every 500 entries, so a node cut
off or restarted may be sent a snapshot; the report says how far each node's snapshot
reaches and how many were installed. Runs of process faults alone go without proxies.
The seed fixes the faults, their durations and their choices; which node leads when
one begins is up to the run.

A planted bug rides along: one client reads a node's database with no read index
(``read(stale=True)``); its reads are checked with the others separately, and must be
found not linearizable when the schedule lagged that node. Exit status 1 when the
honest history fails a check.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.faults import checker
from tests.faults.checker import Op
from tests.faults.client import ClientSpec
from tests.faults.cluster import ROOT, SECRET, FaultCluster, kill_group, status_of
from tests.faults.nemesis import FAULTS, PROCESS_FAULTS, inject

CLIENT_GRACE = 15.0
"""Seconds the clients have to finish their operations once told to stop."""
SNAPSHOT_THRESHOLD = 500
"""Entries applied between two snapshots: several in a short run."""


class ClientProcess:
    """A ``tests.faults.client`` process and the operations it recorded."""

    def __init__(self, spec: ClientSpec, workdir: Path) -> None:
        self.spec = spec
        config = workdir / f"{spec.name}.json"
        spec.write(str(config))
        with (workdir / f"{spec.name}.log").open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "tests.faults.client", str(config)],
                cwd=ROOT,
                stdin=subprocess.PIPE,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def stop(self) -> None:
        if self.process.stdin is not None:
            with contextlib.suppress(OSError):
                self.process.stdin.close()

    def ops(self) -> list[Op]:
        """Its operations; one begun but never completed (the client was killed in the
        middle) is unknown (``info``)."""
        records: dict[tuple[str, int], dict[str, Any]] = {}
        with contextlib.suppress(FileNotFoundError), open(self.spec.output) as lines:
            for line in lines:
                try:
                    record = json.loads(line)
                except ValueError:
                    continue  # a line cut short by a kill
                records[(record["process"], record["seq"])] = record  # the last one wins
        found = []
        for record in records.values():
            status = record["status"]
            found.append(
                Op(
                    record["process"],
                    record["f"],
                    record["key"],
                    record["value"],
                    record.get("result"),
                    status,
                    record["invoke"],
                    math.inf if status == checker.INFO else record["complete"],
                )
            )
        return found


def stop_clients(clients: list[ClientProcess]) -> None:
    for client in clients:
        client.stop()
    deadline = time.monotonic() + CLIENT_GRACE
    for client in clients:
        with contextlib.suppress(subprocess.TimeoutExpired):
            client.process.wait(timeout=max(0.1, deadline - time.monotonic()))
        kill_group(client.process)


@dataclass
class Report:
    """What a run did and what the checks found."""

    seed: int
    seconds: float = 0.0
    faults: list[dict[str, Any]] = field(default_factory=list)
    operations: dict[str, int] = field(default_factory=dict)
    """Per ``f:status`` of the honest clients."""
    acknowledged_writes: int = 0
    """Writes and increments that returned ok."""
    keys: int = 0
    verdict: bool | None = None
    """Linearizable (None: the search gave up on some key)."""
    anomalies: list[str] = field(default_factory=list)
    counter_problems: list[str] = field(default_factory=list)
    differences: list[str] = field(default_factory=list)
    planted_reads: int = 0
    planted_verdict: bool | None = None
    planted_anomalies: list[str] = field(default_factory=list)
    applied_index: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    """Nodes that did not converge."""
    snapshots: dict[str, int] = field(default_factory=dict)
    """Per node at the end, the last index its stored snapshot covers (0: none)."""
    installs: int = 0
    """Snapshots installed from a leader, by every node that ran (retired ones too)."""

    @property
    def ok(self) -> bool:
        return (
            self.verdict is True
            and not self.anomalies
            and not self.counter_problems
            and not self.differences
            and not self.failures
        )

    def summary(self) -> str:
        faults = Counter(f["fault"] for f in self.faults)
        lines = [
            f"seed {self.seed}: {self.seconds:.0f} s, faults "
            + (", ".join(f"{k} {v}" for k, v in sorted(faults.items())) or "none"),
            f"  operations {sum(self.operations.values())} "
            + str(dict(sorted(self.operations.items())))
            + f", acknowledged writes {self.acknowledged_writes}, keys {self.keys}, "
            f"applied index {self.applied_index}",
            f"  linearizable: {self.verdict}; counters: "
            + ("ok" if not self.counter_problems else "; ".join(self.counter_problems))
            + "; nodes: "
            + ("identical" if not self.differences else "; ".join(self.differences)),
        ]
        if self.snapshots:
            lines.append(
                "  snapshots at "
                + ", ".join(f"{n} #{i}" for n, i in sorted(self.snapshots.items()))
                + f"; installed {self.installs}"
            )
        cuts = [f for f in self.faults if "unsynced_bytes" in f]
        if cuts:
            lines.append(
                "  unsynced data dropped: "
                + ", ".join(
                    f"{f['fault'].removeprefix('power-cut-')} {','.join(f['nodes'])} "
                    f"{f['unsynced_bytes'] // 1024} KiB"
                    for f in cuts
                )
            )
        lines += [f"  FAILURE {f}" for f in self.failures]
        lines += [f"  ANOMALY {a}" for a in self.anomalies[:10]]
        if self.errors:
            lines.append(f"  errors seen by clients: {dict(sorted(self.errors.items()))}")
        if self.planted_reads:
            lines.append(
                f"  planted stale reads: {self.planted_reads}, linearizable with them: "
                f"{self.planted_verdict} ({len(self.planted_anomalies)} keys caught)"
            )
        return "\n".join(lines)


def counters(ops: list[Op], final: dict[str, str]) -> list[str]:
    """Counters outside [acknowledged increments, acknowledged + unknown ones]."""
    problems = []
    by_key: dict[str, Counter[str]] = {}
    for op in ops:
        if op.f == checker.INCR:
            by_key.setdefault(op.key, Counter())[op.status] += 1
    for key, counts in sorted(by_key.items()):
        value = int(final.get(key, "0"))
        low, high = counts[checker.OK], counts[checker.OK] + counts[checker.INFO]
        if not low <= value <= high:
            problems.append(f"{key} = {value}, expected {low}..{high} (ok..ok+unknown)")
    return problems


def start_clients(
    cluster: FaultCluster,
    workdir: Path,
    seed: int,
    origin: float,
    deadline: float,
    clients: int,
    threads: int,
    planted: bool,
    read_via: str | None = None,
) -> tuple[list[ClientProcess], ClientProcess | None]:
    """The honest client processes (one per node in turn, reading through the database
    and the route alternately unless ``read_via`` says), and the planted stale reader."""
    processes = []
    for k in range(clients):
        node = cluster.nodes[k % len(cluster.nodes)]
        spec = ClientSpec(
            name=f"c{k}",
            address=node.address,
            cluster=cluster.spec,
            database=str(node.database if read_via != "route" else workdir / f"c{k}.sqlite3"),
            secret=SECRET,
            threads=threads,
            seed=seed,
            origin=origin,
            deadline=deadline,
            output=str(workdir / f"c{k}.jsonl"),
            read_via=read_via or ("db" if k % 2 == 0 else "route"),
        )
        processes.append(ClientProcess(spec, workdir))
    stale = None
    if planted:
        node = cluster.nodes[-1]
        spec = ClientSpec(
            name="stale",
            address=node.address,
            cluster=cluster.spec,
            database=str(node.database),
            secret=SECRET,
            threads=1,
            seed=seed,
            origin=origin,
            deadline=deadline,
            output=str(workdir / "stale.jsonl"),
            mode="stale",
        )
        stale = ClientProcess(spec, workdir)
    return processes, stale


def conclude(
    cluster: FaultCluster,
    processes: list[ClientProcess],
    stale: ClientProcess | None,
    report: Report,
    origin: float,
    converge_timeout: float = 90.0,
) -> None:
    """Heal, stop the clients, let the nodes converge, and check everything (the
    leader's rows are the final state when the nodes do not converge)."""
    cluster.heal()
    cluster.leader()
    stop_clients(processes + ([stale] if stale else []))
    report.seconds = time.monotonic() - origin
    try:
        report.applied_index = cluster.converge(converge_timeout)
    except RuntimeError as error:
        statuses = {n.node_id: status_of(n.address, 2.0) for n in cluster.nodes}
        report.failures.append(
            f"{error}: "
            + "; ".join(
                f"{i} "
                + (f"{s['state']} commit {s['commit']} applied {s['applied']}" if s else "-")
                for i, s in statuses.items()
            )
        )
    final_at = time.monotonic()
    final = cluster.leader().kv()
    report.differences = cluster.differences()
    report.snapshots = {n.node_id: n.snapshot_index() for n in cluster.nodes}
    report.installs = sum(n.installs() for n in cluster.nodes + cluster.retired)
    judge(report, processes, stale, final, final_at)


def judge(
    report: Report,
    processes: list[ClientProcess],
    stale: ClientProcess | None,
    final: dict[str, str],
    final_at: float,
) -> None:
    """The checks of a history against the converged state ``final``."""
    history = [op for process in processes for op in process.ops()]
    report.operations = dict(Counter(f"{op.f}:{op.status}" for op in history))
    report.acknowledged_writes = sum(
        op.status == checker.OK and op.f in (checker.WRITE, checker.INCR) for op in history
    )
    report.errors = dict(Counter(e for p in processes for e in errors_of(p)))
    keys = {op.key for op in history}
    report.keys = len(keys)
    # The converged databases, read once nothing is in flight: a read after every op.
    finals = [
        Op("final", checker.READ, key, None, value_of(key, final), checker.OK, final_at, final_at)
        for key in sorted(keys)
    ]
    result = checker.check(history + finals)
    report.verdict = result.valid
    report.anomalies = [k.explain() for k in result.anomalies]
    report.counter_problems = counters(history, final)
    if stale is not None:
        planted_ops = stale.ops()
        report.planted_reads = sum(op.status == checker.OK for op in planted_ops)
        with_plant = checker.check(history + finals + planted_ops)
        report.planted_verdict = with_plant.valid
        report.planted_anomalies = [k.explain() for k in with_plant.anomalies]


def run(
    seed: int,
    seconds: float,
    workdir: Path,
    faults: tuple[str, ...] = FAULTS,
    clients: int = 3,
    threads: int = 2,
    planted: bool = True,
    say: Callable[[str], None] = print,
) -> Report:
    """One fault run (its processes all killed before it returns)."""
    rng = random.Random(seed)
    report = Report(seed)
    proxies = not set(faults) <= set(PROCESS_FAULTS)
    cluster = FaultCluster(workdir, proxies=proxies, SNAPSHOT_THRESHOLD=SNAPSHOT_THRESHOLD)
    processes: list[ClientProcess] = []
    stale: ClientProcess | None = None
    try:
        cluster.start()
        origin = time.monotonic()
        deadline = origin + seconds
        processes, stale = start_clients(
            cluster, workdir, seed, origin, deadline + 60, clients, threads, planted
        )
        time.sleep(1.5)  # the clients import Django
        while time.monotonic() < deadline:
            time.sleep(rng.uniform(0.3, 1.0))
            if time.monotonic() >= deadline:
                break
            fault = inject(cluster, rng, rng.choice(faults))
            report.faults.append(fault)
            if fault.get("disrupted"):
                report.failures.append(
                    f"removed member {fault['nodes'][0]} moved the others' term by "
                    f"{fault['disrupted']} while it ran"
                )
            say(
                f"  {fault['at'] - origin:6.1f} s  {fault['fault']:<12} "
                f"{','.join(fault['nodes']):<6} {fault['held_s']:.1f} s"
            )
        conclude(cluster, processes, stale, report, origin)
    finally:
        for process in processes + ([stale] if stale else []):
            kill_group(process.process)
        cluster.close()
    return report


def value_of(key: str, final: dict[str, str]) -> Any:
    value = final.get(key)
    return int(value) if value is not None and key.startswith("c") else value


def errors_of(process: ClientProcess) -> list[str]:
    found = []
    with contextlib.suppress(FileNotFoundError), open(process.spec.output) as lines:
        for line in lines:
            with contextlib.suppress(ValueError):
                error = json.loads(line).get("error", "")
                if error:
                    found.append(error.split(":", 1)[0])
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="scripts/faults", description=(__doc__ or "").split("\n")[0]
    )
    parser.add_argument("--seed", type=int, help="the schedule's seed (default: random)")
    parser.add_argument("--seconds", type=float, default=60.0, help="nemesis time (60)")
    parser.add_argument("--runs", type=int, default=1, help="runs, seeds seed, seed+1, ...")
    parser.add_argument("--faults", default=",".join(FAULTS), help="comma-separated kinds")
    parser.add_argument("--clients", type=int, default=3, help="client processes (3)")
    parser.add_argument("--threads", type=int, default=2, help="threads per client (2)")
    parser.add_argument(
        "--power",
        help="power cuts instead of the nemesis: comma-separated follower,leader,majority,all",
    )
    parser.add_argument(
        "--disk",
        choices=("lazy", "nosync"),
        default="lazy",
        help="power cuts: the disk syncs on fsync (lazy) or lies (nosync, the control)",
    )
    parser.add_argument(
        "--disk-faults",
        help="disk faults instead: comma-separated enospc-write,eio-write,eio-fsync,"
        "eio-fsync-drop, each on the log and state files of the leader and of a follower",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--json", type=Path, help="write the reports there")
    options = parser.parse_args(argv)
    seed = options.seed if options.seed is not None else random.randrange(1 << 31)
    faults = tuple(options.faults.split(","))
    unknown = set(faults) - set(FAULTS)
    if unknown:
        parser.error(f"unknown faults {sorted(unknown)}; choose among {', '.join(FAULTS)}")
    if options.disk_faults:
        from tests.faults.disk import matrix

        workdir = Path(tempfile.mkdtemp(prefix="raft-disk-faults-"))
        print(f"work directory {workdir}", flush=True)
        try:
            results = matrix(
                workdir,
                tuple(options.disk_faults.split(",")),
                say=lambda line: print(line, flush=True),
            )
        finally:
            if not options.keep:
                shutil.rmtree(workdir, ignore_errors=True)
        bad = [r for r, _ in results if not r.ok]
        print(f"{len(results) - len(bad)} of {len(results)} disk-fault runs kept every check")
        return 1 if bad else 0
    reports = []
    failed = 0
    for k in range(options.runs):
        workdir = Path(tempfile.mkdtemp(prefix="raft-faults-"))
        print(f"run {k + 1}/{options.runs}: seed {seed + k}, work directory {workdir}", flush=True)
        try:
            if options.power:
                from tests.faults.power import CUTS, fuse_problem, power_cut_run

                cuts = tuple(options.power.split(","))
                if set(cuts) - set(CUTS) or fuse_problem():
                    parser.error(fuse_problem() or f"power cuts are among {', '.join(CUTS)}")
                report = power_cut_run(
                    workdir, cuts, options.disk, seed + k, say=lambda x: print(x, flush=True)
                )
            else:
                report = run(
                    seed + k,
                    options.seconds,
                    workdir,
                    faults,
                    options.clients,
                    options.threads,
                    say=lambda line: print(line, flush=True),
                )
        finally:
            if not options.keep:
                shutil.rmtree(workdir, ignore_errors=True)
        print(report.summary(), flush=True)
        failed += not report.ok
        reports.append(report)
    if options.json:
        options.json.write_text(json.dumps([r.__dict__ for r in reports], indent=1, default=str))
    print(f"{len(reports) - failed} of {len(reports)} runs passed every check")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
