"""Real ``manage.py raftnode`` processes on 127.0.0.1, each with its own database.

Used by the integration tests: start, SIGKILL, SIGTERM and restart nodes, submit
commands over HTTP like ``django_raft.do`` does, and read each node's own database.
Every process started here is killed by ``Cluster.close()`` (the fixture calls it).
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests

from tests.signing import signed

ROOT = Path(__file__).resolve().parents[2]
SECRET = "integration-test-secret-" + "s" * 32
POSTGRES = os.environ.get("RAFT_TEST_POSTGRES", "")
"""A postgres:// URL of a server where each node gets its own database, or ""."""


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


_PORTS_GIVEN: set[int] = set()


def free_port() -> int:
    """A port nothing listens on, for a node or server a test starts.

    Taken below the kernel's ephemeral range: a port that ``bind(0)`` picks comes from
    that range, where any outgoing connection (a node's stream to a peer, a client) may
    take it between now and the moment the server listens on it. Each xdist worker
    draws from a range of its own, and never hands out a port twice.
    """
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")[2:]
    slot = int(worker) % 4 if worker.isdigit() else 0
    low = 20_000 + slot * 3_000
    high = min(low + 3_000, _ephemeral_low())
    for _ in range(200 if high > low else 0):
        port = random.randrange(low, high)
        if port in _PORTS_GIVEN:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _PORTS_GIVEN.add(port)
        return port
    with socket.socket() as sock:  # that range is full: let the kernel choose
        sock.bind(("127.0.0.1", 0))
        chosen: int = sock.getsockname()[1]
        return chosen


def wait_for(
    condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.05
) -> Any:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = condition()
        except Exception as error:  # a node may be down while we poll
            last_error = error
            value = None
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(
        f"timed out after {timeout}s waiting for {what} (last error: {last_error})"
    )


class Node:
    """One node: a database of its own, and a raftnode process while it runs."""

    def __init__(self, cluster: Cluster, node_id: str) -> None:
        self.cluster = cluster
        self.node_id = node_id
        self.port = free_port()
        self.address = f"{cluster.scheme}://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = cluster.workdir / f"{node_id}.log"
        if POSTGRES:
            # One set of databases per xdist worker: two clusters may run at once.
            worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
            server = POSTGRES.rstrip("/").rsplit("/", 1)[0]
            self.database_url = f"{server}/raft_it_{worker}_{node_id}"
            self.sqlite_path = None
        else:
            self.database_url = ""
            self.sqlite_path = cluster.workdir / f"{node_id}.sqlite3"

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.pop("DATABASE_URL", None)
        env.update(
            {
                "DJANGO_SETTINGS_MODULE": "demo_project.settings",
                "RAFT_NODE_ID": self.node_id,
                "RAFT_ADDRESS": self.address,
                "RAFT_SECRET": SECRET,
                "RAFT_CLUSTER": ",".join(f"{n.node_id}={n.address}" for n in self.cluster.founders),
                **{f"RAFT_{k}": str(v) for k, v in self.cluster.settings.items()},
            }
        )
        if self.database_url:
            env["DATABASE_URL"] = self.database_url
        else:
            env["DJANGO_SQLITE_PATH"] = str(self.sqlite_path)
            if self.cluster.settings.get("LOG_DATABASE") == "raft_log":
                env["DJANGO_SQLITE_LOG_PATH"] = str(self.sqlite_path).replace(
                    ".sqlite3", "-log.sqlite3"
                )
        return env

    def migrate(self) -> None:
        if self.database_url:
            _recreate_postgres_database(self.database_url)
        env = self.env()
        extra = [["--database", "raft_log"]] if "DJANGO_SQLITE_LOG_PATH" in env else []
        for database in [[], *extra]:
            subprocess.run(
                [sys.executable, "manage.py", "migrate", "--noinput", "-v", "0", *database],
                cwd=ROOT,
                env=env,
                check=True,
                timeout=120,
            )

    def start(self, *arguments: str, program: tuple[str, ...] = ("manage.py", "raftnode")) -> None:
        """Run ``raftnode`` with ``arguments`` (or another ``program`` that runs a node)."""
        assert self.process is None or self.process.poll() is not None
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, *program, *arguments],
            cwd=ROOT,
            env=self.env(),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        wait_for(self.status, 30, f"{self.node_id} to answer")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(timeout=20)

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def post(self, route: str, body: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
        data = json.dumps(body).encode()
        url = f"{self.address}/raft/{route}"
        headers = {"Content-Type": "application/json"} | signed(url, data, SECRET)
        response = requests.post(
            url, data=data, headers=headers, timeout=timeout, **self.cluster.tls
        )
        answer: dict[str, Any] = response.json()
        return answer

    def status(self) -> dict[str, Any]:
        answer = self.post("status", {}, timeout=2.0)
        assert answer["ok"], answer
        value: dict[str, Any] = answer["value"]
        return value

    def do(self, name: str, timeout: float = 10.0, **arguments: Any) -> dict[str, Any]:
        return self.post(
            "command", {"name": name, "arguments": arguments, "timeout": timeout}, timeout + 5
        )

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        """Run a read-only query on this node's own database."""
        if self.sqlite_path is not None:
            with sqlite3.connect(f"file:{self.sqlite_path}?mode=ro", uri=True, timeout=10) as db:
                return db.execute(sql).fetchall()
        import psycopg

        with psycopg.connect(self.database_url) as db:
            return db.execute(sql).fetchall()

    def kv(self) -> dict[str, str]:
        return dict(self.query("SELECT key, value FROM kv_keyvalue"))

    def hard_state(self) -> tuple[int, str, int]:
        rows = self.query('SELECT term, vote, "commit" FROM django_raft_hardstate')
        return rows[0] if rows else (0, "", 0)


def _recreate_postgres_database(url: str) -> None:
    import psycopg

    base, name = url.rsplit("/", 1)
    with psycopg.connect(f"{base}/postgres", autocommit=True) as db:
        db.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        db.execute(f'CREATE DATABASE "{name}"')


class Cluster:
    """A set of nodes founded together; more can be added to join later."""

    def __init__(
        self,
        workdir: Path,
        size: int = 3,
        tls: dict[str, Any] | None = None,
        **settings: Any,
    ) -> None:
        self.workdir = workdir
        self.settings = settings
        self.tls: dict[str, Any] = tls or {}
        """``requests`` options (verify, cert) for https nodes; settings carry TLS_*."""
        self.scheme = "https" if settings.get("TLS_CERT") else "http"
        self.founders: list[Node] = []
        self.nodes: dict[str, Node] = {}
        for i in range(1, size + 1):
            node = Node(self, f"n{i}")
            self.founders.append(node)
            self.nodes[node.node_id] = node

    def start(self, program: tuple[str, ...] = ("manage.py", "raftnode")) -> None:
        for node in self.founders:
            node.migrate()
        for node in self.founders:
            node.start("--bootstrap", program=program)

    def add_node(self, node_id: str) -> Node:
        node = Node(self, node_id)
        self.nodes[node_id] = node
        node.migrate()
        return node

    def running(self) -> list[Node]:
        return [n for n in self.nodes.values() if n.running()]

    def leader(self, timeout: float = 10.0, among: list[Node] | None = None) -> Node:
        def find() -> Node | None:
            nodes = among or self.running()
            statuses = {n.node_id: n.status() for n in nodes}
            leaders = [i for i, s in statuses.items() if s["state"] == "leader"]
            if len(leaders) != 1:
                return None
            followed = {s["leader"] for s in statuses.values()}
            return self.nodes[leaders[0]] if followed == {leaders[0]} else None

        node: Node = wait_for(find, timeout, "one leader every running node follows")
        return node

    def wait_applied(self, nodes: list[Node] | None = None, timeout: float = 30.0) -> int:
        """Wait until the given nodes have applied the same, current, commit index."""

        def converged() -> int | None:
            statuses = [n.status() for n in (nodes or self.running())]
            applied = {s["applied"] for s in statuses}
            commits = {s["commit"] for s in statuses}
            if len(applied) == 1 and applied == commits:
                return applied.pop() or None
            return None

        index: int = wait_for(converged, timeout, "nodes to apply the same index")
        return index

    def close(self) -> None:
        """Kill every node, resuming first those a test paused (SIGSTOP)."""
        for node in self.nodes.values():
            if node.running():
                node.process.send_signal(signal.SIGCONT)  # type: ignore[union-attr]
            node.kill()
