"""Choose raftnode's WSGI server: cheroot and waitress serving the node's routes.

    .venv/bin/python bench/wsgi_bench.py [--seconds 3] [--clients 8]

Each server runs in this process and serves ``django_raft``'s node application (the
full Django stack and signature check of the ``status`` route); clients post signed
requests over keep-alive sessions, as peers do. Prints a table and writes
``bench/results/wsgi.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "demo_project.settings")
os.environ["RAFT_SECRET"] = "bench-secret-" + "b" * 32

import django  # noqa: E402

django.setup()
logging.getLogger("django.request").setLevel(logging.CRITICAL)  # no log line per 503

import requests  # noqa: E402
from cheroot import wsgi  # noqa: E402

from django_raft.node.http.server import NodeApplication  # noqa: E402
from django_raft.protocol.auth import ANY_NODE, CLIENT, Signer, derive_keys  # noqa: E402
from tests.integration.cluster import free_port  # noqa: E402


def serve_cheroot(port: int, threads: int) -> Callable[[], None]:
    server = wsgi.Server(("127.0.0.1", port), NodeApplication(), numthreads=threads)
    server.prepare()
    threading.Thread(target=server.serve, daemon=True).start()
    return server.stop


def serve_waitress(port: int, threads: int) -> Callable[[], None]:
    from waitress.server import create_server

    server = create_server(NodeApplication(), host="127.0.0.1", port=port, threads=threads)
    threading.Thread(target=server.run, daemon=True).start()
    return server.close


def _client(arguments: tuple[int, int, float]) -> list[float]:
    """One client process: ``threads`` keep-alive sessions posting for ``seconds``."""
    port, threads, seconds = arguments
    body = b"{}"
    signer = Signer(derive_keys(os.environ["RAFT_SECRET"]).client, CLIENT, "client")
    url = f"http://127.0.0.1:{port}/raft/status"
    latencies: list[float] = []
    lock = threading.Lock()
    stop = time.perf_counter() + seconds

    def run() -> None:
        session = requests.Session()
        mine = []
        while time.perf_counter() < stop:
            begin = time.perf_counter()
            headers = signer.headers("POST", "/raft/status", ANY_NODE, body)
            response = session.post(url, data=body, headers=headers)
            mine.append(time.perf_counter() - begin)
            assert response.status_code == 503, response.status_code  # no node: fast path
        with lock:
            latencies.extend(mine)

    workers = [threading.Thread(target=run) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return latencies


def load(port: int, clients: int, seconds: float) -> dict[str, Any]:
    """Load from two other processes, so the clients do not share the server's GIL."""
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        parts = pool.map(_client, [(port, max(1, clients // 2), seconds)] * 2)
    latencies = sorted(latency for part in parts for latency in part)
    return {
        "requests_per_second": len(latencies) / seconds,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[int(0.99 * (len(latencies) - 1))] * 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--threads", type=int, default=16)
    options = parser.parse_args()
    results = {}
    for name, serve in (("cheroot", serve_cheroot), ("waitress", serve_waitress)):
        port = free_port()
        stop = serve(port, options.threads)
        time.sleep(0.3)
        try:
            load(port, options.clients, 0.5)  # warm up
            results[name] = load(port, options.clients, options.seconds)
        finally:
            stop()
    print(f"{'server':10} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8}")
    for name, row in results.items():
        print(
            f"{name:10} {row['requests_per_second']:8.0f} {row['p50_ms']:8.2f} {row['p99_ms']:8.2f}"
        )
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "wsgi.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
