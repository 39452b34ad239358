"""Benchmark django-raft against etcd: both in one run, same machine, same Python clients.

    bench/etcd [--rounds 1] [--only write-1,read-1] [--tiny] [--systems etcd,django-raft]
               [--operations N] [--repo PATH] [--out DIR] [--no-plot]

Each round starts a fresh 3-member cluster of each system on 127.0.0.1, alternating
which goes first, and runs the selected rows on it with the same number of operations:

- etcd: Debian's ``etcd-server`` (3.4; ``bench/install-etcd`` installs it when ``etcd``
  is not on PATH), default settings (it fsyncs before acknowledging), data in a
  temporary directory. Clients use its JSON gateway (``/v3/kv/put``, ``/v3/kv/range``,
  base64 keys, linearizable reads) over ``requests`` keep-alive sessions.
- django-raft: three ``manage.py raftnode`` processes of the demo project, SQLite,
  durable (``tests.integration.cluster`` gives their settings and status). Clients are
  web-process-like: ``django_raft.Client().do("kv.set")`` and ``django_raft.read()``
  with the node's own database, configured as a web process on that node's server.

Clients run in processes of their own (``python bench/etcd.py worker ...``), one per
member they talk to, a thread per client; each thread makes one untimed call first (its
connection, its session). Rows (``--only`` takes their names):

``write-1``          one write at a time from one client on the leader: p50/p99 ms
``read-1``           one linearizable read at a time, one client on the leader: p50/p99 ms
``write-32-spread``  32 client threads spread over the 3 members: writes/s (an etcd
                     member forwards to its leader; a django-raft client, once it
                     knows the leader, sends to it itself)
``write-32-leader``  32 client threads on the leader: writes/s
``cpu-per-write``    server CPU (utime+stime of the 3 server processes) per write, ms,
                     under the ``write-32-spread`` load
``restart-serve``    kill -9 a follower, start it again: ms from its Popen until a write
                     sent to that member succeeds (median of a few)

``--repo PATH`` runs django-raft (its nodes and clients) from another checkout, e.g. a
``git worktree`` of an older commit, with this harness. Prints a table (medians over the
rounds, ratio = django-raft / etcd), writes ``bench/results/etcd-<timestamp>.json`` and a
PNG next to it (``bench/plot.py`` in ``.venv-bench``). Every process it starts is killed
when it ends, on Ctrl-C, SIGTERM, an error, or when ``--timeout`` runs out. The JSON
also has, for every load, the CPU the server and the client processes spent per call.
The harness's own status requests and restart probes to django-raft nodes are signed
with this checkout's ``django_raft``, whatever ``--repo`` says.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import ctypes
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# Standard library only: a worker may import django_raft from another checkout after it.
from bench.load import cpu_seconds, serve  # noqa: E402

if TYPE_CHECKING:
    from bench.run import Child
    from tests.integration.cluster import Cluster, Node

RESULTS = ROOT / "bench" / "results"
INSTALL_ETCD = ROOT / "bench" / "install-etcd"
ROWS = (
    "write-1",
    "read-1",
    "write-32-spread",
    "write-32-leader",
    "cpu-per-write",
    "restart-serve",
)
"""Every row, in the order a round runs them: restarts last, they disturb the cluster."""
SYSTEMS = ("etcd", "django-raft")
THREADS = 32
PROBE_TIMEOUT = 1.0
"""Seconds one restart probe (a write to the restarted member) may take."""
SERVE_DEADLINE = 60.0
"""Seconds a restarted member has to serve a write before the row fails."""
SETTLE = 0.5
"""Seconds waited after a kill, and after a restarted member has caught up."""


@dataclass(frozen=True)
class Settings:
    """How big a run is: the same counts for both systems. The defaults take ~2 minutes
    a round on 2 cores; ``--tiny`` checks the harness in well under a minute."""

    rounds: int = 1
    write_1: int = 2000
    read_1: int = 2000
    per_thread: int = 500
    """Writes by each of the 32 threads of the ``write-32-*`` rows."""
    cpu_per_thread: int = 150
    """Writes by each of the 32 threads of the ``cpu-per-write`` row."""
    restarts: int = 5
    op_timeout: float = 10.0
    start_timeout: float = 60.0
    log_database: bool = False
    """Run django-raft with its log in a SQLite file of its own (``LOG_DATABASE``)."""


TINY = Settings(write_1=20, read_1=20, per_thread=2, cpu_per_thread=2, restarts=1)


# -- the table ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Metric:
    """One line of the table: ``row``'s value at ``key``, and which way is better."""

    row: str
    key: str
    label: str
    better: str  # "lower" or "higher"

    def get(self, data: dict[str, Any]) -> float | None:
        value = data.get(self.row, {}).get(self.key)
        return None if value is None else float(value)


METRICS = (
    Metric("write-1", "p50_ms", "p50 ms", "lower"),
    Metric("write-1", "p99_ms", "p99 ms", "lower"),
    Metric("read-1", "p50_ms", "p50 ms", "lower"),
    Metric("read-1", "p99_ms", "p99 ms", "lower"),
    Metric("write-32-spread", "per_second", "writes/s", "higher"),
    Metric("write-32-leader", "per_second", "writes/s", "higher"),
    Metric("cpu-per-write", "server_cpu_ms_per_op", "server CPU ms", "lower"),
    Metric("restart-serve", "median_ms", "median ms", "lower"),
)


def ratio(ours: float | None, theirs: float | None) -> float | None:
    """django-raft's value over etcd's; None when either is missing or etcd's is 0."""
    if ours is None or theirs is None or theirs == 0:
        return None
    return ours / theirs


def summarize(rounds: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per metric measured: each system's min/median/max over the rounds, the
    ratio of the medians (django-raft / etcd) and whether django-raft is ahead."""
    summary = []
    for metric in METRICS:
        entry: dict[str, Any] = {
            "row": metric.row,
            "metric": metric.label,
            "key": metric.key,
            "better": metric.better,
        }
        operations: set[int] = set()
        for system in SYSTEMS:
            values = []
            for round_result in rounds:
                data = round_result.get(system, {})
                value = metric.get(data)
                if value is not None:
                    values.append(value)
                    if "operations" in data.get(metric.row, {}):
                        operations.add(int(data[metric.row]["operations"]))
            if values:
                entry[system] = {
                    "median": statistics.median(values),
                    "min": min(values),
                    "max": max(values),
                    "rounds": len(values),
                }
        if not any(system in entry for system in SYSTEMS):
            continue
        entry["operations"] = sorted(operations)
        entry["ratio"] = ratio(
            entry.get("django-raft", {}).get("median"), entry.get("etcd", {}).get("median")
        )
        if entry["ratio"] is None:
            entry["ahead"] = None
        else:
            entry["ahead"] = (
                entry["ratio"] <= 1 if metric.better == "lower" else entry["ratio"] >= 1
            )
        summary.append(entry)
    return summary


def _number(value: float | None) -> str:
    if value is None:
        return "-"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:#.3g}" if abs(value) < 10 else f"{value:.1f}"


def format_table(summary: list[dict[str, Any]]) -> str:
    """The summary as a text table: row, metric, etcd | django-raft | ratio, and what the
    ratio should be for django-raft to lead."""
    header = (
        f"{'row':17} {'metric':14} {'ops':>6} {'etcd':>9} {'django-raft':>12} "
        f"{'ratio':>7}  {'ahead if':10} ahead"
    )
    lines = [header, "-" * len(header)]
    for entry in summary:
        ops = ",".join(str(n) for n in entry["operations"]) or "-"
        etcd = entry.get("etcd", {}).get("median")
        ours = entry.get("django-raft", {}).get("median")
        goal = "ratio <= 1" if entry["better"] == "lower" else "ratio >= 1"
        ahead = {True: "yes", False: "no", None: ""}[entry["ahead"]]
        r = "-" if entry["ratio"] is None else f"{entry['ratio']:.2f}"
        lines.append(
            f"{entry['row']:17} {entry['metric']:14} {ops:>6} {_number(etcd):>9} "
            f"{_number(ours):>12} {r:>7}  {goal:10} {ahead}"
        )
    lines.append("medians over the rounds; ratio = django-raft / etcd")
    return "\n".join(lines)


def failures(rounds: list[dict[str, Any]]) -> list[str]:
    """A line per row of a round that had failed operations or restarts."""
    lines = []
    for number, round_result in enumerate(rounds, 1):
        for system in SYSTEMS:
            for row, data in round_result.get(system, {}).items():
                if not isinstance(data, dict):
                    continue
                errors = data.get("errors") or {}
                failed = sum(errors.values())
                if failed:
                    what = ", ".join(f"{name} x{n}" for name, n in sorted(errors.items()))
                    lines.append(f"round {number}, {system}, {row}: {failed} failed ({what})")
                lines += [f"  {detail}" for detail in data.get("failures", [])]
    return lines


def parse_choice(text: str | None, allowed: tuple[str, ...], what: str) -> list[str]:
    """A comma-separated subset of ``allowed`` (all of it when ``text`` is None), in
    ``allowed``'s order; ValueError naming what is unknown."""
    if text is None:
        return list(allowed)
    chosen = {item.strip() for item in text.split(",") if item.strip()}
    unknown = chosen - set(allowed)
    if unknown or not chosen:
        raise ValueError(
            f"unknown {what}: {', '.join(sorted(unknown)) or '(none)'}; "
            f"choose among {', '.join(allowed)}"
        )
    return [item for item in allowed if item in chosen]


def round_order(round_number: int, systems: list[str]) -> list[str]:
    """The systems in the order round ``round_number`` (from 0) runs them: alternating."""
    return list(systems) if round_number % 2 == 0 else list(reversed(systems))


def new_report(
    started: str,
    settings: Settings,
    rows: list[str],
    systems: list[str],
    repo: dict[str, Any],
    environment: dict[str, Any],
) -> dict[str, Any]:
    """The JSON document of a run, before its rounds are in."""
    return {
        "kind": "etcd",
        "started": started,
        "settings": asdict(settings),
        "rows": rows,
        "systems": systems,
        "repo": repo,
        "machine_before": environment,
        "rounds": [],
    }


def result_path(out: Path, started: str) -> Path:
    return out / f"etcd-{started}.json"


# -- client workers (separate processes) -----------------------------------------------


class Ops(Protocol):
    """One client thread's way of talking to its member."""

    def write(self, key: str, value: str) -> None: ...

    def read(self, key: str) -> None: ...


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


class EtcdOps:
    """A ``requests`` keep-alive session on one member's JSON gateway."""

    def __init__(self, url: str, timeout: float) -> None:
        import requests

        self.url = url
        self.timeout = timeout
        self.session = requests.Session()

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        response = self.session.post(f"{self.url}{path}", json=body, timeout=self.timeout)
        answer: dict[str, Any] = response.json()
        if response.status_code != 200 or "error" in answer:
            raise EtcdError(str(answer.get("error") or response.status_code))
        return answer

    def write(self, key: str, value: str) -> None:
        self._post("/v3/kv/put", {"key": b64(key), "value": b64(value)})

    def read(self, key: str) -> None:
        # Linearizable unless "serializable": true is asked for.
        self._post("/v3/kv/range", {"key": b64(key)})


class EtcdError(Exception):
    """etcd's gateway answered with an error."""


class RaftOps:
    """``django_raft.Client().do`` and ``django_raft.read()`` of a web process."""

    def __init__(self, client: Any, timeout: float) -> None:
        import django_raft
        from demo_project.kv.models import KeyValue

        self.client = client
        self.timeout = timeout
        self.linearizable = django_raft.read
        self.rows = KeyValue.objects

    def write(self, key: str, value: str) -> None:
        self.client.do("kv.set", key=key, value=value)

    def read(self, key: str) -> None:
        with self.linearizable(timeout=self.timeout):
            self.rows.filter(pk=key).values_list("value", flat=True).first()


class Load:
    """Client threads that warm up on ``prepare`` and run on ``go`` (in a worker)."""

    def __init__(self, connect: Callable[[], Ops], after_thread: Callable[[], None]) -> None:
        self.connect = connect
        self.after_thread = after_thread
        self.threads: list[threading.Thread] = []
        self.start = threading.Event()
        self.lock = threading.Lock()
        self.latencies: list[float] = []
        self.errors: Counter[str] = Counter()
        self.ended = 0.0

    def prepare(self, request: dict[str, Any]) -> dict[str, Any]:
        threads, count, kind, name = (request[k] for k in ("threads", "count", "kind", "name"))
        self.start = threading.Event()
        self.latencies, self.errors, self.ended = [], Counter(), 0.0
        warm = threading.Barrier(threads + 1)
        self.threads = [
            threading.Thread(target=self._client, args=(f"{name}-{n}", kind, count, warm))
            for n in range(threads)
        ]
        for thread in self.threads:
            thread.start()
        warm.wait(request.get("timeout", 120.0))
        return {"prepared": threads, "warm_up_errors": dict(self.errors)}

    def go(self, request: dict[str, Any]) -> dict[str, Any]:
        started = time.monotonic()
        self.start.set()
        for thread in self.threads:
            thread.join()
        return {
            "latencies": self.latencies,
            "errors": dict(self.errors),
            "started": started,
            "ended": self.ended,
        }

    def _client(self, name: str, kind: str, count: int, warm: threading.Barrier) -> None:
        mine: list[float] = []
        failed: Counter[str] = Counter()
        ops: Ops | None = None
        try:
            ops = self.connect()
            ops.write(f"{name}-0", "warm-up")  # its connection, its session, the read's key
            if kind == "read":
                ops.read(f"{name}-0")
        except Exception as error:
            failed[f"warm-up {type(error).__name__}"] += 1
        with self.lock:
            self.errors.update(failed)
        failed.clear()
        warm.wait()
        self.start.wait()
        if ops is None:
            failed["NoClient"] += count
        else:
            for i in range(count):
                began = time.perf_counter()
                try:
                    if kind == "read":
                        ops.read(f"{name}-0")
                    else:
                        ops.write(f"{name}-{i % 100}", str(i))
                except Exception as error:
                    failed[type(error).__name__] += 1
                else:
                    mine.append(time.perf_counter() - began)
        ended = time.monotonic()
        with contextlib.suppress(Exception):
            self.after_thread()
        with self.lock:
            self.latencies.extend(mine)
            self.errors.update(failed)
            self.ended = max(self.ended, ended)


def worker_main(argv: list[str]) -> None:
    """``bench/etcd.py worker etcd URL`` or ``worker django-raft REPO``: serve a Load."""
    system, target = argv[0], argv[1]
    timeout = float(os.environ.get("BENCH_OP_TIMEOUT", "10"))
    if system == "etcd":
        load = Load(lambda: EtcdOps(target, timeout), lambda: None)
    else:
        # The settings (DJANGO_SETTINGS_MODULE, RAFT_*, DJANGO_SQLITE_PATH) come from the
        # harness; django_raft and the demo project come from REPO.
        sys.path.insert(0, target)
        import django

        django.setup()
        from django.db import connections

        import django_raft

        client = django_raft.Client(timeout=timeout)
        load = Load(lambda: RaftOps(client, timeout), connections.close_all)
    serve({"prepare": load.prepare, "go": load.go})


# -- the systems (in the harness) ---------------------------------------------------------


def _die_with_parent() -> None:
    """In a child before exec: SIGKILL it when the harness dies, even by SIGKILL."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _kill(process: subprocess.Popen[bytes] | None) -> None:
    if process is not None and process.poll() is None:
        process.kill()
        process.wait(timeout=30)


class System:
    """Three members on 127.0.0.1; subclasses know how to start and talk to them."""

    name = ""
    size = 3

    def __init__(self, workdir: Path, settings: Settings) -> None:
        self.workdir = workdir
        self.settings = settings

    def start(self) -> None:
        raise NotImplementedError

    def leader(self) -> int:
        """The member every running member follows (waits for one)."""
        raise NotImplementedError

    def pids(self) -> list[int]:
        raise NotImplementedError

    def launch(self, i: int) -> None:
        """Start member ``i``'s process (again, after a kill: same ports, same data)."""
        raise NotImplementedError

    def kill(self, i: int) -> None:
        raise NotImplementedError

    def probe(self, i: int, key: str) -> str:
        """Write through member ``i``: "" when it succeeded, else what went wrong."""
        raise NotImplementedError

    def worker(self, i: int, log: Path) -> Child:
        """A client process configured for member ``i``."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class Etcd(System):
    """etcd members, each with a data directory in ``workdir``."""

    name = "etcd"

    def __init__(self, workdir: Path, settings: Settings) -> None:
        from tests.integration.cluster import free_port

        super().__init__(workdir, settings)
        self.client_urls = [f"http://127.0.0.1:{free_port()}" for _ in range(self.size)]
        self.peer_urls = [f"http://127.0.0.1:{free_port()}" for _ in range(self.size)]
        self.token = f"bench-{os.getpid()}-{time.monotonic_ns()}"
        self.processes: list[subprocess.Popen[bytes] | None] = [None] * self.size

    def argv(self, i: int) -> list[str]:
        return etcd_argv(i, self.client_urls, self.peer_urls, self.workdir, self.token)

    def launch(self, i: int) -> None:
        with (self.workdir / f"m{i}.log").open("ab") as log:
            self.processes[i] = subprocess.Popen(
                self.argv(i),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={k: v for k, v in os.environ.items() if not k.startswith("ETCD")},
                preexec_fn=_die_with_parent,
            )

    def start(self) -> None:
        for i in range(self.size):
            self.launch(i)
        self.leader()

    def status(self, i: int) -> dict[str, Any]:
        import requests

        response = requests.post(
            f"{self.client_urls[i]}/v3/maintenance/status", json={}, timeout=2.0
        )
        answer: dict[str, Any] = response.json()
        return answer

    def leader(self) -> int:
        from tests.integration.cluster import wait_for

        def find() -> tuple[int] | None:  # a tuple: member 0 is a leader too
            statuses = {i: self.status(i) for i in self.running()}
            ids = {s["header"]["member_id"]: i for i, s in statuses.items()}
            leaders = {s.get("leader") for s in statuses.values()}
            if len(leaders) == 1 and (leader := leaders.pop()) in ids:
                return (ids[leader],)
            return None

        found: tuple[int] = wait_for(find, self.settings.start_timeout, "one etcd leader")
        return found[0]

    def running(self) -> list[int]:
        return [i for i, p in enumerate(self.processes) if p is not None and p.poll() is None]

    def pids(self) -> list[int]:
        return [p.pid for p in self.processes if p is not None]

    def kill(self, i: int) -> None:
        _kill(self.processes[i])

    def probe(self, i: int, key: str) -> str:
        try:
            EtcdOps(self.client_urls[i], PROBE_TIMEOUT).write(key, "probe")
        except Exception as error:  # refused while it starts, or an error answer
            return f"{type(error).__name__}: {error}"[:200]
        return ""

    def worker(self, i: int, log: Path) -> Child:
        from bench.run import Child

        argv = [sys.executable, str(Path(__file__)), "worker", "etcd", self.client_urls[i]]
        env = {**os.environ, "BENCH_OP_TIMEOUT": str(self.settings.op_timeout)}
        return Child(argv, log, env=env)

    def close(self) -> None:
        for process in self.processes:
            with contextlib.suppress(Exception):
                _kill(process)


def etcd_argv(
    i: int, client_urls: list[str], peer_urls: list[str], workdir: Path, token: str
) -> list[str]:
    """Member ``i``'s command line: its own ports and data directory, default settings."""
    cluster = ",".join(f"m{n}={url}" for n, url in enumerate(peer_urls))
    return [
        "etcd",
        "--name", f"m{i}",
        "--data-dir", str(workdir / f"m{i}.etcd"),
        "--listen-client-urls", client_urls[i],
        "--advertise-client-urls", client_urls[i],
        "--listen-peer-urls", peer_urls[i],
        "--initial-advertise-peer-urls", peer_urls[i],
        "--initial-cluster", cluster,
        "--initial-cluster-token", token,
        "--initial-cluster-state", "new",
        "--logger", "zap",
        "--log-outputs", "stderr",
        "--log-level", "warn",
    ]  # fmt: skip


class DjangoRaft(System):
    """``manage.py raftnode`` processes of ``repo``'s demo project, SQLite each."""

    name = "django-raft"

    def __init__(self, workdir: Path, settings: Settings, repo: Path) -> None:
        from tests.integration.cluster import Cluster

        super().__init__(workdir, settings)
        self.repo = repo
        log: dict[str, Any] = {"LOG_DATABASE": "raft_log"} if settings.log_database else {}
        self.cluster: Cluster = Cluster(workdir, **log)
        self.nodes: list[Node] = list(self.cluster.founders)

    def migrate(self, node: Node) -> None:
        databases = [[], ["--database", "raft_log"]] if self.settings.log_database else [[]]
        for database in databases:
            subprocess.run(
                [
                    *(sys.executable, str(self.repo / "manage.py"), "migrate", "--noinput"),
                    *("-v", "0", *database),
                ],
                cwd=self.repo,
                env=node.env(),
                check=True,
                timeout=300,
            )

    def launch(self, i: int) -> None:
        node = self.nodes[i]
        with node.log_path.open("ab") as log:
            node.process = subprocess.Popen(
                [sys.executable, str(self.repo / "manage.py"), "raftnode", "--bootstrap"],
                cwd=self.repo,
                env=node.env(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,
            )

    def start(self) -> None:
        from tests.integration.cluster import wait_for

        with ThreadPoolExecutor(self.size) as pool:
            list(pool.map(self.migrate, self.nodes))
        for i in range(self.size):
            self.launch(i)
        for node in self.nodes:
            wait_for(node.status, self.settings.start_timeout, f"{node.node_id} to answer")
        self.leader()

    def leader(self) -> int:
        node = self.cluster.leader(timeout=self.settings.start_timeout)
        return self.nodes.index(node)

    def pids(self) -> list[int]:
        return [n.process.pid for n in self.nodes if n.process is not None]

    def kill(self, i: int) -> None:
        self.nodes[i].kill()

    def probe(self, i: int, key: str) -> str:
        try:
            answer = self.nodes[i].do("kv.set", timeout=PROBE_TIMEOUT, key=key, value="probe")
        except Exception as error:  # refused while it starts, or not JSON yet
            return f"{type(error).__name__}: {error}"[:200]
        return "" if answer.get("ok") else f"{answer.get('error_type')}: {answer.get('error')}"

    def worker(self, i: int, log: Path) -> Child:
        from bench.run import Child

        argv = [sys.executable, str(Path(__file__)), "worker", "django-raft", str(self.repo)]
        env = {**self.nodes[i].env(), "BENCH_OP_TIMEOUT": str(self.settings.op_timeout)}
        return Child(argv, log, env=env)

    def close(self) -> None:
        self.cluster.close()


# -- rows -----------------------------------------------------------------------------------


def shares(total: int, parts: int) -> list[int]:
    """``total`` split into ``parts`` as evenly as possible, larger shares first."""
    return [total // parts + (k < total % parts) for k in range(parts)]


def load(
    system: System,
    members: list[int],
    threads: int,
    per_thread: int,
    kind: str,
) -> dict[str, Any]:
    """``threads`` client threads, spread over one worker process per member in
    ``members``, each making ``per_thread`` ``kind`` calls: latencies, rate, and the CPU
    seconds the server processes and the client processes spent in the timed part."""
    from bench.run import latency_summary

    workers: list[Child] = []
    try:
        for k, i in enumerate(members):
            workers.append(system.worker(i, system.workdir / f"client-{k}-{i}.log"))
        for k, (child, n) in enumerate(zip(workers, shares(threads, len(members)), strict=True)):
            child.send("prepare", threads=n, count=per_thread, kind=kind, name=f"c{k}")
        warm_up_errors: Counter[str] = Counter()
        for child in workers:
            prepared = child.read(180.0)
            if "error" in prepared:
                raise RuntimeError(f"a {system.name} client worker failed: {prepared['error']}")
            warm_up_errors.update(prepared["warm_up_errors"])
        servers, clients = system.pids(), [child.pid for child in workers]
        server_cpu = [cpu_seconds(p) for p in servers]
        client_cpu = [cpu_seconds(p) for p in clients]
        for child in workers:
            child.send("go")
        budget = 120.0 + per_thread * system.settings.op_timeout
        answers = [child.read(budget) for child in workers]
        for answer in answers:
            if "error" in answer:
                raise RuntimeError(f"a {system.name} client worker failed: {answer['error']}")
        server_cpu = [cpu_seconds(p) - c for p, c in zip(servers, server_cpu, strict=True)]
        client_cpu = [cpu_seconds(p) - c for p, c in zip(clients, client_cpu, strict=True)]
    finally:
        for child in workers:
            child.stop()
    latencies = [x for answer in answers for x in answer["latencies"]]
    errors: Counter[str] = Counter(warm_up_errors)
    for answer in answers:
        errors.update(answer["errors"])
    seconds = max(a["ended"] for a in answers) - min(a["started"] for a in answers)
    result: dict[str, Any] = {
        "operations": threads * per_thread,
        "threads": threads,
        "members": members,
        "ok": len(latencies),
        "errors": dict(errors),
        "seconds": seconds,
        "per_second": len(latencies) / seconds if seconds > 0 else None,
        **latency_summary(latencies),
        "server_cpu_seconds": server_cpu,
        "server_cpu_ms_per_op": sum(server_cpu) * 1000 / max(1, len(latencies)),
        "client_cpu_seconds": client_cpu,
        "client_cpu_ms_per_op": sum(client_cpu) * 1000 / max(1, len(latencies)),
    }
    return result


def restart_serve(system: System, settings: Settings) -> dict[str, Any]:
    """Kill -9 a follower, start it again and time Popen -> first write through it (and
    Popen -> its first answer of any kind, to tell starting up from rejoining)."""
    times: list[float] = []
    restarted: list[int] = []
    failures: list[str] = []
    first_answers: list[float | None] = []
    for k in range(settings.restarts):
        leader = system.leader()
        followers = [i for i in range(system.size) if i != leader]
        victim = followers[k % len(followers)]
        system.kill(victim)
        time.sleep(SETTLE)
        began = time.monotonic()
        system.launch(victim)
        deadline = began + SERVE_DEADLINE
        attempt, problem, answered = 0, "not probed", None
        while time.monotonic() < deadline:
            problem = system.probe(victim, f"restart-probe-{k}-{attempt}")
            if answered is None and not problem.startswith("ConnectionError"):
                answered = time.monotonic() - began  # listening: the rest is rejoining
            if not problem:
                times.append(time.monotonic() - began)
                break
            attempt += 1
            time.sleep(0.005)
        else:
            failures.append(f"member {victim}, last answer {problem}")
        first_answers.append(answered)
        restarted.append(victim)
        system.leader()  # every member follows one leader again
        time.sleep(SETTLE)
    return {
        "operations": settings.restarts,
        "seconds": times,
        "first_answer_seconds": first_answers,
        "errors": {"NotServing": len(failures)} if failures else {},
        "failures": failures,
        "restarted": restarted,
        "median_ms": statistics.median(times) * 1000 if times else None,
        "max_ms": max(times) * 1000 if times else None,
    }


def run_rows(system: System, rows: list[str], settings: Settings) -> dict[str, Any]:
    """Start ``system``, measure ``rows`` on it, stop it."""
    everyone = list(range(system.size))
    out: dict[str, Any] = {}
    try:
        began = time.monotonic()
        system.start()
        out["start_seconds"] = time.monotonic() - began
        for row in rows:
            print(f"  {system.name}: {row} ...", flush=True)
            began = time.monotonic()
            if row == "write-1":
                out[row] = load(system, [system.leader()], 1, settings.write_1, "write")
            elif row == "read-1":
                out[row] = load(system, [system.leader()], 1, settings.read_1, "read")
            elif row == "write-32-spread":
                out[row] = load(system, everyone, THREADS, settings.per_thread, "write")
            elif row == "write-32-leader":
                out[row] = load(system, [system.leader()], THREADS, settings.per_thread, "write")
            elif row == "cpu-per-write":
                out[row] = load(system, everyone, THREADS, settings.cpu_per_thread, "write")
            elif row == "restart-serve":
                out[row] = restart_serve(system, settings)
            out[row]["row_seconds"] = time.monotonic() - began
    finally:
        system.close()
    return out


# -- the run --------------------------------------------------------------------------------


class OutOfTime(Exception):
    """The run took longer than ``--timeout``."""


def _git(repo: Path, *arguments: str) -> str:
    found = subprocess.run(["git", "-C", str(repo), *arguments], capture_output=True, text=True)
    return found.stdout.strip()


def describe_repo(repo: Path) -> dict[str, Any]:
    """Which django-raft was measured: path, commit, and whether the tree had edits."""
    return {
        "path": str(repo),
        "commit": _git(repo, "rev-parse", "--short", "HEAD"),
        "modified": bool(_git(repo, "status", "--porcelain", "--untracked-files=no")),
    }


def etcd_version() -> str:
    """ "etcd 3.4.23", from ``etcd --version``."""
    found = subprocess.run(["etcd", "--version"], capture_output=True, text=True, timeout=30)
    first = found.stdout.splitlines()[0] if found.stdout else "etcd ?"
    return first.replace("etcd Version:", "etcd").strip()


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise OutOfTime in the main thread after ``seconds``; SIGTERM exits cleanly too."""

    def expire(signum: int, frame: Any) -> None:
        raise OutOfTime(f"the run took more than {seconds:.0f} s (--timeout)")

    previous = signal.signal(signal.SIGALRM, expire)
    previous_term = signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(143))
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        signal.signal(signal.SIGTERM, previous_term)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, help="rounds (default 1)")
    parser.add_argument("--only", help=f"comma-separated rows: {','.join(ROWS)}")
    parser.add_argument("--systems", help=f"comma-separated: {','.join(SYSTEMS)} (both)")
    parser.add_argument("--tiny", action="store_true", help="a few operations: checks the harness")
    parser.add_argument(
        "--operations", type=int, help="calls of the write-1 and read-1 rows (default 2000)"
    )
    parser.add_argument("--repo", type=Path, default=ROOT, help="django-raft checkout to run")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where JSON and PNG go")
    parser.add_argument("--no-plot", action="store_true", help="write no PNG")
    parser.add_argument("--timeout", type=float, help="seconds before the run gives up")
    parser.add_argument(
        "--log-database",
        action="store_true",
        help="django-raft's log in a SQLite file of its own (LOG_DATABASE)",
    )
    options = parser.parse_args(argv)
    try:
        rows = parse_choice(options.only, ROWS, "rows")
        systems = parse_choice(options.systems, SYSTEMS, "systems")
    except ValueError as error:
        parser.error(str(error))
    settings = TINY if options.tiny else Settings()
    if options.rounds is not None:
        settings = replace(settings, rounds=max(1, options.rounds))
    settings = replace(settings, log_database=options.log_database)
    if options.operations is not None:
        if options.operations < 1:
            parser.error("--operations must be at least 1")
        settings = replace(settings, write_1=options.operations, read_1=options.operations)
    repo = options.repo.resolve()
    if "django-raft" in systems and not (repo / "manage.py").exists():
        parser.error(f"--repo {repo}: no manage.py there")
    timeout = options.timeout or (120.0 + (60.0 if options.tiny else 600.0) * settings.rounds)

    if "etcd" in systems and shutil.which("etcd") is None:
        print("etcd is not on PATH: bench/install-etcd ...", flush=True)
        subprocess.run([str(INSTALL_ETCD)], check=True, timeout=600)
    from bench.run import bench_python, machine

    environment = machine()
    if "etcd" in systems:
        environment["etcd"] = etcd_version()
    started = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    report = new_report(started, settings, rows, systems, describe_repo(repo), environment)
    options.out.mkdir(parents=True, exist_ok=True)
    path = result_path(options.out, started)
    with tempfile.TemporaryDirectory(prefix="raft-etcd-bench-") as tmp, time_limit(timeout):
        for r in range(settings.rounds):
            round_result: dict[str, Any] = {"order": round_order(r, systems)}
            for name in round_result["order"]:
                print(f"round {r + 1}/{settings.rounds}: {name}", flush=True)
                workdir = Path(tmp) / f"round{r}-{name}"
                workdir.mkdir()
                system: System = (
                    Etcd(workdir, settings)
                    if name == "etcd"
                    else DjangoRaft(workdir, settings, repo)
                )
                round_result[name] = run_rows(system, rows, settings)
            report["rounds"].append(round_result)
            path.write_text(json.dumps(report, indent=1))  # what is done so far
    report["machine_after"] = machine()
    report["summary"] = summarize(report["rounds"])
    print()
    print(format_table(report["summary"]))
    for line in failures(report["rounds"]):
        print(f"failed: {line}")
    path.write_text(json.dumps(report, indent=1))
    print(f"\nwrote {path}")
    if not options.no_plot:
        png = path.with_suffix(".png")
        plot = [bench_python(), str(ROOT / "bench" / "plot.py"), str(path), str(png)]
        subprocess.run(plot, check=True, timeout=300)
        print(f"wrote {png}")
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["worker"]:
        worker_main(sys.argv[2:])
    else:
        try:
            sys.exit(main())
        except OutOfTime as error:  # every process was killed on the way out
            sys.exit(f"stopped: {error}")
        except KeyboardInterrupt:
            sys.exit("stopped: interrupted")
