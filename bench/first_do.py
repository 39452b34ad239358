"""What a web process's first ``django_raft.do()`` loads and costs.

    .venv/bin/python bench/first_do.py [--runs 7]

Starts one ``manage.py raftnode`` (SQLite) on 127.0.0.1, then, ``--runs`` times, a fresh
Python process set up as a web process of that cluster (``ADDRESS`` names the node, no
``NODE_ID``): after ``django.setup()`` it calls ``do("kv.set", ...)`` twice and reports
which modules the first call imported and how long each call took. Prints the medians,
the ``django_raft`` modules the first call imported and how many the process holds
after it, and writes ``bench/results/first_do.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.integration.cluster import Cluster  # noqa: E402

CHILD = """
import json, sys, time
import django
django.setup()
before = set(sys.modules)
started = time.perf_counter()
import django_raft
django_raft.do("kv.set", key="first", value="1")
first = time.perf_counter() - started
started = time.perf_counter()
django_raft.do("kv.set", key="second", value="2")
second = time.perf_counter() - started
loaded = sorted(set(sys.modules) - before)
ours = sorted(m for m in sys.modules if m.startswith("django_raft"))
times = {"first_ms": first * 1000, "second_ms": second * 1000}
print(json.dumps({**times, "loaded": loaded, "ours": ours}))
"""


def one_run(env: dict[str, str]) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-c", CHILD],
        env=env,
        cwd=ROOT,
        capture_output=True,
        check=True,
        timeout=60,
    )
    result: dict[str, Any] = json.loads(done.stdout.decode().strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7, help="fresh web processes (7)")
    parser.add_argument("--results", type=Path, default=ROOT / "bench" / "results")
    options = parser.parse_args()
    if options.runs < 1:
        parser.error("--runs must be at least 1")
    with tempfile.TemporaryDirectory(prefix="first-do-") as workdir:
        cluster = Cluster(Path(workdir), size=1)
        try:
            cluster.start()
            node = cluster.leader()
            env = node.env()
            del env["RAFT_NODE_ID"]  # a web process, not the node
            runs = [one_run(env) for _ in range(options.runs)]
        finally:
            cluster.close()
    ours = [m for m in runs[-1]["loaded"] if m.startswith("django_raft")]
    summary = {
        "runs": options.runs,
        "first_do_ms_median": round(statistics.median(r["first_ms"] for r in runs), 1),
        "second_do_ms_median": round(statistics.median(r["second_ms"] for r in runs), 2),
        "modules_loaded": len(runs[-1]["loaded"]),
        "django_raft_modules_loaded": len(ours),
        "django_raft_modules": ours,
        "django_raft_modules_in_process": len(runs[-1]["ours"]),
    }
    print(f"{'':34} {'value':>10}")
    for key in ("first_do_ms_median", "second_do_ms_median", "modules_loaded"):
        print(f"{key:34} {summary[key]:>10}")
    print(f"{'django_raft_modules_loaded':34} {len(ours):>10}")
    print(f"{'django_raft_modules_in_process':34} {summary['django_raft_modules_in_process']:>10}")
    print("  " + " ".join(m.removeprefix("django_raft.") for m in ours))
    options.results.mkdir(parents=True, exist_ok=True)
    (options.results / "first_do.json").write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
