"""``scripts/demo`` runs a real cluster, tells the story, checks it and cleans up after itself.

The demo is run as users run it: the shell script, real ``raftnode`` processes on free
ports, SQLite files in a temporary folder, the admin served by ``runserver``.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from demo_project.demo_cluster import parse_arguments

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "scripts" / "demo"


def listening(address: str) -> bool:
    host, port = address.removeprefix("http://").rsplit(":", 1)
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, int(port))) == 0


@pytest.mark.slow
def test_demo_once_tells_the_whole_story_and_exits_0(tmp_path: Path) -> None:
    result = subprocess.run(
        ["bash", str(DEMO), "--once", "--dir", str(tmp_path / "demo")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert re.search(r"n\d was elected leader of term \d+", out)
    assert out.count("✓") == 6, out
    assert "identical in n1.sqlite3, n2.sqlite3, n3.sqlite3" in out
    assert re.search(r"leads term \d+: elected \d+ ms after the kill", out)
    assert re.search(r"restarted and caught up by a snapshot at #\d+", out)
    assert "n4 promoted: voters are n1, n2, n3, n4" in out
    assert "the admin lists the replicated keys" in out
    assert "Every step checked out." in out
    assert "FAILED" not in out
    assert {p.name for p in (tmp_path / "demo").glob("*.sqlite3")} == {
        f"n{i}.sqlite3" for i in range(1, 5)
    }


@pytest.mark.slow
def test_demo_keeps_running_until_ctrl_c_then_stops_everything(tmp_path: Path) -> None:
    demo = subprocess.Popen(
        [sys.executable, "-m", "demo_project.demo_cluster", "--dir", str(tmp_path / "demo")],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert demo.stdout is not None
        lines: list[str] = []
        for line in demo.stdout:
            lines.append(line)
            if line.startswith("Press Ctrl-C") or "FAILED" in line:
                break
        out = "".join(lines)
        assert "Press Ctrl-C" in out, out
        admin = re.search(r"Admin: (http://127\.0\.0\.1:\d+)/admin/ \(user 'demo'", out)
        nodes = re.findall(r"  n\d: (http://127\.0\.0\.1:\d+)/raft/", out)
        assert admin and len(nodes) == 3, out
        # The printed way to send a command from another shell works as printed.
        shell = re.search(r"(RAFT_SECRET=\S+) (RAFT_ADDRESS=\S+) \\\n\s+python (.*)\n", out)
        assert shell, out
        env = dict(os.environ)
        env.update(dict(assignment.split("=", 1) for assignment in shell.group(1, 2)))
        command = subprocess.run(
            f"{sys.executable} {shell.group(3)}",
            shell=True,
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert command.returncode == 0, command.stderr
        assert command.stdout.strip() == "62"  # 61 after the story, plus one
        assert all(listening(address) for address in [admin.group(1), *nodes])

        demo.send_signal(signal.SIGINT)
        rest, _ = demo.communicate(timeout=60)
    finally:
        if demo.poll() is None:  # a failed assertion: let the demo stop what it started
            demo.terminate()
            try:
                demo.wait(timeout=60)
            except subprocess.TimeoutExpired:
                demo.kill()
    assert demo.returncode == 0, out + rest
    assert "Stopped every process the demo started." in rest, out + rest
    still = [address for address in [admin.group(1), *nodes] if listening(address)]
    assert still == [], out + rest


def test_ports_in_use_are_refused_before_anything_starts(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(SystemExit) as exit_info:
            parse_arguments(["--port", str(port - 2)])
    assert exit_info.value.code == 2
    assert f"port {port} is in use" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--port", "80"], "argument --port: must be between 1024 and 65531"),
        (["--port", "x"], "argument --port: invalid int value: 'x'"),
        (["--nodes", "5"], "unrecognized arguments: --nodes 5"),
    ],
)
def test_a_bad_option_is_a_usage_error(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse_arguments(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: scripts/demo")
    assert message in err


def test_the_simulation_has_its_own_command() -> None:
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "simulate"), "--seed", "2"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "Checked: one leader per term" in result.stdout
