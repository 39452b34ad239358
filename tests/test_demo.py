"""The simulated-cluster demo runs to completion, tells its story and checks itself."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from demo_project.demo_sim import main

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    "argv",
    [
        ["--seed", "1"],
        ["--seed", "7"],
        ["--seed", "178"],  # several split votes before the second leader is elected
        ["--seed", "3", "--nodes", "5"],
        ["--seed", "11", "--nodes", "5", "--commands", "40"],
        ["--seed", "5", "--commands", "1"],
    ],
)
def test_demo_succeeds_and_tells_the_story(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 0
    captured = capsys.readouterr()
    out = captured.out
    assert "became leader of term" in out
    assert "CRASH n" in out
    assert "RESTART n" in out
    assert "caught up" in out
    assert "Final state (identical on every node)" in out
    assert out.count("Checked:") == 4
    assert "CHECK FAILED" not in out
    assert captured.err == ""
    assert len(out.splitlines()) <= 45


def test_demo_is_deterministic(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--seed", "9"]) == 0
    first = capsys.readouterr().out
    assert main(["--seed", "9"]) == 0
    assert capsys.readouterr().out == first
    assert main(["--seed", "10"]) == 0
    assert capsys.readouterr().out != first


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--nodes", "0"], "argument --nodes: invalid choice: 0"),
        (["--nodes", "x"], "argument --nodes: invalid int value: 'x'"),
        (["--commands", "0"], "argument --commands: must be between 1 and"),
        (["--commands", "many"], "argument --commands: invalid int value: 'many'"),
        (["--seed", "x"], "argument --seed: invalid int value: 'x'"),
    ],
)
def test_bad_option_is_a_usage_error(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: python -m demo_project.demo_sim")
    assert message in err


def test_demo_runs_as_a_module_without_django() -> None:
    # In a fresh interpreter: the demo needs only the standard library and the core.
    code = (
        "import runpy, sys\n"
        "sys.argv = ['demo_sim', '--seed', '2']\n"
        "try:\n"
        "    runpy.run_module('demo_project.demo_sim', run_name='__main__')\n"
        "except SystemExit as exit:\n"
        "    loaded = sorted(m for m in sys.modules if m.partition('.')[0] == 'django')\n"
        "    print('django modules:', loaded)\n"
        "    raise\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("DJANGO_SETTINGS_MODULE", None)
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert "django modules: []" in result.stdout
    assert "Checked: one leader per term" in result.stdout
