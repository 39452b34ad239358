"""Benchmark django-raft against PySyncObj: both in one run, interleaved, several rounds.

    bench/run [--rounds 3] [--only throughput,latency] [--tiny] [--systems django-raft]

Every round starts fresh 3-node clusters on 127.0.0.1 (django-raft: SQLite, durable;
PySyncObj 0.3.17 from the package index, installed into ``.venv-bench`` with
matplotlib) and runs the selected rows on each system, alternating which system goes
first. Prints min/median/max over the rounds and the ratio django-raft / PySyncObj,
writes ``bench/results/<timestamp>.json`` and a PNG plot next to it.

Rows (``--only`` takes their names): ``throughput`` (proposals in the leader's process,
10-byte commands, trivial handler, swept over outstanding proposals), ``kv`` (same with
the demo ``kv.set`` handler), ``http`` (32 client processes' threads calling
``django_raft.do`` over HTTP), ``latency`` (one command at a time in the leader's
process), ``http-latency`` (one HTTP client), ``failover`` (kill -9 of the leader),
``overload`` (50,000 outstanding), ``cost`` (fsyncs, messages and CPU per command).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.load import cpu_seconds  # noqa: E402
from tests.integration.cluster import free_port  # noqa: E402

BENCH_ENV = ROOT / ".venv-bench"
BENCH_REQUIREMENTS = ["pysyncobj==0.3.17", "matplotlib"]
RESULTS = ROOT / "bench" / "results"
ROWS = ("throughput", "kv", "latency", "http-latency", "http", "cost", "overload", "failover")
"""Every row, in the order a round runs them. Failover comes last: a restarted PySyncObj
node whose journal was compacted never catches up, which would spoil later rows."""
SYSTEMS = ("django-raft", "pysyncobj")


@dataclass(frozen=True)
class Settings:
    """How big a run is; ``--tiny`` is the CI setting, the defaults take ~10 minutes."""

    rounds: int = 3
    seconds: float = 2.0
    outstanding: tuple[int, ...] = (1, 100, 1000, 10_000)
    latency_count: int = 200
    batched_latency_count: int = 10
    http_clients: int = 32
    http_seconds: float = 3.0
    http_latency_count: int = 100
    cost_seconds: float = 1.5
    failovers: int = 3
    overload: int = 50_000
    converge_timeout: float = 60.0
    rejoin_timeout: float = 20.0


TINY = Settings(
    rounds=1,
    seconds=0.5,
    outstanding=(1, 20),
    latency_count=10,
    batched_latency_count=3,
    http_clients=3,
    http_seconds=0.5,
    http_latency_count=5,
    cost_seconds=0.5,
    failovers=1,
    overload=200,
    converge_timeout=30.0,
    rejoin_timeout=20.0,
)


# -- processes ----------------------------------------------------------------------------


class Child:
    """A process answering one JSON line per JSON request line (``bench.load.serve``),
    run with ``env`` as its environment (this process's by default)."""

    def __init__(
        self,
        argv: list[str],
        log: Path,
        start_timeout: float = 120.0,
        env: dict[str, str] | None = None,
    ) -> None:
        self.argv = argv
        with log.open("ab") as output:
            self.process = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=output,
                cwd=ROOT,
                env=env,
            )
        self.pid = self.process.pid
        self.read(start_timeout)

    def call(self, op: str, wait: float = 600.0, **request: Any) -> dict[str, Any]:
        """Send a request and wait up to ``wait`` seconds for its answer; raise if it failed."""
        self.send(op, **request)
        answer = self.read(wait)
        if "error" in answer:
            raise RuntimeError(f"{op} failed in {self.argv[1]}: {answer['error']}")
        return answer

    def send(self, op: str, **request: Any) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write((json.dumps({"op": op, **request}) + "\n").encode())
        self.process.stdin.flush()

    def read(self, timeout: float) -> dict[str, Any]:
        stdout = self.process.stdout
        assert stdout is not None
        ready, _, _ = select.select([stdout], [], [], timeout)
        line = stdout.readline() if ready else b""
        if not line:
            self.kill()
            raise RuntimeError(f"{' '.join(self.argv[1:3])}: no answer (see its log)")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        if self.alive():
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        """Ask it to stop cleanly; kill it if it does not within a few seconds."""
        if self.alive():
            with contextlib.suppress(Exception):
                self.call("stop", wait=10)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=10)
        self.kill()


class Cluster:
    """Three node processes on 127.0.0.1, found by their state; subclasses spawn them."""

    size = 3

    def __init__(self, workdir: Path, name: str) -> None:
        self.workdir = workdir
        self.name = name
        self.nodes: list[Child | None] = [None] * self.size

    def spawn(self, i: int) -> Child:
        """Start node ``i`` (again, after a kill: same ports, same files)."""
        raise NotImplementedError

    def start(self) -> None:
        for i in range(self.size):
            self.nodes[i] = self.spawn(i)
        self.leader()

    def running(self) -> list[tuple[int, Child]]:
        return [(i, n) for i, n in enumerate(self.nodes) if n is not None and n.alive()]

    def statuses(self) -> dict[int, dict[str, Any]]:
        return {i: node.call("status", wait=30) for i, node in self.running()}

    def leader(self, timeout: float = 60.0) -> int:
        """The index of the node every running node follows."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            statuses = self.statuses()
            leaders = [i for i, s in statuses.items() if s["state"] == "leader"]
            if len(leaders) == 1 and all(s["leader"] for s in statuses.values()):
                return leaders[0]
            time.sleep(0.05)
        raise RuntimeError(f"{self.name}: no leader within {timeout} s")

    def converge(self, timeout: float) -> dict[str, Any]:
        """Wait until every running node has the same commit index, all of it applied."""
        deadline = time.monotonic() + timeout
        while True:
            statuses = self.statuses()
            applied = {s["applied"] for s in statuses.values()}
            commits = {s["commit"] for s in statuses.values()}
            converged = len(applied) == 1 and applied == commits
            if converged or time.monotonic() > deadline:
                return {"converged": converged, "statuses": statuses}
            time.sleep(0.1)

    def node(self, i: int) -> Child:
        node = self.nodes[i]
        assert node is not None
        return node

    def kill(self, i: int) -> None:
        self.node(i).kill()

    def restart(self, i: int) -> None:
        self.nodes[i] = self.spawn(i)

    def close(self) -> None:
        for _, node in self.running():
            node.stop()


class RaftCluster(Cluster):
    """django-raft nodes (``bench/raft_node.py``), each with its own SQLite file."""

    def __init__(self, workdir: Path, name: str) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        super().__init__(workdir, name)
        self.ids = [f"n{i + 1}" for i in range(self.size)]
        self.addresses = {n: f"http://127.0.0.1:{free_port()}" for n in self.ids}

    def spawn(self, i: int) -> Child:
        node_id = self.ids[i]
        cluster = ",".join(f"{k}={v}" for k, v in self.addresses.items())
        argv = [sys.executable, str(ROOT / "bench" / "raft_node.py"), node_id]
        argv += ["--cluster", cluster, "--database", str(self.workdir / f"{node_id}.sqlite3")]
        return Child(argv, self.workdir / f"{node_id}.log")

    def start(self) -> None:
        # Each node migrates its database first: start the three processes together.
        with ThreadPoolExecutor(self.size) as pool:
            self.nodes = list(pool.map(self.spawn, range(self.size)))
        self.leader()


class SyncObjCluster(Cluster):
    """PySyncObj nodes (``bench/syncobj_node.py``) run by the bench environment's Python."""

    def __init__(self, workdir: Path, python: str, journal: bool, batch: bool, name: str):
        super().__init__(workdir, name)
        self.python = python
        self.journal = journal
        self.batch = batch
        self.addresses = [f"127.0.0.1:{free_port()}" for _ in range(self.size)]

    def start(self) -> None:
        super().start()
        time.sleep(1.0)  # its nodes connect to each other after the election

    def spawn(self, i: int) -> Child:
        me = self.addresses[i]
        argv = [self.python, str(ROOT / "bench" / "syncobj_node.py"), me]
        argv += [a for a in self.addresses if a != me]
        if self.journal:
            argv += ["--journal", str(self.workdir / f"{self.name}-{i}.journal")]
        if not self.batch:
            argv.append("--no-batch")
        return Child(argv, self.workdir / f"{self.name}-{i}.log")


# -- measurements -------------------------------------------------------------------------


def percentile(values: list[float], fraction: float) -> float:
    """The value below which ``fraction`` of ``values`` lie (nearest rank); NaN if none."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else float("nan")


def latency_summary(latencies: list[float]) -> dict[str, float]:
    """p50, p99 and max in milliseconds of latencies given in seconds."""
    return {
        "p50_ms": percentile(latencies, 0.5) * 1000,
        "p99_ms": percentile(latencies, 0.99) * 1000,
        "max_ms": max(latencies, default=float("nan")) * 1000,
        "count": len(latencies),
    }


def leader_first(cluster: Cluster) -> list[Child]:
    """The running nodes, the leader first."""
    leader = cluster.leader()
    return [cluster.node(leader)] + [n for i, n in cluster.running() if i != leader]


def applied(nodes: list[Child]) -> list[int]:
    """Each node's applied index: per-command costs divide by what each node applied, so
    they stay meaningful when proposals fail (a lost leader) or a pass is slowed down."""
    return [n.call("status")["applied"] for n in nodes]


def per_command(totals: Sequence[float], before: list[int], after: list[int]) -> list[float]:
    """Each node's total divided by the commands it applied between ``before`` and ``after``."""
    return [t / max(1, b - a) for t, a, b in zip(totals, before, after, strict=True)]


@contextlib.contextmanager
def costed(cluster: Cluster, result: dict[str, Any]) -> Iterator[None]:
    """Add CPU ms and Raft messages per applied command of every node to ``result``.

    Nodes are listed leader first. CPU is the whole process (every thread) from
    /proc/<pid>/stat; messages are the Raft messages the node handed to its transport.
    """
    nodes = leader_first(cluster)
    cpu = [cpu_seconds(n.pid) for n in nodes]
    messages = [n.call("counters")["messages"] for n in nodes]
    start = applied(nodes)
    yield
    end = applied(nodes)
    cpu_ms = [(cpu_seconds(n.pid) - c) * 1000 for n, c in zip(nodes, cpu, strict=True)]
    result["cpu_ms_per_command"] = per_command(cpu_ms, start, end)
    if None not in messages:  # None: the node cannot count its Raft messages
        sent = [n.call("counters")["messages"] - m for n, m in zip(nodes, messages, strict=True)]
        result["messages_per_command"] = per_command(sent, start, end)


def throughput(
    cluster: Cluster,
    command: str,
    outstanding: int,
    seconds: float | None = None,
    count: int | None = None,
) -> dict[str, Any]:
    """Proposals in the leader's process with ``outstanding`` in flight (``bench.load``)."""
    leader = cluster.node(cluster.leader())
    result: dict[str, Any] = {}
    with costed(cluster, result):
        result.update(
            leader.call(
                "throughput", command=command, outstanding=outstanding, seconds=seconds, count=count
            )
        )
    return result


def latency(cluster: Cluster, count: int) -> dict[str, Any]:
    """``count`` trivial commands one at a time in the leader's process."""
    leader = cluster.node(cluster.leader())
    result: dict[str, Any] = {}
    with costed(cluster, result):
        answer = leader.call("latency", command="noop", count=count, timeout=10.0)
        result.update(latency_summary(answer["latencies"]), errors=answer["errors"])
    return result


def http_clients(
    cluster: RaftCluster, clients: int, seconds: float | None, count: int | None, to_leader: bool
) -> dict[str, Any]:
    """``clients`` threads calling ``do("kv.set")`` from one client process per node used."""
    targets = [cluster.leader()] if to_leader else [i for i, _ in cluster.running()]
    children = [
        Child(
            [
                sys.executable,
                str(ROOT / "bench" / "http_client.py"),
                cluster.addresses[cluster.ids[i]],
            ],
            cluster.workdir / f"client-{i}.log",
        )
        for i in targets
    ]
    try:
        shares = [
            clients // len(children) + (k < clients % len(children)) for k in range(len(children))
        ]
        for k, (child, threads) in enumerate(zip(children, shares, strict=True)):
            window = {} if seconds is None else {"seconds": seconds}
            child.send("run", threads=threads, name=f"c{k}", count=count, **window)
        answers = [child.read(600.0) for child in children]
    finally:
        for child in children:
            child.stop()
    latencies = [x for a in answers for x in a["latencies"]]
    errors: dict[str, int] = {}
    for answer in answers:
        for name, n in answer["errors"].items():
            errors[name] = errors.get(name, 0) + n
    window = max(a["seconds"] for a in answers)
    return {
        "clients": clients,
        "commands_per_second": len(latencies) / window,
        "errors": errors,
        **latency_summary(latencies),
    }


def fsyncs(cluster: Cluster, run: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run ``run`` with every node under ``strace -c``; fsync-family and socket-send calls
    per applied command, leader first."""
    nodes = leader_first(cluster)
    tracers = []
    for node in nodes:
        out = cluster.workdir / f"strace-{cluster.name}-{node.pid}-{time.monotonic_ns()}.txt"
        argv = ["strace", "-f", "-c", "-o", str(out), "-p", str(node.pid)]
        argv += ["-e", "trace=fsync,fdatasync,sync_file_range,sendto,sendmsg"]
        tracers.append((subprocess.Popen(argv, stderr=subprocess.DEVNULL), out))
    time.sleep(1.0)  # let strace attach to every thread
    start = applied(nodes)
    try:
        run()
    finally:
        end = applied(nodes)
        for tracer, _ in tracers:
            tracer.send_signal(signal.SIGINT)
        for tracer, _ in tracers:
            tracer.wait(timeout=30)
    calls = [strace_counts(out) for _, out in tracers]
    syncs = [sum(c.get(s, 0) for s in ("fsync", "fdatasync", "sync_file_range")) for c in calls]
    sends = [c.get("sendto", 0) + c.get("sendmsg", 0) for c in calls]
    return {
        "applied": [b - a for a, b in zip(start, end, strict=True)],
        "fsyncs_per_command": per_command(syncs, start, end),
        "socket_sends_per_command": per_command(sends, start, end),
        "syscalls": calls,
    }


def strace_counts(path: Path) -> dict[str, int]:
    """Parse the table ``strace -c`` writes: calls by syscall name."""
    counts: dict[str, int] = {}
    if not path.exists():
        return counts
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) >= 5 and parts[3].isdigit() and parts[-1] not in ("total",):
            counts[parts[-1]] = int(parts[3])
    return counts


def failover(cluster: Cluster, kills: int, timeout: float) -> dict[str, Any]:
    """SIGKILL the leader ``kills`` times; time to a new leader and to a successful command.

    The harness polls the survivors every 5 ms; a command counts once the node that
    reports itself leader has committed and applied one in its own process. The killed
    node is restarted; ``rejoined`` says whether the cluster converged again within
    ``timeout`` seconds.
    """
    to_leader: list[float] = []
    to_command: list[float] = []
    rejoined: list[bool] = []
    for _ in range(kills):
        old = cluster.leader()
        term = cluster.node(old).call("status")["term"]
        cluster.kill(old)
        killed = time.perf_counter()
        elected = None
        while time.perf_counter() - killed < 30:
            statuses = cluster.statuses()
            leaders = [
                i for i, s in statuses.items() if s["state"] == "leader" and s["term"] > term
            ]
            if leaders and elected is None:
                elected = time.perf_counter() - killed
            if leaders:
                answer = cluster.node(leaders[0]).call(
                    "latency", command="noop", count=1, timeout=1.0
                )
                if answer["latencies"]:
                    to_command.append(time.perf_counter() - killed)
                    break
            time.sleep(0.005)
        if elected is not None:
            to_leader.append(elected)
        cluster.restart(old)
        rejoined.append(cluster.converge(timeout)["converged"])
    return {
        "kills": kills,
        "new_leader_s": to_leader,
        "next_command_s": to_command,
        "rejoined": rejoined,
    }


def overload(cluster: Cluster, count: int, timeout: float) -> dict[str, Any]:
    """``count`` proposals all outstanding at once: convergence, losses, leader changes."""
    before = cluster.converge(timeout)["statuses"]
    result = throughput(cluster, "noop", count, count=count)
    after = cluster.converge(timeout)
    applied = [
        after["statuses"][i]["noop_applied"] - before[i]["noop_applied"] for i in after["statuses"]
    ]
    return {
        **result,
        "converged": after["converged"],
        "noop_applied_per_node": applied,
        "acknowledged_lost": max(0, result["acknowledged"] - min(applied)),
        "leader_changes": max(s["term"] for s in after["statuses"].values())
        - max(s["term"] for s in before.values()),
    }


# -- rounds -------------------------------------------------------------------------------


def run_rows(
    steps: dict[str, Callable[[], Any]], rows: set[str], seconds: dict[str, float], prefix: str
) -> dict[str, Any]:
    """Run the selected steps in order; record each one's wall time in ``seconds``."""
    out: dict[str, Any] = {}
    for row, measure in steps.items():
        if row in rows:
            began = time.monotonic()
            try:
                out[row] = measure()
            except RuntimeError as error:  # a cluster that lost its leader, a dead node
                print(f"  {prefix}{row} failed: {error}", flush=True)
                out[row] = {"error": str(error)}
            seconds[prefix + row] = round(time.monotonic() - began, 1)
    return out


def sweep(cluster: Cluster, outstanding: tuple[int, ...], seconds: float) -> dict[str, Any]:
    """Throughput of ``bench.noop`` at each number of outstanding proposals."""
    return {str(k): throughput(cluster, "noop", k, seconds) for k in outstanding}


def cost(cluster: Cluster, settings: Settings, trace: bool, single: int) -> dict[str, Any]:
    """Row 8: CPU and messages per command under load and one at a time (``single``
    commands); fsyncs counted by strace in a second pass of each."""
    k = max(settings.outstanding)
    result = {
        "load": throughput(cluster, "noop", k, settings.cost_seconds),
        "single": latency(cluster, single),
    }
    if trace:
        result["load_strace"] = fsyncs(
            cluster, lambda: throughput(cluster, "noop", k, settings.cost_seconds)
        )
        result["single_strace"] = fsyncs(cluster, lambda: latency(cluster, single))
    return result


Steps = dict[str, Callable[[], Any]]


def on_cluster(
    cluster: Cluster, steps: Steps, rows: set[str], seconds: dict[str, float]
) -> dict[str, Any]:
    """Start ``cluster``, run the selected steps on it, stop it whatever happens."""
    try:
        cluster.start()
        return run_rows(steps, rows, seconds, f"{cluster.name}:")
    finally:
        cluster.close()


def failover_steps(cluster: Cluster, settings: Settings) -> Steps:
    """Failover runs on a cluster of its own: healthy, short log, nothing else running."""
    return {"failover": lambda: failover(cluster, settings.failovers, settings.rejoin_timeout)}


def raft_round(
    workdir: Path, settings: Settings, rows: set[str], trace: bool, seconds: dict[str, float]
) -> dict[str, Any]:
    """One round of django-raft: a fresh cluster, every selected row, in ``ROWS`` order."""
    cluster = RaftCluster(workdir / "main", "django-raft")
    k = max(settings.outstanding)
    steps: Steps = {
        "throughput": lambda: sweep(cluster, settings.outstanding, settings.seconds),
        "kv": lambda: throughput(cluster, "kv", k, settings.seconds),
        "latency": lambda: latency(cluster, settings.latency_count),
        "http-latency": lambda: http_clients(
            cluster, 1, None, settings.http_latency_count, to_leader=True
        ),
        "http": lambda: http_clients(
            cluster, settings.http_clients, settings.http_seconds, None, to_leader=False
        ),
        "cost": lambda: cost(cluster, settings, trace, settings.latency_count),
        "overload": lambda: overload(cluster, settings.overload, settings.converge_timeout),
    }
    out = on_cluster(cluster, steps, rows - {"failover"}, seconds)
    if "failover" in rows:
        fresh = RaftCluster(workdir / "failover", "django-raft-failover")
        out.update(on_cluster(fresh, failover_steps(fresh, settings), rows, seconds))
    return out


def syncobj_steps(cluster: SyncObjCluster, settings: Settings, trace: bool) -> Steps:
    """The rows of one PySyncObj configuration; in memory, only the top of the sweep."""
    outstanding = settings.outstanding if cluster.journal else (max(settings.outstanding),)
    count = settings.batched_latency_count if cluster.batch else settings.latency_count
    return {
        "throughput": lambda: sweep(cluster, outstanding, settings.seconds),
        "latency": lambda: latency(cluster, count),
        "cost": lambda: cost(cluster, settings, trace, count),
        "overload": lambda: overload(cluster, settings.overload, settings.converge_timeout),
    }


def syncobj_round(
    workdir: Path,
    python: str,
    settings: Settings,
    rows: set[str],
    trace: bool,
    seconds: dict[str, float],
) -> dict[str, Any]:
    """PySyncObj: journal with default batching (the anchor), in memory, batching off."""
    out: dict[str, Any] = {}
    variants = (
        ("pysyncobj-journal", True, True, {"throughput", "latency", "cost", "overload"}),
        ("pysyncobj-memory", False, True, {"throughput"}),
        ("pysyncobj-nobatch", True, False, {"latency"}),
    )
    for name, journal, batch, variant_rows in variants:
        if rows & variant_rows:
            cluster = SyncObjCluster(workdir, python, journal, batch, name)
            out[name] = on_cluster(
                cluster,
                syncobj_steps(cluster, settings, trace),
                rows & variant_rows,
                seconds,
            )
    if "failover" in rows:
        fresh = SyncObjCluster(workdir, python, True, True, "pysyncobj-journal-failover")
        out.setdefault("pysyncobj-journal", {}).update(
            on_cluster(fresh, failover_steps(fresh, settings), rows, seconds)
        )
    return out


# -- summary ------------------------------------------------------------------------------


@dataclass
class Metric:
    """One line group of the table: a number per round and system, and how to get it."""

    label: str
    get: Callable[[dict[str, Any]], float | None]
    variants: tuple[str, ...] = ("django-raft", "pysyncobj-journal")
    values: dict[str, list[float]] = field(default_factory=dict)


def _at(*path: str | int) -> Callable[[dict[str, Any]], float | None]:
    def get(data: dict[str, Any]) -> float | None:
        value: Any = data
        for key in path:
            try:
                value = value[key]
            except (KeyError, IndexError, TypeError):
                return None
        return float(value)

    return get


def metrics(settings: Settings) -> list[Metric]:
    k = str(max(settings.outstanding))
    every = ("django-raft", "pysyncobj-journal", "pysyncobj-memory")
    single = ("django-raft", "pysyncobj-nobatch", "pysyncobj-journal")
    ours = ("django-raft",)
    table = [
        Metric(
            f"1 in-process noop, {k} outstanding, cmd/s",
            _at("throughput", k, "commands_per_second"),
            every,
        ),
        *(
            Metric(
                f"  sweep: {o} outstanding, cmd/s", _at("throughput", str(o), "commands_per_second")
            )
            for o in settings.outstanding
            if str(o) != k
        ),
        Metric(
            f"2 in-process kv.set, {k} outstanding, cmd/s", _at("kv", "commands_per_second"), ours
        ),
        Metric(
            f"3 {settings.http_clients} HTTP clients kv.set, cmd/s",
            _at("http", "commands_per_second"),
            ours,
        ),
        Metric("  p50 ms", _at("http", "p50_ms"), ours),
        Metric("  p99 ms", _at("http", "p99_ms"), ours),
        Metric("4 one at a time in-process, p50 ms", _at("latency", "p50_ms"), single),
        Metric("  p99 ms", _at("latency", "p99_ms"), single),
        Metric("5 one HTTP client kv.set, p50 ms", _at("http-latency", "p50_ms"), ours),
        Metric("  p99 ms", _at("http-latency", "p99_ms"), ours),
        Metric(
            f"6 overload {settings.overload:,} outstanding, cmd/s",
            _at("overload", "commands_per_second"),
        ),
        Metric("  converged (1 = yes)", _at("overload", "converged")),
        Metric("  acknowledged, lost", _at("overload", "acknowledged_lost")),
        Metric("  failed proposals", _at("overload", "failed")),
        Metric("  leader changes", _at("overload", "leader_changes")),
    ]
    for mode, what in (("load", f"{k} outstanding"), ("single", "one at a time")):
        for n, role in enumerate(("leader", "follower", "follower")):
            table += [
                Metric(
                    f"8 {what}: fsyncs/cmd, {role}",
                    _at("cost", f"{mode}_strace", "fsyncs_per_command", n),
                ),
                Metric(f"  messages/cmd, {role}", _at("cost", mode, "messages_per_command", n)),
                Metric(f"  CPU ms/cmd, {role}", _at("cost", mode, "cpu_ms_per_command", n)),
            ]
    return table


def variant_results(round_result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """{variant: its measurements} for one round."""
    flat = {"django-raft": round_result.get("django-raft", {})}
    flat.update(round_result.get("pysyncobj", {}))
    return flat


def summarize(rounds: list[dict[str, Any]], settings: Settings) -> dict[str, Any]:
    table = metrics(settings)
    for round_result in rounds:
        by_variant = variant_results(round_result)
        for metric in table:
            for variant in metric.variants:
                value = metric.get(by_variant.get(variant, {}))
                if value is not None:
                    metric.values.setdefault(variant, []).append(value)
    summary: dict[str, Any] = {"rows": []}
    for metric in table:
        row: dict[str, Any] = {"metric": metric.label, "systems": {}}
        for variant, values in metric.values.items():
            row["systems"][variant] = {
                "min": min(values),
                "median": statistics.median(values),
                "max": max(values),
                "rounds": len(values),
            }
        ours = row["systems"].get("django-raft")
        for variant, stats in row["systems"].items():
            if variant != "django-raft" and ours and stats["median"]:
                stats["ratio"] = ours["median"] / stats["median"]
        if row["systems"]:
            summary["rows"].append(row)
    summary["failover"] = {}
    for variant in ("django-raft", "pysyncobj-journal"):
        kills: dict[str, list[float]] = {"new_leader_s": [], "next_command_s": []}
        rejoined: list[bool] = []
        for round_result in rounds:
            data = variant_results(round_result).get(variant, {}).get("failover")
            for key in kills:
                kills[key] += data[key] if data else []
            rejoined += data["rejoined"] if data else []
        if kills["new_leader_s"] or kills["next_command_s"]:
            summary["failover"][variant] = {
                key: {
                    "median_ms": statistics.median(v) * 1000 if v else None,
                    "p99_ms": percentile(v, 0.99) * 1000 if v else None,
                    "max_ms": max(v) * 1000 if v else None,
                    "kills": len(v),
                }
                for key, v in kills.items()
            }
            summary["failover"][variant]["rejoined"] = f"{sum(rejoined)} of {len(rejoined)}"
    return summary


def print_summary(summary: dict[str, Any]) -> None:
    print(f"\n{'measure':46} {'system':18} {'min':>10} {'median':>10} {'max':>10} {'ratio':>7}")
    for row in summary["rows"]:
        label = row["metric"]
        for variant, s in row["systems"].items():
            ratio = f"{s['ratio']:7.2f}" if "ratio" in s else ""
            numbers = f"{s['min']:10.4g} {s['median']:10.4g} {s['max']:10.4g}"
            print(f"{label:46} {variant:18} {numbers} {ratio:>7}")
            label = ""
    print("ratio = django-raft median / that system's median\n")
    for variant, kills in summary["failover"].items():
        print(f"7 failover: {variant}: the killed node rejoined after {kills['rejoined']} kills")
        for key, s in kills.items():
            if key != "rejoined" and s["kills"]:
                what = key[:-2].replace("_", " ")
                print(
                    f"7 failover, kill -9 leader -> {what}: {variant}: median "
                    f"{s['median_ms']:.0f} ms, p99 {s['p99_ms']:.0f} ms, max {s['max_ms']:.0f} ms "
                    f"over {s['kills']} kills"
                )


# -- environment --------------------------------------------------------------------------


def bench_python() -> str:
    """The bench environment's Python, made (and filled from the package index) if needed."""
    python = BENCH_ENV / "bin" / "python"
    stamp = (
        BENCH_ENV
        / f".installed-{hashlib.sha256(' '.join(BENCH_REQUIREMENTS).encode()).hexdigest()[:16]}"
    )
    if not stamp.exists():
        print(f"Preparing {BENCH_ENV.name} ({', '.join(BENCH_REQUIREMENTS)}) ...", flush=True)
        if not python.exists():
            subprocess.run([sys.executable, "-m", "venv", str(BENCH_ENV)], check=True)
        subprocess.run(
            [
                str(python),
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                *BENCH_REQUIREMENTS,
            ],
            check=True,
        )
        stamp.touch()
    return str(python)


def machine() -> dict[str, Any]:
    """What the numbers depend on: commit, CPUs, load."""
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    return {
        "commit": commit,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, help="rounds (default 3)")
    parser.add_argument("--only", help=f"comma-separated rows: {','.join(ROWS)}")
    parser.add_argument("--systems", default=",".join(SYSTEMS), help="django-raft,pysyncobj")
    parser.add_argument("--tiny", action="store_true", help="a few commands: checks the harness")
    parser.add_argument("--seconds", type=float, help="window of each throughput run (3)")
    parser.add_argument("--outstanding", help="outstanding proposals swept, e.g. 1,100,1000,10000")
    parser.add_argument("--overload", type=int, help="proposals outstanding in the overload row")
    parser.add_argument("--failovers", type=int, help="leader kills per round (3)")
    parser.add_argument("--no-strace", action="store_true", help="do not count fsyncs")
    parser.add_argument("--no-plot", action="store_true", help="write no PNG")
    parser.add_argument("--results", type=Path, default=RESULTS, help="where JSON and PNG go")
    options = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(143))  # stop the clusters

    settings = TINY if options.tiny else Settings()
    overrides = {
        "rounds": options.rounds,
        "seconds": options.seconds,
        "overload": options.overload,
        "failovers": options.failovers,
        "outstanding": tuple(int(x) for x in options.outstanding.split(","))
        if options.outstanding
        else None,
    }
    settings = replace(settings, **{k: v for k, v in overrides.items() if v is not None})
    rows = set(options.only.split(",")) if options.only else set(ROWS)
    systems = set(options.systems.split(","))
    if rows - set(ROWS) or systems - set(SYSTEMS):
        parser.error(f"rows are {', '.join(ROWS)}; systems are {', '.join(SYSTEMS)}")
    notes: list[str] = []
    trace = not options.no_strace and "cost" in rows
    if trace and shutil.which("strace") is None:
        trace = False
        notes.append("strace not found (apt-get install strace): fsyncs were not counted")
    python = bench_python() if "pysyncobj" in systems or not options.no_plot else ""

    started = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    report: dict[str, Any] = {
        "started": started,
        "settings": asdict(settings),
        "rows": sorted(rows),
        "machine_before": machine(),
        "notes": notes,
        "rounds": [],
    }
    options.results.mkdir(parents=True, exist_ok=True)
    path = options.results / f"{started}.json"
    with tempfile.TemporaryDirectory(prefix="raft-bench-") as tmp:
        for r in range(settings.rounds):
            order = ["django-raft", "pysyncobj"] if r % 2 == 0 else ["pysyncobj", "django-raft"]
            round_result: dict[str, Any] = {}
            for system in order:
                if system not in systems:
                    continue
                print(f"round {r + 1}/{settings.rounds}: {system} ...", flush=True)
                workdir = Path(tmp) / f"round{r}-{system}"
                workdir.mkdir()
                seconds = round_result.setdefault("seconds", {})
                if system == "django-raft":
                    round_result[system] = raft_round(workdir, settings, rows, trace, seconds)
                else:
                    round_result[system] = syncobj_round(
                        workdir, python, settings, rows, trace, seconds
                    )
            report["rounds"].append(round_result)
            path.write_text(json.dumps(report, indent=1))  # what is done so far
    report["machine_after"] = machine()
    report["summary"] = summarize(report["rounds"], settings)
    print_summary(report["summary"])
    for note in notes:
        print(f"note: {note}")
    path.write_text(json.dumps(report, indent=1))
    print(f"\nwrote {path}")
    if not options.no_plot:
        png = path.with_suffix(".png")
        subprocess.run([python, str(ROOT / "bench" / "plot.py"), str(path), str(png)], check=True)
        print(f"wrote {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
