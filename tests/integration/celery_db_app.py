"""The Celery app of the database-schedule beat test: no ``beat_schedule`` of its own
(the schedule is django-celery-beat's rows) and a task that counts each run by its id."""

from __future__ import annotations

from celery import Task

import django_raft

from .celery_app import app

app.conf.beat_schedule = {}


@app.task(name="raft_it.record_run", bind=True)
def record_run(self: Task) -> int:
    """Count this run against its id ``<periodic task>@<slot>``, through the log."""
    result: int = django_raft.do("kv.incr", key=f"run:{self.request.id}")
    return result
