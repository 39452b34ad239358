"""Measure a real 3-node cluster on 127.0.0.1: throughput, latency, failover.

    .venv/bin/python bench/cluster_bench.py [--commands 500] [--clients 16] [--seconds 10]

Three ``manage.py raftnode`` processes, each with its own SQLite database (or
PostgreSQL with RAFT_TEST_POSTGRES=postgres://...), the demo ``kv.set`` handler
(it writes a Django model). Clients are external: signed HTTP requests, as
``django_raft.do`` sends them from a web process. Prints a table and writes
``bench/results/cluster.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "demo_project.settings")

import django  # noqa: E402

django.setup()

from tests.integration.cluster import Cluster, Node  # noqa: E402


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def sequential(leader: Node, count: int) -> dict[str, float]:
    latencies = []
    started = time.perf_counter()
    for i in range(count):
        begin = time.perf_counter()
        answer = leader.do("kv.set", key=f"s{i % 100}", value=str(i))
        latencies.append(time.perf_counter() - begin)
        assert answer["ok"], answer
    elapsed = time.perf_counter() - started
    return {
        "commands_per_second": count / elapsed,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": percentile(latencies, 0.99) * 1000,
    }


def concurrent(nodes: list[Node], clients: int, seconds: float) -> dict[str, float]:
    latencies: list[float] = []
    errors = 0
    lock = threading.Lock()
    stop = time.perf_counter() + seconds

    def client(number: int) -> None:
        nonlocal errors
        node = nodes[number % len(nodes)]
        i = 0
        while time.perf_counter() < stop:
            begin = time.perf_counter()
            answer = node.do("kv.set", key=f"c{number}-{i % 50}", value=str(i))
            spent = time.perf_counter() - begin
            with lock:
                if answer.get("ok"):
                    latencies.append(spent)
                else:
                    errors += 1
            i += 1

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    return {
        "commands_per_second": len(latencies) / elapsed,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": percentile(latencies, 0.99) * 1000,
        "errors": errors,
    }


def failover(cluster: Cluster, rounds: int) -> dict[str, float]:
    """SIGKILL the leader; time until a command succeeds again through a survivor."""
    recoveries = []
    for _ in range(rounds):
        leader = cluster.leader()
        assert leader.do("kv.set", key="f", value="before")["ok"]
        survivors = [n for n in cluster.running() if n is not leader]
        killed_at = time.perf_counter()
        leader.kill(signal.SIGKILL)
        while True:
            node = survivors[0]
            try:
                if node.do("kv.set", timeout=1.0, key="f", value="after")["ok"]:
                    break
            except Exception:
                pass
            survivors.reverse()
        recoveries.append(time.perf_counter() - killed_at)
        leader.start()
        cluster.wait_applied()
    return {
        "median_s": statistics.median(recoveries),
        "max_s": max(recoveries),
        "rounds": rounds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--commands", type=int, default=500)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--failovers", type=int, default=5)
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        cluster = Cluster(Path(workdir))
        try:
            cluster.start()
            leader = cluster.leader()
            results = {
                "database": "postgresql" if os.environ.get("RAFT_TEST_POSTGRES") else "sqlite",
                "sequential_1_client": sequential(leader, options.commands),
                f"concurrent_{options.clients}_clients": concurrent(
                    cluster.running(), options.clients, options.seconds
                ),
                "failover_after_sigkill": failover(cluster, options.failovers),
            }
        finally:
            cluster.close()
    print(f"{'measurement':32} {'cmd/s':>9} {'p50 ms':>8} {'p99 ms':>8}")
    for name, row in results.items():
        if isinstance(row, dict) and "commands_per_second" in row:
            print(
                f"{name:32} {row['commands_per_second']:9.0f} "
                f"{row['p50_ms']:8.1f} {row['p99_ms']:8.1f}"
            )
    fail = results["failover_after_sigkill"]
    assert isinstance(fail, dict)
    print(
        f"failover (SIGKILL leader -> next successful command): median {fail['median_s']:.2f} s, "
        f"max {fail['max_s']:.2f} s over {fail['rounds']} rounds"
    )
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "cluster.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
