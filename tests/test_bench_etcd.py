"""The etcd comparison (``bench/etcd.py``): its pure parts, without etcd or a cluster.

The summary, the ratio, the table, the report's JSON shape and the choices the command
line takes; the harness itself is run by hand (``bench/etcd --tiny`` checks it end to
end in under a minute) and its numbers are read from its own output.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from bench.etcd import (
    METRICS,
    ROWS,
    SYSTEMS,
    TINY,
    Settings,
    etcd_argv,
    failures,
    format_table,
    new_report,
    parse_choice,
    ratio,
    result_path,
    round_order,
    shares,
    summarize,
)


def measured(scale: float) -> dict[str, Any]:
    """One system's rows in one round, every number multiplied by ``scale``."""
    latency = {"operations": 500, "p50_ms": 1.0 * scale, "p99_ms": 2.0 * scale, "errors": {}}
    rate = {"operations": 4800, "per_second": 1000.0 * scale, "errors": {}}
    return {
        "start_seconds": 2.0,
        "write-1": latency,
        "read-1": dict(latency),
        "write-32-spread": rate,
        "write-32-leader": dict(rate),
        "cpu-per-write": {"operations": 1920, "server_cpu_ms_per_op": 0.4 * scale, "errors": {}},
        "restart-serve": {
            "operations": 3,
            "median_ms": 100.0 * scale,
            "errors": {},
            "failures": [],
        },
    }


def test_the_ratio_is_django_raft_over_etcd_and_none_without_both() -> None:
    assert ratio(3.0, 1.5) == 2.0
    assert ratio(None, 1.0) is None
    assert ratio(1.0, None) is None
    assert ratio(1.0, 0.0) is None


def test_the_summary_takes_medians_over_rounds_and_says_who_is_ahead() -> None:
    rounds = [
        {"order": ["etcd", "django-raft"], "etcd": measured(1.0), "django-raft": measured(2.0)},
        {"order": ["django-raft", "etcd"], "etcd": measured(3.0), "django-raft": measured(2.0)},
        {"order": ["etcd", "django-raft"], "etcd": measured(2.0), "django-raft": measured(2.0)},
    ]
    summary = summarize(rounds)
    assert [(e["row"], e["metric"]) for e in summary] == [(m.row, m.label) for m in METRICS]
    write_p50 = summary[0]
    assert write_p50["etcd"] == {"median": 2.0, "min": 1.0, "max": 3.0, "rounds": 3}
    assert write_p50["django-raft"]["median"] == 2.0
    assert write_p50["ratio"] == 1.0 and write_p50["ahead"] is True  # a tie is not behind
    assert write_p50["operations"] == [500]
    spread = next(e for e in summary if e["row"] == "write-32-spread")
    assert spread["better"] == "higher" and spread["ahead"] is True


def test_lower_is_better_for_latency_and_higher_for_throughput() -> None:
    rounds = [{"etcd": measured(1.0), "django-raft": measured(2.0)}]
    ahead = {(e["row"], e["metric"]): e["ahead"] for e in summarize(rounds)}
    assert ahead[("write-1", "p50 ms")] is False
    assert ahead[("cpu-per-write", "server CPU ms")] is False
    assert ahead[("write-32-leader", "writes/s")] is True


def test_one_system_alone_is_summarized_without_a_ratio() -> None:
    summary = summarize([{"etcd": measured(1.0)}])
    assert len(summary) == len(METRICS)
    assert all("django-raft" not in e and e["ratio"] is None for e in summary)
    assert all(e["ahead"] is None for e in summary)
    table = format_table(summary)
    assert "write-32-spread" in table and " - " in table


def test_rows_not_run_are_left_out_of_the_summary() -> None:
    only = {k: v for k, v in measured(1.0).items() if k in ("write-1", "start_seconds")}
    summary = summarize([{"etcd": only, "django-raft": only}])
    assert {e["row"] for e in summary} == {"write-1"}


def test_the_table_has_a_line_per_metric_with_both_systems_and_the_ratio() -> None:
    rounds = [{"etcd": measured(1.0), "django-raft": measured(0.5)}]
    lines = format_table(summarize(rounds)).splitlines()
    assert lines[0].split()[:6] == ["row", "metric", "ops", "etcd", "django-raft", "ratio"]
    assert len(lines) == 2 + len(METRICS) + 1
    write_p50 = lines[2].split()
    assert write_p50[:7] == ["write-1", "p50", "ms", "500", "1.00", "0.500", "0.50"]
    assert write_p50[-1] == "yes"
    spread = next(line for line in lines if line.startswith("write-32-spread")).split()
    assert spread[3:6] == ["1,000", "500", "0.50"] and spread[-1] == "no"


def test_nan_latencies_of_a_row_that_failed_do_not_break_the_table() -> None:
    broken = measured(1.0)
    broken["write-1"] = {"operations": 500, "p50_ms": math.nan, "p99_ms": math.nan}
    table = format_table(summarize([{"etcd": measured(1.0), "django-raft": broken}]))
    assert "nan" in table


def test_failed_operations_and_restarts_are_listed() -> None:
    bad = measured(1.0)
    bad["write-1"]["errors"] = {"CommandTimeoutError": 2}
    bad["restart-serve"].update(
        errors={"NotServing": 1}, failures=["member 1, last answer NotLeaderError: none"]
    )
    lines = failures([{"etcd": measured(1.0), "django-raft": bad}])
    assert lines == [
        "round 1, django-raft, write-1: 2 failed (CommandTimeoutError x2)",
        "round 1, django-raft, restart-serve: 1 failed (NotServing x1)",
        "  member 1, last answer NotLeaderError: none",
    ]


def test_the_report_is_json_with_its_settings_and_a_timestamped_name(tmp_path: Path) -> None:
    report = new_report(
        "20260101T000000Z",
        TINY,
        list(ROWS),
        list(SYSTEMS),
        {"path": "/repo", "commit": "abc1234", "modified": False},
        {"cpus": 2, "etcd": "etcd 3.4.23"},
    )
    report["rounds"].append({"order": ["etcd", "django-raft"], "etcd": measured(1.0)})
    report["summary"] = summarize(report["rounds"])
    loaded = json.loads(json.dumps(report))
    assert loaded["kind"] == "etcd"
    assert loaded["settings"]["write_1"] == TINY.write_1
    assert set(loaded) >= {"started", "rows", "systems", "repo", "machine_before", "rounds"}
    assert result_path(tmp_path, "20260101T000000Z") == tmp_path / "etcd-20260101T000000Z.json"


def test_choices_keep_the_canonical_order_and_refuse_unknown_names() -> None:
    assert parse_choice(None, ROWS, "rows") == list(ROWS)
    assert parse_choice("restart-serve,write-1", ROWS, "rows") == ["write-1", "restart-serve"]
    with pytest.raises(ValueError, match="write-2"):
        parse_choice("write-1,write-2", ROWS, "rows")
    with pytest.raises(ValueError):
        parse_choice(",", SYSTEMS, "systems")


def test_rounds_alternate_which_system_goes_first() -> None:
    both = ["etcd", "django-raft"]
    assert [round_order(r, both)[0] for r in range(4)] == ["etcd", "django-raft"] * 2
    assert round_order(1, ["etcd"]) == ["etcd"]


def test_client_threads_are_shared_out_evenly_over_the_members() -> None:
    assert shares(32, 3) == [11, 11, 10]
    assert shares(32, 1) == [32]
    assert sum(shares(7, 3)) == 7


def test_every_size_gives_both_systems_the_same_number_of_operations() -> None:
    for settings in (Settings(), TINY):
        assert settings.write_1 > 0 and settings.per_thread > 0 and settings.restarts > 0


def test_each_etcd_member_has_its_own_ports_and_data_and_default_settings(tmp_path: Path) -> None:
    clients = [f"http://127.0.0.1:{2000 + n}" for n in range(3)]
    peers = [f"http://127.0.0.1:{3000 + n}" for n in range(3)]
    argv = etcd_argv(1, clients, peers, tmp_path, "token")
    options = dict(zip(argv[1::2], argv[2::2], strict=True))
    assert argv[0] == "etcd"
    assert options["--name"] == "m1"
    assert options["--data-dir"] == str(tmp_path / "m1.etcd")
    assert options["--listen-client-urls"] == options["--advertise-client-urls"] == clients[1]
    assert options["--listen-peer-urls"] == peers[1]
    assert options["--initial-cluster"].split(",") == [f"m{n}={peers[n]}" for n in range(3)]
    # Nothing that trades durability or timing away from etcd's defaults.
    assert not {"--unsafe-no-fsync", "--heartbeat-interval", "--election-timeout"} & set(options)
