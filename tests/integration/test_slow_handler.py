"""Slow handlers against three real raftnode processes: they cost only the commands
applied after them, never the leader.

Handlers run on each node's applier thread, beside the consensus loop: while one sleeps,
the loop goes on persisting, sending heartbeats and answering votes, so no election
starts, and a leader cut off from its followers steps down on time.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from .cluster import POSTGRES, Cluster, Node, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.postgres, pytest.mark.slow]

PROGRAM = ("tests/integration/slow_node.py",)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    # On PostgreSQL the log shares the database (rows, not files, are locked); on SQLite
    # it has a file of its own (LOG_DATABASE).
    log: dict[str, Any] = {} if POSTGRES else {"LOG_DATABASE": "raft_log"}
    cluster = Cluster(tmp_path, SLOW_HANDLER_WARNING=0.5, **log)
    try:
        cluster.start(program=PROGRAM)
        yield cluster
    finally:
        cluster.close()


def terms(cluster: Cluster) -> set[int]:
    return {node.status()["term"] for node in cluster.running()}


def counts(cluster: Cluster, tag: str) -> list[list[tuple[Any, ...]]]:
    query = f"SELECT value FROM kv_keyvalue WHERE key = 'slow:{tag}'"
    return [node.query(query) for node in cluster.running()]


def in_thread(node: Node, name: str, timeout: float, **arguments: Any) -> Callable[[], Any]:
    """Send a command from another thread; return what waits for its answer."""
    answers: list[dict[str, Any]] = []
    thread = threading.Thread(target=lambda: answers.append(node.do(name, timeout, **arguments)))
    thread.start()

    def answer() -> Any:
        thread.join(timeout + 10)
        return answers[0]

    answer.thread = thread  # type: ignore[attr-defined]
    return answer


def test_slow_handlers_change_no_leader_and_apply_once_everywhere(cluster: Cluster) -> None:
    leader = cluster.leader()
    term = leader.status()["term"]
    for seconds in (0.2, 1.0, 3.0, 30.0):
        tag = f"s{seconds}"
        started = time.monotonic()
        slow = in_thread(leader, "test.sleep", seconds + 30, seconds=seconds, tag=tag)
        time.sleep(min(seconds / 2, 0.5))
        after = in_thread(leader, "kv.set", 60, key="after", value=tag)  # queued behind it
        while slow.thread.is_alive():  # type: ignore[attr-defined]
            # The loop goes on while the handler sleeps: every node answers in the term.
            assert terms(cluster) == {term}, f"an election started during a {seconds} s handler"
            slow.thread.join(0.2)  # type: ignore[attr-defined]
        assert (slow()["ok"], slow()["value"]) == (True, tag), slow()
        assert time.monotonic() - started >= seconds
        assert after()["ok"], after()
        cluster.wait_applied()
        assert counts(cluster, tag) == [[("1",)]] * 3, f"{seconds} s: not applied once everywhere"
        assert cluster.leader() is leader
        assert terms(cluster) == {term}
    assert leader.status()["max_turn_ms"] < 3000, "a loop turn waited for a handler"
    log = leader.log_path.read_text()
    assert "the handler of 'test.sleep' took" in log and "SLOW_HANDLER_WARNING" in log
    metrics = requests.get(f"{leader.address}/raft/metrics", timeout=10).text
    assert 'django_raft_server_handler_duration_seconds_count{command="test.sleep"} 4.0' in metrics


def test_a_leader_steps_down_on_time_while_its_handler_runs(cluster: Cluster) -> None:
    leader = cluster.leader()
    followers = [node for node in cluster.running() if node is not leader]
    slow = in_thread(leader, "test.sleep", 20, seconds=10, tag="deposed")
    wait_for(
        lambda: leader.status()["applied"] < leader.status()["commit"],
        10,
        "the leader to start applying the slow command",
    )
    for node in followers:
        node.process.send_signal(signal.SIGSTOP)  # type: ignore[union-attr]
    status: dict[str, Any] = wait_for(
        lambda: (s := leader.status())["state"] != "leader" and s,
        5,
        "the leader cut off from its followers to step down",
    )
    assert status["applied"] < status["commit"], "the handler finished first: nothing shown"
    for node in followers:
        node.process.send_signal(signal.SIGCONT)  # type: ignore[union-attr]
    answer = slow()  # committed before the followers stopped: applied, and told so
    assert (answer["ok"], answer["value"]) == (True, "deposed"), answer
    cluster.leader()
    cluster.wait_applied()
    assert counts(cluster, "deposed") == [[("1",)]] * 3


@pytest.fixture
def slow_snapshots(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Cluster]:
    monkeypatch.setenv("SLOW_SNAPSHOT", "3")  # the nodes' state hooks take 3 s to save
    log: dict[str, Any] = {} if POSTGRES else {"LOG_DATABASE": "raft_log"}
    cluster = Cluster(tmp_path, **log)
    try:
        cluster.start(program=PROGRAM)
        yield cluster
    finally:
        cluster.close()


def test_a_snapshot_asked_for_is_saved_beside_the_loop(slow_snapshots: Cluster) -> None:
    """``raftsnapshot`` on the leader: the application's state hooks take 3 s, in the
    snapshot thread; the loop goes on (no election, short turns, commands answered) and
    the answer comes when the snapshot is stored."""
    cluster = slow_snapshots
    leader = cluster.leader()
    term = leader.status()["term"]
    for n in range(5):
        assert leader.do("kv.set", key=f"k{n}", value="v")["ok"]
    asked = in_thread_post(leader, "snapshot", {"timeout": 20})
    time.sleep(0.5)
    started = time.monotonic()
    assert leader.do("kv.set", key="during", value="v", timeout=5)["ok"]
    assert time.monotonic() - started < 2, "a command waited for the snapshot"
    while asked.thread.is_alive():  # type: ignore[attr-defined]
        assert terms(cluster) == {term}, "an election started while a snapshot was saved"
        asked.thread.join(0.2)  # type: ignore[attr-defined]
    answer = asked()
    assert answer["ok"], answer
    assert answer["value"]["taken"] and answer["value"]["seconds"] >= 3
    assert answer["value"]["index"] >= 6
    assert leader.status()["max_turn_ms"] < 1000


def in_thread_post(node: Node, route: str, body: dict[str, Any]) -> Callable[[], Any]:
    """Post to a route from another thread; return what waits for its answer."""
    answers: list[dict[str, Any]] = []
    thread = threading.Thread(target=lambda: answers.append(node.post(route, body, 30)))
    thread.start()

    def answer() -> Any:
        thread.join(40)
        return answers[0]

    answer.thread = thread  # type: ignore[attr-defined]
    return answer
