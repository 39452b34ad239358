"""Settings of the database-schedule beat test: the demo project, plus django-celery-beat
with its tables in a database every server shares (``RAFT_TEST_SCHEDULE_DB``, SQLite)."""

from __future__ import annotations

import os
from typing import Any

from demo_project.settings import *  # noqa: F403
from demo_project.settings import DATABASES, INSTALLED_APPS

INSTALLED_APPS = [*INSTALLED_APPS, "django_celery_beat"]
DATABASES = {
    **DATABASES,
    "schedule": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ["RAFT_TEST_SCHEDULE_DB"],
    },
}
DATABASE_ROUTERS = ["tests.integration.beat_db_settings.SharedSchedule"]


class SharedSchedule:
    """django-celery-beat's tables live in the shared ``schedule`` database, alone."""

    def db_for_read(self, model: Any, **hints: Any) -> str | None:
        return "schedule" if model._meta.app_label == "django_celery_beat" else None

    db_for_write = db_for_read

    def allow_migrate(self, db: str, app_label: str, **hints: Any) -> bool:
        return (db == "schedule") == (app_label == "django_celery_beat")
