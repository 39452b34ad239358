"""The Raft beat over django-celery-beat's database schedule, with real processes: three
nodes, each with a beat (``RaftDatabaseScheduler``) and a worker, a local Redis broker,
and the schedule's tables in a database the three servers share. A 1-second periodic
task and a clocked one run while the leader is killed and restarted; then the periodic
task is disabled as the admin would. Every slot is dispatched exactly once, the clocked
task once, and nothing after the task is disabled.

The figures print with ``-s``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from .cluster import ROOT, Cluster, Node, wait_for
from .test_celery_beat import BROKER, redis_is_up

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SETTINGS = "tests.integration.beat_db_settings"


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    """Three nodes, when Redis answers (under CI=true it must)."""
    pytest.importorskip("celery")
    pytest.importorskip("django_celery_beat")
    if not redis_is_up():
        if os.environ.get("CI") == "true":
            pytest.fail("no Redis on 127.0.0.1:6379 under CI=true (.ci/run checks it)")
        pytest.skip("no Redis on 127.0.0.1:6379")
    cluster = Cluster(tmp_path)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.close()


def env(node: Node, queue: str) -> dict[str, str]:
    """A server's environment for its beat, worker and shell: the shared schedule too."""
    return {
        **node.env(),
        "DJANGO_SETTINGS_MODULE": SETTINGS,
        "RAFT_TEST_SCHEDULE_DB": str(node.cluster.workdir / "schedule.sqlite3"),
        "RAFT_TEST_BROKER": BROKER,
        "RAFT_TEST_QUEUE": queue,
        "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
    }


def manage(node: Node, queue: str, *arguments: str) -> str:
    result = subprocess.run(
        [sys.executable, "manage.py", *arguments],
        cwd=ROOT,
        env=env(node, queue),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def celery(node: Node, queue: str, *arguments: str) -> subprocess.Popen[bytes]:
    log = (node.cluster.workdir / f"{node.node_id}-db-{arguments[0]}.log").open("ab")
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "tests.integration.celery_db_app", *arguments],
            cwd=ROOT,
            env=env(node, queue),
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


CREATE = """
import time
from datetime import UTC, datetime, timedelta
from django_celery_beat.models import ClockedSchedule, IntervalSchedule, PeriodicTask
second = IntervalSchedule.objects.create(every=1, period=IntervalSchedule.SECONDS)
PeriodicTask.objects.create(name="every-second", task="raft_it.record_run", interval=second)
at = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=8)
clocked = ClockedSchedule.objects.create(clocked_time=at)
PeriodicTask.objects.create(name="once", task="raft_it.record_run", clocked=clocked, one_off=True)
print(int(at.timestamp() * 1000))
"""

DISABLE = """
import time
from django_celery_beat.models import PeriodicTask
task = PeriodicTask.objects.get(name="every-second")
task.enabled = False
task.save()
print(int(time.time() * 1000))
"""


def test_database_schedule_slots_run_once_across_a_failover_and_a_disable_takes_effect(
    cluster: Cluster,
) -> None:
    queue = f"raft-it-db-{uuid.uuid4().hex[:8]}"
    first = cluster.founders[0]
    manage(first, queue, "migrate", "django_celery_beat", "--database", "schedule", "-v", "0")
    clocked_at = int(manage(first, queue, "shell", "-v", "0", "-c", CREATE).split()[-1])
    processes: list[subprocess.Popen[bytes]] = []
    try:
        for node in cluster.founders:
            processes.append(
                celery(
                    node,
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
        disabled_at = int(manage(first, queue, "shell", "-v", "0", "-c", DISABLE).split()[-1])
        time.sleep(3.0)
        for process in processes[1::2]:  # the beats stop dispatching
            process.send_signal(signal.SIGTERM)
        seen: dict[str, dict[int, int]] = {}
        for _ in range(40):  # the workers finish what was sent
            time.sleep(0.5)
            now = runs(cluster.leader(timeout=20))
            if now and now == seen:
                break
            seen = now
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
            process.wait(timeout=20)
    cluster.wait_applied()
    counted = [runs(node) for node in cluster.founders]
    assert counted[0] == counted[1] == counted[2]
    periodic, once = counted[0].get("every-second", {}), counted[0].get("once", {})
    first_slot, last_slot = min(periodic), max(periodic)
    expected = (last_slot - first_slot) // 1000 + 1
    duplicated = sorted(slot for slot, count in periodic.items() if count > 1)
    skipped = sorted(set(range(first_slot, last_slot + 1, 1000)) - set(periodic))
    print(
        f"\nslots expected {expected}, dispatched {len(periodic)}, duplicated "
        f"{len(duplicated)}, skipped {len(skipped)}; last slot {last_slot - disabled_at} ms "
        f"from the disable; clocked task ran {sum(once.values())} time(s)"
    )
    assert expected >= 8
    assert duplicated == [] and skipped == []
    # The task ran up to the disable, and no slot after it was sent: the leader's beat
    # reads the change marker before it dispatches.
    assert disabled_at - 1500 <= last_slot < disabled_at
    assert once == {clocked_at: 1}
