"""Attacks on a live three-node cluster: without the secret, with it (a buggy or
version-skewed peer, a captured request), and with many idle or slow connections.

Each test is a finding the node once failed: the cluster keeps its leader, answers,
changes nothing it refused, and restarts cleanly.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from django_raft.core import ConfState, Message, MessageType, SnapshotMetadata
from django_raft.proto import raft_pb2 as pb
from django_raft.protocol.auth import CLIENT, NODE, SIGNATURE_HEADER
from django_raft.protocol.wire import MAX_TERM_JUMP, encode_message
from tests.signing import signed

from .cluster import SECRET, Cluster, Node, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    cluster = Cluster(tmp_path_factory.mktemp("hardening"))
    try:
        cluster.start()
        cluster.leader()
        yield cluster
    finally:
        cluster.close()


def rpc(
    node: Node, path: str, body: bytes, sender: str, kind: str = NODE, receiver: str = ""
) -> requests.Response:
    url = f"{node.address}/raft/rpc/{path}"
    headers = signed(url, body, SECRET, sender, kind, receiver or node.node_id)
    return requests.post(url, data=body, headers=headers, timeout=10)


def follower_of(cluster: Cluster) -> tuple[Node, Node]:
    leader = cluster.leader()
    return leader, next(n for n in cluster.running() if n is not leader)


def settled(cluster: Cluster) -> dict[str, Any]:
    """The leader's status once every node applied the same index."""
    cluster.wait_applied()
    return cluster.leader().status()


def test_a_non_ascii_signature_is_a_json_403_that_shows_nothing(cluster: Cluster) -> None:
    node = cluster.leader()
    for route in ("rpc/appendEntries", "rpc/batch", "command", "status", "members"):
        response = requests.post(
            f"{node.address}/raft/{route}",
            data=b"{}",
            headers={SIGNATURE_HEADER: ("é" * 64).encode(), "X-Raft-Node": "n2"},
            timeout=10,
        )
        assert response.status_code == 403, (route, response.text)
        assert response.headers["Content-Type"] == "application/json"
        assert response.json()["error_type"] == "InvalidRequestError"
        assert SECRET not in response.text


def test_a_captured_command_replayed_is_refused_and_applied_once(cluster: Cluster) -> None:
    node = cluster.leader()
    url = f"{node.address}/raft/command"
    body = json.dumps({"name": "kv.incr", "arguments": {"key": "replayed"}}).encode()
    headers = signed(url, body, SECRET) | {"Content-Type": "application/json"}
    answers = [requests.post(url, data=body, headers=headers, timeout=10) for _ in range(6)]
    assert answers[0].json()["ok"] is True, answers[0].text
    assert [a.status_code for a in answers[1:]] == [403] * 5
    assert all("replayed" in a.json()["error"] for a in answers[1:])
    cluster.wait_applied()
    assert all(n.kv().get("replayed") == "1" for n in cluster.running())


def test_a_request_signed_for_one_route_or_node_fails_elsewhere(cluster: Cluster) -> None:
    leader, follower = follower_of(cluster)
    body = json.dumps({"name": "kv.set", "arguments": {"key": "moved", "value": "x"}}).encode()
    headers = signed(f"{leader.address}/raft/status", body, SECRET)
    moved = requests.post(f"{leader.address}/raft/command", data=body, headers=headers, timeout=5)
    assert moved.status_code == 403
    heartbeat = encode_message(
        Message(type=MessageType.HEARTBEAT, to=follower.node_id, sender="n9")
    )
    url = f"{follower.address}/raft/rpc/appendEntries"
    for_leader = signed(url, heartbeat, SECRET, "n9", NODE, leader.node_id)
    response = requests.post(url, data=heartbeat, headers=for_leader, timeout=5)
    assert response.status_code == 403 and "not to this node" in response.json()["error"]
    assert "moved" not in leader.kv()


def test_the_client_key_cannot_speak_raft(cluster: Cluster) -> None:
    leader, follower = follower_of(cluster)
    term = follower.status()["term"]
    vote = encode_message(
        Message(
            type=MessageType.REQUEST_VOTE,
            to=follower.node_id,
            sender=leader.node_id,
            term=term + 5,
            transfer=True,
        )
    )
    response = rpc(follower, "requestVote", vote, leader.node_id, kind=CLIENT)
    assert response.status_code == 403
    assert follower.status()["term"] == term


def test_out_of_range_terms_are_refused_and_the_cluster_still_elects(cluster: Cluster) -> None:
    leader, follower = follower_of(cluster)
    term = follower.status()["term"]
    wire = pb.Message(
        type=pb.MESSAGE_TYPE_HEARTBEAT, to=follower.node_id, sender=leader.node_id, term=2**63 - 1
    )
    response = rpc(follower, "appendEntries", wire.SerializeToString(), leader.node_id)
    assert response.status_code == 400 and "out of range" in response.json()["error"]
    ahead = Message(
        type=MessageType.HEARTBEAT,
        to=follower.node_id,
        sender=leader.node_id,
        term=term + MAX_TERM_JUMP + 1,
    )
    response = rpc(follower, "appendEntries", encode_message(ahead), leader.node_id)
    assert response.status_code == 400 and "far ahead" in response.json()["error"]
    assert follower.status()["term"] == term
    leader.kill()
    try:
        survivors = [n for n in cluster.running()]
        new_leader = cluster.leader(among=survivors)
        assert new_leader.status()["term"] > term
        assert new_leader.do("kv.set", key="after", value="1")["ok"]
    finally:
        leader.start()
    cluster.leader()


def test_forged_commit_match_and_snapshot_crash_nothing_and_survive_restart(
    cluster: Cluster,
) -> None:
    leader, follower = follower_of(cluster)
    status = follower.status()
    term = status["term"]
    forged = [
        (
            follower,
            "appendEntries",
            Message(
                type=MessageType.HEARTBEAT,
                to=follower.node_id,
                sender=leader.node_id,
                term=term,
                commit=10**12,
            ),
        ),
        (
            leader,
            "appendEntriesResponse",
            Message(
                type=MessageType.APPEND_RESPONSE,
                to=leader.node_id,
                sender=follower.node_id,
                term=term,
                index=10**12,
            ),
        ),
        (
            follower,
            "snapshot",
            Message(
                type=MessageType.SNAPSHOT,
                to=follower.node_id,
                sender=leader.node_id,
                term=term,
                snapshot=SnapshotMetadata(10**9, term, ConfState(("n1", "n2", "n3"))),
                data=b"garbage, not a snapshot",
                done=True,
            ),
        ),
    ]
    for target, path, message in forged:
        sender = message.sender
        response = rpc(target, path, encode_message(message), sender)
        assert response.status_code == 200, response.text
    for node in (leader, follower):
        assert node.running()
        assert node.status()["commit"] < 10**9
    assert leader.do("kv.set", key="forged", value="no")["ok"]
    cluster.wait_applied()
    assert follower.query(
        'SELECT COUNT(*) FROM django_raft_snapshot WHERE "index" >= 1000000000'
    ) == [(0,)]
    follower.kill()
    follower.start()
    cluster.wait_applied()
    assert follower.kv() == leader.kv()


def threads_of(node: Node) -> int:
    assert node.process is not None
    return len(os.listdir(f"/proc/{node.process.pid}/task"))


def test_made_up_senders_start_no_threads(cluster: Cluster) -> None:
    _, follower = follower_of(cluster)
    before = threads_of(follower)
    term = follower.status()["term"]
    for n in range(50):
        ghost = f"ghost{n}"
        vote = Message(
            type=MessageType.REQUEST_VOTE, to=follower.node_id, sender=ghost, term=term + 1
        )
        assert rpc(follower, "requestVote", encode_message(vote), ghost).status_code == 200
    time.sleep(0.5)
    # A thread per made-up sender would be 50 more; a loaded machine's request threads
    # and the node's own may add a few meanwhile.
    assert threads_of(follower) <= before + 5
    assert cluster.leader().status()["term"] >= term


def test_commands_that_cannot_run_never_enter_the_log(cluster: Cluster) -> None:
    before = settled(cluster)["last_index"]
    leader = cluster.leader()
    for name, arguments in [
        ("no.such", {}),
        ("kv.set", {"key": "k"}),
        ("kv.set", {"key": "k", "value": "v", "extra": 1}),
        ("kv.set", {"key": "k", "value": "v" * (2 << 20)}),
    ]:
        answer = leader.post("command", {"name": name, "arguments": arguments})
        assert answer["error_type"] == "InvalidRequestError", answer
    assert settled(cluster)["last_index"] == before


@pytest.mark.parametrize("route", ["rpc/appendEntries", "command", "status", "members"])
def test_an_unauthenticated_body_is_never_read(cluster: Cluster, route: str) -> None:
    node = cluster.leader()
    host, port = node.address.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(
            f"POST /raft/{route} HTTP/1.1\r\nHost: x\r\n".encode()
            + b"Content-Length: 3000000\r\nX-Raft-Node: n2\r\n\r\n"
            + b"x" * 1000
        )
        answer = sock.recv(4096)  # before we send the other 59,999,000 bytes
    assert answer.startswith(b"HTTP/1.1 403"), answer[:200]


IDLE_PER_NODE = 200
SLOW_PER_NODE = 100


def test_idle_and_slow_connections_do_not_starve_the_cluster(cluster: Cluster) -> None:
    leader = cluster.leader()
    term = leader.status()["term"]
    stop = threading.Event()
    sockets: list[socket.socket] = []

    def slow(node: Node) -> None:
        host, port = node.address.removeprefix("http://").split(":")
        mine: list[socket.socket] = []
        while not stop.is_set():
            # More slow clients than the node has request threads, each sending a byte
            # every half second, and coming back when cut off.
            while len(mine) < SLOW_PER_NODE and not stop.is_set():
                with contextlib.suppress(OSError):
                    sock = socket.create_connection((host, int(port)), timeout=5)
                    sock.sendall(b"POST /raft/command HTTP/1.1\r\n")
                    mine.append(sock)
            stop.wait(0.5)
            for sock in list(mine):
                try:
                    sock.sendall(b"X")
                except OSError:
                    sock.close()
                    mine.remove(sock)
        for sock in mine:
            sock.close()

    try:
        for node in cluster.running():
            host, port = node.address.removeprefix("http://").split(":")
            for _ in range(IDLE_PER_NODE):
                sockets.append(socket.create_connection((host, int(port)), timeout=5))
        slow_threads = [threading.Thread(target=slow, args=(n,)) for n in cluster.running()]
        for thread in slow_threads:
            thread.start()
        answered = []
        deadline = time.monotonic() + 8
        n = 0
        while time.monotonic() < deadline:
            started = time.monotonic()
            answer = leader.do("kv.set", key="busy", value=str(n), timeout=3)
            answered.append((answer["ok"], time.monotonic() - started))
            n += 1
            time.sleep(0.1)
        assert all(ok for ok, _ in answered), answered
        assert max(seconds for _, seconds in answered) < 3
        assert cluster.leader() is leader and leader.status()["term"] == term
    finally:
        stop.set()
        for sock in sockets:
            sock.close()
        for thread in slow_threads:
            thread.join()
    wait_for(lambda: leader.status()["leader"] == leader.node_id, 5, "the leader")


def test_a_follower_that_cannot_reach_the_leader_answers_json_in_time(cluster: Cluster) -> None:
    leader, follower = follower_of(cluster)
    assert leader.process is not None
    leader.process.send_signal(signal.SIGSTOP)
    try:
        started = time.monotonic()
        url = f"{follower.address}/raft/command"
        body = json.dumps({"name": "kv.set", "arguments": {"key": "p", "value": "1"}, "timeout": 2})
        data = body.encode()
        headers = signed(url, data, SECRET) | {"Content-Type": "application/json"}
        response = requests.post(url, data=data, headers=headers, timeout=10)
        elapsed = time.monotonic() - started
        assert response.status_code < 500, response.text[:200]
        assert response.headers["Content-Type"] == "application/json", response.text[:200]
        answer = response.json()
        assert answer["ok"] or answer["error_type"], answer
        assert elapsed < 4, elapsed  # the caller's 2 s, and a second for the connection
    finally:
        leader.process.send_signal(signal.SIGCONT)
    cluster.leader()
