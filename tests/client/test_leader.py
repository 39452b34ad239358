"""Leader-only work: ``leadership``, ``is_leader``, ``@leader_only`` and ``LeaderWork``
driven by the ``leader_changed`` signal."""

from __future__ import annotations

import logging
import threading
from typing import Any

import pytest

from django_raft import signals
from django_raft.client import leader
from django_raft.client.leader import LeaderState, LeaderWork, leader_only, leadership
from django_raft.node.runner import RaftNode

STATUS = "django_raft.client.client.status"
"""What ``leadership()`` asks; tests put their own answer there."""


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
    monkeypatch.setattr(STATUS, lambda **kwargs: state)
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

    monkeypatch.setattr(STATUS, down)
    assert leader.is_leader() is False


def test_leader_only_on_a_management_command_s_handle(monkeypatch: pytest.MonkeyPatch) -> None:
    from django.core.management import BaseCommand, call_command

    ran: list[str] = []

    class Nightly(BaseCommand):
        @leader_only
        def handle(self, *args: Any, **options: Any) -> None:
            ran.append("nightly")

    state = {"state": "follower"}
    monkeypatch.setattr(STATUS, lambda **kwargs: state)
    call_command(Nightly())
    assert ran == []
    state["state"] = "leader"
    call_command(Nightly())
    assert ran == ["nightly"]


# -- leadership(): leader, not leader, or cannot tell ---------------------------------------


def test_leadership_is_unknown_not_not_leader_when_the_node_cannot_be_reached() -> None:
    from django.test import override_settings

    from tests.integration.cluster import free_port

    address = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with override_settings(DJANGO_RAFT={"SECRET": "s" * 32, "ADDRESS": address}):
        found = leadership(timeout=0.5)
    assert found.state is LeaderState.UNKNOWN
    assert found.reason.startswith("ClusterUnreachableError: ") and address in found.reason


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        ("leader", LeaderState.LEADER),
        ("follower", LeaderState.NOT_LEADER),
        ("candidate", LeaderState.NOT_LEADER),
        ("pre-candidate", LeaderState.NOT_LEADER),
        (None, LeaderState.UNKNOWN),
    ],
)
def test_leadership_follows_the_node_s_state(
    monkeypatch: pytest.MonkeyPatch, state: str | None, expected: LeaderState
) -> None:
    monkeypatch.setattr(STATUS, lambda **kwargs: {"state": state})
    found = leadership()
    assert found.state is expected
    assert bool(found.reason) == (expected is LeaderState.UNKNOWN)


def test_is_leader_warns_when_it_cannot_tell_once_a_minute_per_reason(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from django_raft.exceptions import ClusterUnreachableError

    reason = ["down"]

    def down(**kwargs: Any) -> dict[str, Any]:
        raise ClusterUnreachableError(reason[0])

    monkeypatch.setattr(STATUS, down)
    monkeypatch.setattr(leader, "_warned", {})
    with caplog.at_level(logging.WARNING, logger="django_raft.leader"):
        assert [leader.is_leader() for _ in range(3)] == [False] * 3
        reason[0] = "other"
        assert leader.is_leader() is False
        monkeypatch.setattr(leader, "WARN_INTERVAL", 0.0)  # a minute later
        assert leader.is_leader() is False
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        "raft: is_leader() is False: cannot tell whether this node leads: "
        f"ClusterUnreachableError: {why}"
        for why in ("down", "other", "other")
    ]


def test_is_leader_does_not_warn_on_a_follower(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(STATUS, lambda **kwargs: {"state": "follower"})
    with caplog.at_level(logging.DEBUG, logger="django_raft.leader"):
        assert leader.is_leader() is False
    assert caplog.records == []


def test_leader_only_says_whether_it_skipped_on_a_follower_or_because_it_cannot_tell(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from django_raft.exceptions import ClusterUnreachableError

    @leader_only
    def nightly() -> str:
        return "ran"

    def down(**kwargs: Any) -> dict[str, Any]:
        raise ClusterUnreachableError("cannot reach http://127.0.0.1:1")

    with caplog.at_level(logging.INFO, logger="django_raft.leader"):
        monkeypatch.setattr(STATUS, lambda **kwargs: {"state": "follower"})
        assert nightly() is None
        monkeypatch.setattr(STATUS, down)
        assert nightly() is None
    name = nightly.__qualname__
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.INFO, f"raft: {name} skipped: this node does not lead"),
        (
            logging.WARNING,
            f"raft: {name} skipped: cannot tell whether this node leads: "
            "ClusterUnreachableError: cannot reach http://127.0.0.1:1",
        ),
    ]
