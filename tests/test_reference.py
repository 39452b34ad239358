"""docs/reference.md is complete: every setting with its real default, every signal,
every management command, every error a caller can get and every check id.

A setting, signal, command or error added later fails here until it is documented.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import django.dispatch

from django_raft import signals
from django_raft.client import _ERRORS
from django_raft.conf import DEFAULTS

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = (ROOT / "docs" / "reference.md").read_text()


def table_rows(heading: str) -> dict[str, list[str]]:
    """The rows of the first table under ``## heading``, by the first cell without backticks."""
    section = REFERENCE.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]
    rows: dict[str, list[str]] = {}
    for line in section.splitlines():
        if line.startswith("| `"):
            cells = [cell.strip() for cell in line.strip("|").split(" | ")]
            rows[cells[0].strip("`")] = cells
    return rows


def test_every_setting_is_in_the_table_with_its_default_and_variable() -> None:
    rows = table_rows("Settings")
    assert list(rows) == list(DEFAULTS)  # in the order of conf.DEFAULTS
    for name, default in DEFAULTS.items():
        _, default_cell, variable, meaning, valid = rows[name]
        assert ast.literal_eval(default_cell.strip("`")) == default, name
        assert variable == f"`RAFT_{name}`"
        assert meaning and valid


def test_every_signal_is_documented() -> None:
    declared = {
        name for name, value in vars(signals).items() if isinstance(value, django.dispatch.Signal)
    }
    assert set(table_rows("Signals")) == declared
    assert "raftnode` process only" in REFERENCE


def test_every_management_command_is_documented() -> None:
    commands = {
        path.stem
        for path in (ROOT / "django_raft" / "management" / "commands").glob("*.py")
        if not path.stem.startswith("_")
    }
    assert commands
    documented = set(re.findall(r"^### `manage\.py (\w+)`", REFERENCE, re.MULTILINE))
    assert documented == commands


def test_every_error_a_caller_can_get_is_documented() -> None:
    rows = table_rows("Errors")
    assert set(_ERRORS) <= set(rows)
    for name in _ERRORS:
        assert rows[name][2], f"{name}: say whether the command may still be applied"


def test_the_table_of_contents_links_to_headings_that_exist() -> None:
    headings = {
        re.sub(r"[^a-z0-9 -]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
        for line in REFERENCE.splitlines()
        if line.startswith("## ")
    }
    links = set(re.findall(r"\]\(#([a-z0-9-]+)\)", REFERENCE))
    assert links and links <= headings
