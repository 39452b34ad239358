"""One django-raft node of the benchmark, driven by ``bench/run.py`` over stdin/stdout.

    python bench/raft_node.py NODE_ID --cluster n1=http://127.0.0.1:P1,... --database PATH

It migrates its own SQLite database, starts the node in this process the way
``manage.py raftnode`` does (``django_raft.node.http.server.start_node``), then answers the
harness's requests (see ``bench.load.serve``): ``status``, ``throughput`` and
``latency`` (proposals made in this process, meant for the leader), ``counters``.
"""

from __future__ import annotations

import argparse
import os
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.load import Done, Submit, keep_outstanding, one_at_a_time, serve  # noqa: E402

SECRET = "bench-secret"
PROPOSE_TIMEOUT = 10.0
FALLBACK_THREADS = 1000
"""Without ``propose_async``, at most this many blocking proposals are in flight."""


def configure(node_id: str, cluster: dict[str, str], database: str) -> None:
    """Set the RAFT_* variables ``demo_project.settings`` reads, and set Django up."""
    os.environ.update(
        {
            "DJANGO_SETTINGS_MODULE": "bench.settings",
            "DJANGO_SQLITE_PATH": database,
            "RAFT_NODE_ID": node_id,
            "RAFT_ADDRESS": cluster[node_id],
            "RAFT_SECRET": SECRET,
            "RAFT_CLUSTER": ",".join(f"{k}={v}" for k, v in cluster.items()),
        }
    )
    os.environ.pop("DATABASE_URL", None)
    import django

    django.setup()


class Node:
    """The node running here, and the load the harness asks it to generate."""

    def __init__(self, node_id: str, address: str) -> None:
        from django.core.management import call_command

        from django_raft.core import RawNode
        from django_raft.node.http.server import bind_of, start_node

        call_command("migrate", verbosity=0, interactive=False)
        self.node, self.server = start_node(node_id, address, bind_of(address), True, None)
        self.messages: int | None = None
        raw = next((v for v in vars(self.node).values() if isinstance(v, RawNode)), None)
        if raw is not None:  # else messages are not counted (a runtime that hides its core)
            self.messages = 0
            ready = raw.ready

            def counting_ready() -> Any:
                result = ready()
                self.messages = (self.messages or 0) + len(result.messages)
                return result

            raw.ready = counting_ready  # type: ignore[method-assign]
        self._fallback: ThreadPoolExecutor | None = None

    def propose(self, data: bytes) -> Future[Any]:
        """Propose without waiting: ``propose_async`` when the runtime has it, else the
        blocking ``propose`` on a pool of threads (which bounds what is outstanding)."""
        if hasattr(self.node, "propose_async"):
            future: Future[Any] = self.node.propose_async(data)
            return future
        if self._fallback is None:
            self._fallback = ThreadPoolExecutor(FALLBACK_THREADS, "bench-propose")
        return self._fallback.submit(self.node.propose, data, PROPOSE_TIMEOUT)

    def submitter(self, command: str) -> Submit:
        """``submit(done)`` for ``bench.noop`` (a 10-byte value) or ``kv.set``."""
        from django_raft.protocol.wire import encode_command

        sequence = iter(range(1 << 62))

        def submit(done: Done) -> None:
            i = next(sequence)
            if command == "noop":
                data = encode_command("bench.noop", {"value": f"{i % 10**10:010d}"})
            else:
                data = encode_command("kv.set", {"key": f"k{i % 1000}", "value": f"{i:010d}"})
            future = self.propose(data)
            future.add_done_callback(lambda f: done(_error_of(f)))

        return submit

    def status(self, request: dict[str, Any]) -> dict[str, Any]:
        import bench.apps

        status = self.node.status()
        return {
            "state": str(status.get("state", "")),
            "leader": str(status.get("leader", "")),
            "term": int(status.get("term", 0)),
            "commit": int(status.get("commit", 0)),
            "applied": int(status.get("applied", 0)),
            "noop_applied": bench.apps.applied,
            "pid": os.getpid(),
        }

    def throughput(self, request: dict[str, Any]) -> dict[str, Any]:
        outstanding = request["outstanding"]
        result = keep_outstanding(
            self.submitter(request["command"]),
            outstanding,
            request.get("seconds"),
            request.get("count"),
        )
        result["async"] = hasattr(self.node, "propose_async")
        if not result["async"]:
            result["outstanding"] = min(outstanding, FALLBACK_THREADS)
        return result

    def latency(self, request: dict[str, Any]) -> dict[str, Any]:
        return one_at_a_time(
            self.submitter(request["command"]), request["count"], request["timeout"]
        )

    def counters(self, request: dict[str, Any]) -> dict[str, Any]:
        return {"messages": self.messages}


def _error_of(future: Future[Any]) -> str:
    error = future.exception()
    if error is not None:
        return type(error).__name__
    outcome = future.result()
    return "" if getattr(outcome, "ok", True) else "CommandError"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("node_id")
    parser.add_argument("--cluster", required=True, help="n1=http://127.0.0.1:PORT,...")
    parser.add_argument("--database", required=True, help="this node's SQLite file")
    options = parser.parse_args()
    cluster = dict(item.split("=", 1) for item in options.cluster.split(","))
    configure(options.node_id, cluster, options.database)
    node = Node(options.node_id, cluster[options.node_id])
    try:
        serve(
            {
                "status": node.status,
                "throughput": node.throughput,
                "latency": node.latency,
                "counters": node.counters,
            }
        )
    finally:
        node.node.stop()
        node.server.stop()


if __name__ == "__main__":
    main()
