"""What applying a committed entry costs the state machine, per command, with and
without a client session.

    .venv/bin/python bench/apply_cost.py [--batches 100] [--batch 128] [--rounds 3]
        [--label after] [--compare bench/results/apply_cost_before.json]

``StateMachine.apply`` on runs of ``--batch`` committed entries, as the node's loop
applies them, on a SQLite file made durable as a node's is (WAL; the apply transaction
does not wait for the disk). Commands: ``bench.noop`` (returns None), ``kv.set`` (the
demo's batch handler) and ``kv.incr``, each plain and session-tracked: in the latter
every entry carries ``(client_id, sequence)`` of one of ``--clients`` sessions, taken in
turn as concurrent web processes send them, stamped with a log time that advances 1 ms
every 4 entries (so expiry sweeps run, once per second of log time). Of ``--rounds``
rounds, the one that took the least CPU time is kept. Prints a table of µs per entry
(CPU time) and writes ``bench/results/apply_cost_<label>.json``; with ``--compare``,
the figures of an earlier run (another commit) are shown beside.
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

WORKDIR = standalone.setup("apply-cost-", "node.sqlite3")

from django.core.management import call_command  # noqa: E402

from django_raft.core import Entry, EntryType  # noqa: E402
from django_raft.node import sessions  # noqa: E402
from django_raft.node.statemachine import StateMachine  # noqa: E402
from django_raft.node.storage import make_durable  # noqa: E402
from django_raft.protocol.wire import encode_command  # noqa: E402

COMMANDS: dict[str, Callable[[int], tuple[str, dict[str, Any]]]] = {
    "bench.noop": lambda i: ("bench.noop", {"value": "0123456789"}),
    "kv.set": lambda i: ("kv.set", {"key": f"k{i % 1000}", "value": "v"}),
    "kv.incr": lambda i: ("kv.incr", {"key": f"n{i % 1000}"}),
}
CASES = [(command, tracked) for command in COMMANDS for tracked in (False, True)]


class Feeder:
    """Makes the committed entries: indexes in order, sessions opened on first use."""

    def __init__(self, machine: StateMachine, clients: int) -> None:
        self.machine = machine
        self.index = machine.applied()[0]
        self.time_ms = 1
        opening = encode_command(sessions.OPEN_SESSION, {"timeout_ms": 3_600_000})
        entries = [self.entry(opening) for _ in range(clients)]
        outcomes = machine.apply(entries)
        self.sessions = [[outcomes[entry.index].value, 0] for entry in entries]
        self.turn = 0

    def entry(self, data: bytes) -> Entry:
        self.index += 1
        return Entry(self.index, 1, EntryType.NORMAL, data)

    def command(self, command: str, tracked: bool) -> Entry:
        name, arguments = COMMANDS[command](self.index)
        if not tracked:
            return self.entry(encode_command(name, arguments))
        session = self.sessions[self.turn % len(self.sessions)]
        self.turn += 1
        session[1] += 1
        if self.turn % 4 == 0:
            self.time_ms += 1
        return self.entry(encode_command(name, arguments, session[0], session[1], self.time_ms))


def run(feeder: Feeder, command: str, tracked: bool, batches: int, size: int) -> float:
    """Apply ``batches`` runs of ``size`` entries; return the CPU µs per entry."""
    spent = 0.0
    for _ in range(batches):
        entries = [feeder.command(command, tracked) for _ in range(size)]
        cpu = time.process_time()
        outcomes = feeder.machine.apply(entries)
        spent += time.process_time() - cpu
        failed = [outcome for outcome in outcomes.values() if not outcome.ok]
        if failed:
            raise RuntimeError(f"{command}: {failed[0].error}")
    return spent / (batches * size) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--batches", type=int, default=100)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--label", default="after")
    parser.add_argument("--compare", type=Path, default=None)
    options = parser.parse_args()
    call_command("migrate", verbosity=0)
    make_durable("default")
    feeder = Feeder(StateMachine("default", "bench"), options.clients)
    results: dict[str, Any] = {
        "label": options.label,
        "batch": options.batch,
        "batches": options.batches,
        "rounds": options.rounds,
        "clients": options.clients,
        "us_per_entry": {},
    }
    for command, tracked in CASES:
        run(feeder, command, tracked, 5, options.batch)  # warm: keys created, caches filled
        best = min(
            run(feeder, command, tracked, options.batches, options.batch)
            for _ in range(options.rounds)
        )
        results["us_per_entry"][_case(command, tracked)] = round(best, 1)
    before = json.loads(options.compare.read_text())["us_per_entry"] if options.compare else {}
    print(
        f"StateMachine.apply, runs of {options.batch} entries, SQLite (WAL), CPU µs per entry, "
        f"best of {options.rounds} rounds of {options.batches} runs"
    )
    print(f"{'case':22}{'before':>10}{options.label:>10}")
    for case, value in results["us_per_entry"].items():
        old = f"{before[case]:.1f}" if case in before else "-"
        print(f"{case:22}{old:>10}{value:>10.1f}")
    out = ROOT / "bench" / "results" / f"apply_cost_{options.label}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")


def _case(command: str, tracked: bool) -> str:
    return f"{command} + session" if tracked else command


if __name__ == "__main__":
    standalone.run(main)
