"""Fixtures shared by the whole test suite (pytest-django provides the Django ones)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from django.db import connections


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup: None, django_db_blocker: Any) -> Iterator[None]:
    """pytest-django's test databases, whose PostgreSQL ones are left by every other
    session before they are dropped: the nodes' threads that ran in this process kept
    their connections (a thread's connection is not closed when the thread ends), and
    PostgreSQL refuses to drop a database in use."""
    yield
    with django_db_blocker.unblock():
        for connection in connections.all():
            if connection.vendor != "postgresql":
                continue
            with connection.cursor() as cursor:
                cursor.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            connection.close()
