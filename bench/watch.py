"""Watch latency: how long after a write its event reaches a watcher in another process.

    bench/watch [--writes 1000] [--out DIR]

Starts three ``manage.py raftnode`` processes (SQLite, LOG_DATABASE apart) on
127.0.0.1; this process, set up as a web process of that cluster, writes ``kv.set``
one at a time through the leader while two watches read the changes of that key over
HTTP: one on the leader, one on a follower. For each write it takes the time the write
was sent, the time ``do()`` returned (committed and applied on the leader) and the
time each watch got the event; the first tenth is left out as warm-up. Prints, per
watch, p50/p99 of send→event and of answer→event (negative when the event came before
the answer), and writes ``bench/results/watch-<timestamp>.json``.
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

import django_raft  # noqa: E402
from django_raft.client import Client  # noqa: E402
from tests.integration.cluster import SECRET, Cluster  # noqa: E402

RESULTS = ROOT / "bench" / "results"


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def measure(cluster: Cluster, writes: int) -> dict[str, Any]:
    leader = cluster.leader()
    follower = next(node for node in cluster.founders if node is not leader)
    members = {node.node_id: node.address for node in cluster.founders}
    settings = {"SECRET": SECRET, "ADDRESS": leader.address, "CLUSTER": members}
    arrived: dict[str, dict[int, float]] = {"leader": {}, "follower": {}}
    with override_settings(DJANGO_RAFT=settings):
        client = Client()
        client.do("kv.set", key="bench-watch", value="-1")
        watchers = {
            name: django_raft.watch(
                models="kv.KeyValue",
                pk="bench-watch",
                timeout=0.5,
                client=Client(),
            )
            for name in arrived
        }
        # Each watch asks ADDRESS first: point the follower's at the follower.
        watchers["follower"].close()
        with override_settings(DJANGO_RAFT={**settings, "ADDRESS": follower.address}):
            watchers["follower"] = django_raft.watch(
                models="kv.KeyValue", pk="bench-watch", timeout=0.5, client=Client()
            )
        done = threading.Event()

        def collect(name: str) -> None:
            while not done.is_set():
                for event in watchers[name]:
                    arrived[name][int(event.arguments["value"])] = time.perf_counter()

        threads = [threading.Thread(target=collect, args=(name,)) for name in arrived]
        for thread in threads:
            thread.start()
        sent, answered = [], []
        for number in range(writes):
            sent.append(time.perf_counter())
            client.do("kv.set", key="bench-watch", value=str(number))
            answered.append(time.perf_counter())
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and min(len(a) for a in arrived.values()) < writes:
            time.sleep(0.05)
        done.set()
        for thread in threads:
            thread.join(5)
        for open_ in watchers.values():
            open_.close()
    skip = writes // 10
    report: dict[str, Any] = {"writes": writes, "warm_up": skip}
    write_ms = [(answered[i] - sent[i]) * 1e3 for i in range(skip, writes)]
    report["write"] = {
        "p50_ms": round(percentile(write_ms, 0.5), 2),
        "p99_ms": round(percentile(write_ms, 0.99), 2),
    }
    for name, times in arrived.items():
        numbers = [i for i in range(skip, writes) if i in times]
        from_send = [(times[i] - sent[i]) * 1e3 for i in numbers]
        from_answer = [(times[i] - answered[i]) * 1e3 for i in numbers]
        report[name] = {
            "delivered": len(times),
            "send_to_event_p50_ms": round(percentile(from_send, 0.5), 2),
            "send_to_event_p99_ms": round(percentile(from_send, 0.99), 2),
            "answer_to_event_p50_ms": round(percentile(from_answer, 0.5), 2),
            "answer_to_event_p99_ms": round(percentile(from_answer, 0.99), 2),
            "mean_ms": round(statistics.fmean(from_send), 2),
        }
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--writes", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=RESULTS)
    options = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        cluster = Cluster(Path(folder), LOG_DATABASE="raft_log")
        try:
            cluster.start()
            report = measure(cluster, options.writes)
        finally:
            cluster.close()
    print(f"watch latency, {options.writes} writes one at a time (first tenth left out)")
    print(f"{'':10} {'send→event p50':>15} {'p99':>8} {'answer→event p50':>17} {'p99':>8}")
    write = report["write"]
    print(f"{'do()':10} {write['p50_ms']:>12.2f} ms {write['p99_ms']:>5.2f} ms")
    for name in ("leader", "follower"):
        row = report[name]
        print(
            f"{name:10} {row['send_to_event_p50_ms']:>12.2f} ms "
            f"{row['send_to_event_p99_ms']:>5.2f} ms {row['answer_to_event_p50_ms']:>14.2f} ms "
            f"{row['answer_to_event_p99_ms']:>5.2f} ms   ({row['delivered']} delivered)"
        )
    options.out.mkdir(parents=True, exist_ok=True)
    out = options.out / f"watch-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
