"""The README's Python examples run as written.

Each Python block of the README is preceded by ``<!-- readme-test: WHERE -->``: a file
path puts the block in that file of a new project made in a temporary folder,
``shell`` (or ``shell-<name>``) runs it with ``manage.py shell`` against that project's
running node. The
project gets only what the README leaves to the reader and ``startproject`` writes (a
database, a SECRET_KEY, a URLconf).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from django.test import override_settings

from django_raft.checks import IDS
from django_raft.client import post, raise_for
from tests.integration.cluster import free_port, wait_for

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
MARKED = re.compile(r"<!-- readme-test: (\S+) -->\n```python\n(.*?)```", re.DOTALL)

SCAFFOLD = """
# Added by the test: what the README leaves to the reader.
import os

INSTALLED_APPS = [app for app in INSTALLED_APPS if app is not ...]
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": os.environ["DB"]}}
SECRET_KEY = "readme-test"
USE_TZ = True
ROOT_URLCONF = "myproject.urls"
"""

MANAGE = """import sys
from django.core.management import execute_from_command_line
execute_from_command_line(sys.argv)
"""


def blocks() -> dict[str, str]:
    found = dict(MARKED.findall(README))
    assert len(found) == len(MARKED.findall(README)), "two blocks for one place"
    return found


IMPORT_HANDLERS = re.compile(r"from \. import ([\w, ]+?)  #")


def steps() -> list[tuple[str, str]]:
    """The README's blocks in the order a reader meets them, as the reader applies them:
    after a new module of handlers, the app's ``apps.py`` imports it too, as the README
    says to."""
    found: list[tuple[str, str]] = []
    apps = ""
    for where, code in MARKED.findall(README):
        found.append((where, code))
        if where == "myapp/apps.py":
            apps = code
        elif where.startswith("myapp/") and "@django_raft.command" in code and apps:
            module = Path(where).stem
            imported = IMPORT_HANDLERS.search(apps)
            assert imported, "apps.py imports its modules of handlers"
            if module not in imported[1].split(", "):
                told = f"`from . import {imported[1]}, {module}`"
                assert told in README, f"the README tells to import {module} in apps.py"
                apps = apps.replace(imported[0], f"from . import {imported[1]}, {module}  #")
                found.append(("myapp/apps.py", apps))
    return found


def _imported_modules(where: str, code: str) -> set[str]:
    """The project's modules a block imports (``myapp.models``...), by dotted name."""
    package = ".".join(Path(where).parent.parts)
    found = set()
    for relative, names in re.findall(r"^\s*from (\.\w*) import (\w+(?:, \w+)*)", code, re.M):
        base = package + (relative if relative != "." else "")
        found |= {f"{package}.{n}" for n in names.split(", ")} if relative == "." else {base}
    for module in re.findall(r"^\s*from ((?:myapp|myproject)[\w.]*) import", code, re.M):
        found.add(module)
    return found


def test_each_block_imports_only_what_the_reader_has_written_by_then() -> None:
    """Followed in order, the README never imports a module it shows only later (the
    first ``manage.py check`` of a reader would fail with an ImportError)."""
    written: set[str] = set()
    for where, code in steps():
        if not where.startswith("shell"):
            written.add(where.removesuffix(".py").replace("/", "."))
        missing = _imported_modules(where, code) - written
        assert not missing, f"{where} imports {missing} before the README shows them"


def test_the_reader_makes_the_app_s_migrations() -> None:
    """The commands a reader runs before the first shell block make the app's tables."""
    before_shell = README[: README.index("<!-- readme-test: shell -->")]
    assert "python manage.py makemigrations myapp" in before_shell
    assert before_shell.index("makemigrations myapp") < before_shell.rindex("manage.py migrate")


def test_every_python_block_is_tested() -> None:
    assert README.count("```python\n") == len(MARKED.findall(README)) >= 5


def test_the_settings_example_builds_each_server_s_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    code = blocks()["myproject/settings.py"]
    cluster = "n1=http://10.0.0.1:8001,n2=http://10.0.0.2:8001,n3=http://10.0.0.3:8001"
    built = []
    for n in (1, 2, 3):
        monkeypatch.setenv("RAFT_NODE_ID", f"n{n}")
        monkeypatch.setenv("RAFT_ADDRESS", f"http://10.0.0.{n}:8001")
        monkeypatch.setenv("RAFT_CLUSTER", cluster)
        monkeypatch.setenv("RAFT_SECRET", "s")
        namespace: dict[str, Any] = {}
        exec(compile(code, "README settings", "exec"), namespace)
        built.append(namespace["DJANGO_RAFT"])
    assert [b["NODE_ID"] for b in built] == ["n1", "n2", "n3"]
    assert all(b["CLUSTER"] == built[0]["CLUSTER"] and len(b["CLUSTER"]) == 3 for b in built)
    assert all(b["REPLICATED_MODELS"] == ["myapp.Flag"] for b in built)
    with override_settings(DJANGO_RAFT=built[1]):
        from django.core import checks

        # myapp is not installed in this process: its models cannot be looked up here.
        elsewhere = {IDS["replicated-model-unknown"], IDS["handler-writes-unreplicated-model"]}
        found = [m for m in checks.run_checks() if str(m.id).startswith("django_raft")]
        assert [m for m in found if m.id not in elsewhere] == []


@pytest.mark.slow
def test_the_project_of_the_readme_runs_a_node_and_takes_commands(tmp_path: Path) -> None:
    """The README followed in order: each file as it shows it; the reader's commands
    (makemigrations, migrate, raftnode) before the first shell block; the node restarted
    when the blocks met since it started changed the project's code."""
    project = tmp_path / "project"
    (project / "manage.py").parent.mkdir(parents=True)
    (project / "manage.py").write_text(MANAGE)
    port = free_port()
    address = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAFT_", "DJANGO_"))}
    env.update(
        DJANGO_SETTINGS_MODULE="myproject.settings",
        DB=str(tmp_path / "node.sqlite3"),
        RAFT_NODE_ID="n1",
        RAFT_ADDRESS=address,
        RAFT_CLUSTER=f"n1={address}",
        RAFT_SECRET="readme-secret-" + "r" * 32,
    )

    def manage(*arguments: str) -> str:
        result = subprocess.run(
            [sys.executable, "manage.py", *arguments],
            cwd=project,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout

    def start() -> subprocess.Popen[bytes]:
        node = subprocess.Popen(
            [sys.executable, "manage.py", "raftnode", "--bootstrap"],
            cwd=project,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        with override_settings(DJANGO_RAFT={"SECRET": "readme-secret-" + "r" * 32}):
            wait_for(
                lambda: raise_for(post(address, "status", {}, 1.0))["state"] == "leader",
                30,
                "the node to lead",
            )
        return node

    def stop(node: subprocess.Popen[bytes] | None) -> None:
        if node is not None:
            node.terminate()
            node.wait(timeout=30)

    check = (
        "\nfrom myapp.models import Flag\n"
        "print(list(Flag.objects.values_list('name', 'enabled')))\n"
        "print(django_raft.status()['state'])\n"
    )
    outputs: dict[str, str] = {}
    node: subprocess.Popen[bytes] | None = None
    changed = False
    log = (tmp_path / "node.log").open("wb")
    try:
        for where, code in steps():
            if where == "shell-beat":  # needs the shared PostgreSQL database it describes
                continue
            if where.startswith("shell"):
                if node is None:
                    manage("makemigrations", "myapp", "-v", "0")
                    manage("migrate", "-v", "0")
                if node is None or changed:
                    stop(node)
                    node, changed = start(), False
                extra = check if where == "shell" else ""
                outputs[where] = manage("shell", "-v", "0", "-c", code + extra)
                continue
            path = project / where
            path.parent.mkdir(parents=True, exist_ok=True)
            (path.parent / "__init__.py").touch()
            path.write_text(code + (SCAFFOLD if where == "myproject/settings.py" else ""))
            if where == "myproject/settings.py":
                (project / "myproject" / "urls.py").write_text("urlpatterns = []\n")
            changed = True
    finally:
        stop(node)
        log.close()
    assert outputs["shell"].splitlines() == ["[('beta', True)]", "leader"]
    assert outputs["shell-coordination"].splitlines() == ["refused", "True", "True"]
