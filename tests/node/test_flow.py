"""The node's byte budget (``django_raft.node.flow``): per node, per client, per stream,
with a reserve that a flooding client cannot take from the others; and the routes that
take from it before they read a command (a stream's frame, a request's body)."""

from __future__ import annotations

import json
import threading
import time

import pytest
import requests

from django_raft import commands
from django_raft.node import flow
from django_raft.node.flow import Budget, Limits
from django_raft.node.http import command_streams
from django_raft.protocol import command_stream
from django_raft.protocol.command_stream import CommandStream
from tests.integration.cluster import wait_for
from tests.node.test_node import SECRET, Running, running, start
from tests.protocol.test_command_stream import (
    HandMade,
    client_signer,
    hand_made,
    kv_set,
    log_end,
)
from tests.signing import signed

__all__ = ["hand_made", "running", "start"]  # fixtures

MIB = 1 << 20
LIMITS = Limits(
    node=32 * MIB, client=8 * MIB, stream=4 * MIB, peer=16 * MIB, floor=MIB, reserve=4 * MIB
)


def test_the_defaults_follow_max_command_size_and_fit_one_whole_request() -> None:
    small = flow.limits(1 << 20)
    assert small.node == 32 * MIB
    assert small.client == small.node // 4
    assert small.stream == small.node // 8
    assert small.peer == small.node // 2
    assert small.floor == flow.MAX_REQUEST
    assert flow.limits(4 << 20).node == 128 * MIB
    for size in (1, 1000, 1 << 20, 64 << 20):
        limits = flow.limits(size)
        assert limits.stream >= flow.MAX_REQUEST
        assert limits.client >= 2 * flow.MAX_REQUEST
        assert limits.node - limits.reserve >= limits.client


def test_a_ticket_holds_its_bytes_until_released_once() -> None:
    budget = Budget(LIMITS)
    ticket = budget.take("a", 3 * MIB)
    assert ticket is not None
    assert budget.held == budget.held_by("a") == 3 * MIB
    ticket.release()
    ticket.release()
    assert budget.held == budget.held_by("a") == 0


def test_a_client_holds_at_most_its_share() -> None:
    budget = Budget(LIMITS)
    assert budget.take("flood", 8 * MIB) is not None
    assert budget.take("flood", 1) is None
    assert budget.take("other", 2 * MIB) is not None


def test_a_stream_holds_at_most_its_share_within_its_clients() -> None:
    budget = Budget(LIMITS)
    one, two = budget.stream(), budget.stream()
    assert budget.take("a", 4 * MIB, stream=one) is not None
    assert budget.take("a", 2 * MIB, stream=one) is None
    assert budget.take("a", 4 * MIB, stream=two) is not None
    assert budget.take("a", MIB, stream=two) is None
    assert budget.take("a", 2 * MIB, stream=budget.stream()) is None  # the client's 8 MiB
    assert budget.take("a", MIB, stream=budget.stream()) is not None  # the reserve's


def test_the_node_holds_at_most_its_budget_however_many_clients() -> None:
    budget = Budget(LIMITS)
    taken = [budget.take(f"c{i}", 4 * MIB) for i in range(20)]
    assert budget.held <= LIMITS.node
    assert sum(ticket is not None for ticket in taken) == LIMITS.node // (4 * MIB) - 1
    assert budget.take("late", MIB) is not None  # from the reserve: it holds nothing
    while budget.take("many", 512 << 10, stream=budget.stream()):
        pass
    assert budget.held <= LIMITS.node


def test_the_reserve_is_kept_for_clients_that_hold_little() -> None:
    budget = Budget(LIMITS)
    for name in ("f1", "f2", "f3"):
        assert budget.take(name, 8 * MIB) is not None
    assert budget.take("f4", 4 * MIB) is not None
    # 28 MiB held: the last 4 MiB (the reserve) go only to holders of 1 MiB at most.
    assert budget.take("f5", 2 * MIB) is None
    assert budget.take("f4", MIB) is None
    assert budget.take("f3", 1, stream=budget.stream()) is not None  # a new stream of f3
    assert budget.take("light", MIB) is not None
    assert budget.take("light", 1) is None


def test_a_flooder_with_the_same_name_does_not_starve_another_stream() -> None:
    """Client processes may all sign as "client": a new stream holding nothing still
    gets room for a command from the reserve while its namesake holds the whole share."""
    budget = Budget(LIMITS)
    flood = [budget.stream() for _ in range(4)]
    for share in flood:
        budget.take("client", 2 * MIB, stream=share)
    assert budget.held_by("client") == 8 * MIB
    assert budget.take("client", MIB, stream=flood[0]) is None
    assert budget.take("client", MIB, stream=budget.stream()) is not None
    # On the command route (TLS, reads) a client is known by its name only.
    assert budget.take("client", 64 << 10) is None


def test_a_peer_forwarding_holds_a_larger_share() -> None:
    budget = Budget(LIMITS)
    share = budget.stream(peer=True)
    assert budget.take("n2", 16 * MIB, stream=share, peer=True) is not None
    assert budget.take("n2", 1, stream=share, peer=True) is None
    assert budget.take("n3", 9 * MIB) is None  # a client's share, whatever its name


def test_a_request_larger_than_the_node_is_refused_at_once() -> None:
    budget = Budget(LIMITS)
    started = time.monotonic()
    assert budget.take("a", LIMITS.node + 1, timeout=5) is None
    assert time.monotonic() - started < 1


def test_take_waits_for_room_until_its_timeout() -> None:
    budget = Budget(LIMITS)
    held = budget.take("a", 8 * MIB)
    assert held is not None
    started = time.monotonic()
    assert budget.take("a", MIB, timeout=0.1) is None
    assert time.monotonic() - started >= 0.1
    threading.Timer(0.05, held.release).start()
    assert budget.take("a", MIB, timeout=5) is not None


def test_a_frame_split_among_its_commands_gives_every_byte_back() -> None:
    budget = Budget(LIMITS)
    share = budget.stream()
    ticket = budget.take("a", 1000, stream=share)
    assert ticket is not None
    parts = ticket.split(3)
    assert [part.size for part in parts] == [334, 333, 333]
    ticket.release()  # spent by the split: gives nothing back twice
    assert budget.held == share.held == 1000
    for part in parts:
        part.release()
    assert budget.held == share.held == budget.held_by("a") == 0
    with pytest.raises(ValueError):
        ticket.split(2)


def test_a_ticket_grows_within_the_same_shares_or_not_at_all() -> None:
    budget = Budget(LIMITS)
    share = budget.stream()
    ticket = budget.take("a", MIB, stream=share)
    assert ticket is not None
    assert ticket.grow(2 * MIB)
    assert (ticket.size, share.held, budget.held_by("a")) == (3 * MIB, 3 * MIB, 3 * MIB)
    assert not ticket.grow(2 * MIB)  # the stream's 4 MiB
    assert ticket.size == share.held == 3 * MIB
    ticket.release()
    assert budget.held == share.held == 0
    with pytest.raises(ValueError):
        ticket.grow(1)


def test_the_budget_is_thread_safe() -> None:
    budget = Budget(LIMITS)
    granted = []

    def work(name: str) -> None:
        for _ in range(500):
            ticket = budget.take(name, 256 << 10, timeout=1)
            assert budget.held <= LIMITS.node
            if ticket is not None:
                granted.append(1)
                ticket.release()

    threads = [threading.Thread(target=work, args=(f"c{i % 3}",)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert budget.held == 0 and len(granted) == 4000


def test_each_node_object_has_its_own_budget() -> None:
    class Node:
        pass

    one, two = Node(), Node()
    assert flow.budget_of(one) is flow.budget_of(one)
    assert flow.budget_of(one) is not flow.budget_of(two)


@pytest.fixture
def tight(running: Running, monkeypatch: pytest.MonkeyPatch) -> Budget:
    """The running node's budget, with a share per client of 1 MiB and no reserve."""
    budget = Budget(Limits(node=4 * MIB, client=MIB, stream=MIB, peer=MIB, floor=0, reserve=0))
    monkeypatch.setitem(flow._budgets, running.node, budget)
    monkeypatch.setattr(command_streams, "ADMIT_WAIT", 0.05)
    return budget


@pytest.mark.django_db(transaction=True)
def test_a_frame_beyond_its_clients_share_is_answered_overloaded_and_not_proposed(
    running: Running, tight: Budget, hand_made: list[HandMade]
) -> None:
    client = HandMade(running, sender="web-1")
    hand_made.append(client)
    client.send([[1, kv_set("a", "1")]])
    assert client.answers(1)[1]["ok"]
    held = tight.take("web-1", MIB)  # as if a megabyte of its commands were in flight
    assert held is not None
    end = log_end()
    client.send([[2, kv_set("b", "2")], [3, kv_set("c", "3")]])
    answers = client.answers(2)
    assert {answer["error_type"] for answer in answers.values()} == {"OverloadedError"}
    assert log_end() == end
    other = HandMade(running, sender="web-2")  # another client is not held back
    hand_made.append(other)
    other.send([[1, kv_set("d", "4")]])
    assert other.answers(1)[1]["ok"]
    held.release()
    client.send([[4, kv_set("b", "2")]])
    assert client.answers(1)[4]["ok"]
    assert tight.held == 0


@pytest.mark.django_db(transaction=True)
def test_a_client_waiting_for_room_longer_than_its_probe_is_refused_not_broken(
    running: Running, tight: Budget, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While a stream waits for room the node does not read it, so the client's pings go
    unanswered: the node writes it empty frames meanwhile, and the client's command is
    refused after the wait instead of its stream breaking as if the node had stopped."""
    monkeypatch.setattr(command_streams, "ADMIT_WAIT", 2 * command_stream.PROBE)
    held = tight.take("web-1", MIB)
    assert held is not None
    opened = CommandStream(running.address, client_signer("web-1"), "raft/")
    try:
        started = time.monotonic()
        answer = opened.call(kv_set("a", "1"), 10)
        assert time.monotonic() - started >= 2 * command_stream.PROBE
        assert answer["error_type"] == "OverloadedError", answer
        held.release()
        assert opened.call(kv_set("a", "1"), 10)["ok"]
    finally:
        opened._break("test over", set())


@pytest.mark.django_db(transaction=True)
def test_a_frame_of_many_small_commands_costs_more_than_its_bytes(
    running: Running, tight: Budget, hand_made: list[HandMade]
) -> None:
    """Each command costs ``COMMAND_COST`` on top of its bytes: 300 tiny commands do
    not fit in the stream's megabyte, though their frame is a few kilobytes."""
    client = HandMade(running, sender="web-1")
    hand_made.append(client)
    end = log_end()
    client.send([[n, kv_set(f"k{n}", "v")] for n in range(300)])
    answers = client.answers(300)
    assert {answer["error_type"] for answer in answers.values()} == {"OverloadedError"}
    assert log_end() == end
    client.send([[n, kv_set(f"k{n}", "v")] for n in range(300, 400)])
    answers = client.answers(100)
    assert all(answer["ok"] for answer in answers.values())
    assert tight.held == 0


@pytest.mark.django_db(transaction=True)
def test_commands_for_the_slow_threads_beyond_their_queue_are_refused_at_once(
    running: Running, hand_made: list[HandMade], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reads (and a follower's forwarding) wait for the stream server's threads: a
    client gets so many places in their queue, and is refused beyond them rather than
    left to time out there."""
    lane = Budget(Limits(node=4, client=2, stream=2, peer=2, floor=0, reserve=0))
    monkeypatch.setattr(command_streams, "_slow_lane", lane)
    release = threading.Event()

    def wait(context: commands.Context, n: int) -> int:
        release.wait(10)
        return n

    commands.register("tests.flow.wait", wait, read_only=True)
    client = HandMade(running, sender="web-1")
    hand_made.append(client)
    reads = [
        [n, {"name": "tests.flow.wait", "arguments": {"n": n}, "read": True}] for n in range(3)
    ]
    client.send(reads)
    refused = client.answers(1)
    assert refused[2]["error_type"] == "OverloadedError"
    assert lane.held == 2
    release.set()
    answers = client.answers(2)
    assert {answers[0]["value"], answers[1]["value"]} == {0, 1}
    wait_for(lambda: lane.held == 0, 5, "the places to be given back")


@pytest.mark.django_db(transaction=True)
def test_a_command_request_without_room_is_refused_and_its_body_dropped(
    running: Running, tight: Budget
) -> None:
    url = running.url("command")
    body = json.dumps(kv_set("big", "x" * (512 << 10))).encode()
    held = tight.take("client", MIB)
    assert held is not None
    end = log_end()
    with requests.Session() as session:
        refused = session.post(url, data=body, headers=signed(url, body, SECRET), timeout=10)
        assert refused.status_code == 503, refused.text
        assert refused.json()["error_type"] == "OverloadedError"
        assert refused.headers.get("Connection") != "close"
        assert log_end() == end
        held.release()
        # The refused body was read off the connection (in small pieces) and dropped.
        accepted = session.post(url, data=body, headers=signed(url, body, SECRET), timeout=10)
        assert accepted.status_code == 200 and accepted.json()["ok"], accepted.text
    assert tight.held == 0
