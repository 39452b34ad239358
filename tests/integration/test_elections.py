"""Named elections between separate campaigner processes, against three real raftnode
processes: never two leaders with valid tokens, under leader kills and a campaigner
paused (SIGSTOP) past its TTL; resign hands over; the documented recipes run.

Each campaigner, while it believes it leads, writes a fenced key with its token; the
writes the cluster accepted, in log order (the key's version), must carry tokens that
never go back: a former leader's write after a newer one was elected would.
"""

from __future__ import annotations

import json
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.recipes import recipe

from .cluster import ROOT, Cluster, Node

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TTL = 2.0

CAMPAIGNER = """
import json, os, sys, threading, time
import django
django.setup()
import django_raft
from django_raft.exceptions import RaftError, StaleTokenError

election = django_raft.Election("primary", ttl=float(sys.argv[1]))
accepted = []
refused = []
token = 0


def say(**what):
    print(json.dumps(what), flush=True)


def write():
    while True:
        if election.is_leader():
            mine = election.token
            try:
                version = django_raft.do(
                    "kv.fenced_set", key="e", value=str(mine), lock=election.key, token=mine
                )
                accepted.append([version, mine])
            except StaleTokenError:
                refused.append(mine)
            except RaftError:
                pass
        time.sleep(0.05)


threading.Thread(target=write, daemon=True).start()
for line in sys.stdin:
    command = line.strip()
    if command == "campaign":
        token = election.campaign(os.getpid())
        say(token=token)
    elif command == "status":
        lost = election.lost
        say(leader=election.is_leader(), lost=bool(lost and lost.is_set()))
    elif command == "stale":
        try:
            django_raft.do("kv.fenced_set", key="e", value="stale", lock=election.key, token=token)
            say(stale="written")
        except StaleTokenError:
            say(stale="refused")
    elif command == "proclaim":
        election.proclaim(f"{os.getpid()}-2")
        say(proclaimed=True)
    elif command == "resign":
        say(resigned=election.resign())
    elif command == "report":
        say(accepted=accepted, refused=refused)
"""


class Campaigner:
    """A campaigner process: commands on its stdin, JSON answers from its stdout."""

    def __init__(self, node: Node) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", CAMPAIGNER, str(TTL)],
            cwd=ROOT,
            env={**node.env(), "RAFT_COMMAND_TIMEOUT": "20"},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.answers: queue.Queue[dict[str, Any]] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.answers.put(json.loads(line))

    def send(self, command: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()

    def ask(self, command: str, timeout: float = 30.0) -> dict[str, Any]:
        self.send(command)
        return self.answers.get(timeout=timeout)

    def pause(self) -> None:
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.process.send_signal(signal.SIGCONT)

    def close(self) -> None:
        if self.process.poll() is None:
            self.resume()
            self.process.kill()
        self.process.wait(timeout=10)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    cluster = Cluster(tmp_path)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.close()


def lock_tokens(cluster: Cluster) -> list[int]:
    tokens = []
    for node in cluster.running():
        rows = node.query("SELECT token FROM django_raft_lock WHERE name = 'election/primary'")
        tokens.append(rows[0][0] if rows else 0)
    return tokens


def test_two_campaigners_are_never_both_elected_with_valid_tokens(cluster: Cluster) -> None:
    one, two = Campaigner(cluster.founders[1]), Campaigner(cluster.founders[2])
    try:
        first = one.ask("campaign")["token"]
        two.send("campaign")  # blocks while one leads
        # The Raft leader is killed while one leads: one keeps its leadership.
        time.sleep(1.0)
        leader = cluster.leader()
        leader.kill()
        cluster.leader(timeout=20)
        time.sleep(TTL + 0.5)
        leader.start()
        assert two.answers.empty(), "elected while the other renewed its leadership"
        assert one.ask("status") == {"leader": True, "lost": False}
        # One pauses past its TTL: two is elected meanwhile, with a greater token.
        one.pause()
        paused = time.monotonic()
        second = two.answers.get(timeout=TTL + 10)["token"]
        took = time.monotonic() - paused
        assert second > first
        time.sleep(max(0.0, TTL + 0.5 - (time.monotonic() - paused)))
        one.resume()
        # The paused one finds out it lost, and its token is refused.
        assert one.ask("status")["leader"] is False
        assert one.ask("stale") == {"stale": "refused"}
        deadline = time.monotonic() + 10
        while not one.ask("status")["lost"]:
            assert time.monotonic() < deadline, "the keeper never reported the loss"
            time.sleep(0.1)
        # The Raft leader is killed while two leads: two keeps it.
        leader = cluster.leader()
        leader.kill()
        cluster.leader(timeout=20)
        time.sleep(TTL + 0.5)
        leader.start()
        assert two.ask("status") == {"leader": True, "lost": False}
        # One campaigns again; two resigns: one is elected with a greater token still.
        one.send("campaign")
        time.sleep(1.0)
        assert one.answers.empty()
        assert two.ask("resign") == {"resigned": True}
        third = one.answers.get(timeout=20)["token"]
        assert third > second
        time.sleep(0.5)
        reports = [one.ask("report"), two.ask("report")]
    finally:
        one.close()
        two.close()
    accepted = sorted(write for report in reports for write in report["accepted"])
    tokens = [token for _, token in accepted]
    versions = [version for version, _ in accepted]
    print(
        f"\ntokens {first} -> {second} (elected {took:.2f} s after the leader paused, TTL "
        f"{TTL} s) -> {third}; {len(accepted)} fenced writes accepted, refused "
        f"{[report['refused'] for report in reports]}"
    )
    assert len(set(versions)) == len(versions)
    assert tokens == sorted(tokens), "a former leader's write was accepted after a newer's"
    assert set(tokens) <= {first, second, third} and {first, second, third} <= set(tokens)
    assert took >= TTL * 2 / 3 - 0.1  # never before the paused leader's lease could pass
    cluster.wait_applied()
    assert set(lock_tokens(cluster)) == {third}


def test_the_recipes_run(cluster: Cluster) -> None:
    for name in ("election", "elected"):
        code = "import django\ndjango.setup()\n" + recipe(name)
        run = subprocess.run(
            [sys.executable, "-c", code],
            cwd=ROOT,
            env=cluster.founders[0].env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert run.returncode == 0, (name, run.stderr)
    cluster.wait_applied()
    assert {node.kv().get("report") for node in cluster.founders} == {"done"}
    assert {node.kv().get("cleaned") for node in cluster.founders} == {"yes"}


OBSERVER = """
import json
import django
django.setup()
import django_raft

for value in django_raft.Election("primary").observe(timeout=30):
    print(json.dumps(value), flush=True)
"""


def test_observe_follows_the_leader_s_values(cluster: Cluster) -> None:
    one, two = Campaigner(cluster.founders[0]), Campaigner(cluster.founders[1])
    observer = subprocess.Popen(
        [sys.executable, "-c", OBSERVER],
        cwd=ROOT,
        env=cluster.founders[2].env(),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert observer.stdout is not None
        one.ask("campaign")
        first = json.loads(observer.stdout.readline())
        assert first == one.process.pid
        one.ask("proclaim")
        assert json.loads(observer.stdout.readline()) == f"{one.process.pid}-2"
        two.send("campaign")
        assert one.ask("resign") == {"resigned": True}
        two.answers.get(timeout=20)
        assert json.loads(observer.stdout.readline()) == two.process.pid
    finally:
        observer.kill()
        observer.wait(timeout=10)
        one.close()
        two.close()
