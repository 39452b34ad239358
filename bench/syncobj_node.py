"""One PySyncObj node of the benchmark, driven by ``bench/run.py`` over stdin/stdout.

    .venv-bench/bin/python bench/syncobj_node.py 127.0.0.1:P1 127.0.0.1:P2 127.0.0.1:P3
        [--journal PATH] [--no-batch]

The first address is this node's. It runs in the bench environment (pysyncobj from
the package index), answers the same requests as ``bench/raft_node.py``, and applies
``noop(value)``, a replicated method that only counts, like ``bench.noop``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.load import Done, Submit, keep_outstanding, one_at_a_time, serve

STATES = {0: "follower", 1: "candidate", 2: "leader"}


def make_node(self_address: str, partners: list[str], journal: str, batch: bool) -> Any:
    """Start a SyncObj with the benchmark's replicated ``noop``; count what it sends."""
    from pysyncobj import (  # type: ignore[import-not-found, unused-ignore]
        SyncObj,
        SyncObjConf,
        replicated,
    )

    class BenchObject(SyncObj):
        def __init__(self) -> None:
            conf = SyncObjConf(journalFile=journal or None, appendEntriesUseBatch=batch)
            super().__init__(self_address, partners, conf)
            self.noop_applied = 0
            self.messages = 0
            transport = self._SyncObj__transport
            send = transport.send

            def counting_send(node: Any, message: Any) -> Any:
                self.messages += 1
                return send(node, message)

            transport.send = counting_send

        @replicated
        def noop(self, value: str) -> None:
            self.noop_applied += 1

    return BenchObject()


class Node:
    """The SyncObj running here, and the load the harness asks it to generate."""

    def __init__(self, syncobj: Any) -> None:
        self.syncobj = syncobj

    def submitter(self) -> Submit:
        sequence = iter(range(1 << 62))

        def submit(done: Done) -> None:
            value = f"{next(sequence) % 10**10:010d}"
            self.syncobj.noop(value, callback=lambda result, error: done(_error_of(error)))

        return submit

    def status(self, request: dict[str, Any]) -> dict[str, Any]:
        status = self.syncobj.getStatus()
        leader = status.get("leader")
        return {
            "state": STATES.get(status["state"], str(status["state"])),
            "leader": getattr(leader, "id", str(leader)) if leader is not None else "",
            "term": status["raft_term"],
            "commit": status["commit_idx"],
            "applied": status["last_applied"],
            "noop_applied": self.syncobj.noop_applied,
            "pid": os.getpid(),
        }

    def throughput(self, request: dict[str, Any]) -> dict[str, Any]:
        outstanding = request["outstanding"]
        result = keep_outstanding(
            self.submitter(), outstanding, request.get("seconds"), request.get("count")
        )
        result["async"] = True
        return result

    def latency(self, request: dict[str, Any]) -> dict[str, Any]:
        return one_at_a_time(self.submitter(), request["count"], request["timeout"])

    def counters(self, request: dict[str, Any]) -> dict[str, Any]:
        return {"messages": self.syncobj.messages}


def _error_of(error: int) -> str:
    from pysyncobj import FAIL_REASON  # type: ignore[import-not-found, unused-ignore]

    if error == FAIL_REASON.SUCCESS:
        return ""
    names = {v: k for k, v in vars(FAIL_REASON).items() if not k.startswith("_")}
    return names.get(error, str(error))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("addresses", nargs="+", help="this node's host:port, then its partners'")
    parser.add_argument("--journal", default="", help="journal file (default: log in memory)")
    parser.add_argument("--no-batch", action="store_true", help="appendEntriesUseBatch=False")
    options = parser.parse_args()
    address, *partners = options.addresses
    node = Node(make_node(address, partners, options.journal, not options.no_batch))
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
        node.syncobj.destroy()


if __name__ == "__main__":
    main()
