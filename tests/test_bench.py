"""The benchmark harness (``bench/run.py``) runs end to end on a tiny setting.

Not a timed test: it checks that every row produces its numbers, that the overload and
failover rows see a healthy cluster as healthy, and that the PySyncObj side runs when
pysyncobj is installed. Performance itself is read from the harness's own output.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench.load import keep_outstanding, one_at_a_time
from bench.run import ROOT, strace_counts


def run_harness(tmp_path: Path, *arguments: str) -> dict[str, Any]:
    harness = [sys.executable, str(ROOT / "bench" / "run.py"), "--tiny", "--no-plot"]
    subprocess.run(
        [*harness, "--results", str(tmp_path), *arguments],
        check=True,
        timeout=300,
        cwd=ROOT,
    )
    (path,) = tmp_path.glob("*.json")
    report: dict[str, Any] = json.loads(path.read_text())
    return report


@pytest.mark.integration
def test_every_row_of_django_raft_runs_on_a_tiny_setting(tmp_path: Path) -> None:
    report = run_harness(tmp_path, "--systems", "django-raft")
    (round_result,) = report["rounds"]
    ours = round_result["django-raft"]
    assert set(ours) == set(report["rows"])
    for run in ours["throughput"].values():
        assert run["acknowledged"] > 0 and run["failed"] == 0, run
        assert run["commands_per_second"] > 0
        assert len(run["cpu_ms_per_command"]) == len(run["messages_per_command"]) == 3
    assert ours["kv"]["acknowledged"] > 0 and ours["kv"]["failed"] == 0
    assert ours["http"]["commands_per_second"] > 0 and not ours["http"]["errors"]
    for row in ("latency", "http-latency"):
        assert 0 < ours[row]["p50_ms"] <= ours[row]["p99_ms"], ours[row]
    overload = ours["overload"]
    assert overload["converged"] and overload["acknowledged_lost"] == 0
    assert overload["noop_applied_per_node"] == [overload["acknowledged"]] * 3
    failover = ours["failover"]
    assert len(failover["next_command_s"]) == failover["kills"] == 1
    assert ours["cost"]["single"]["messages_per_command"][0] > 0
    if "single_strace" in ours["cost"]:  # strace may be missing or not allowed to attach
        assert len(ours["cost"]["single_strace"]["fsyncs_per_command"]) == 3
    metrics = {row["metric"] for row in report["summary"]["rows"]}
    assert any(m.startswith("1 in-process noop") for m in metrics)
    assert any(m.startswith("6 overload") for m in metrics)


def anchor_python() -> str | None:
    """An interpreter that can import pysyncobj: this one, or the bench environment's."""
    for python in (sys.executable, str(ROOT / ".venv-bench" / "bin" / "python")):
        if not Path(python).exists():
            continue
        found = subprocess.run([python, "-c", "import pysyncobj"], capture_output=True)
        if found.returncode == 0:
            return python
    return None


@pytest.mark.integration
def test_the_pysyncobj_side_runs_when_pysyncobj_is_installed(tmp_path: Path) -> None:
    if anchor_python() is None:
        pytest.skip("pysyncobj is not installed here nor in .venv-bench (bench/run installs it)")
    report = run_harness(
        tmp_path, "--systems", "pysyncobj", "--only", "throughput,latency", "--no-strace"
    )
    (round_result,) = report["rounds"]
    anchors = round_result["pysyncobj"]
    assert set(anchors) == {"pysyncobj-journal", "pysyncobj-memory", "pysyncobj-nobatch"}
    for run in anchors["pysyncobj-journal"]["throughput"].values():
        assert run["acknowledged"] > 0 and run["failed"] == 0, run
    assert anchors["pysyncobj-nobatch"]["latency"]["p50_ms"] > 0


def test_keeping_proposals_outstanding_never_exceeds_the_bound() -> None:
    in_flight, peak, waiting = 0, 0, []

    def submit(done: Any) -> None:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        waiting.append(done)
        if len(waiting) == 4:  # complete in bursts, from the submitting thread
            while waiting:
                in_flight -= 1
                waiting.pop()("")

    result = keep_outstanding(submit, outstanding=4, count=40)
    assert peak == 4
    assert result["acknowledged"] == result["submitted"] == 40 and result["drained"]


def test_refused_and_failed_commands_are_counted_by_their_error() -> None:
    calls = iter(range(100))

    def submit(done: Any) -> None:
        n = next(calls)
        if n % 3 == 0:
            raise OverflowError("queue full")
        done("NotLeaderError" if n % 3 == 1 else "")

    result = keep_outstanding(submit, outstanding=2, count=9)
    assert result["errors"] == {"OverflowError": 3, "NotLeaderError": 3}
    assert result["acknowledged"] == 3
    latencies = one_at_a_time(submit, 3, timeout=1.0)
    assert len(latencies["latencies"]) == 1
    assert latencies["errors"] == {"OverflowError": 1, "NotLeaderError": 1}


def test_strace_summary_is_parsed_by_syscall(tmp_path: Path) -> None:
    summary = tmp_path / "strace.txt"
    summary.write_text(
        "% time     seconds  usecs/call     calls    errors syscall\n"
        "------ ----------- ----------- --------- --------- ----------------\n"
        " 92.10    0.081245          27      2950           fdatasync\n"
        "  7.90    0.006969           1      5210        12 sendto\n"
        "------ ----------- ----------- --------- --------- ----------------\n"
        "100.00    0.088214          10      8160        12 total\n"
    )
    assert strace_counts(summary) == {"fdatasync": 2950, "sendto": 5210}
    assert strace_counts(tmp_path / "missing.txt") == {}
