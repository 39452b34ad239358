"""Leader-only work: ``is_leader``, ``@leader_only`` and ``LeaderWork`` driven by the
``leader_changed`` signal."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from django_raft import leader, signals
from django_raft.leader import LeaderWork, leader_only
from django_raft.runner import RaftNode


def change(node_id: str, new_leader: str) -> None:
    signals.leader_changed.send(RaftNode, node_id=node_id, value=new_leader, prev_value="")


def test_leader_work_runs_while_the_node_leads_and_stops_promptly() -> None:
    started = threading.Event()
    runs: list[str] = []

    def work(stop: threading.Event) -> None:
        runs.append("start")
        started.set()
        stop.wait()
        runs.append("stop")

    job = LeaderWork(work, name="job")
    try:
        assert not job.running
        change("n1", "n2")  # another node leads: nothing runs
        assert not job.running
        change("n1", "n1")
        assert started.wait(5) and job.running
        change("n1", "n1")  # already running: not started twice
        change("n1", "")  # leadership lost
        assert job._thread is not None
        job._thread.join(5)
        assert not job.running and runs == ["start", "stop"]
        started.clear()
        change("n1", "n1")  # leads again: runs again
        assert started.wait(5)
    finally:
        job.close()
    assert runs == ["start", "stop", "start", "stop"]


def test_leader_only_calls_the_function_only_on_the_leader(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[int] = []

    @leader_only
    def nightly(n: int) -> int:
        calls.append(n)
        return n

    state = {"state": "follower"}
    monkeypatch.setattr("django_raft.client.status", lambda **kwargs: state)
    assert nightly(1) is None and calls == []
    state["state"] = "leader"
    assert nightly(2) == 2 and calls == [2]
    assert nightly.__name__ == "nightly"


def test_is_leader_is_false_when_the_node_cannot_be_asked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from django_raft.exceptions import ClusterUnreachableError

    def down(**kwargs: Any) -> dict[str, Any]:
        raise ClusterUnreachableError("down")

    monkeypatch.setattr("django_raft.client.status", down)
    assert leader.is_leader() is False


def test_leader_only_on_a_management_command_s_handle(monkeypatch: pytest.MonkeyPatch) -> None:
    from django.core.management import BaseCommand, call_command

    ran: list[str] = []

    class Nightly(BaseCommand):
        @leader_only
        def handle(self, *args: Any, **options: Any) -> None:
            ran.append("nightly")

    state = {"state": "follower"}
    monkeypatch.setattr("django_raft.client.status", lambda **kwargs: state)
    call_command(Nightly())
    assert ran == []
    state["state"] = "leader"
    call_command(Nightly())
    assert ran == ["nightly"]
