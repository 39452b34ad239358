"""An external client process of the benchmark: ``django_raft.do()`` over HTTP.

    python bench/http_client.py http://127.0.0.1:PORT

Configured like a web process of the cluster (``DJANGO_RAFT['ADDRESS']`` is the node it
talks to; a follower forwards to the leader). It answers one ``run`` request: ``threads``
threads call ``do("kv.set", ...)`` back to back, for ``seconds`` or ``count`` calls each
(after one untimed call that opens the thread's session and connection),
and the answer lists every latency.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.load import serve  # noqa: E402
from bench.raft_node import SECRET  # noqa: E402

TIMEOUT = 30.0


def run(request: dict[str, Any]) -> dict[str, Any]:
    """Call ``do`` from ``threads`` threads; every thread stops at the deadline or count."""
    import django_raft

    threads, name = request["threads"], request["name"]
    count = request.get("count")
    seconds = request.get("seconds", 1e9)
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    lock = threading.Lock()
    window: dict[str, float] = {}

    def start_window() -> None:
        window["started"] = time.perf_counter()
        window["deadline"] = window["started"] + seconds

    # Every thread first makes one call that is not timed: it opens the thread's
    # session (a command of its own) and its connection, which happens once per client.
    ready = threading.Barrier(threads, action=start_window)
    submitter = django_raft.Client(timeout=TIMEOUT)

    def client(number: int) -> None:
        mine: list[float] = []
        failed: Counter[str] = Counter()
        try:
            submitter.do("kv.set", key=f"{name}-{number}-warm-up", value="")
        except Exception as error:
            failed[type(error).__name__] += 1
        ready.wait()
        deadline = window["deadline"]
        i = 0
        while time.perf_counter() < deadline and (count is None or i < count):
            began = time.perf_counter()
            try:
                submitter.do("kv.set", key=f"{name}-{number}-{i % 100}", value=str(i))
            except Exception as error:
                failed[type(error).__name__] += 1
            else:
                mine.append(time.perf_counter() - began)
            i += 1
        with lock:
            latencies.extend(mine)
            errors.update(failed)

    workers = [threading.Thread(target=client, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return {
        "latencies": latencies,
        "errors": dict(errors),
        "seconds": time.perf_counter() - window["started"],
    }


def main() -> None:
    os.environ.update(
        {
            "DJANGO_SETTINGS_MODULE": "bench.settings",
            "RAFT_ADDRESS": sys.argv[1],
            "RAFT_SECRET": SECRET,
        }
    )
    os.environ.pop("DATABASE_URL", None)
    import django

    django.setup()
    serve({"run": run})


if __name__ == "__main__":
    main()
