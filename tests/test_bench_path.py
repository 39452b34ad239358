"""``bench/path.py``'s analysis: per-process marks turned into the median timeline of a
call (the traced run itself is run by hand: ``bench/path``)."""

from __future__ import annotations

from pathlib import Path

from bench.path import format_timeline, read_events, roles, timeline


def write(folder: Path, process: str, marks: list[tuple[int, str]]) -> None:
    (folder / f"{process}.log").write_text("".join(f"{ns} {tag}\n" for ns, tag in marks))


def calls(folder: Path, count: int, apply_us: int) -> None:
    """``count`` calls 10 ms apart: the leader reads each at +100 µs, a follower persists
    at +300..+700 µs, the leader applies for ``apply_us`` from +1,000 µs."""
    client, leader, follower = [], [], []
    for k in range(count):
        t = k * 10_000_000
        client += [(t, "client sends"), (t + (1_200 + apply_us) * 1000, "client receives")]
        leader += [(t + 100_000, "node reads a client frame"), (t + 1_000_000, "apply starts")]
        leader += [(t + (1_000 + apply_us) * 1000, "apply ends")]
        follower += [(t + 300_000, "persist starts"), (t + 700_000, "persist ends")]
    write(folder, "11", client)
    write(folder, "22", leader)
    write(folder, "33", follower)


def test_roles_come_from_what_each_process_does(tmp_path: Path) -> None:
    calls(tmp_path, 8, 500)
    assert roles(read_events(tmp_path)) == {"11": "client", "22": "leader", "33": "follower 1"}


def test_the_timeline_gives_each_stage_s_median_time_after_the_send(tmp_path: Path) -> None:
    calls(tmp_path, 20, 500)
    found = timeline(read_events(tmp_path))
    assert found["calls"] == 15  # the first quarter is warm-up
    assert found["median_us"] == 1700.0
    stages = [(s["process"], s["stage"], s["median_us"]) for s in found["stages"]]
    assert stages == [
        ("client", "client sends", 0.0),
        ("leader", "node reads a client frame", 100.0),
        ("follower 1", "persist starts", 300.0),
        ("follower 1", "persist ends", 700.0),
        ("leader", "apply starts", 1000.0),
        ("leader", "apply ends", 1500.0),
        ("client", "client receives", 1700.0),
    ]
    table = format_timeline("write-1", found)
    assert "1500       500  leader      apply ends" in table


def test_a_stage_seen_in_few_calls_is_left_out(tmp_path: Path) -> None:
    calls(tmp_path, 20, 500)
    write(tmp_path, "44", [(k * 10_000_000 + 50_000, "persist ends") for k in range(14, 17)])
    stages = {s["process"] for s in timeline(read_events(tmp_path))["stages"]}
    assert "follower 2" not in stages
