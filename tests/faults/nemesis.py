"""The nemesis of a fault run: seeded faults on real processes and per-link proxies.

Each fault is applied, held for a while, then undone before the next begins:

- ``kill`` / ``kill-leader``: kill -9 of a node (the leader), restarted after 1-3 s;
- ``pause`` / ``pause-leader``: SIGSTOP for 1-4 s, then SIGCONT;
- ``partition``: a minority (one node, the leader half the time) cut from the
  majority, both directions;
- ``bridge``: two nodes cut from each other, both still reaching the third;
- ``one-way``: the leader's links to the others cut (it hears them, they do not hear it);
- ``latency``: 20-60 ms more on every link, each direction.

The schedule depends only on the seed and on what the cluster does (who leads).
"""

from __future__ import annotations

import random
import time
from typing import Any

from tests.faults.cluster import FaultCluster, Node

PROCESS_FAULTS = ("kill", "kill-leader", "pause", "pause-leader")
NETWORK_FAULTS = ("partition", "bridge", "one-way", "latency")
FAULTS = PROCESS_FAULTS + NETWORK_FAULTS


def current_leader(cluster: FaultCluster) -> Node:
    try:
        return cluster.leader(timeout=10.0)
    except RuntimeError:
        return cluster.nodes[0]


def inject(cluster: FaultCluster, rng: random.Random, kind: str) -> dict[str, Any]:
    """One fault, undone before it returns: what was done to which nodes, when."""
    leader = current_leader(cluster)
    others = [n for n in cluster.nodes if n is not leader]
    network = cluster.network
    began = time.monotonic()
    held = rng.uniform(1.0, 3.0)
    victims: list[str] = []
    if kind in ("kill", "kill-leader"):
        node = leader if kind == "kill-leader" else rng.choice(cluster.nodes)
        victims = [node.node_id]
        node.kill()
        time.sleep(held)
        node.start()
    elif kind in ("pause", "pause-leader"):
        node = leader if kind == "pause-leader" else rng.choice(cluster.nodes)
        victims = [node.node_id]
        held = rng.uniform(1.0, 4.0)
        node.pause()
        time.sleep(held)
        node.resume()
    else:
        assert network is not None, f"{kind} needs the proxies"
        if kind == "partition":
            alone = leader if rng.random() < 0.5 else rng.choice(others)
            rest = [n.node_id for n in cluster.nodes if n is not alone]
            victims = [alone.node_id]
            network.isolate([[alone.node_id], rest])
        elif kind == "bridge":
            a, b = rng.sample(cluster.nodes, 2)
            victims = [a.node_id, b.node_id]
            network.cut([(a.node_id, b.node_id), (b.node_id, a.node_id)])
        elif kind == "one-way":
            victims = [leader.node_id]
            network.cut([(leader.node_id, n.node_id) for n in others])
        elif kind == "latency":
            delay = rng.uniform(0.02, 0.06)
            victims = [f"{delay * 1000:.0f}ms"]
            network.slow(delay)
        else:
            raise ValueError(f"unknown fault {kind!r}")
        time.sleep(held)
        network.heal()
    return {
        "fault": kind,
        "nodes": victims,
        "leader": leader.node_id,
        "at": began,
        "held_s": round(held, 3),
        "healed_at": time.monotonic(),
    }
