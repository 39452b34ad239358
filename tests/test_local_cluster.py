"""Three nodes of a project of one's own on one machine, as the README's recipe says:
``local_node()`` gives each node id its port and its own SQLite file."""

from __future__ import annotations

import functools
import os
import re
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings

from django_raft.client import post, raise_for
from django_raft.environ import local_node
from tests.integration.cluster import free_port, wait_for

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
MARKED = re.compile(r"<!-- readme-test: (\S+) -->\n```python\n(.*?)```", re.DOTALL)
SECRET = "local-cluster-secret-" + "c" * 32


def test_each_node_id_has_its_port_and_database() -> None:
    nodes = [local_node(environ={"RAFT_NODE_ID": f"n{k}"}) for k in (1, 2, 3)]
    assert [n.port for n in nodes] == [8001, 8002, 8003]
    assert [n.database for n in nodes] == ["db-n1.sqlite3", "db-n2.sqlite3", "db-n3.sqlite3"]
    assert all(n.settings["CLUSTER"] == nodes[0].cluster for n in nodes)
    assert nodes[1].settings == {
        "NODE_ID": "n2",
        "ADDRESS": "http://127.0.0.1:8002",
        "CLUSTER": {f"n{k}": f"http://127.0.0.1:{8000 + k}" for k in (1, 2, 3)},
    }
    assert local_node(environ={}).node_id == "n1"  # a shell, a web process: n1's neighbour
    moved = local_node(5, environ={"RAFT_NODE_ID": "n5", "RAFT_LOCAL_PORT": "9001"})
    assert (moved.port, len(moved.cluster)) == (9005, 5)


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"RAFT_NODE_ID": "n4"}, "RAFT_NODE_ID must be one of n1, n2, n3"),
        ({"RAFT_LOCAL_PORT": "eighty"}, "RAFT_LOCAL_PORT must be a whole number"),
        ({"RAFT_LOCAL_PORT": "65535"}, "RAFT_LOCAL_PORT must be a port from 1 to 65533"),
    ],
)
def test_a_wrong_node_id_or_port_names_its_variable(environ: dict[str, str], message: str) -> None:
    with pytest.raises(ImproperlyConfigured, match=message):
        local_node(environ=environ)


def _three_free_ports() -> int:
    """A port such that it and the next two are free."""
    for _ in range(50):
        first = free_port()
        try:
            for port in (first + 1, first + 2):
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        return first
    raise AssertionError("no three consecutive free ports")


@pytest.mark.slow
@pytest.mark.integration
def test_the_readme_recipe_runs_three_nodes_of_a_new_project(tmp_path: Path) -> None:
    """A new project (startproject, the README's app), the README's settings_local.py;
    three ``raftnode`` processes, each on its own port with its own database file; a
    command from a shell is applied in all three."""
    blocks = dict(MARKED.findall(README))
    recipe = README[README.index("<!-- readme-test: myproject/settings_local.py -->") :]
    for line in (
        "export DJANGO_SETTINGS_MODULE=myproject.settings_local",
        "for n in n1 n2 n3; do RAFT_NODE_ID=$n python manage.py migrate; done",
        "for n in n1 n2 n3; do RAFT_NODE_ID=$n python manage.py raftnode --bootstrap & done",
    ):
        assert line in recipe, line
    project = tmp_path / "project"
    project.mkdir()
    subprocess.run(
        [sys.executable, "-m", "django", "startproject", "myproject", str(project)],
        check=True,
        timeout=60,
    )
    (project / "myapp").mkdir()
    (project / "myapp" / "__init__.py").touch()
    for name in ("models", "commands", "apps"):
        (project / "myapp" / f"{name}.py").write_text(blocks[f"myapp/{name}.py"])
    with (project / "myproject" / "settings.py").open("a") as settings:
        settings.write(
            "\nfrom django_raft.environ import settings_from_env\n\n"
            'INSTALLED_APPS += ["django_raft", "myapp"]\n'
            'DJANGO_RAFT = settings_from_env({"REPLICATED_MODELS": ["myapp.Flag"]})\n'
        )
    local = blocks["myproject/settings_local.py"]
    (project / "myproject" / "settings_local.py").write_text(local)

    first = _three_free_ports()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAFT_", "DJANGO_"))}
    env.update(
        DJANGO_SETTINGS_MODULE="myproject.settings_local",
        RAFT_SECRET=SECRET,
        RAFT_LOCAL_PORT=str(first),
    )

    def manage(*arguments: str, node: str | None = None) -> str:
        extra = {"RAFT_NODE_ID": node} if node else {}
        result = subprocess.run(
            [sys.executable, "manage.py", *arguments],
            cwd=project,
            env={**env, **extra},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout

    manage("makemigrations", "myapp", "-v", "0")
    for node_id in ("n1", "n2", "n3"):
        manage("migrate", "-v", "0", node=node_id)
    processes: list[subprocess.Popen[bytes]] = []
    logs = [(tmp_path / f"n{k}.log").open("wb") for k in (1, 2, 3)]
    try:
        for k, log in enumerate(logs, 1):
            processes.append(
                subprocess.Popen(
                    [sys.executable, "manage.py", "raftnode", "--bootstrap"],
                    cwd=project,
                    env={**env, "RAFT_NODE_ID": f"n{k}"},
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
        addresses = {f"n{k}": f"http://127.0.0.1:{first + k - 1}" for k in (1, 2, 3)}
        with override_settings(DJANGO_RAFT={"SECRET": SECRET}):

            def statuses() -> dict[str, dict[str, str]]:
                return {n: raise_for(post(a, "status", {}, 1.0)) for n, a in addresses.items()}

            found = wait_for(
                lambda: (s := statuses()) and all(v["leader"] for v in s.values()) and s,
                60,
                "three nodes that know their leader",
            )
        assert {n: s["id"] for n, s in found.items()} == {n: n for n in addresses}
        do = "import django_raft; print(django_raft.do('flags.set', flag='beta', enabled=True))"
        assert manage("shell", "-v", "0", "-c", do).splitlines() == ["True"]

        def applied(node_id: str) -> bool:
            with sqlite3.connect(project / f"db-{node_id}.sqlite3") as db:
                flags = db.execute("SELECT name, enabled FROM myapp_flag").fetchall()
            return bool(flags == [("beta", 1)])

        for node_id in addresses:  # each node applied it in its own database file
            wait_for(functools.partial(applied, node_id), 10, f"{node_id} to apply")
        assert not (project / "db.sqlite3").exists()  # startproject's database, never used
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        for log in logs:
            log.close()
