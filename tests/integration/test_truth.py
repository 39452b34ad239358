"""What the client tells its caller, against three real raftnode processes.

Each test runs "web processes" of one server (``WebProcess``: the demo settings, that
server's database and ``ADDRESS``), provokes a fault, and checks what the caller was
told against what the nodes' databases say was applied: a read never yields stale
data; an error that says "not applied" never hides an applied command; a lock granted
past its TTL is not entered; commands sent while the leader is paused complete soon
after the next election, not when the old leader resumes.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from django_raft import exceptions

from .cluster import ROOT, Cluster, Node, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.postgres, pytest.mark.slow]

WEB = r"""
import json, sys, threading, time
import django
django.setup()
import django_raft
from django_raft.exceptions import RaftError
from django_raft.client.locks import Lock
from demo_project.kv.models import KeyValue

def run(request):
    op = request["op"]
    if op == "do":
        client = django_raft.Client(timeout=request["timeout"], session=request["session"])
        return client.do(request["name"], **request["arguments"])
    if op == "read":
        with django_raft.read(timeout=request["timeout"]):
            found = KeyValue.objects.filter(key=request["key"])
            return found.values_list("value", flat=True).first()
    if op == "read_command":
        return django_raft.Client(timeout=request["timeout"]).read("kv.read", key=request["key"])
    if op == "lock":
        lock = Lock(request["name"], ttl=request["ttl"], client=django_raft.Client(timeout=10))
        return lock.acquire(timeout=request["timeout"])
    if op == "load":
        calls, stop = [], time.monotonic() + request["seconds"]
        def loop(number):
            client = django_raft.Client(timeout=request["timeout"])
            sequence = 0
            while time.monotonic() < stop:
                sequence += 1
                started = time.time()
                try:
                    key = f"load-{request['name']}-{number}-{sequence}"
                    client.do("kv.set", key=key, value="1")
                    error = ""
                except RaftError as failed:
                    error = type(failed).__name__
                calls.append((started, time.time(), error))
        threads = [threading.Thread(target=loop, args=(n,)) for n in range(request["threads"])]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return calls
    raise ValueError(op)

for line in sys.stdin:
    request = json.loads(line)
    try:
        answer = {"ok": True, "value": run(request)}
    except RaftError as error:
        answer = {"ok": False, "error": type(error).__name__, "message": str(error)}
    print(json.dumps(answer), flush=True)
"""


class WebProcess:
    """A process of one server that is not its node (a web process, a worker): the
    node's database and settings, ``ADDRESS`` its node. Asked one request at a time."""

    def __init__(self, node: Node, **settings: str) -> None:
        env = {**node.env(), **{f"RAFT_{k}": v for k, v in settings.items()}}
        self.process = subprocess.Popen(
            [sys.executable, "-c", WEB],
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def ask(self, **request: Any) -> dict[str, Any]:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        assert line, "the web process died"
        answer: dict[str, Any] = json.loads(line)
        return answer

    def do(self, key: str, value: str, *, session: bool = True, timeout: float = 5.0) -> Any:
        arguments = {"key": key, "value": value}
        return self.ask(
            op="do", name="kv.set", arguments=arguments, session=session, timeout=timeout
        )

    def read(self, key: str, timeout: float = 2.0) -> dict[str, Any]:
        return self.ask(op="read", key=key, timeout=timeout)

    def close(self) -> None:
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


@pytest.fixture
def webs() -> Iterator[list[WebProcess]]:
    started: list[WebProcess] = []
    try:
        yield started
    finally:
        for web in started:
            web.close()


def pause(node: Node) -> None:
    assert node.process is not None
    node.process.send_signal(signal.SIGSTOP)


def resume(node: Node) -> None:
    assert node.process is not None
    node.process.send_signal(signal.SIGCONT)


def followers(cluster: Cluster) -> list[Node]:
    leader = cluster.leader()
    return [node for node in cluster.founders if node is not leader]


def applied_everywhere(cluster: Cluster, key: str) -> bool:
    """Whether ``key`` was set, once every node is back and has applied the same index."""
    for node in cluster.founders:
        if not node.running():
            node.start()
    cluster.wait_applied(timeout=60)
    found = {node.node_id: key in node.kv() for node in cluster.founders}
    assert len(set(found.values())) == 1, found
    return next(iter(found.values()))


def error_class(answer: dict[str, Any]) -> type[Exception]:
    kind: type[Exception] = getattr(exceptions, answer["error"])
    return kind


def assert_truthful(cluster: Cluster, answer: dict[str, Any], key: str) -> bool:
    """The answer's classification agrees with the nodes: an error that says "not
    applied" never hides an applied command. Return whether it was applied."""
    applied = applied_everywhere(cluster, key)
    if answer["ok"]:
        assert applied, answer
    elif not exceptions.may_have_applied(error_class(answer)("")):
        assert not applied, f"{answer['error']} says not applied, but {key!r} was: {answer}"
    return applied


# -- reads ----------------------------------------------------------------------------------


def test_a_read_sees_every_command_acknowledged_before_it(
    cluster: Cluster, webs: list[WebProcess]
) -> None:
    """On a follower's server: a write, then ``read()`` and a read-only command see it."""
    web = WebProcess(followers(cluster)[0])
    webs.append(web)
    for value in range(5):
        assert web.do("r", str(value))["ok"]
        assert web.read("r") == {"ok": True, "value": str(value)}
        assert web.ask(op="read_command", key="r", timeout=5)["value"] == str(value)


def test_a_read_on_a_server_whose_node_is_killed_paused_or_restarting_is_never_stale(
    cluster: Cluster, webs: list[WebProcess]
) -> None:
    node = followers(cluster)[0]
    web = WebProcess(node, COMMAND_TIMEOUT="10")
    webs.append(web)
    assert web.do("x", "0")["ok"]
    assert web.read("x") == {"ok": True, "value": "0"}

    node.kill()  # kill -9: the write goes through another member, the local read cannot
    assert web.do("x", "1")["ok"]
    answer = web.read("x", timeout=1.5)
    assert answer.get("error") == "StaleReadError", answer

    node.start()  # reads from the moment it answers: fresh data or a typed error
    seen = []
    until = time.monotonic() + 1.0
    while time.monotonic() < until:
        answer = web.read("x", timeout=0.3)
        assert answer.get("value") == "1" or answer.get("error") == "StaleReadError", answer
        seen.append(answer.get("value"))
    assert web.read("x", timeout=10) == {"ok": True, "value": "1"}

    pause(node)
    try:
        assert web.do("x", "2")["ok"]
        answer = web.read("x", timeout=1.5)  # no index from the paused node in time, or
        assert answer["error"] in ("StaleReadError", "ClusterUnreachableError"), answer
    finally:
        resume(node)
    assert web.read("x", timeout=10) == {"ok": True, "value": "2"}


# -- errors, each checked against the nodes ------------------------------------------------


@pytest.mark.parametrize("session", [False, True], ids=["no-session", "session"])
def test_a_command_reaching_a_leader_whose_followers_died_may_have_applied(
    cluster: Cluster, webs: list[WebProcess], session: bool
) -> None:
    """The leader appends it and cannot commit it: whatever happens next (it steps down,
    the deadline passes), the caller is told it may have been applied, and it was."""
    leader = cluster.leader()
    web = WebProcess(leader)
    webs.append(web)
    assert web.do("warm", "1")["ok"]
    for node in followers(cluster):
        node.kill()
    answer = web.do("b", "1", session=session, timeout=3)
    assert not answer["ok"] and answer["error"] == "CommandTimeoutError", answer
    assert_truthful(cluster, answer, "b")  # committed or not, as the next leader decides


def test_a_leader_paused_past_the_deadline_may_have_applied(
    cluster: Cluster, webs: list[WebProcess]
) -> None:
    leader = cluster.leader()
    web = WebProcess(leader)
    webs.append(web)
    assert web.do("warm", "1")["ok"]
    pause(leader)
    try:
        answer = web.do("p", "1", session=False, timeout=2)
    finally:
        resume(leader)
    assert not answer["ok"] and answer["error"] == "CommandTimeoutError", answer
    assert_truthful(cluster, answer, "p")


def test_errors_that_say_not_applied_are_true(cluster: Cluster, webs: list[WebProcess]) -> None:
    """No majority, no node at all, a bad call, a failing handler: each error is in
    ``NOT_APPLIED`` and the nodes agree."""
    leader = cluster.leader()
    survivor = followers(cluster)[0]
    web = WebProcess(survivor)
    webs.append(web)
    assert web.do("n", "0")["ok"]

    unknown = web.ask(op="do", name="kv.nope", arguments={}, session=True, timeout=2)
    assert unknown["error"] == "InvalidRequestError", unknown
    counted = web.ask(op="do", name="kv.incr", arguments={"key": "n"}, session=True, timeout=2)
    assert counted["ok"] and counted["value"] == 1, counted  # "0" + 1
    assert web.do("s", "text")["ok"]
    raised = web.ask(op="do", name="kv.incr", arguments={"key": "s"}, session=True, timeout=2)
    assert raised["error"] == "CommandFailedError", raised

    for node in cluster.founders:
        if node is not survivor:
            node.kill()
    # Once the survivor knows it has no leader, it refuses before proposing anything. (A
    # command it forwarded before it knew may have reached the leader's socket as it died:
    # "may have applied", truthfully, so that case proves nothing here.)
    wait_for(lambda: survivor.status()["leader"] == "", 10, "the survivor to lose its leader")
    no_majority = web.do("q", "1", timeout=2)
    assert no_majority["error"] in ("NotLeaderError", "ClusterUnreachableError"), no_majority
    survivor.kill()
    nobody = web.do("u", "1", timeout=2)
    assert nobody["error"] == "ClusterUnreachableError", nobody

    for answer, key in ((no_majority, "q"), (nobody, "u")):
        assert not exceptions.may_have_applied(error_class(answer)(""))
        assert not assert_truthful(cluster, answer, key)
    assert {node.kv()["s"] for node in cluster.founders} == {"text"}
    assert leader.kv()["n"] == "1"


# -- locks ----------------------------------------------------------------------------------


def test_a_lock_granted_after_its_ttl_is_not_entered(
    cluster: Cluster, webs: list[WebProcess]
) -> None:
    """The leader is paused as the request reaches it: the grant comes from the next
    leader, later than the TTL counted from the request, so ``acquire`` raises."""
    leader = cluster.leader()
    web = WebProcess(leader)
    webs.append(web)
    assert web.ask(op="lock", name="fast", ttl=5.0, timeout=5)["ok"]
    pause(leader)
    try:
        answer = web.ask(op="lock", name="slow", ttl=0.5, timeout=5)
    finally:
        resume(leader)
    assert answer["error"] == "LockNotHeldError" and "past its TTL" in answer["message"], answer


# -- following a new leader -----------------------------------------------------------------


def test_commands_sent_while_the_leader_is_paused_complete_soon_after_the_election(
    cluster: Cluster, webs: list[WebProcess]
) -> None:
    """Web processes of every server keep writing; the leader is paused for 6 s. Before,
    commands sent to it (or forwarded to it) waited for the resume or the deadline."""
    leader = cluster.leader()
    others = followers(cluster)
    loads = [WebProcess(node) for node in cluster.founders]
    webs.extend(loads)
    for number, web in enumerate(loads):
        assert web.process.stdin is not None
        request = {"op": "load", "name": str(number), "seconds": 9.0, "threads": 2, "timeout": 10}
        web.process.stdin.write(json.dumps(request) + "\n")
        web.process.stdin.flush()
    time.sleep(1.5)
    stopped = time.time()
    pause(leader)
    try:
        new = wait_for(
            lambda: next((n for n in others if n.status()["state"] == "leader"), None),
            5,
            "a new leader",
            interval=0.01,
        )
        elected = time.time()
        assert new is not leader
        time.sleep(max(0.0, stopped + 6.0 - time.time()))
    finally:
        resume(leader)
    resumed = time.time()
    calls = []
    for web in loads:
        assert web.process.stdout is not None
        answer = json.loads(web.process.stdout.readline())
        assert answer["ok"], answer
        calls += answer["value"]
    assert not [call for call in calls if call[2]], "every command succeeded"
    during = [(start, end) for start, end, _ in calls if stopped <= start < resumed - 1.0]
    assert during, "commands were sent during the pause"
    late = max(end - max(start, elected) for start, end in during)
    print(
        f"election {elected - stopped:.3f} s after the stop; slowest command sent during "
        f"the pause ended {late:.3f} s after the election"
    )
    assert late < 2.5, f"a command sent during the pause ended {late:.2f} s after the election"
