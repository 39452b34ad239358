"""``LOG_DATABASE``: the log in a database of its own, refused when it cannot be right."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from .cluster import ROOT, Cluster

pytestmark = [pytest.mark.integration]


def raftnode(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "manage.py", "raftnode", "--bootstrap"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_log_database_without_tables_is_refused_with_the_command_to_run(
    tmp_path: Path,
) -> None:
    node = Cluster(tmp_path, size=1).founders[0]
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"],
        cwd=ROOT,
        env=node.env(),
        check=True,
        timeout=120,
    )
    env = {**node.env(), "RAFT_LOG_DATABASE": "raft_log"}
    env["DJANGO_SQLITE_LOG_PATH"] = str(tmp_path / "log.sqlite3")
    result = raftnode(env)
    assert result.returncode != 0
    assert "migrate django_raft --database raft_log" in result.stderr, result.stderr


def test_a_node_whose_log_is_in_database_does_not_start_over_in_an_empty_log_database(
    tmp_path: Path,
) -> None:
    cluster = Cluster(tmp_path, size=1)
    try:
        cluster.start()
        node = cluster.leader()
        assert node.do("kv.set", key="k", value="v")["ok"]
    finally:
        cluster.close()
    env = {**node.env(), "RAFT_LOG_DATABASE": "raft_log"}
    env["DJANGO_SQLITE_LOG_PATH"] = str(tmp_path / "log.sqlite3")
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "django_raft", "--database", "raft_log"],
        cwd=ROOT,
        env=env,
        check=True,
        timeout=120,
        capture_output=True,
    )
    result = raftnode(env)
    assert result.returncode != 0
    assert "this node's log is in DATABASE 'default'" in result.stderr, result.stderr
    assert node.hard_state()[0] >= 1  # nothing of the old log was touched
    assert node.kv() == {"k": "v"}
