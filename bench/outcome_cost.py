"""What recording each entry's outcome (``EntryOutcome``) costs the state machine.

    .venv/bin/python bench/outcome_cost.py [--batches 200] [--batch 128] [--rounds 5]

``StateMachine.apply`` on runs of ``--batch`` committed entries, as the node's loop
applies them, on a SQLite file made durable as a node's is (WAL; the apply transaction
itself does not wait for the disk), with outcome recording on and off, run by run (off:
the recording step replaced by nothing). Commands: ``kv.set`` (the demo's batch handler;
its result, the key's new version, is recorded for every entry), ``kv.incr`` (one call
per entry, result recorded) and ``bench.noop`` (returns None: nothing recorded). Of
``--rounds`` rounds, the one that took the least CPU time is kept for each mode (wall
clock entries/s are shown too). Prints a table and writes
``bench/results/outcome_cost.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench import standalone  # noqa: E402

WORKDIR = standalone.setup("outcome-cost-", "node.sqlite3")

from django.core.management import call_command  # noqa: E402

from django_raft.core import Entry, EntryType  # noqa: E402
from django_raft.models import EntryOutcome  # noqa: E402
from django_raft.node import outcome_log  # noqa: E402
from django_raft.node.statemachine import StateMachine  # noqa: E402
from django_raft.node.storage import make_durable  # noqa: E402
from django_raft.protocol.wire import encode_command  # noqa: E402

COMMANDS: dict[str, Callable[[int], tuple[str, dict[str, Any]]]] = {
    "kv.set": lambda i: ("kv.set", {"key": f"k{i % 1000}", "value": "v"}),
    "kv.incr": lambda i: ("kv.incr", {"key": f"n{i % 1000}"}),
    "bench.noop": lambda i: ("bench.noop", {"value": "0123456789"}),
}


def run(machine: StateMachine, command: str, batches: int, size: int) -> dict[str, Any]:
    """Apply ``batches`` runs of ``size`` entries, recording outcomes on every other run.

    Alternating run by run spreads what drifts (WAL checkpoints, garbage collection,
    other processes) evenly over both modes. Returns, per mode, entries/s in wall time
    and µs per run in wall and in this process's CPU time.
    """
    make = COMMANDS[command]
    first = machine.applied()[0] + 1
    runs = [
        [
            Entry(i, 1, EntryType.NORMAL, encode_command(*make(i)))
            for i in range(start, start + size)
        ]
        for start in range(first, first + batches * size, size)
    ]
    record = outcome_log.record
    spent = {"with": [0.0, 0.0], "without": [0.0, 0.0]}
    try:
        for number, entries in enumerate(runs):
            mode = "with" if number % 2 else "without"
            outcome_log.record = record if mode == "with" else _record_nothing
            wall, cpu = time.perf_counter(), time.process_time()
            machine.apply(entries)
            spent[mode][0] += time.perf_counter() - wall
            spent[mode][1] += time.process_time() - cpu
    finally:
        outcome_log.record = record
    count = {"with": batches // 2, "without": batches - batches // 2}
    return {
        mode: {
            "entries_per_s": round(count[mode] * size / wall),
            "us_per_run": round(wall / count[mode] * 1e6, 1),
            "cpu_us_per_run": round(cpu / count[mode] * 1e6, 1),
        }
        for mode, (wall, cpu) in spent.items()
    }


def _record_nothing(alias: str, outcomes: dict[int, Any], notes: Any = None) -> None:
    """Outcome recording turned off."""


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5)
    options = parser.parse_args()
    call_command("migrate", verbosity=0)
    make_durable("default")
    machine = StateMachine("default", "bench")
    results: dict[str, Any] = {
        "batch": options.batch,
        "batches": options.batches,
        "rounds": options.rounds,
        "commands": {},
    }
    for command in COMMANDS:
        run(machine, command, 10, options.batch)  # warm: keys created, caches filled
        best: dict[str, dict[str, float]] = {}
        for _ in range(options.rounds):
            for mode, row in run(machine, command, options.batches, options.batch).items():
                if mode not in best or row["cpu_us_per_run"] < best[mode]["cpu_us_per_run"]:
                    best[mode] = row
        without, with_ = best["without"]["cpu_us_per_run"], best["with"]["cpu_us_per_run"]
        results["commands"][command] = {
            **best,
            "cost_us_per_entry": round((with_ - without) / options.batch, 2),
            "cost_percent": round((with_ / without - 1) * 100, 1),
        }
    results["outcome_rows"] = EntryOutcome.objects.count()
    print(
        f"StateMachine.apply, runs of {options.batch} entries, SQLite (WAL), "
        f"best of {options.rounds} rounds of {options.batches} runs (CPU time)"
    )
    columns = ("without /s", "with /s", "µs/run w/o", "µs/run with", "µs/entry", "cost")
    print(f"{'command':12}" + "".join(f"{column:>12}" for column in columns))
    for command, row in results["commands"].items():
        cells = (
            f"{row['without']['entries_per_s']:,}",
            f"{row['with']['entries_per_s']:,}",
            f"{row['without']['cpu_us_per_run']:.0f}",
            f"{row['with']['cpu_us_per_run']:.0f}",
            f"{row['cost_us_per_entry']:+.2f}",
            f"{row['cost_percent']:+.1f}%",
        )
        print(f"{command:12}" + "".join(f"{cell:>12}" for cell in cells))
    out = ROOT / "bench" / "results" / "outcome_cost.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    standalone.run(main)
