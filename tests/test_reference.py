"""docs/reference.md is complete: every setting with its real default, every signal,
every management command, every error a caller can get and every check id.

A setting, signal, command or error added later fails here until it is documented.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import django.dispatch

from django_raft import exceptions, signals
from django_raft.conf import DEFAULTS
from django_raft.protocol.answers import ERRORS as _ERRORS

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = (ROOT / "docs" / "reference.md").read_text()


def section(heading: str) -> str:
    """The text under ``## heading``, up to the next such heading."""
    return REFERENCE.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]


def table_rows(heading: str) -> dict[str, list[str]]:
    """The rows of the first table under ``## heading``, by the first cell without backticks."""
    rows: dict[str, list[str]] = {}
    for line in section(heading).splitlines():
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


def test_the_errors_table_says_what_the_code_says_about_applied() -> None:
    """Each error's "Applied?" cell starts with "No" exactly when the code counts it as
    proving nothing was applied (``exceptions.may_have_applied``); one row per error."""
    lines = [line for line in section("Errors").splitlines() if line.startswith("| `")]
    assert len(lines) == len(table_rows("Errors")), "an error has two rows"
    public = {name: getattr(exceptions, name) for name in exceptions.__all__}
    errors = {name: kind for name, kind in public.items() if isinstance(kind, type)}
    assert set(errors) - {"RaftError"} <= set(table_rows("Errors"))
    for name, kind in errors.items():
        if name == "RaftError":
            continue
        cell = table_rows("Errors")[name][2]
        says_may = cell.startswith("**May have**")
        assert says_may or cell.startswith("No"), f"{name}: {cell}"
        assert says_may == exceptions.may_have_applied(kind("")), name


def test_the_table_of_contents_links_to_headings_that_exist() -> None:
    headings = {
        re.sub(r"[^a-z0-9 -]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
        for line in REFERENCE.splitlines()
        if line.startswith("## ")
    }
    links = set(re.findall(r"\]\(#([a-z0-9-]+)\)", REFERENCE))
    assert links and links <= headings


def command_options_documented(command: str) -> dict[str, str]:
    """The options of ``manage.py command``'s table, by long name: their meaning."""
    text = REFERENCE.split(f"\n### `manage.py {command}`\n", 1)[1].split("\n#", 1)[0]
    found = {}
    for line in text.splitlines():
        if line.startswith("| `-"):
            cell, meaning = line.strip("|").split(" | ", 1)
            found.update({name: meaning for name in re.findall(r"--[\w-]+", cell)})
    return found


def test_every_command_option_is_in_its_table_with_its_default() -> None:
    from django.core.management import BaseCommand, load_command_class

    django_s = {a.dest for a in BaseCommand().create_parser("manage.py", "any")._actions}
    for command in re.findall(r"^### `manage\.py (\w+)`", REFERENCE, re.MULTILINE):
        parser = load_command_class("django_raft", command).create_parser("manage.py", command)
        options = {
            next(o for o in action.option_strings if o.startswith("--")): action
            for action in parser._actions
            if action.option_strings and action.dest not in django_s
        }
        documented = command_options_documented(command)
        assert set(documented) == set(options), command
        for name, action in options.items():
            stated = re.search(r"\(default ([\d.]+)\)", documented[name])
            if action.default in (None, False):
                assert stated is None, f"{command} {name}: no default to state"
            else:
                assert stated, f"{command} {name}: say its default ({action.default})"
                assert float(stated[1]) == action.default, f"{command} {name}"


def test_every_check_in_the_table_exists() -> None:
    """No row for a check id the code no longer has (each id in the code is in the
    reference: tests/test_settings.py)."""
    from django_raft.checks import IDS, UNLISTED

    rows = set(re.findall(r"^\| `(django_raft\.[EW]\d+)`", section("System checks"), re.M))
    assert rows and rows <= set(IDS.values()) | {UNLISTED}


def test_every_http_route_is_in_the_table() -> None:
    """The routes a node serves (its URLconf, and the streams opened on ``rpc/`` and
    ``command``) are the rows of the table, and no other."""
    from django_raft.node.http.urls import urlpatterns
    from django_raft.protocol import command_stream, stream

    served = {re.sub(r"<\w+:\w+>", "<name>", str(p.pattern)) for p in urlpatterns}
    served |= {"rpc/" + stream.STREAM_PATH, command_stream.PATH}
    assert set(table_rows("HTTP routes")) == served


def test_raftstatus_exit_statuses_are_the_code_s() -> None:
    from django_raft.management.commands import raftstatus

    text = REFERENCE.split("\n### `manage.py raftstatus`\n", 1)[1].split("\n### ", 1)[0]
    rows = dict(re.findall(r"^\| (\d) \| (\w[\w ]*):", text, re.M))
    assert rows == {
        str(raftstatus.HEALTHY): "Healthy",
        str(raftstatus.DEGRADED): "Degraded",
        str(raftstatus.NO_LEADER): "No leader",
        str(raftstatus.UNREACHABLE): "No node answered",
    }
