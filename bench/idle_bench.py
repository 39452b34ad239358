"""How many idle connections a node withstands while still answering its peers in time.

Starts a three-node cluster, then opens more and more idle TCP connections (connected,
sending nothing) to the leader. At each step it measures the round trip of Raft RPCs
that a peer sends the leader over its keep-alive connection (signed heartbeats of a past
term, which the leader answers and ignores) and of client status requests, and checks
that the cluster kept its leader and term. A step passes when the peers' p99 round trip
stays within the heartbeat interval (50 ms). Prints a table and writes JSON.

    .venv/bin/python bench/idle_bench.py [--steps 0,1000,2000,4000,8000] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "demo_project.settings")

import django  # noqa: E402

django.setup()

import requests  # noqa: E402

from django_raft.core import Message, MessageType  # noqa: E402
from django_raft.protocol.auth import NODE  # noqa: E402
from django_raft.protocol.wire import encode_message  # noqa: E402
from tests.integration.cluster import SECRET, Cluster  # noqa: E402
from tests.signing import signed  # noqa: E402

HEARTBEAT_INTERVAL = 0.05
SAMPLES = 200


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def closed(sock: socket.socket) -> bool:
    """Whether the node closed this idle connection (it reads as end of file)."""
    try:
        gone = sock.recv(1, socket.MSG_DONTWAIT | socket.MSG_PEEK) == b""
    except BlockingIOError:
        return False
    except OSError:
        gone = True
    if gone:
        sock.close()
    return gone


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", default="0,1000,2000,4000,8000")
    parser.add_argument("--json", default="bench/idle_bench.json")
    options = parser.parse_args()
    steps = [int(step) for step in options.steps.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        cluster = Cluster(Path(workdir))
        idle: list[socket.socket] = []
        try:
            cluster.start()
            leader = cluster.leader()
            peer = next(n for n in cluster.running() if n is not leader)
            term = leader.status()["term"]
            host, port = leader.address.removeprefix("http://").split(":")
            url = f"{leader.address}/raft/rpc/appendEntries"
            heartbeat = encode_message(
                Message(type=MessageType.HEARTBEAT, to=leader.node_id, sender=peer.node_id)
            )
            session = requests.Session()
            for _ in range(20):  # a connection of its own, served by the peers' threads
                headers = signed(url, heartbeat, SECRET, peer.node_id, NODE, leader.node_id)
                session.post(url, data=heartbeat, headers=headers, timeout=10)
            assert leader.process is not None
            fds = f"/proc/{leader.process.pid}/fd"
            for count in steps:
                # The node closes connections silent for 5 s: replace those it closed, so
                # that ``count`` are open while the round trips are measured.
                idle = [sock for sock in idle if not closed(sock)]
                while len(idle) < count:
                    idle.append(socket.create_connection((host, int(port)), timeout=5))
                open_on_node = len(os.listdir(fds))
                peer_times, client_times = [], []
                for _ in range(SAMPLES):
                    headers = signed(url, heartbeat, SECRET, peer.node_id, NODE, leader.node_id)
                    started = time.perf_counter()
                    response = session.post(url, data=heartbeat, headers=headers, timeout=10)
                    peer_times.append(time.perf_counter() - started)
                    assert response.status_code == 200, response.text
                for _ in range(20):
                    started = time.perf_counter()
                    leader.status()
                    client_times.append(time.perf_counter() - started)
                status = leader.status()
                kept = status["state"] == "leader" and status["term"] == term
                p99 = percentile(peer_times, 0.99)
                rows.append(
                    {
                        "idle_connections": count,
                        "node_open_files": open_on_node,
                        "peer_rpc_p50_ms": round(statistics.median(peer_times) * 1000, 2),
                        "peer_rpc_p99_ms": round(p99 * 1000, 2),
                        "client_status_p50_ms": round(statistics.median(client_times) * 1000, 2),
                        "leader_and_term_kept": kept,
                        "within_heartbeat": p99 <= HEARTBEAT_INTERVAL and kept,
                    }
                )
                print(rows[-1], flush=True)
        finally:
            for sock in idle:
                sock.close()
            cluster.close()
    header = (
        f"{'idle':>6} {'node fds':>9} {'peer p50 ms':>12} {'peer p99 ms':>12} "
        f"{'client p50 ms':>14} {'ok':>4}"
    )
    print(header)
    for row in rows:
        print(
            f"{row['idle_connections']:>6} {row['node_open_files']:>9} "
            f"{row['peer_rpc_p50_ms']:>12} {row['peer_rpc_p99_ms']:>12} "
            f"{row['client_status_p50_ms']:>14} "
            f"{'yes' if row['within_heartbeat'] else 'no':>4}"
        )
    withstood = 0
    for row in rows:  # the largest step up to which every step passed
        if not row["within_heartbeat"]:
            break
        withstood = row["idle_connections"]
    print(f"idle connections withstood with peers answered within 50 ms: {withstood}")
    Path(options.json).write_text(json.dumps({"rows": rows, "withstood": withstood}, indent=2))


if __name__ == "__main__":
    main()
