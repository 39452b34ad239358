"""Django set up for a benchmark script run on its own, on a SQLite file of its own.

    WORKDIR = standalone.setup("apply-cost-", "node.sqlite3")

Call it before importing anything of Django or django_raft; ``run(main)`` runs the
script and removes ``WORKDIR`` afterwards, whatever happens.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import django

WORKDIR: Path | None = None


def setup(prefix: str, database: str) -> Path:
    """Make a scratch directory, point ``bench.settings`` at ``database`` in it, set up
    Django; return the directory."""
    global WORKDIR
    WORKDIR = Path(tempfile.mkdtemp(prefix=prefix))
    os.environ["DJANGO_SETTINGS_MODULE"] = "bench.settings"
    os.environ["DJANGO_SQLITE_PATH"] = str(WORKDIR / database)
    django.setup()
    return WORKDIR


def run(main: Callable[[], None]) -> None:
    """Run ``main``, then remove the scratch directory ``setup`` made."""
    try:
        main()
    finally:
        if WORKDIR is not None:
            shutil.rmtree(WORKDIR, ignore_errors=True)
