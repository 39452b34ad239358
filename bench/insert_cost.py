"""What writing log rows costs SQLite's Python driver, idle and beside busy threads.

    python bench/insert_cost.py [--rows 500] [--batches 40] [--busy 0,2]

Every node appends its log with one transaction per Ready. ``executemany`` gives up the
interpreter lock once per row; each time, a busy thread of the same process may keep it
for a whole switch interval. One INSERT of many rows gives it up once. This runs both
(and INSERTs of 128 rows) with 0 and with 2 threads spinning in the process, under the
node's 1 ms switch interval, durable (WAL, synchronous=FULL), and prints ms per batch
of rows, wall and CPU of this thread. Writes ``bench/results/insert_cost.json``.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SWITCH_INTERVAL = 0.001
"""As ``django_raft.node.http.server.SWITCH_INTERVAL``."""


def measure(mode: str, rows: int, batches: int, busy: int) -> dict[str, Any]:
    """Insert ``batches`` batches of ``rows`` rows with ``mode``; ms per batch."""
    stop = threading.Event()

    def spin() -> None:
        while not stop.is_set():
            pass

    spinners = [threading.Thread(target=spin, daemon=True) for _ in range(busy)]
    for spinner in spinners:
        spinner.start()
    with tempfile.TemporaryDirectory() as scratch:
        db = sqlite3.connect(Path(scratch) / "log.sqlite3", isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute(
            "CREATE TABLE log (i INTEGER PRIMARY KEY, term INT, type INT, command TEXT, data BLOB)"
        )
        next_index = 1
        wall = cpu = 0.0
        for _ in range(batches):
            batch = [(next_index + j, 1, 0, "bench.noop", b"x" * 30) for j in range(rows)]
            next_index += rows
            started, started_cpu = time.perf_counter(), time.thread_time()
            db.execute("BEGIN")
            if mode == "executemany":
                db.executemany("INSERT INTO log VALUES (?, ?, ?, ?, ?)", batch)
            else:
                size = int(mode.split()[0])
                for first in range(0, rows, size):
                    chunk = batch[first : first + size]
                    db.execute(
                        "INSERT INTO log VALUES " + ", ".join(["(?, ?, ?, ?, ?)"] * len(chunk)),
                        [value for row in chunk for value in row],
                    )
            db.execute("COMMIT")
            wall += time.perf_counter() - started
            cpu += time.thread_time() - started_cpu
        db.close()
    stop.set()
    for spinner in spinners:
        spinner.join()
    return {
        "mode": mode,
        "busy_threads": busy,
        "rows": rows,
        "wall_ms": wall / batches * 1000,
        "cpu_ms": cpu / batches * 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=500)
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--busy", default="0,2", help="busy threads, comma-separated")
    options = parser.parse_args()
    sys.setswitchinterval(SWITCH_INTERVAL)
    results = [
        measure(mode, options.rows, options.batches, int(busy))
        for busy in options.busy.split(",")
        for mode in ("executemany", f"{options.rows} rows per INSERT", "128 rows per INSERT")
    ]
    print(
        f"{'busy threads':>12}  {'how':<24} {'wall ms':>9} {'cpu ms':>8}   per {options.rows} rows"
    )
    for result in results:
        busy, mode = result["busy_threads"], result["mode"]
        print(f"{busy:>12}  {mode:<24} {result['wall_ms']:>9.2f} {result['cpu_ms']:>8.2f}")
    out = ROOT / "bench" / "results" / "insert_cost.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
