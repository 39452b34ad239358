"""Measure the admin: the log page on a 1,000,000-entry log, and the dashboard with a node down.

    .venv/bin/python bench/admin_bench.py [--entries 1000000] [--repeat 20] [--log-only]

The log pages are asked in this process (Django's test client) of a SQLite database
holding ``--entries`` log entries (``kv.set`` commands and one ``kv.delete`` in 1,000,
10 per term, every applied one with its recorded outcome): the first page, a later page,
a deep page, filters by a common command, a rare one and one that matches nothing
(each scans at most ``logview.SCAN_WINDOW`` entries), search, an entry's page, and the
REST API's cursor pages. The dashboard asks a real 3-node cluster (``manage.py
raftnode`` processes): all up, one follower killed (connection refused), one follower
frozen with SIGSTOP (it answers nothing: the per-node timeout bounds the wait);
``--log-only`` skips it. Prints a table and writes ``bench/results/admin.json``
(``admin_log.json`` with ``--log-only``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "demo_project.settings")
WORKDIR = Path(tempfile.mkdtemp(prefix="admin-bench-"))
os.environ["DJANGO_SQLITE_PATH"] = str(WORKDIR / "web.sqlite3")

import django  # noqa: E402

django.setup()

from django.contrib.auth.models import User  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.test import Client, override_settings  # noqa: E402
from django.test.utils import setup_test_environment  # noqa: E402

from django_raft.client import monitor  # noqa: E402
from django_raft.logview import SCAN_WINDOW  # noqa: E402
from django_raft.protocol.wire import encode_command  # noqa: E402
from tests.integration.cluster import SECRET, Cluster  # noqa: E402


def timed(call: Callable[[], Any], repeat: int) -> dict[str, float]:
    """Run ``call`` ``repeat`` times; return p50, p95 and max in milliseconds."""
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        call()
        samples.append((time.perf_counter() - started) * 1000)
    ordered = sorted(samples)
    return {
        "p50_ms": round(statistics.median(ordered), 2),
        "p95_ms": round(ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))], 2),
        "max_ms": round(ordered[-1], 2),
    }


RARE = "kv.delete"
"""The command of one entry in ``RARE_EVERY``; all the others are ``kv.set``."""
RARE_EVERY = 1000


def command(index: int) -> str:
    return RARE if index % RARE_EVERY == 0 else "kv.set"


def fill_log(path: Path, count: int) -> float:
    """Write ``count`` entries straight into the SQLite file; return the seconds it took."""
    started = time.perf_counter()
    db = sqlite3.connect(path)
    db.execute("PRAGMA synchronous=OFF")
    rows = (
        (
            i,
            1 + i // 10,
            0,
            command(i),
            encode_command(command(i), {"key": f"k{i % 1000}", "value": "v"}),
        )
        for i in range(1, count + 1)
    )
    db.executemany(
        'INSERT INTO django_raft_logentry ("index", term, type, command, data) VALUES (?,?,?,?,?)',
        rows,
    )
    # Every applied kv.set has its result (the key's new version) recorded, as a node would.
    db.executemany(
        'INSERT INTO django_raft_entryoutcome ("index", ok, text, truncated) VALUES (?,?,?,?)',
        ((i, 1, str(1 + i // 1000), 0) for i in range(1, count - 100 + 1)),
    )
    db.execute(
        "INSERT INTO django_raft_appliedstate (id, applied_index, applied_term) VALUES (1, ?, ?)",
        (count - 100, 1 + (count - 100) // 10),
    )
    db.execute(
        'INSERT INTO django_raft_hardstate (id, term, vote, "commit") VALUES (1, ?, "", ?)',
        (1 + count // 10, count),
    )
    db.commit()
    db.close()
    return time.perf_counter() - started


def ok(client: Client, url: str, **params: Any) -> Callable[[], None]:
    def call() -> None:
        response = client.get(url, params)
        assert response.status_code == 200, (url, response.status_code)

    return call


def log_pages(client: Client, count: int, repeat: int) -> dict[str, dict[str, float]]:
    page = "/admin/django_raft/logentry/"
    api = "/api/raft/log"
    cursor = client.get(api).json()["next"]
    return {
        "admin log, first page": timed(ok(client, page), repeat),
        "admin log, page 2": timed(ok(client, page, p=2), repeat),
        "admin log, page 1000": timed(ok(client, page, p=min(1000, count // 50)), repeat),
        "admin log, last page": timed(ok(client, page, p=count // 50), max(3, repeat // 5)),
        "admin log, filter command (every entry)": timed(
            ok(client, page, command="kv.set"), repeat
        ),
        "admin log, same, page 2": timed(ok(client, page, command="kv.set", p=2), repeat),
        f"admin log, filter command (1 in {RARE_EVERY})": timed(
            ok(client, page, command=RARE), repeat
        ),
        "admin log, filter command (no match)": timed(ok(client, page, command="kv.nope"), repeat),
        "admin log, same, next window (before=)": timed(
            ok(client, page, command="kv.nope", before=count - SCAN_WINDOW + 1), repeat
        ),
        "admin log, filter term (latest)": timed(ok(client, page, term=count // 10), repeat),
        "admin log, search (no match)": timed(ok(client, page, q="kv.nope"), repeat),
        "admin log entry page": timed(ok(client, f"{page}{count // 2}/change/"), repeat),
        "api log, first page": timed(ok(client, api), repeat),
        "api log, next cursor page": timed(lambda: client.get(cursor), repeat),
        "api log, filter command (every entry)": timed(ok(client, api, command="kv.set"), repeat),
        f"api log, filter command (1 in {RARE_EVERY})": timed(
            ok(client, api, command=RARE), repeat
        ),
        "api log, filter command (no match)": timed(ok(client, api, command="kv.nope"), repeat),
    }


def dashboard(client: Client, cluster: Cluster, repeat: int) -> dict[str, dict[str, float]]:
    url = "/admin/django_raft/member/dashboard/"
    leader = cluster.leader()
    follower = next(n for n in cluster.founders if n is not leader)
    results = {
        "gather, all up": timed(lambda: monitor.gather(), repeat),
        "dashboard, all up": timed(ok(client, url), repeat),
    }
    assert follower.process is not None
    follower.process.send_signal(signal.SIGSTOP)
    try:
        results["dashboard, one follower frozen (SIGSTOP)"] = timed(ok(client, url), 5)
    finally:
        follower.process.send_signal(signal.SIGCONT)
    follower.kill()
    results["gather, one follower killed"] = timed(lambda: monitor.gather(), repeat)
    results["dashboard, one follower killed"] = timed(ok(client, url), repeat)
    view = monitor.gather()
    assert view.leader == leader.node_id and not view.healthy, view.problems
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--log-only", action="store_true", help="skip the dashboard's cluster")
    options = parser.parse_args()
    setup_test_environment()
    call_command("migrate", verbosity=0)
    fill_seconds = fill_log(WORKDIR / "web.sqlite3", options.entries)
    user = User.objects.create_superuser("bench", "bench@example.com", "pw")
    client = Client()
    client.force_login(user)
    results: dict[str, Any] = {"entries": options.entries, "fill_seconds": round(fill_seconds, 1)}
    results["log"] = log_pages(client, options.entries, options.repeat)
    cluster = Cluster(WORKDIR / "cluster")
    (WORKDIR / "cluster").mkdir()
    try:
        if not options.log_only:
            cluster.start()
            cluster.leader()
            raft = {
                "SECRET": SECRET,
                "ADDRESS": cluster.nodes["n1"].address,
                "CLUSTER": {n.node_id: n.address for n in cluster.founders},
            }
            with override_settings(DJANGO_RAFT=raft):
                results["dashboard"] = dashboard(client, cluster, options.repeat)
    finally:
        cluster.close()
        shutil.rmtree(WORKDIR, ignore_errors=True)
    results["per_node_timeout_s"] = monitor.TIMEOUT
    results["scan_window"] = SCAN_WINDOW
    print(f"log of {options.entries:,} entries (SQLite), written in {fill_seconds:.1f} s")
    print(f"{'measurement':44} {'p50 ms':>9} {'p95 ms':>9} {'max ms':>9}")
    for group in ("log", "dashboard"):
        for name, row in results.get(group, {}).items():
            print(f"{name:44} {row['p50_ms']:9.1f} {row['p95_ms']:9.1f} {row['max_ms']:9.1f}")
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    name = "admin_log.json" if options.log_only else "admin.json"
    (out / name).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
