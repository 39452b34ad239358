"""The nemesis of a fault run: seeded faults on real processes and the proxies' links.

Each fault is applied, held for a while, then undone before the next begins:

- ``kill`` / ``kill-leader``: kill -9 of a node (the leader), restarted after 1-3 s;
- ``pause`` / ``pause-leader``: SIGSTOP for 1-4 s, then SIGCONT;
- ``partition``: a minority (one node, the leader half the time) cut from the
  majority, both directions;
- ``bridge``: two nodes cut from each other, both still reaching the third;
- ``one-way``: the leader's links to the others cut (it hears them, they do not hear it);
- ``latency``: 20-60 ms more on every link, each direction;
- ``member``: a member replaced: removed through the log (the leader a third of the
  time) and left running for 1-3 s, during which the others' term must not move (a
  removed node never disrupts); then stopped, and a new node (an id never used: a
  removed id never rejoins) added as a learner and promoted to voter once it caught
  up. One change at a time, as the core requires. The change carries the address every
  node reaches the new member at (its proxy's, when there are proxies).

The schedule depends only on the seed and on what the cluster does (who leads).
"""

from __future__ import annotations

import random
import time
from typing import Any

import requests

from tests.faults.cluster import FaultCluster, Node, post, status_of

PROCESS_FAULTS = ("kill", "kill-leader", "pause", "pause-leader", "member")
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
    if kind == "member":
        victim = leader if rng.random() < 1 / 3 else rng.choice(others)
        disrupted, new = replace_member(cluster, victim, held)
        victims = [victim.node_id, new]
        return {
            "fault": kind,
            "nodes": victims,
            "leader": leader.node_id,
            "at": began,
            "held_s": round(held, 3),
            "healed_at": time.monotonic(),
            "disrupted": disrupted,
        }
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


CHANGE_TIMEOUT = 30.0
"""Seconds a membership change (or a new member's catching up) may take."""


def change(cluster: FaultCluster, among: list[Node], body: dict[str, Any]) -> None:
    """Propose a membership change through any of ``among`` (a follower forwards it to
    the leader), again until it is applied: a change refused while another is pending,
    or lost with a leader, is retried."""
    deadline = time.monotonic() + CHANGE_TIMEOUT
    last: Any = None
    while time.monotonic() < deadline:
        for node in among:
            try:
                last = post(node.address, "members", {**body, "timeout": 5.0}, 10.0)
            except (requests.RequestException, ValueError) as error:
                last = error
                continue
            if last.get("ok"):
                return
        time.sleep(0.2)
    raise RuntimeError(f"membership change {body} not made in {CHANGE_TIMEOUT} s: {last}")


def leader_among(nodes: list[Node]) -> dict[str, Any]:
    """The status of the leader that every one of ``nodes`` follows."""
    deadline = time.monotonic() + CHANGE_TIMEOUT
    while time.monotonic() < deadline:
        statuses = [status_of(n.address) for n in nodes]
        leaders = [s for s in statuses if s and s.get("state") == "leader"]
        if len(leaders) == 1 and all(s and s["leader"] == leaders[0]["id"] for s in statuses):
            return leaders[0]
        time.sleep(0.05)
    raise RuntimeError(f"no leader among {[n.node_id for n in nodes]} in {CHANGE_TIMEOUT} s")


def replace_member(cluster: FaultCluster, victim: Node, held: float) -> tuple[int, str]:
    """Remove ``victim``, keep it running ``held`` seconds, then replace it by a new
    node: a learner, then a voter. Return how far the others' term moved while the
    removed node ran."""
    rest = [n for n in cluster.nodes if n is not victim]
    change(cluster, rest, {"node_id": victim.node_id, "remove": True})
    before = leader_among(rest)["term"]
    time.sleep(held)
    after = max(int((status_of(n.address) or {"term": 0})["term"]) for n in rest)
    new = cluster.replace(victim)
    body = {"node_id": new.node_id, "address": new.reached_at}
    change(cluster, rest, {**body, "role": "learner"})
    target = int(leader_among(rest)["commit"])
    deadline = time.monotonic() + CHANGE_TIMEOUT
    while int((status_of(new.address) or {"applied": 0})["applied"]) < target:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{new.node_id} did not catch up in {CHANGE_TIMEOUT} s")
        time.sleep(0.1)
    change(cluster, rest, {**body, "role": "voter"})
    return after - int(before), new.node_id
