"""The deployment guide and deploy/docker-compose.yml describe the same, valid cluster.

No container runtime or systemd is available to the tests: the compose file is parsed
and compared with the topology table of docs/deployment.md, and the environment file
and units of the guide are parsed and their settings run through the system checks.
"""

from __future__ import annotations

import configparser
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from django.core import checks
from django.test import override_settings

from django_raft.environ import settings_from_env

ROOT = Path(__file__).resolve().parent.parent
GUIDE = (ROOT / "docs" / "deployment.md").read_text()
COMPOSE: dict[str, Any] = yaml.safe_load((ROOT / "deploy" / "docker-compose.yml").read_text())
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]


def documented_topology() -> list[dict[str, str]]:
    section = GUIDE.split("## A cluster with docker compose", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("| ")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    return [
        dict(zip(header, (c.strip().strip("`") for c in line.strip("|").split("|")), strict=True))
        for line in lines[1:]
    ]


def marked_block(name: str) -> str:
    match = re.search(
        rf"<!-- deployment-test: {re.escape(name)} -->\n```\w*\n(.*?)```", GUIDE, re.S
    )
    assert match, name
    return match.group(1)


def raft_messages(raft: dict[str, Any]) -> list[checks.CheckMessage]:
    with override_settings(DJANGO_RAFT=raft):
        return [m for m in checks.run_checks() if str(m.id).startswith("django_raft.")]


def test_the_compose_file_has_the_documented_services() -> None:
    topology = documented_topology()
    assert len(topology) == 3
    documented = {
        row[key] for row in topology for key in ("Node service", "Database service", "Web service")
    }
    assert set(SERVICES) == documented


@pytest.mark.parametrize("server", [0, 1, 2])
def test_each_server_s_node_database_and_web_fit_together(server: int) -> None:
    row = documented_topology()[server]
    node, db, web = (
        SERVICES[row[key]] for key in ("Node service", "Database service", "Web service")
    )
    env = node["environment"]
    raft = settings_from_env(environ=env)
    assert raft["NODE_ID"] == row["Node id"]
    assert raft["ADDRESS"] == row["Raft address"]
    assert urlsplit(raft["ADDRESS"]).hostname == row["Node service"]
    assert raft["CLUSTER"] == {r["Node id"]: r["Raft address"] for r in documented_topology()}
    assert urlsplit(env["DATABASE_URL"]).hostname == row["Database service"]
    assert row["Database service"] in node["depends_on"]
    assert "raftnode --bootstrap" in node["command"] and "migrate" in node["command"]
    assert db["image"].startswith("postgres:")
    # The web process reads the same database and sends its commands to the same node.
    assert web["environment"] == env
    assert web["ports"] == [f"{row['Web port']}:8000"]
    assert raft_messages({**raft, "SECRET": "s"}) == []


def test_the_nodes_share_one_secret_and_each_has_its_own_database() -> None:
    nodes = [SERVICES[row["Node service"]] for row in documented_topology()]
    assert len({n["environment"]["RAFT_SECRET"] for n in nodes}) == 1
    assert nodes[0]["environment"]["RAFT_SECRET"].startswith("${RAFT_SECRET:?")
    assert len({n["environment"]["DATABASE_URL"] for n in nodes}) == 3
    volumes = [
        v for row in documented_topology() for v in SERVICES[row["Database service"]]["volumes"]
    ]
    assert len(set(volumes)) == 3


def test_the_guide_s_environment_file_makes_valid_settings() -> None:
    environ = dict(line.split("=", 1) for line in marked_block("env").splitlines() if line)
    raft = settings_from_env(environ=environ)
    assert raft["NODE_ID"] in raft["CLUSTER"] and len(raft["CLUSTER"]) == 3
    assert raft["ADDRESS"] == raft["CLUSTER"][raft["NODE_ID"]]
    assert raft_messages(raft) == []


@pytest.mark.parametrize(
    ("unit", "program"),
    [
        ("raftnode.service", "manage.py raftnode --bootstrap"),
        ("web.service", "gunicorn myproject.wsgi"),
        ("worker.service", "celery -A myproject worker"),
    ],
)
def test_the_guide_s_units_run_their_program_with_the_environment_file(
    unit: str, program: str
) -> None:
    parser = configparser.ConfigParser(interpolation=None)
    parser.read_string(marked_block(unit))
    service = parser["Service"]
    assert program in service["ExecStart"]
    assert service["EnvironmentFile"] == "/etc/myproject/env"
    assert service["Restart"] == "always"
    assert parser["Install"]["WantedBy"] == "multi-user.target"
