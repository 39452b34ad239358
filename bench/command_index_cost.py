"""What an index on the log's command name would cost every append, and what it would buy.

    .venv/bin/python bench/command_index_cost.py [--entries 1000000] [--appends 60]

A SQLite log of ``--entries`` entries (as ``bench/admin_bench.py`` writes it: ``kv.set``,
one ``kv.delete`` in 1,000) and a copy of it with an index on ``(command, index)``; then
``DjangoStorage.persist`` of runs of 1,000 new entries, as a node appends them (durable:
WAL, fsync on commit), to one and to the other in turn (so that what drifts, such as
other processes, weighs on both alike). Then
the newest 51 entries of a command (the first page of a filter), with the index and
without it: the latter reads the log newest first, over the whole log or over one
``logview.SCAN_WINDOW`` (what the admin does). Prints tables and writes
``bench/results/command_index_cost.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ["DJANGO_SETTINGS_MODULE"] = "bench.settings"
WORKDIR = Path(tempfile.mkdtemp(prefix="command-index-"))
os.environ["DJANGO_SQLITE_PATH"] = str(WORKDIR / "plain.sqlite3")

import django  # noqa: E402
from django.conf import settings  # noqa: E402

settings.DATABASES["indexed"] = {
    **settings.DATABASES["default"],
    "NAME": WORKDIR / "indexed.sqlite3",
}
django.setup()

from django.core.management import call_command  # noqa: E402
from django.db import connections  # noqa: E402

from bench.admin_bench import command, fill_log  # noqa: E402
from django_raft.core import Entry, EntryType, HardState  # noqa: E402
from django_raft.logview import SCAN_WINDOW  # noqa: E402
from django_raft.node.storage import DjangoStorage, make_durable  # noqa: E402
from django_raft.protocol.wire import encode_command  # noqa: E402

RUN = 1000
CREATE = 'CREATE INDEX bench_command ON django_raft_logentry (command, "index")'


def append(storage: DjangoStorage, samples: dict[str, list[float]]) -> None:
    """Persist one run of ``RUN`` entries; add its wall and CPU ms to ``samples``."""
    first = storage.last_index() + 1
    entries = [
        Entry(i, 1, EntryType.NORMAL, encode_command(command(i), {"key": "k", "value": "v"}))
        for i in range(first, first + RUN)
    ]
    started, used = time.perf_counter(), time.process_time()
    storage.persist(HardState(1, "", entries[-1].index), entries, None)
    samples["wall"].append((time.perf_counter() - started) * 1000)
    samples["cpu"].append((time.process_time() - used) * 1000)


def first_page(alias: str, name: str, low: int) -> float:
    """ms to read the newest 51 entries of ``name`` at or above index ``low``."""
    started = time.perf_counter()
    with connections[alias].cursor() as cursor:
        cursor.execute(
            'SELECT "index", term, type, command, data FROM django_raft_logentry '
            'WHERE command = %s AND "index" >= %s ORDER BY "index" DESC LIMIT 51',
            [name, low],
        )
        cursor.fetchall()
    return (time.perf_counter() - started) * 1000


def median(values: list[float]) -> float:
    return round(statistics.median(values), 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--appends", type=int, default=60, help="runs appended to each log")
    options = parser.parse_args()
    call_command("migrate", verbosity=0)
    fill_log(WORKDIR / "plain.sqlite3", options.entries)
    shutil.copy(WORKDIR / "plain.sqlite3", WORKDIR / "indexed.sqlite3")
    with connections["indexed"].cursor() as cursor:
        cursor.execute(CREATE)
    storages = {}
    for mode, alias in (("without", "default"), ("with", "indexed")):
        make_durable(alias)
        storages[mode] = DjangoStorage(alias)
    samples: dict[str, dict[str, list[float]]] = {
        mode: {"wall": [], "cpu": []} for mode in storages
    }
    for storage in storages.values():  # warm
        append(storage, {"wall": [], "cpu": []})
    for _ in range(options.appends):
        for mode, storage in storages.items():
            append(storage, samples[mode])
    results: dict[str, Any] = {"entries": options.entries, "run": RUN, "appends": {}}
    for mode, values in samples.items():
        results["appends"][mode] = {f"{k}_ms_p50": median(v) for k, v in values.items()}
    for mode, alias in (("without", "default"), ("with", "indexed")):
        with connections[alias].cursor() as cursor:
            cursor.execute("PRAGMA page_count")
            (pages,) = cursor.fetchone()
            cursor.execute("PRAGMA page_size")
            (page_size,) = cursor.fetchone()
        results["appends"][mode]["database_mb"] = round(pages * page_size / 1e6, 1)
    last = storages["without"].last_index()
    reads: dict[str, dict[str, float]] = {}
    names = {"every entry": "kv.set", "1 in 1,000": "kv.delete", "no match": "kv.nope"}
    for label, name in names.items():
        reads[label] = {
            "whole log, no index": median([first_page("default", name, 0) for _ in range(3)]),
            "one window, no index": median(
                [first_page("default", name, last - SCAN_WINDOW + 1) for _ in range(5)]
            ),
            "whole log, index": median([first_page("indexed", name, 0) for _ in range(5)]),
        }
    results["first_page_ms"] = reads
    results["scan_window"] = SCAN_WINDOW
    without, with_ = results["appends"]["without"], results["appends"]["with"]
    print(f"persist {RUN} entries onto a {options.entries:,}-entry SQLite log (durable), p50")
    print(f"{'':22} {'wall ms':>9} {'CPU ms':>9} {'file MB':>9}")
    for mode, row in (("without the index", without), ("with the index", with_)):
        print(
            f"{mode:22} {row['wall_ms_p50']:9.2f} {row['cpu_ms_p50']:9.2f} "
            f"{row['database_mb']:9.1f}"
        )
    print(
        f"{'cost of the index':22} {with_['wall_ms_p50'] / without['wall_ms_p50'] - 1:+9.0%} "
        f"{with_['cpu_ms_p50'] / without['cpu_ms_p50'] - 1:+9.0%} "
        f"{with_['database_mb'] / without['database_mb'] - 1:+9.0%}"
    )
    print(f"\nnewest 51 entries of a command, ms (window: {SCAN_WINDOW:,} entries)")
    columns = ("whole log, no index", "one window, no index", "whole log, index")
    print(f"{'command':14}" + "".join(f"{c:>22}" for c in columns))
    for label, row in reads.items():
        print(f"{label:14}" + "".join(f"{row[c]:22.2f}" for c in columns))
    out = ROOT / "bench" / "results" / "command_index_cost.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    try:
        main()
    finally:
        for path in WORKDIR.iterdir():
            path.unlink()
        WORKDIR.rmdir()
