"""The Raft beat over django-celery-beat's database schedule, with real processes: three
nodes, each with a beat (``RaftDatabaseScheduler``) and a worker, a local Redis broker.
The schedule is either in a database the three servers share (edited with the ORM, as the
admin does) or replicated (edited with ``periodic.save``, through the log). A 1-second
periodic task and a clocked one run while the leader is killed and restarted; then the
periodic task is disabled. Every slot is dispatched exactly once, the clocked task once,
and nothing after the task is disabled.

The figures print with ``-s``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from .cluster import ROOT, Cluster, Node, wait_for
from .test_celery_beat import BROKER, kill_all, redis_is_up, stop_beats_and_drain

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SETTINGS = "tests.integration.beat_db_settings"


@pytest.fixture(params=["shared", "replicated"])
def mode(request: pytest.FixtureRequest) -> str:
    """Where the schedule lives: a database the servers share, or replicated."""
    value: str = request.param
    return value


@pytest.fixture
def cluster(mode: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Cluster]:
    """Three nodes, when Redis answers (under CI=true it must); with a replicated
    schedule, the nodes have django-celery-beat and the commands that change it."""
    pytest.importorskip("celery")
    pytest.importorskip("django_celery_beat")
    if not redis_is_up():
        if os.environ.get("CI") == "true":
            pytest.fail("no Redis on 127.0.0.1:6379 under CI=true (.ci/run checks it)")
        pytest.skip("no Redis on 127.0.0.1:6379")
    plain = Node.env
    monkeypatch.setattr(Node, "env", lambda node: {**plain(node), **schedule_env(node, mode)})
    cluster = Cluster(tmp_path)
    try:
        if mode == "shared":  # the nodes themselves keep the demo project's settings
            monkeypatch.setattr(Node, "env", plain)
        cluster.start()
        yield cluster
    finally:
        cluster.close()


def schedule_env(node: Node, mode: str) -> dict[str, str]:
    """What a server's processes need for the schedule of this ``mode``."""
    return {
        "DJANGO_SETTINGS_MODULE": SETTINGS,
        "RAFT_TEST_SCHEDULE": mode,
        "RAFT_TEST_SCHEDULE_DB": str(node.cluster.workdir / "schedule.sqlite3"),
        "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
    }


def env(node: Node, mode: str, queue: str) -> dict[str, str]:
    """A server's environment for its beat, worker and shell."""
    return {
        **node.env(),
        **schedule_env(node, mode),
        "RAFT_TEST_BROKER": BROKER,
        "RAFT_TEST_QUEUE": queue,
    }


def manage(node: Node, mode: str, queue: str, *arguments: str) -> str:
    result = subprocess.run(
        [sys.executable, "manage.py", *arguments],
        cwd=ROOT,
        env=env(node, mode, queue),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def celery(node: Node, mode: str, queue: str, *arguments: str) -> subprocess.Popen[bytes]:
    log = (node.cluster.workdir / f"{node.node_id}-db-{arguments[0]}.log").open("ab")
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "tests.integration.celery_db_app", *arguments],
            cwd=ROOT,
            env=env(node, mode, queue),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    finally:
        log.close()


def runs(node: Node) -> dict[str, dict[int, int]]:
    """Periodic task name → slot → times it ran, as the node's replicated store has it."""
    found: dict[str, dict[int, int]] = {}
    for key, value in node.query("SELECT key, value FROM kv_keyvalue WHERE key LIKE 'run:%'"):
        name, slot = key.removeprefix("run:").rsplit("@", 1)
        found.setdefault(name, {})[int(slot)] = int(value)
    return found


CREATE = {
    "shared": """
from datetime import UTC, datetime, timedelta
from django_celery_beat.models import ClockedSchedule, IntervalSchedule, PeriodicTask
second = IntervalSchedule.objects.create(every=1, period=IntervalSchedule.SECONDS)
PeriodicTask.objects.create(name="every-second", task="raft_it.record_run", interval=second)
at = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=8)
clocked = ClockedSchedule.objects.create(clocked_time=at)
PeriodicTask.objects.create(name="once", task="raft_it.record_run", clocked=clocked, one_off=True)
print(int(at.timestamp() * 1000))
""",
    "replicated": """
from datetime import UTC, datetime, timedelta
from django_raft.contrib.celery import periodic
periodic.save("every-second", "raft_it.record_run", interval=(1, "seconds"))
at = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=8)
periodic.save("once", "raft_it.record_run", clocked=at)
print(int(at.timestamp() * 1000))
""",
}

DISABLE = {
    "shared": """
import time
from django_celery_beat.models import PeriodicTask
task = PeriodicTask.objects.get(name="every-second")
task.enabled = False
task.save()
print(int(time.time() * 1000))
""",
    "replicated": """
import time
from django_raft.contrib.celery import periodic
periodic.save("every-second", "raft_it.record_run", interval=(1, "seconds"), enabled=False)
print(int(time.time() * 1000))
""",
}


def test_database_schedule_slots_run_once_across_a_failover_and_a_disable_takes_effect(
    mode: str, cluster: Cluster
) -> None:
    queue = f"raft-it-db-{uuid.uuid4().hex[:8]}"
    first = cluster.founders[0]
    if mode == "shared":
        manage(first, mode, queue, "migrate", "django_celery_beat", "--database", "schedule")
    clocked_at = int(manage(first, mode, queue, "shell", "-v", "0", "-c", CREATE[mode]).split()[-1])
    processes: list[subprocess.Popen[bytes]] = []
    try:
        for node in cluster.founders:
            processes.append(
                celery(
                    node,
                    mode,
                    queue,
                    "worker",
                    "--pool=solo",
                    "-Q",
                    queue,
                    "--without-mingle",
                    "--without-gossip",
                    "--without-heartbeat",
                    "-l",
                    "warning",
                )
            )
            processes.append(
                celery(
                    node,
                    mode,
                    queue,
                    "beat",
                    "-S",
                    "django_raft.contrib.celery.dbschedule:RaftDatabaseScheduler",
                    "-s",
                    str(cluster.workdir / f"{node.node_id}-db-beat"),
                    "-l",
                    "info",
                )
            )
        wait_for(lambda: runs(first).get("every-second"), 40, "the first slot to be counted")
        started = time.monotonic()
        time.sleep(3.0)
        leader = cluster.leader(timeout=20)
        leader.kill()
        time.sleep(2.0)
        leader.start()
        time.sleep(max(0.0, started + 9.0 - time.monotonic()))
        disabled_at = int(manage(first, mode, queue, "shell", "-c", DISABLE[mode]).split()[-1])
        time.sleep(3.0)
        stop_beats_and_drain(processes[1::2], lambda: runs(cluster.leader(timeout=20)), 40)
    finally:
        kill_all(processes)
    cluster.wait_applied()
    counted = [runs(node) for node in cluster.founders]
    assert counted[0] == counted[1] == counted[2]
    periodic, once = counted[0].get("every-second", {}), counted[0].get("once", {})
    first_slot, last_slot = min(periodic), max(periodic)
    expected = (last_slot - first_slot) // 1000 + 1
    duplicated = sorted(slot for slot, count in periodic.items() if count > 1)
    skipped = sorted(set(range(first_slot, last_slot + 1, 1000)) - set(periodic))
    print(
        f"\n{mode}: slots expected {expected}, dispatched {len(periodic)}, duplicated "
        f"{len(duplicated)}, skipped {len(skipped)}; last slot {last_slot - disabled_at} ms "
        f"from the disable; clocked task ran {sum(once.values())} time(s)"
    )
    assert expected >= 8
    assert duplicated == [] and skipped == []
    # The task ran up to the disable, and no slot after it was sent: the leader's beat
    # reads the change marker before it dispatches.
    assert disabled_at - 1500 <= last_slot < disabled_at
    assert once == {clocked_at: 1}
