"""Plot a ``bench/run.py`` result: throughput vs outstanding proposals, latency percentiles.

    .venv-bench/bin/python bench/plot.py bench/results/RUN.json bench/results/RUN.png

Runs in the bench environment, where matplotlib is installed. Points are medians over
the rounds; bars span min to max. A ``bench/etcd.py`` result (``"kind": "etcd"``) is
drawn as one panel per measure, etcd beside django-raft.
"""

from __future__ import annotations

import json
import statistics
import sys
from typing import Any

LABELS = {
    "django-raft": "django-raft (SQLite, fsync)",
    "pysyncobj-journal": "PySyncObj journal (no fsync)",
    "pysyncobj-memory": "PySyncObj in memory",
    "pysyncobj-nobatch": "PySyncObj journal, batching off",
}


def by_variant(report: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """{variant: [its measurements in each round]}."""
    variants: dict[str, list[dict[str, Any]]] = {}
    for round_result in report["rounds"]:
        if "django-raft" in round_result:
            variants.setdefault("django-raft", []).append(round_result["django-raft"])
        for name, data in round_result.get("pysyncobj", {}).items():
            variants.setdefault(name, []).append(data)
    return variants


def spread(values: list[float]) -> tuple[float, float, float]:
    middle = statistics.median(values)
    return middle, middle - min(values), max(values) - middle


COLORS = {"etcd": "#888", "django-raft": "#2a7"}


def plot_versus_etcd(report: dict[str, Any], plt: Any) -> Any:
    """One panel per measure of a ``bench/etcd.py`` summary: median bars, min-max spans."""
    summary = report["summary"]
    columns = 4
    rows = max(1, -(-len(summary) // columns))
    figure, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 3.0 * rows), squeeze=False)
    for axis in axes.flat[len(summary) :]:
        axis.set_visible(False)
    for axis, entry in zip(axes.flat, summary, strict=False):
        names = [s for s in ("etcd", "django-raft") if s in entry]
        medians = [entry[s]["median"] for s in names]
        below = [entry[s]["median"] - entry[s]["min"] for s in names]
        above = [entry[s]["max"] - entry[s]["median"] for s in names]
        axis.bar(names, medians, yerr=[below, above], capsize=4, color=[COLORS[n] for n in names])
        better = "lower" if entry["better"] == "lower" else "higher"
        title = f"{entry['row']}: {entry['metric']}"
        if entry.get("ratio") is not None:
            title += f"\nratio {entry['ratio']:.2f} ({better} is better)"
        axis.set_title(title, fontsize=9)
        axis.grid(True, axis="y", alpha=0.3)
    machine = report.get("machine_before", {})
    repo = report.get("repo", {})
    figure.suptitle(
        f"django-raft vs {machine.get('etcd', 'etcd')} · {report['started']} · django-raft "
        f"{repo.get('commit', '?')}{' (modified)' if repo.get('modified') else ''} · "
        f"{machine.get('cpus')} CPUs · load average {machine.get('load_average', [0])[0]:.2f}",
        fontsize=10,
    )
    figure.tight_layout()
    return figure


def main() -> None:
    import matplotlib  # type: ignore[import-not-found, unused-ignore]

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # type: ignore[import-not-found, unused-ignore]

    with open(sys.argv[1]) as file:
        report = json.load(file)
    if report.get("kind") == "etcd":
        plot_versus_etcd(report, plt).savefig(sys.argv[2], dpi=110)
        return
    variants = by_variant(report)
    figure, (left, right) = plt.subplots(1, 2, figsize=(13, 5))

    for name, rounds in variants.items():
        points: dict[int, list[float]] = {}
        capped = 0
        for data in rounds:
            for requested, run in data.get("throughput", {}).items():
                points.setdefault(int(requested), []).append(run["commands_per_second"])
                if run["outstanding"] < int(requested):
                    capped = run["outstanding"]
        if not points:
            continue
        label = LABELS.get(name, name)
        if capped:  # a runtime without propose_async: a pool of blocking proposals
            label += f" (at most {capped} in flight)"
        xs = sorted(points)
        stats = [spread(points[x]) for x in xs]
        left.errorbar(
            xs,
            [s[0] for s in stats],
            yerr=[[s[1] for s in stats], [s[2] for s in stats]],
            marker="o",
            capsize=3,
            label=label,
        )
    left.set_xscale("log")
    left.set_yscale("log")
    left.set_xlabel("proposals outstanding (in the leader's process)")
    left.set_ylabel("commands applied per second")
    left.set_title("Throughput, 3 nodes, 10-byte commands, trivial handler")
    left.grid(True, which="both", alpha=0.3)
    left.legend()

    bars: list[tuple[str, float, float]] = []
    for name, key, title in (
        ("django-raft", "latency", "django-raft in-process"),
        ("django-raft", "http-latency", "django-raft HTTP client"),
        ("pysyncobj-nobatch", "latency", "PySyncObj batching off"),
        ("pysyncobj-journal", "latency", "PySyncObj default"),
    ):
        rows = [data[key] for data in variants.get(name, []) if key in data]
        if rows:
            p50 = statistics.median(r["p50_ms"] for r in rows)
            p99 = statistics.median(r["p99_ms"] for r in rows)
            bars.append((title, p50, p99))
    positions = range(len(bars))
    right.bar([p - 0.2 for p in positions], [b[1] for b in bars], 0.4, label="p50")
    right.bar([p + 0.2 for p in positions], [b[2] for b in bars], 0.4, label="p99")
    right.set_xticks(list(positions), [b[0] for b in bars], rotation=15, fontsize=8)
    right.set_yscale("log")
    right.set_ylabel("ms per command (one at a time)")
    right.set_title("Latency percentiles (median over rounds)")
    right.grid(True, axis="y", which="both", alpha=0.3)
    right.legend()

    machine = report.get("machine_before", {})
    figure.suptitle(
        f"{report['started']} · commit {machine.get('commit', '?')} · {machine.get('cpus')} CPUs · "
        f"load average {machine.get('load_average', [0])[0]:.2f}"
    )
    figure.tight_layout()
    figure.savefig(sys.argv[2], dpi=110)


if __name__ == "__main__":
    main()
