"""Settings of the database-schedule beat test: the demo project plus django-celery-beat,
its schedule either shared or replicated (``RAFT_TEST_SCHEDULE``):

- ``shared``: its tables in a database every server uses (``RAFT_TEST_SCHEDULE_DB``,
  SQLite), routed there;
- ``replicated``: its tables in each node's own database, listed in
  ``REPLICATED_MODELS`` and changed through ``django_raft.contrib.celery.periodic``.
"""

from __future__ import annotations

import os
from typing import Any

from django.apps import AppConfig

from demo_project.settings import *  # noqa: F403
from demo_project.settings import DATABASES, DJANGO_RAFT, INSTALLED_APPS

INSTALLED_APPS = [*INSTALLED_APPS, "django_celery_beat"]

if os.environ.get("RAFT_TEST_SCHEDULE") == "replicated":
    INSTALLED_APPS.append("tests.integration.beat_db_settings.PeriodicCommands")
    DJANGO_RAFT = {
        **DJANGO_RAFT,
        "REPLICATED_MODELS": [
            *DJANGO_RAFT["REPLICATED_MODELS"],
            "django_celery_beat.IntervalSchedule",
            "django_celery_beat.CrontabSchedule",
            "django_celery_beat.SolarSchedule",
            "django_celery_beat.ClockedSchedule",
            "django_celery_beat.PeriodicTask",
            "django_celery_beat.PeriodicTasks",
        ],
    }
else:
    DATABASES = {
        **DATABASES,
        "schedule": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": os.environ["RAFT_TEST_SCHEDULE_DB"],
        },
    }
    DATABASE_ROUTERS = ["tests.integration.beat_db_settings.SharedSchedule"]


class PeriodicCommands(AppConfig):
    """Registers the commands that change the replicated schedule."""

    name = "tests.integration"
    label = "raft_it_periodic"

    def ready(self) -> None:
        from django_raft.contrib.celery import periodic  # noqa: F401


class SharedSchedule:
    """django-celery-beat's tables live in the shared ``schedule`` database, alone."""

    def db_for_read(self, model: Any, **hints: Any) -> str | None:
        return "schedule" if model._meta.app_label == "django_celery_beat" else None

    db_for_write = db_for_read

    def allow_migrate(self, db: str, app_label: str, **hints: Any) -> bool:
        return (db == "schedule") == (app_label == "django_celery_beat")
