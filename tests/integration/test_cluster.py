"""Three real raftnode processes on 127.0.0.1, each with its own database.

Run on SQLite by default and on PostgreSQL (one database per node) when
``RAFT_TEST_POSTGRES`` names a server; ``.ci/run`` does both.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .cluster import Cluster, Node, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.postgres, pytest.mark.slow]


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    cluster = Cluster(tmp_path)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
def compacting_cluster(tmp_path: Path) -> Iterator[Cluster]:
    cluster = Cluster(tmp_path, SNAPSHOT_THRESHOLD=40, ENTRIES_AFTER_SNAPSHOT=5)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.close()


def ok(answer: dict[str, object]) -> object:
    assert answer["ok"], answer
    return answer["value"]


def assert_same_state(nodes: list[Node], cluster: Cluster) -> dict[str, str]:
    cluster.wait_applied(nodes)
    states = {n.node_id: n.kv() for n in nodes}
    first = next(iter(states.values()))
    assert all(state == first for state in states.values()), states
    return first


def test_leader_elected_and_commands_apply_identically_everywhere(cluster: Cluster) -> None:
    leader = cluster.leader()
    followers = [n for n in cluster.running() if n is not leader]
    assert ok(leader.do("kv.set", key="a", value="1")) == 1
    assert ok(followers[0].do("kv.set", key="b", value="2")) == 1  # forwarded to the leader
    assert ok(followers[1].do("kv.set", key="a", value="3")) == 2
    assert ok(followers[1].do("kv.incr", key="n", by=5)) == 5
    failed = followers[0].do("kv.incr", key="a", by="x")
    assert not failed["ok"] and failed["error_type"] == "CommandError"
    state = assert_same_state(cluster.running(), cluster)
    assert state == {"a": "3", "b": "2", "n": "5"}


def test_leader_killed_is_replaced_and_nothing_acknowledged_is_lost(cluster: Cluster) -> None:
    leader = cluster.leader()
    acknowledged = {}
    for i in range(30):
        node = cluster.running()[i % 3]
        ok(node.do("kv.set", key=f"k{i}", value=str(i)))
        acknowledged[f"k{i}"] = str(i)
    term_before = leader.status()["term"]
    leader.kill(signal.SIGKILL)
    survivors = cluster.running()
    new_leader = cluster.leader(timeout=10, among=survivors)
    assert new_leader is not leader
    assert new_leader.status()["term"] > term_before
    for i in range(30, 40):
        ok(survivors[i % 2].do("kv.set", key=f"k{i}", value=str(i)))
        acknowledged[f"k{i}"] = str(i)
    leader.start()
    state = assert_same_state(cluster.running(), cluster)
    assert state == acknowledged


def test_far_behind_node_catches_up_by_snapshot(compacting_cluster: Cluster) -> None:
    cluster = compacting_cluster
    leader = cluster.leader()
    lagging = next(n for n in cluster.running() if n is not leader)
    lagging.kill(signal.SIGKILL)
    for i in range(150):
        ok(leader.do("kv.set", key=f"k{i % 20}", value=str(i)))
    first_index = leader.query('SELECT MIN("index") FROM django_raft_logentry')[0][0]
    lagging_last = lagging.query('SELECT MAX("index") FROM django_raft_logentry')[0][0]
    assert first_index > lagging_last + 1, "the leader should have compacted what the node lacks"
    lagging.start()
    assert_same_state(cluster.running(), cluster)
    snapshot = lagging.query('SELECT "index" FROM django_raft_snapshot')
    assert snapshot and snapshot[0][0] > lagging_last


def test_node_joins_and_leaves_a_running_cluster(cluster: Cluster) -> None:
    leader = cluster.leader()
    ok(leader.do("kv.set", key="before", value="join"))
    newcomer = cluster.add_node("n4")
    newcomer.start("--join", leader.address)
    wait_for(lambda: newcomer.status()["voters"] == ["n1", "n2", "n3", "n4"], 20, "n4 to join")
    ok(newcomer.do("kv.set", key="after", value="join"))
    assert_same_state(cluster.running(), cluster)
    leaving = next(n for n in cluster.running() if n is not leader and n is not newcomer)
    ok(leader.post("members", {"node_id": leaving.node_id, "remove": True}))
    wait_for(lambda: not leaving.running(), 20, f"{leaving.node_id} to stop once removed")
    remaining = cluster.running()
    ok(remaining[0].do("kv.set", key="after", value="leave"))
    state = assert_same_state(remaining, cluster)
    assert state == {"before": "join", "after": "leave"}
    assert all(n.status()["voters"] == sorted(r.node_id for r in remaining) for n in remaining)


def test_kill_9_during_writes_loses_nothing_acknowledged(cluster: Cluster) -> None:
    leader = cluster.leader()
    acknowledged: dict[str, str] = {}
    stop = threading.Event()

    def write() -> None:
        i = 0
        while not stop.is_set():
            for node in cluster.running():
                try:
                    answer = node.do("kv.set", timeout=3.0, key=f"w{i}", value=str(i))
                except Exception:
                    continue
                if answer.get("ok"):
                    acknowledged[f"w{i}"] = str(i)
                    break
            i += 1

    writer = threading.Thread(target=write)
    writer.start()
    try:
        for round_number in range(6):
            time.sleep(0.4)
            victim = cluster.running()[round_number % len(cluster.running())]
            before = victim.hard_state()
            victim.kill(signal.SIGKILL)
            after = victim.hard_state()
            assert after[0] >= before[0], "the term went backwards on disk"
            time.sleep(0.3)
            victim.start()
            cluster.leader(timeout=15)
    finally:
        stop.set()
        writer.join(timeout=30)
    assert len(acknowledged) > 20, "the writer should have made progress"
    state = assert_same_state(cluster.running(), cluster)
    missing = {k: v for k, v in acknowledged.items() if state.get(k) != v}
    assert not missing, f"acknowledged writes lost: {sorted(missing)[:10]}"
    assert leader.status()["term"] >= 1


FLOOD = 10_000


def test_a_flood_of_outstanding_proposals_keeps_the_leader_and_converges(tmp_path: Path) -> None:
    """All proposals outstanding at once: bounded loop turns keep ticks and heartbeats
    going, so leadership never changes; every node converges; nothing acknowledged is
    missing anywhere."""
    cluster = Cluster(tmp_path)
    try:
        cluster.start(program=("tests/integration/flood_node.py", str(tmp_path), str(FLOOD)))
        leader = cluster.leader()
        result = tmp_path / f"flood-{leader.node_id}.json"
        wait_for(result.exists, 240, "the flood to be answered", interval=0.5)
        summary = json.loads(result.read_text())
        assert summary["outcomes"] == {"acked": FLOOD}, summary["outcomes"]
        assert len(summary["terms"]) == 1, f"leadership changed: terms {summary['terms']}"
        assert cluster.leader() is leader
        index = cluster.wait_applied(timeout=120)
        assert {n.status()["term"] for n in cluster.running()} == set(summary["terms"])
        for node in cluster.running():
            rows = node.query("SELECT COUNT(*) FROM kv_keyvalue WHERE key LIKE 'k%'")
            assert rows == [(FLOOD,)], (node.node_id, rows, index)
    finally:
        cluster.close()
