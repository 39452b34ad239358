"""The async client's throughput against the sync one's, under the same ASGI server.

    bench/asgi [--clients 1,32,128] [--seconds 5] [--rounds 2] [--ways async,sync,thread]
               [--out DIR]

Three ``raftnode`` processes (tests/integration/cluster.py, SQLite, durable) and one
uvicorn process (asyncio loop, h11) serving tests/integration/asgi_app.py as the web
process of the first server. Each row is a way for a view to write (``kv.set``):

``async``   an async view awaiting ``django_raft.ado``
``sync``    a sync view calling ``django_raft.do``: Django runs it in a thread of its
            request's own (asgiref's ``ThreadSensitiveContext``), a thread per request
``thread``  an async view calling ``do`` in a pool thread (``sync_to_async(...,
            thread_sensitive=False)``): a thread per call in flight

Then the client alone, without the ASGI server (``client`` rows): this process sends
``kv.set`` as the web process of the first server would, with N coroutines awaiting
``ado`` (``ado``) or N threads calling ``do`` (``do``), and gives the client's CPU per
call beside the throughput.

N clients (coroutines of this process, one keep-alive connection each) send requests
back to back for ``--seconds``; the table gives requests/s and the p50/p99 latency, and
the peak of the web process's threads. Each load runs ``--rounds`` times, each way first in
turn; the table shows the round of median throughput. Writes
``bench/results/asgi-<timestamp>.json`` (every round).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import django  # noqa: E402

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "demo_project.settings")
django.setup()

from django.test import override_settings  # noqa: E402

import django_raft  # noqa: E402
from django_raft.protocol.asend import read_response  # noqa: E402
from tests.integration.asgi_server import AsgiServer  # noqa: E402
from tests.integration.cluster import SECRET, Cluster  # noqa: E402

ROUTES = {"async": "put", "sync": "sync/put", "thread": "thread/put"}


async def client(
    port: int, route: str, number: int, stop: float, latencies: list[float], errors: list[str]
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    sequence = 0
    try:
        while time.monotonic() < stop:
            sequence += 1
            target = f"/{route}?key=b{number}-{sequence % 50}&value=x"
            started = time.monotonic()
            writer.write(f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
            status, _, body = await read_response(reader)
            latencies.append(time.monotonic() - started)
            answer = json.loads(body)
            if status != 200 or not answer.get("ok"):
                errors.append(str(answer.get("error", status)))
    finally:
        writer.close()


async def load(web: AsgiServer, route: str, clients: int, seconds: float) -> dict[str, Any]:
    latencies: list[float] = []
    errors: list[str] = []
    threads: list[int] = []
    stop = time.monotonic() + seconds

    async def sample() -> None:
        while time.monotonic() < stop:
            answer = await asyncio.to_thread(web.get, "ping", 5)
            threads.append(int(answer["threads"]))
            await asyncio.sleep(0.25)

    started = time.monotonic()
    await asyncio.gather(
        sample(),
        *(client(web.port, route, n, stop, latencies, errors) for n in range(clients)),
    )
    result = summary(latencies, time.monotonic() - started, 0.0)
    del result["client_cpu_ms"]
    return {**result, "errors": len(errors), "peak_threads": max(threads, default=0)}


def summary(latencies: list[float], took: float, cpu: float) -> dict[str, Any]:
    latencies.sort()
    return {
        "requests_per_s": round(len(latencies) / took, 1),
        "p50_ms": round(1000 * statistics.median(latencies), 2) if latencies else None,
        "p99_ms": round(1000 * latencies[int(0.99 * (len(latencies) - 1))], 2)
        if latencies
        else None,
        "requests": len(latencies),
        "client_cpu_ms": round(1000 * cpu / max(len(latencies), 1), 3),
    }


def client_ado(clients: int, seconds: float) -> dict[str, Any]:
    """``clients`` coroutines awaiting ``ado`` back to back for ``seconds``."""
    latencies: list[float] = []

    async def one(number: int, stop: float) -> None:
        sequence = 0
        while time.monotonic() < stop:
            sequence += 1
            started = time.monotonic()
            await django_raft.ado("kv.set", key=f"a{number}-{sequence % 50}", value="x")
            latencies.append(time.monotonic() - started)

    async def run() -> None:
        stop = time.monotonic() + seconds
        await asyncio.gather(*(one(n, stop) for n in range(clients)))

    cpu, started = time.process_time(), time.monotonic()
    asyncio.run(run())
    return summary(latencies, time.monotonic() - started, time.process_time() - cpu)


def client_do(clients: int, seconds: float) -> dict[str, Any]:
    """``clients`` threads calling ``do`` back to back for ``seconds``."""
    latencies: list[float] = []
    stop = time.monotonic() + seconds

    def one(number: int) -> None:
        sequence = 0
        while time.monotonic() < stop:
            sequence += 1
            started = time.monotonic()
            django_raft.do("kv.set", key=f"s{number}-{sequence % 50}", value="x")
            latencies.append(time.monotonic() - started)

    cpu, started = time.process_time(), time.monotonic()
    threads = [threading.Thread(target=one, args=(n,)) for n in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return summary(latencies, time.monotonic() - started, time.process_time() - cpu)


def median(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run of median throughput among ``runs`` (its own latencies and threads)."""
    ordered = sorted(runs, key=lambda run: run["requests_per_s"])
    return {**ordered[(len(ordered) - 1) // 2], "rounds": runs}


def format_table(rows: list[dict[str, Any]]) -> str:
    head = (
        f"{'clients':>7}  {'way':<7}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}"
        f"{'threads':>9}{'errors':>8}"
    )
    lines = [head, "-" * len(head)]
    for row in rows:
        lines.append(
            f"{row['clients']:>7}  {row['way']:<7}{row['requests_per_s']:>9}"
            f"{row['p50_ms']!s:>9}{row['p99_ms']!s:>9}{row['peak_threads']:>9}{row['errors']:>8}"
        )
    return "\n".join(lines)


def format_alone(rows: list[dict[str, Any]]) -> str:
    head = f"{'clients':>7}  {'way':<7}{'calls/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'cpu ms':>9}"
    lines = [head, "-" * len(head)]
    for row in rows:
        lines.append(
            f"{row['clients']:>7}  {row['way']:<7}{row['requests_per_s']:>9}"
            f"{row['p50_ms']!s:>9}{row['p99_ms']!s:>9}{row['client_cpu_ms']:>9}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", default="1,32,128")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--ways", default=",".join(ROUTES))
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    arguments = parser.parse_args()
    levels = [int(n) for n in arguments.clients.split(",")]
    ways = [way for way in arguments.ways.split(",") if way]
    unknown = set(ways) - set(ROUTES)
    if unknown:
        parser.error(f"unknown ways {sorted(unknown)}; choose from {list(ROUTES)}")
    rows: list[dict[str, Any]] = []
    alone: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-asgi-") as workdir:
        cluster = Cluster(Path(workdir))
        web = None
        try:
            cluster.start()
            cluster.leader(timeout=20)
            web = AsgiServer(cluster.founders[0], COMMAND_TIMEOUT=20)
            for way in ways:  # warm: sessions, streams, the leader known
                asyncio.run(load(web, ROUTES[way], 4, 0.5))
            for clients in levels:
                runs: dict[str, list[dict[str, Any]]] = {way: [] for way in ways}
                for number in range(arguments.rounds):  # each way first in turn
                    for way in ways[number % len(ways) :] + ways[: number % len(ways)]:
                        result = asyncio.run(load(web, ROUTES[way], clients, arguments.seconds))
                        runs[way].append(result)
                        print(
                            format_table([{"clients": clients, "way": way, **result}]).split("\n")[
                                -1
                            ],
                            flush=True,
                        )
                for way in ways:
                    rows.append({"clients": clients, "way": way, **median(runs[way])})
            web.close()
            web = None
            members = {node.node_id: node.address for node in cluster.founders}
            settings = {"SECRET": SECRET, "ADDRESS": cluster.founders[0].address}
            with override_settings(DJANGO_RAFT={**settings, "CLUSTER": members}):
                client_do(4, 0.5)
                client_ado(4, 0.5)
                for clients in levels:
                    for number in range(arguments.rounds):
                        order = [("ado", client_ado), ("do", client_do)]
                        for way, run in order[number % 2 :] + order[: number % 2]:
                            result = run(clients, arguments.seconds)
                            alone.append({"clients": clients, "way": way, **result})
                            print(format_alone(alone[-1:]).split("\n")[-1], flush=True)
        finally:
            if web is not None:
                web.close()
            cluster.close()
    client_rows = [
        {
            "clients": clients,
            "way": way,
            **median([row for row in alone if row["clients"] == clients and row["way"] == way]),
        }
        for clients in levels
        for way in ("ado", "do")
    ]
    print("\nunder uvicorn (requests to views):")
    print(format_table(rows))
    print("\nthe client alone (this process, as a web process):")
    print(format_alone(client_rows))
    arguments.out.mkdir(parents=True, exist_ok=True)
    path = arguments.out / f"asgi-{time.strftime('%Y%m%dT%H%M%S')}.json"
    report = {
        "seconds": arguments.seconds,
        "rounds": arguments.rounds,
        "uvicorn": rows,
        "client": client_rows,
    }
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwritten {path}")


if __name__ == "__main__":
    main()
