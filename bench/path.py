"""Where the time of one command goes: a timeline of a write and of a linearizable read
through three django-raft nodes, from the client's send to its answer.

    bench/path [--operations 1000] [--rows write-1,read-1] [--repo PATH] [--out DIR]

Runs ``bench/etcd.py``'s ``write-1`` and ``read-1`` rows on django-raft alone (one call
at a time, one client on the leader), every process started with ``bench/tracing`` on
``PYTHONPATH``: its ``sitecustomize`` records, in each process, when the stages of a
command happen (the client sends, the node reads the frame, the loop takes it, persists,
sends, the followers persist and answer, the applier applies, the answer is written, the
client receives it). Times are CLOCK_MONOTONIC, one clock for every process of the
machine. For each call (the first quarter is left out, as warm-up) the stages found
between the client's send and its answer are put on one timeline; the table gives, per
stage, in which process it happened and its median time after the send, for the stages
seen in most calls, in the order of those medians. Prints the tables and writes
``bench/results/path-<timestamp>.json``. The tracing costs a few microseconds per stage:
the total is a little above what ``bench/etcd`` reports.
"""

from __future__ import annotations

import argparse
import bisect
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
TRACING = ROOT / "bench" / "tracing"
SENT = ("client sends", "client posts")
RECEIVED = ("client receives", "client has the answer")
LEADER_MARKS = ("node reads a client frame", "node handles the request")

Event = tuple[int, str, str]
"""(ns, process, tag)."""


def read_events(folder: Path) -> list[Event]:
    """Every process's marks, in time order."""
    events: list[Event] = []
    for path in sorted(folder.glob("*.log")):
        for line in path.read_text().splitlines():
            stamp, _, tag = line.partition(" ")
            events.append((int(stamp), path.stem, tag))
    events.sort()
    return events


def roles(events: list[Event]) -> dict[str, str]:
    """Name each process by what it does: the client (it sends), the leader (it reads the
    client's frames), the followers (the other processes that persist)."""
    named: dict[str, str] = {}
    for _, process, tag in events:
        if tag in SENT:
            named.setdefault(process, "client")
        elif tag in LEADER_MARKS:
            named.setdefault(process, "leader")
    followers = sorted({p for _, p, t in events if t == "persist ends"} - set(named))
    for number, process in enumerate(followers, 1):
        named[process] = f"follower {number}"
    return named


def timeline(events: list[Event]) -> dict[str, Any]:
    """The median timeline of the calls found in ``events`` (see the module)."""
    named = roles(events)
    ends = [(t, tag) for t, p, tag in events if named.get(p) == "client" and tag in SENT + RECEIVED]
    calls = [(a[0], b[0]) for a, b in itertools.pairwise(ends) if a[1] in SENT and b[1] in RECEIVED]
    calls = calls[len(calls) // 4 :]
    stamps = [event[0] for event in events]
    offsets: dict[tuple[str, str, int], list[float]] = defaultdict(list)
    for sent, received in calls:
        seen: Counter[tuple[str, str]] = Counter()
        for stamp, process, tag in events[
            bisect.bisect_left(stamps, sent) : bisect.bisect_right(stamps, received)
        ]:
            key = (named.get(process, "other"), tag)
            seen[key] += 1
            offsets[(*key, seen[key])].append((stamp - sent) / 1000)
    stages: list[dict[str, Any]] = sorted(
        (
            {
                "process": process,
                "stage": tag if count == 1 else f"{tag} ({count})",
                "median_us": round(statistics.median(values), 1),
                "share_of_calls": round(len(values) / len(calls), 2),
            }
            for (process, tag, count), values in offsets.items()
            if len(values) >= 0.6 * len(calls)
        ),
        key=lambda stage: stage["median_us"],
    )
    totals = [(b - a) / 1000 for a, b in calls]
    return {
        "calls": len(calls),
        "median_us": round(statistics.median(totals), 1) if totals else None,
        "stages": stages,
    }


def format_timeline(row: str, found: dict[str, Any]) -> str:
    lines = [f"{row}: {found['calls']} calls, median {found['median_us']} µs send to answer"]
    lines.append(f"{'after send µs':>14}  {'step µs':>8}  {'process':<11} stage")
    before = 0.0
    for stage in found["stages"]:
        step = stage["median_us"] - before
        before = stage["median_us"]
        lines.append(
            f"{stage['median_us']:>14.0f}  {step:>8.0f}  {stage['process']:<11} {stage['stage']}"
        )
    return "\n".join(lines)


def run_row(row: str, operations: int, repo: Path | None) -> dict[str, Any]:
    """Run one row of ``bench/etcd.py`` traced; return its timeline."""
    with tempfile.TemporaryDirectory(prefix="raft-path-") as folder:
        env = dict(os.environ, RAFT_TRACE=folder)
        env["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(TRACING), os.environ.get("PYTHONPATH", "")])
        )
        argv = [sys.executable, str(ROOT / "bench" / "etcd.py"), "--systems", "django-raft"]
        argv += ["--only", row, "--operations", str(operations), "--no-plot", "--out", folder]
        if repo is not None:
            argv += ["--repo", str(repo)]
        subprocess.run(argv, check=True, env=env, stdout=subprocess.DEVNULL)
        return timeline(read_events(Path(folder)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--operations", type=int, default=1000)
    parser.add_argument("--rows", default="write-1,read-1")
    parser.add_argument("--repo", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=RESULTS)
    options = parser.parse_args(argv)
    if options.operations < 8:
        parser.error("--operations must be at least 8")
    rows = [row for row in options.rows.split(",") if row]
    if not rows or any(row not in ("write-1", "read-1") for row in rows):
        parser.error("--rows takes write-1 and/or read-1")
    report = {row: run_row(row, options.operations, options.repo) for row in rows}
    for row, found in report.items():
        print(format_timeline(row, found), end="\n\n")
    options.out.mkdir(parents=True, exist_ok=True)
    out = options.out / f"path-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
