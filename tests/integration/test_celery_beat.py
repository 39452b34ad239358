"""The Raft beat scheduler with real processes: three nodes, each with a Celery beat
(``RaftScheduler``) and a worker, a local Redis broker; a 1-second schedule runs while
the leader is killed and restarted twice, then its whole server (node and beat) is
paused for 3 s. Every slot is dispatched exactly once.

The figures (slots expected, dispatched, duplicated, skipped) print with ``-s``.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

import django_raft

from .cluster import ROOT, Cluster, Node, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BROKER = "redis://127.0.0.1:6379/0"


def redis_is_up() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    pytest.importorskip("celery")
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


def celery(
    node: Node, queue: str, *arguments: str, broker: str = BROKER
) -> subprocess.Popen[bytes]:
    env = {**node.env(), "RAFT_TEST_BROKER": broker, "RAFT_TEST_QUEUE": queue}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    log = (node.cluster.workdir / f"{node.node_id}-{arguments[0]}.log").open("ab")
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "tests.integration.celery_app", *arguments],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    finally:
        log.close()


def slots(node: Node) -> dict[int, int]:
    rows = node.query("SELECT key, value FROM kv_keyvalue WHERE key LIKE 'slot:%'")
    return {int(key.split(":", 1)[1]): int(value) for key, value in rows}


def stop_beats_and_drain(
    beats: Sequence[subprocess.Popen[bytes]], counted: Callable[[], object], polls: int
) -> None:
    """Stop the beats dispatching, then let the workers finish what was sent: wait until
    ``counted()`` stops changing (checked every 0.5 s, ``polls`` times at most)."""
    for process in beats:
        process.send_signal(signal.SIGTERM)
    seen: object = None
    for _ in range(polls):
        time.sleep(0.5)
        now = counted()
        if now and now == seen:
            return
        seen = now


def kill_all(processes: Sequence[subprocess.Popen[bytes]]) -> None:
    """Kill whatever of ``processes`` still runs, and reap them all."""
    for process in processes:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=20)


def test_every_slot_is_dispatched_once_across_leader_failovers(cluster: Cluster) -> None:
    queue = f"raft-it-{uuid.uuid4().hex[:8]}"
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
            schedule_file = str(cluster.workdir / f"{node.node_id}-beat-schedule")
            processes.append(
                celery(
                    node,
                    queue,
                    "beat",
                    "-S",
                    "django_raft.contrib.celery.beat:RaftScheduler",
                    "-s",
                    schedule_file,
                    "-l",
                    "info",
                )
            )
        wait_for(lambda: slots(cluster.founders[0]), 40, "the first slot to be counted")
        started = time.monotonic()
        beats = dict(zip(cluster.founders, processes[1::2], strict=True))
        faults = []
        for at, fault in ((4.0, "kill"), (10.0, "kill"), (16.0, "freeze")):
            time.sleep(max(0.0, started + at - time.monotonic()))
            leader = cluster.leader(timeout=20)
            faults.append(f"{fault} {leader.node_id}")
            assert leader.process is not None
            if fault == "kill":
                leader.kill()
                time.sleep(2.0)
                leader.start()
            else:  # the whole server pauses, node and beat, then goes on
                for process in (leader.process, beats[leader]):
                    process.send_signal(signal.SIGSTOP)
                time.sleep(3.0)
                for process in (leader.process, beats[leader]):
                    process.send_signal(signal.SIGCONT)
        time.sleep(max(0.0, started + 22.0 - time.monotonic()))
        stop_beats_and_drain(processes[1::2], lambda: slots(cluster.leader(timeout=20)), 60)
    finally:
        kill_all(processes)
    cluster.wait_applied()
    counted = [slots(node) for node in cluster.founders]
    assert counted[0] == counted[1] == counted[2]
    found = counted[0]
    first, last = min(found), max(found)
    expected = (last - first) // 1000 + 1
    duplicated = sorted(slot for slot, count in found.items() if count > 1)
    skipped = sorted(set(range(first, last + 1, 1000)) - set(found))
    print(
        f"\nfaults: {', '.join(faults)}; slots expected {expected}, "
        f"dispatched {len(found)}, duplicated {len(duplicated)}, skipped {len(skipped)}"
    )
    assert expected >= 15
    assert duplicated == [] and skipped == []


SIGNAL_BROKER = "redis://127.0.0.1:6379/7"


def test_signals_are_forwarded_and_commands_submitted_through_celery(tmp_path: Path) -> None:
    pytest.importorskip("celery")
    if not redis_is_up():
        if os.environ.get("CI") == "true":
            pytest.fail("no Redis on 127.0.0.1:6379 under CI=true (.ci/run checks it)")
        pytest.skip("no Redis on 127.0.0.1:6379")
    queue = "celery"  # the default queue of the nodes' default Celery app, on database 7
    os.environ["CELERY_BROKER_URL"] = SIGNAL_BROKER
    cluster = Cluster(tmp_path, SIGNAL_TASKS="leader_changed=raft_it.record_signal")
    worker = None
    try:
        cluster.start()
        first = cluster.leader()
        worker = celery(
            cluster.founders[0],
            queue,
            "worker",
            "--pool=solo",
            "-Q",
            queue,
            "-l",
            "warning",
            broker=SIGNAL_BROKER,
        )
        first.kill()
        survivors = [node for node in cluster.founders if node is not first]
        second = cluster.leader(among=survivors, timeout=20)
        watcher = survivors[0]
        wanted = {f"signal:{node.node_id}:leader_changed": second.node_id for node in survivors}

        def forwarded() -> bool:
            values = watcher.kv()
            return all(values.get(key) == value for key, value in wanted.items())

        wait_for(forwarded, 30, "the leader_changed signals to reach the Celery task")

        # Commands submitted through Celery: each applied once, whatever the redeliveries.
        os.environ.update(RAFT_TEST_BROKER=SIGNAL_BROKER, RAFT_TEST_QUEUE=queue)
        from django.test import override_settings

        from django_raft.contrib.celery.tasks import submit, submit_async

        from . import celery_app  # noqa: F401  (the app the tasks are sent with)
        from .cluster import SECRET

        members = {node.node_id: node.address for node in cluster.founders}
        with override_settings(
            DJANGO_RAFT={"SECRET": SECRET, "ADDRESS": second.address, "CLUSTER": members}
        ):
            for _ in range(3):
                submit_async("kv.incr", key="async")
            client_id = django_raft.Client().open_session()
            for _ in range(3):  # the same task delivered three times
                submit.delay("kv.incr", {"key": "once"}, client_id, 1)
        wait_for(
            lambda: watcher.kv().get("async") == "3" and watcher.kv().get("once") == "1",
            30,
            "the commands sent through Celery",
        )
        time.sleep(1.0)
        assert watcher.kv().get("once") == "1"
    finally:
        for variable in ("CELERY_BROKER_URL", "RAFT_TEST_BROKER", "RAFT_TEST_QUEUE"):
            os.environ.pop(variable, None)
        if worker is not None:
            worker.kill()
            worker.wait(timeout=20)
        cluster.close()
