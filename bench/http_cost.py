"""What one POST round trip costs between nodes: ``requests`` against ``http.client``.

    python bench/http_cost.py [--requests 2000] [--rounds 3]

A cheroot server in this process echoes a 200-byte body, as a node answers an RPC;
each client posts over one kept-alive connection: a ``requests.Session`` (what the
transport used before) and ``django_raft.protocol.connection.NodeConnection`` (what it uses
now). Prints µs per round trip, wall and CPU of the whole process (client and server
together), the best of ``--rounds``, and writes ``bench/results/http_cost.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import requests  # noqa: E402
from cheroot import wsgi  # noqa: E402

from django_raft.protocol.connection import NodeConnection  # noqa: E402

BODY = b"x" * 200
PATH = "/raft/rpc/appendEntries"
HEADERS = {"Content-Type": "application/x-protobuf", "X-Raft-Node": "n1"}


def echo(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
    start_response("200 OK", [("Content-Length", str(len(body)))])
    return [body]


def timed(post: Callable[[], None], count: int) -> tuple[float, float]:
    """µs per call, wall and process CPU."""
    started, started_cpu = time.perf_counter(), time.process_time()
    for _ in range(count):
        post()
    return (
        (time.perf_counter() - started) / count * 1e6,
        (time.process_time() - started_cpu) / count * 1e6,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    options = parser.parse_args()
    server = wsgi.Server(("127.0.0.1", 0), echo, numthreads=4)
    server.prepare()
    threading.Thread(target=server.serve, daemon=True).start()
    address = f"http://127.0.0.1:{server.bind_addr[1]}"
    session = requests.Session()
    connection = NodeConnection(address, 5.0, None)

    def with_requests() -> None:
        response = session.post(address + PATH, data=BODY, headers=HEADERS, timeout=5.0)
        assert response.content == BODY

    def with_http_client() -> None:
        assert connection.post(PATH, BODY, HEADERS, 1 << 20) == (200, BODY)

    clients = {"requests.Session": with_requests, "http.client (NodeConnection)": with_http_client}
    results: dict[str, dict[str, float]] = {}
    try:
        for _ in range(options.rounds):
            for name, post in clients.items():
                wall, cpu = timed(post, options.requests)
                best = results.setdefault(name, {"wall_us": wall, "cpu_us": cpu})
                best["wall_us"], best["cpu_us"] = (
                    min(best["wall_us"], wall),
                    min(best["cpu_us"], cpu),
                )
    finally:
        session.close()
        connection.close()
        server.stop()
    print(f"{'client':<30} {'wall µs':>9} {'CPU µs':>9}   per round trip, best of {options.rounds}")
    for name, result in results.items():
        print(f"{name:<30} {result['wall_us']:>9.0f} {result['cpu_us']:>9.0f}")
    out = ROOT / "bench" / "results" / "http_cost.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
