"""The README's database-schedule example runs as written: the router and the settings put
django-celery-beat's tables in the shared database, the shell block writes a periodic task
there, the Raft database scheduler reads it, and the check that warns about a schedule
in the node's own database stays quiet.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_readme import MANAGE, SCAFFOLD, blocks

pytest.importorskip("django_celery_beat")

SHARED = """
# Added by the test: the shared database, a SQLite file here.
DATABASES["shared"] = {"ENGINE": "django.db.backends.sqlite3", "NAME": os.environ["SHARED_DB"]}
"""

READ = """
from celery import Celery
from django_raft.contrib.celery.dbschedule import RaftDatabaseScheduler

app = Celery(set_as_current=False)
app.conf.result_expires = None
beat = RaftDatabaseScheduler(app=app)
beat.refresh()
entry = beat.entries()["refresh-flags"]
print(entry.task, int(entry.schedule.run_every.total_seconds()))
"""


def tables(path: Path) -> set[str]:
    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    return {name for (name,) in rows}


@pytest.mark.slow
def test_the_database_schedule_example_shares_the_schedule(tmp_path: Path) -> None:
    project = tmp_path / "project"
    code = blocks()
    for where, text in code.items():
        if where.startswith("shell") or where == "myproject/settings_beat.py":
            continue
        path = project / where
        path.parent.mkdir(parents=True, exist_ok=True)
        (path.parent / "__init__.py").touch()
        extra = SCAFFOLD + code["myproject/settings_beat.py"] + SHARED
        path.write_text(text + (extra if where == "myproject/settings.py" else ""))
    (project / "manage.py").write_text(MANAGE)
    (project / "myproject" / "urls.py").write_text("urlpatterns = []\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAFT_", "DJANGO_"))}
    env.update(
        DJANGO_SETTINGS_MODULE="myproject.settings",
        DB=str(tmp_path / "node.sqlite3"),
        SHARED_DB=str(tmp_path / "shared.sqlite3"),
        RAFT_NODE_ID="n1",
        RAFT_ADDRESS="http://127.0.0.1:8001",
        RAFT_CLUSTER="n1=http://127.0.0.1:8001",
        RAFT_SECRET="readme-secret-" + "r" * 32,
    )

    def manage(*arguments: str) -> str:
        result = subprocess.run(
            [sys.executable, "manage.py", *arguments],
            cwd=project,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout + result.stderr

    manage("makemigrations", "myapp", "-v", "0")
    manage("migrate", "-v", "0")
    manage("migrate", "--database", "shared", "-v", "0")
    assert "django_celery_beat_periodictask" in tables(tmp_path / "shared.sqlite3")
    assert "django_celery_beat_periodictask" not in tables(tmp_path / "node.sqlite3")
    assert "django_raft_beattask" not in tables(tmp_path / "shared.sqlite3")
    manage("shell", "-v", "0", "-c", code["shell-beat"])
    assert manage("shell", "-v", "0", "-c", READ).split() == ["myapp.tasks.refresh_flags", "60"]
    assert "W004" not in manage("check")
