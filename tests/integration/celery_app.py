"""The Celery app of the beat test: a 1-second schedule whose task counts its slot.

Configured from the environment by the test: ``RAFT_TEST_BROKER``, ``RAFT_TEST_QUEUE``.
"""

from __future__ import annotations

import os

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "demo_project.settings")
django.setup()

from celery import Celery, Task  # noqa: E402

import django_raft  # noqa: E402
from django_raft.contrib.celery.tasks import leader_only_task  # noqa: E402

app = Celery("raft_it", broker=os.environ.get("RAFT_TEST_BROKER", "redis://127.0.0.1:6379/0"))
app.conf.task_default_queue = os.environ.get("RAFT_TEST_QUEUE", "raft-it")
app.conf.beat_schedule = {"every-second": {"task": "raft_it.record_slot", "schedule": 1.0}}
app.conf.beat_max_loop_interval = 0.25
app.conf.broker_connection_retry_on_startup = True
app.conf.worker_hijack_root_logger = False
app.conf.imports = ["django_raft.contrib.celery.tasks"]


@app.task(name="raft_it.record_slot", bind=True)
def record_slot(self: Task) -> int:
    """Count this run against its slot, through the log (a duplicate would count 2)."""
    slot = str(self.request.id).rsplit("@", 1)[1]
    result: int = django_raft.do("kv.incr", key=f"slot:{slot}")
    return result


@app.task(name="raft_it.record_signal")
def record_signal(signal: str, node_id: str, value: object, prev_value: object) -> int:
    """Record a forwarded Raft signal in the replicated store."""
    result: int = django_raft.do("kv.set", key=f"signal:{node_id}:{signal}", value=str(value))
    return result


@app.task(name="raft_it.fenced_write")
@leader_only_task("nightly", ttl=30)
def fenced_write(value: str, fencing_token: int) -> int:
    """Leader-only, under the lock: write with the fencing token."""
    result: int = django_raft.do(
        "kv.fenced_set", key="nightly", value=value, lock="nightly", token=fencing_token
    )
    return result
