"""Sessions, ``do()`` failover and locks against three real raftnode processes.

The fault test prints its figures (acknowledged vs applied increments) with ``-s``.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.test import override_settings

from django_raft.client import Client
from django_raft.client.locks import Lock
from django_raft.exceptions import RaftError, StaleTokenError
from django_raft.node import sessions

from .cluster import SECRET, Cluster, Node

pytestmark = [pytest.mark.integration, pytest.mark.postgres, pytest.mark.slow]


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    cluster = Cluster(tmp_path, SNAPSHOT_THRESHOLD=200, ENTRIES_AFTER_SNAPSHOT=20)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.close()


def client_settings(cluster: Cluster, address: str = "", **extra: Any) -> override_settings:
    """This process as a web process of one server: ``ADDRESS`` and ``CLUSTER`` known."""
    members = {node.node_id: node.address for node in cluster.founders}
    return override_settings(
        DJANGO_RAFT={
            "SECRET": SECRET,
            "ADDRESS": address or cluster.founders[0].address,
            "CLUSTER": members,
            **extra,
        }
    )


def counter(node: Node, key: str = "c") -> int:
    rows = node.query(f"SELECT value FROM kv_keyvalue WHERE key = '{key}'")
    return int(rows[0][0]) if rows else 0


def test_a_captured_command_replayed_runs_once(cluster: Cluster) -> None:
    leader = cluster.leader()
    opened = leader.do(sessions.OPEN_SESSION, timeout_ms=60_000)
    assert opened["ok"], opened
    body = {
        "name": "kv.incr",
        "arguments": {"key": "c"},
        "client_id": opened["value"],
        "sequence": 1,
        "timeout": 10,
    }
    answers = [leader.post("command", body) for _ in range(6)]
    answers += [node.post("command", body) for node in cluster.founders]  # through followers
    assert {json.dumps(answer["value"]) for answer in answers} == {"1"}
    cluster.wait_applied()
    assert [counter(node) for node in cluster.founders] == [1, 1, 1]


def test_do_goes_on_when_the_node_at_address_is_down(cluster: Cluster) -> None:
    first = cluster.founders[0]
    with client_settings(cluster, address=first.address, COMMAND_TIMEOUT=20):
        client = Client()
        assert client.do("kv.incr", key="c") == 1
        assert client.do("kv.set", key="name", value="timeout") == 1  # an argument "key"
        # CLUSTER names the founders; a client also learns the members from the nodes.
        with override_settings(DJANGO_RAFT={"SECRET": SECRET, "ADDRESS": first.address}):
            learner = Client()
            assert learner.addresses() == [first.address]
            learner.do("kv.incr", key="c")
            assert set(learner.addresses()) == {node.address for node in cluster.founders}
            first.kill()
            assert learner.do("kv.incr", key="c") == 3  # ADDRESS is down: another member
        assert client.do("kv.incr", key="c") == 4


def test_kill_9_and_sigstop_of_the_leader_lose_and_double_nothing(cluster: Cluster) -> None:
    """Clients increment with retries while the leader is killed and paused: the counter
    ends equal to the number of acknowledged increments."""
    stop = threading.Event()
    acknowledged = [0] * 4
    unknown: list[str] = []

    def run_client(number: int) -> None:
        client = Client(timeout=25)
        while not stop.is_set():
            try:
                client.do("kv.incr", key="c")
            except RaftError as error:
                unknown.append(f"{type(error).__name__}: {error}")
                return
            acknowledged[number] += 1

    faults = []
    with client_settings(cluster):
        threads = [threading.Thread(target=run_client, args=(n,)) for n in range(4)]
        for thread in threads:
            thread.start()
        try:
            for fault in ("kill", "stop", "kill", "stop"):
                time.sleep(1.5)
                leader = cluster.leader(timeout=20)
                faults.append(f"{fault} {leader.node_id}")
                if fault == "kill":
                    leader.kill()
                    time.sleep(1.0)
                    leader.start()
                else:
                    assert leader.process is not None
                    leader.process.send_signal(signal.SIGSTOP)
                    time.sleep(2.0)
                    leader.process.send_signal(signal.SIGCONT)
            time.sleep(1.5)
        finally:
            stop.set()
            for thread in threads:
                thread.join(40)
    cluster.wait_applied()
    applied = [counter(node) for node in cluster.founders]
    print(
        f"\nfaults: {', '.join(faults)}; acknowledged {sum(acknowledged)} increments "
        f"({acknowledged}), applied {applied}, unknown outcomes {len(unknown)}"
    )
    assert not unknown, unknown
    assert sum(acknowledged) > 20
    assert applied == [sum(acknowledged)] * 3


def test_two_holders_never_hold_one_lock_and_a_paused_holder_is_fenced(cluster: Cluster) -> None:
    with client_settings(cluster, COMMAND_TIMEOUT=20):
        one, two = Client(), Client()
        first = Lock("job", ttl=1.0, client=one)
        token = first.acquire()
        assert Lock("job", ttl=1.0, client=two).acquire(blocking=False) == 0
        # The leader dies while the lock is held: the lock and its token survive.
        leader = cluster.leader()
        leader.kill()
        # The holder pauses past its TTL; the other client takes the lock.
        second = Lock("job", ttl=5.0, client=two)
        newer = second.acquire(timeout=15)
        assert newer > token
        with pytest.raises(StaleTokenError):
            one.do("kv.fenced_set", key="f", value="late", lock="job", token=token)
        assert two.do("kv.fenced_set", key="f", value="ok", lock="job", token=newer) == 1
        assert not first.release()  # no longer the holder's
        assert second.release()
        leader.start()
    cluster.wait_applied()
    assert {node.node_id: node.kv().get("f") for node in cluster.founders} == {
        node.node_id: "ok" for node in cluster.founders
    }


HOLDER = """
import sys, time
import django
django.setup()
import django_raft
from django_raft.exceptions import StaleTokenError

lock = django_raft.Lock("paused", ttl=1.0)
token = lock.acquire()
print(token, flush=True)
sys.stdin.readline()  # the test pauses this process past the TTL, then says go on
try:
    django_raft.do("kv.fenced_set", key="p", value="late", lock="paused", token=token)
    print("written", flush=True)
except StaleTokenError:
    print("refused", flush=True)
"""


def test_a_holder_process_paused_past_its_ttl_is_fenced(cluster: Cluster) -> None:
    import subprocess
    import sys

    from .cluster import ROOT

    env = {**cluster.founders[1].env(), "RAFT_COMMAND_TIMEOUT": "20"}
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER],
        cwd=ROOT,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdin is not None
        token = int(holder.stdout.readline())
        holder.send_signal(signal.SIGSTOP)
        with client_settings(cluster, COMMAND_TIMEOUT=20):
            other = Lock("paused", ttl=30.0, client=Client())
            assert other.acquire(blocking=False) == 0  # held, within its TTL
            newer = other.acquire(timeout=15)  # once the TTL has passed in log time
            assert newer > token
            assert Client().do("kv.fenced_set", key="p", value="new", lock="paused", token=newer)
        holder.send_signal(signal.SIGCONT)
        holder.stdin.write("go\n")
        holder.stdin.flush()
        assert holder.stdout.readline().strip() == "refused"
        assert holder.wait(timeout=30) == 0
    finally:
        if holder.poll() is None:
            holder.send_signal(signal.SIGCONT)
            holder.kill()
            holder.wait(timeout=10)
    cluster.wait_applied()
    assert {node.kv().get("p") for node in cluster.founders} == {"new"}
