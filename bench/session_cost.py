"""What a session-tracked command costs against a plain one, on a real 3-node cluster.

    .venv/bin/python bench/session_cost.py [--commands 300] [--clients 8] [--seconds 5]

Three ``manage.py raftnode`` processes on 127.0.0.1 (SQLite each), the demo ``kv.incr``
handler. The clients are ``django_raft.Client`` in this process, as a web process uses
them: ``session=True`` (the default of ``do()``: exactly once, with retries) against
``session=False`` (sent once, no deduplication). One client at a time gives the latency;
``--clients`` threads for ``--seconds`` give the throughput. A second table measures the
state machine alone: applying runs of 1,000 committed entries in one transaction, plain
and session-tracked. Prints tables and writes ``bench/results/session_cost.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "demo_project.settings")

import django  # noqa: E402

django.setup()

from django.test import override_settings  # noqa: E402

from django_raft.client import Client  # noqa: E402
from django_raft.exceptions import RaftError  # noqa: E402
from tests.integration.cluster import SECRET, Cluster  # noqa: E402


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def sequential(session: bool, count: int) -> dict[str, float]:
    client = Client(session=session, timeout=30)
    client.do("kv.incr", key="warm")  # opens the session (when there is one)
    times = []
    for _ in range(count):
        started = time.perf_counter()
        client.do("kv.incr", key="seq")
        times.append((time.perf_counter() - started) * 1000)
    return {
        "p50_ms": round(statistics.median(times), 3),
        "p99_ms": round(percentile(times, 0.99), 3),
        "mean_ms": round(statistics.fmean(times), 3),
    }


def concurrent(session: bool, clients: int, seconds: float) -> dict[str, float]:
    client = Client(session=session, timeout=30)
    done = [0] * clients
    failed = [0] * clients
    stop = threading.Event()

    def run(number: int) -> None:
        client.do("kv.incr", key=f"warm{number}")
        while not stop.is_set():
            try:
                client.do("kv.incr", key=f"c{number}")
            except RaftError:  # without a session, an unknown outcome is not retried
                failed[number] += 1
                continue
            done[number] += 1

    threads = [threading.Thread(target=run, args=(n,)) for n in range(clients)]
    for thread in threads:
        thread.start()
    time.sleep(1.0)  # every session opened
    before, started = sum(done), time.perf_counter()
    time.sleep(seconds)
    after, elapsed = sum(done), time.perf_counter() - started
    stop.set()
    for thread in threads:
        thread.join(60)
    return {"commands_per_s": round((after - before) / elapsed, 1), "errors": sum(failed)}


def state_machine(entries: int) -> dict[str, float]:
    """Apply runs of committed kv.incr entries in one in-memory SQLite database."""
    from django.db import connection

    from django_raft.core import Entry, EntryType
    from django_raft.node import sessions
    from django_raft.node.statemachine import StateMachine
    from django_raft.protocol.wire import encode_command

    connection.creation.create_test_db(verbosity=0)
    machine = StateMachine("default", "bench")
    index = 0

    def entry(data: bytes) -> Entry:
        nonlocal index
        index += 1
        return Entry(index, 1, EntryType.NORMAL, data)

    client = machine.apply([entry(encode_command(sessions.OPEN_SESSION, {"timeout_ms": 10**9}))])
    client_id = next(iter(client.values())).value
    results = {}
    for label, tracked in (("plain", False), ("session", True)):
        run = [
            entry(
                encode_command(
                    "kv.incr",
                    {"key": "k"},
                    client_id if tracked else "",
                    number if tracked else 0,
                    number if tracked else 0,
                )
            )
            for number in range(1, entries + 1)
        ]
        started = time.perf_counter()
        machine.apply(run)
        elapsed = time.perf_counter() - started
        results[f"{label}_us_per_entry"] = round(elapsed / entries * 1e6, 1)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--commands", type=int, default=300)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=5.0)
    options = parser.parse_args()
    results: dict[str, Any] = {"commands": options.commands, "clients": options.clients}
    with tempfile.TemporaryDirectory() as workdir:
        cluster = Cluster(Path(workdir))
        try:
            cluster.start()
            cluster.leader()
            members = {node.node_id: node.address for node in cluster.founders}
            settings = {"SECRET": SECRET, "ADDRESS": cluster.founders[0].address}
            with override_settings(DJANGO_RAFT={**settings, "CLUSTER": members}):
                for label, session in (("plain", False), ("session", True)):
                    results[label] = {
                        **sequential(session, options.commands),
                        **concurrent(session, options.clients, options.seconds),
                    }
        finally:
            cluster.close()
    results["state_machine"] = state_machine(1000)
    header = f"{'':10} {'p50 ms':>8} {'p99 ms':>8} {'mean ms':>8} {'cmd/s':>8} {'errors':>7}"
    print(header + "  (3 nodes, HTTP)")
    for label in ("plain", "session"):
        row = results[label]
        print(
            f"{label:10} {row['p50_ms']:8.2f} {row['p99_ms']:8.2f} {row['mean_ms']:8.2f} "
            f"{row['commands_per_s']:8.0f} {row['errors']:7d}"
        )
    machine = results["state_machine"]
    print(
        f"apply, µs per entry (runs of 1,000): plain {machine['plain_us_per_entry']}, "
        f"session {machine['session_us_per_entry']}"
    )
    out = ROOT / "bench" / "results" / "session_cost.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
