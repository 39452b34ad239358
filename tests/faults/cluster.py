"""Three ``manage.py raftnode`` processes of the demo project for fault runs.

Each node has its own SQLite file (durable, as by default) in a directory of its own
(a FUSE mount for power cuts), and runs in a process group of its own. When there are
proxies (``tests.faults.proxy``), every node is known to the others, and to itself, by
its proxy's address: it listens on its own port, and everything a node sends another
goes through the other's proxy. Every process started here is killed by ``close()``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import requests

from tests.faults.proxy import Network
from tests.integration.cluster import ROOT, free_port
from tests.signing import signed

SECRET = "fault-suite-secret-" + "f" * 32
START_TIMEOUT = 60.0
"""Seconds a (re)started node has to answer (2 busy cores; Django imports)."""
INSTALLED = re.compile(r"snapshot at #\d+ installed")
"""The line a node logs when it installed a snapshot from its leader."""


def kill_group(process: subprocess.Popen[bytes] | None, sig: int = signal.SIGKILL) -> None:
    """Send ``sig`` to the process group of a child started with ``start_new_session``."""
    if process is not None and process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        if sig == signal.SIGKILL:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=30)


def post(address: str, route: str, body: dict[str, Any], timeout: float) -> dict[str, Any]:
    """A signed request to a node's route, its JSON answer."""
    data = json.dumps(body).encode()
    url = f"{address}/raft/{route}"
    headers = {"Content-Type": "application/json"} | signed(url, data, SECRET)
    answer: dict[str, Any] = requests.post(url, data=data, headers=headers, timeout=timeout).json()
    return answer


def status_of(address: str, timeout: float = 1.0) -> dict[str, Any] | None:
    """A node's status, or None when it does not answer."""
    try:
        answer = post(address, "status", {}, timeout)
    except (requests.RequestException, ValueError):
        return None
    value: dict[str, Any] | None = answer.get("value") if answer.get("ok") else None
    return value


_TEMPLATE: dict[str, bytes] = {}


def migrated_database(alias: str = "default") -> bytes:
    """The bytes of a freshly migrated SQLite file of the demo project: its ``default``
    database, or ``raft_log`` (a log database of its own); each made once."""
    if alias not in _TEMPLATE:
        import tempfile

        with tempfile.TemporaryDirectory(prefix="raft-template-") as scratch:
            path = Path(scratch) / "template.sqlite3"
            env = dict(os.environ, DJANGO_SETTINGS_MODULE="demo_project.settings")
            env.pop("DATABASE_URL", None)
            env["DJANGO_SQLITE_PATH"] = str(Path(scratch) / "default.sqlite3")
            env["DJANGO_SQLITE_LOG_PATH"] = str(path)
            if alias == "default":
                path = Path(env["DJANGO_SQLITE_PATH"])
            subprocess.run(
                [
                    sys.executable,
                    "manage.py",
                    "migrate",
                    "--noinput",
                    "-v",
                    "0",
                    "--database",
                    alias,
                ],
                cwd=ROOT,
                env=env,
                check=True,
                timeout=300,
            )
            _TEMPLATE[alias] = path.read_bytes()
    return _TEMPLATE[alias]


class Node:
    """One raftnode process with its own SQLite file under ``data_dir``."""

    def __init__(self, cluster: FaultCluster, node_id: str, port: int) -> None:
        self.cluster = cluster
        self.node_id = node_id
        self.port = port
        self.address = f"http://127.0.0.1:{port}"
        self.data_dir = cluster.workdir / node_id
        self.log_path = cluster.workdir / f"{node_id}.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.paused = False
        self.fresh = False
        """A member added through the log after the founding (``FaultCluster.replace``):
        it never bootstraps."""

    @property
    def database(self) -> Path:
        return self.data_dir / "db.sqlite3"

    @property
    def log_database(self) -> Path | None:
        """The log's own SQLite file (``LOG_DATABASE`` "raft_log"), or None."""
        if self.cluster.settings.get("LOG_DATABASE") == "raft_log":
            return self.data_dir / "log.sqlite3"
        return None

    def files(self) -> dict[str, bytes]:
        """The migrated files this node starts with, by name in ``data_dir``."""
        found = {self.database.name: migrated_database()}
        if self.log_database is not None:
            found[self.log_database.name] = migrated_database("raft_log")
        return found

    @property
    def reached_at(self) -> str:
        """Where the nodes reach this one (its ``ADDRESS``): its proxy, when there are
        proxies, else the address it listens on."""
        network = self.cluster.network
        return self.address if network is None else network.address(self.node_id, self.node_id)

    def peers(self) -> str:
        """This node's ``CLUSTER``, the same for every node: where each is reached."""
        return ",".join(f"{n.node_id}={n.reached_at}" for n in self.cluster.nodes)

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.pop("DATABASE_URL", None)
        env.update(
            {
                "DJANGO_SETTINGS_MODULE": "demo_project.settings",
                "DJANGO_SQLITE_PATH": str(self.database),
                "RAFT_NODE_ID": self.node_id,
                "RAFT_ADDRESS": self.reached_at,
                "RAFT_SECRET": SECRET,
                "RAFT_CLUSTER": self.peers(),
                **{f"RAFT_{k}": str(v) for k, v in self.cluster.settings.items()},
            }
        )
        if self.log_database is not None:
            env["DJANGO_SQLITE_LOG_PATH"] = str(self.log_database)
        return env

    def prepare(self) -> None:
        """A migrated database of its own (a copy of the template)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        for name, data in self.files().items():
            (self.data_dir / name).write_bytes(data)

    def start(self, wait: bool = True) -> None:
        """Start raftnode (again: same port, same database); wait until it answers.

        A founding node starts with ``--bootstrap`` (a no-op once it has a log); a new
        one without, and waits to be added."""
        assert not self.running()
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "manage.py",
                    "raftnode",
                    f"--bind=127.0.0.1:{self.port}",
                    *(() if self.fresh else ("--bootstrap",)),
                ],
                cwd=ROOT,
                env=self.env(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.paused = False
        if wait:
            self.wait_answering()

    def wait_answering(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while status_of(self.address) is None:
            if not self.running():
                raise RuntimeError(f"{self.node_id} exited; see {self.log_path}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.node_id} did not answer within {START_TIMEOUT} s")
            time.sleep(0.05)

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """kill -9 (a paused node too)."""
        kill_group(self.process)
        self.paused = False

    def pause(self) -> None:
        kill_group(self.process, signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        kill_group(self.process, signal.SIGCONT)
        self.paused = False

    def up(self) -> bool:
        return self.running() and not self.paused

    def query(self, sql: str, database: Path | None = None) -> list[tuple[Any, ...]]:
        path = database or self.database
        with contextlib.closing(
            sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
        ) as db:
            return db.execute(sql).fetchall()

    def kv(self) -> dict[str, str]:
        return {str(k): str(v) for k, v in self.query("SELECT key, value FROM kv_keyvalue")}

    def log(self) -> list[tuple[Any, ...]]:
        """Every log entry this node holds (those not compacted away)."""
        return [
            (index, term, kind, command, bytes(data))
            for index, term, kind, command, data in self.query(
                'SELECT "index", term, type, command, data FROM django_raft_logentry '
                'ORDER BY "index"',
                self.log_database,
            )
        ]

    def snapshot_index(self) -> int:
        """The last index the snapshot this node stores covers (taken here or installed
        from a leader); 0 when it has none."""
        rows = self.query('SELECT "index" FROM django_raft_snapshot', self.log_database)
        return int(rows[0][0]) if rows else 0

    def installs(self) -> int:
        """Snapshots this node installed from a leader, over all its starts (its log)."""
        if not self.log_path.exists():
            return 0
        return len(INSTALLED.findall(self.log_path.read_text(errors="replace")))


class FaultCluster:
    """Nodes founded together on 127.0.0.1, each behind a proxy when ``proxies``."""

    def __init__(self, workdir: Path, size: int = 3, proxies: bool = True, **settings: Any) -> None:
        self.workdir = workdir
        self.settings = settings
        ports = {f"n{i + 1}": free_port() for i in range(size)}
        self.network = Network(ports) if proxies else None
        self.nodes = [Node(self, node_id, port) for node_id, port in ports.items()]
        self.retired: list[Node] = []
        """Members removed (``replace``), stopped but still killed by ``close``."""

    def node(self, node_id: str) -> Node:
        return next(n for n in self.nodes if n.node_id == node_id)

    @property
    def spec(self) -> str:
        """``CLUSTER`` for clients: the nodes' own addresses."""
        return ",".join(f"{n.node_id}={n.address}" for n in self.nodes)

    def start(self) -> None:
        for node in self.nodes:
            if not node.database.exists():
                node.prepare()
        for node in self.nodes:
            node.start(wait=False)
        for node in self.nodes:
            node.wait_answering()
        self.leader()

    def leader(self, timeout: float = 30.0) -> Node:
        """The one leader every node that is up follows."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            statuses = {n.node_id: status_of(n.address) for n in self.nodes if n.up()}
            leaders = [i for i, s in statuses.items() if s and s.get("state") == "leader"]
            if (
                len(leaders) == 1
                and all(s is not None for s in statuses.values())
                and {s["leader"] for s in statuses.values() if s} == {leaders[0]}
            ):
                return self.node(leaders[0])
            time.sleep(0.05)
        raise RuntimeError(f"no leader every running node follows within {timeout} s")

    def heal(self) -> None:
        """Links open, paused nodes resumed, dead ones restarted."""
        if self.network is not None:
            self.network.heal()
        for node in self.nodes:
            if node.paused:
                node.resume()
        dead = [n for n in self.nodes if not n.running()]
        for node in dead:
            node.start(wait=False)
        for node in dead:
            node.wait_answering()

    def converge(self, timeout: float = 90.0) -> int:
        """Wait until every node has applied its commit index, the same on all, twice
        in a row half a second apart; return it."""
        deadline = time.monotonic() + timeout
        last = -1
        while time.monotonic() < deadline:
            statuses = [status_of(n.address, 2.0) for n in self.nodes]
            if all(statuses):
                applied = {s["applied"] for s in statuses if s}
                commits = {s["commit"] for s in statuses if s}
                if len(applied) == 1 and applied == commits:
                    index = int(applied.pop())
                    if index == last:
                        return index
                    last = index
            time.sleep(0.5)
        raise RuntimeError(f"the nodes did not converge within {timeout} s")

    def differences(self) -> list[str]:
        """How the nodes' replicated rows and logs differ (nothing: identical)."""
        found = []
        first, *others = self.nodes
        kv, log = first.kv(), first.log()
        for node in others:
            other_kv = node.kv()
            if other_kv != kv:
                keys = sorted(k for k in kv | other_kv if kv.get(k) != other_kv.get(k))
                found.append(
                    f"{node.node_id} and {first.node_id} differ on {len(keys)} keys: "
                    + ", ".join(f"{k}: {other_kv.get(k)!r} vs {kv.get(k)!r}" for k in keys[:5])
                )
            other_log = node.log()
            mine, theirs = {e[0]: e for e in log}, {e[0]: e for e in other_log}
            common = sorted(mine.keys() & theirs.keys())
            mismatch = [i for i in common if mine[i] != theirs[i]]
            if mismatch or (mine and theirs and max(mine) != max(theirs)):
                found.append(
                    f"{node.node_id}'s log (entries {min(theirs, default=0)}-"
                    f"{max(theirs, default=0)}) and {first.node_id}'s "
                    f"({min(mine, default=0)}-{max(mine, default=0)}) "
                    + (f"differ from index {mismatch[0]}" if mismatch else "end apart")
                )
        return found

    def replace(self, victim: Node) -> Node:
        """Retire ``victim`` (removed from the cluster, and now killed) and start a new
        node with an id never used, to be added through the log."""
        victim.kill()
        self.nodes.remove(victim)
        self.retired.append(victim)
        number = 1 + max(int(n.node_id[1:]) for n in self.nodes + self.retired)
        new = Node(self, f"n{number}", free_port())
        new.fresh = True
        if self.network is not None:
            self.network.add(new.node_id, new.port)
        new.prepare()
        self.nodes.append(new)
        new.start()
        return new

    def close(self) -> None:
        for node in self.retired:
            node.kill()
        for node in self.nodes:
            if node.paused:
                node.resume()
            node.kill()
        if self.network is not None:
            self.network.close()


def remove(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
