"""Real ``raftnode`` processes and the database each one claims.

Three nodes started on one database (the default ``db.sqlite3``, read literally): one
runs, the others refuse at start, naming the node ids and the database, and write
nothing. A ``--bootstrap`` that cannot bind its port writes nothing, so the corrected
retry bootstraps. A node whose stored membership disagrees with its settings says so.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.cluster import POSTGRES, ROOT, Cluster, Node, free_port, wait_for

pytestmark = pytest.mark.slow

REFUSAL_TIMEOUT = 60


def _run(node: Node, *arguments: str) -> subprocess.CompletedProcess[str]:
    """Run ``raftnode`` (or another command) to its end; it must end by itself."""
    return subprocess.run(
        [sys.executable, "manage.py", *arguments],
        cwd=ROOT,
        env=node.env(),
        capture_output=True,
        text=True,
        timeout=REFUSAL_TIMEOUT,
    )


def _raft_rows(node: Node) -> list[list[tuple[Any, ...]]]:
    return [
        node.query('SELECT * FROM django_raft_logentry ORDER BY "index"'),
        node.query("SELECT * FROM django_raft_hardstate"),
        node.query("SELECT node_id, cluster_id FROM django_raft_nodeidentity"),
    ]


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    made = Cluster(tmp_path, size=3)
    yield made
    made.close()


@pytest.mark.skipif(bool(POSTGRES), reason="one SQLite file, shared on purpose")
def test_three_nodes_started_on_one_database_two_refuse_and_write_nothing(
    cluster: Cluster,
) -> None:
    shared = cluster.founders[0].sqlite_path
    for node in cluster.founders:
        node.sqlite_path = shared
    cluster.founders[0].migrate()
    processes = []
    for node in cluster.founders:  # all at once: the claim is decided in the database
        log = node.log_path.open("ab")
        processes.append(
            subprocess.Popen(
                [sys.executable, "manage.py", "raftnode", "--bootstrap"],
                cwd=ROOT,
                env=node.env(),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )
        log.close()
        node.process = processes[-1]
    deadline = time.monotonic() + REFUSAL_TIMEOUT
    while time.monotonic() < deadline and sum(p.poll() is not None for p in processes) < 2:
        time.sleep(0.1)
    ended = [node for node in cluster.founders if node.process.poll() is not None]  # type: ignore[union-attr]
    assert len(ended) == 2, [node.log_path.read_text() for node in cluster.founders]
    (owner,) = [node for node in cluster.founders if node not in ended]
    owner_rows = wait_for(lambda: _raft_rows(owner)[2], 30, "the owner's claim")
    assert owner_rows == [(owner.node_id, owner_rows[0][1])]
    for node in ended:
        assert node.process.returncode != 0  # type: ignore[union-attr]
        output = node.log_path.read_text()
        assert "IntegrityError" not in output and "Traceback" not in output, output
        assert f"belongs to node {owner.node_id!r}, not to node {node.node_id!r}" in output
        assert str(shared) in output
    # The owner's log is its own: the founding membership, written once.
    entries = owner.query('SELECT "index", type FROM django_raft_logentry ORDER BY "index"')
    assert [index for index, _ in entries[:3]] == [1, 2, 3]
    assert owner.running()

    # Started again, one by one, on the claimed database: refused before binding.
    rows = _raft_rows(owner)
    second = ended[0]
    refused = _run(second, "raftnode")
    assert refused.returncode != 0
    assert f"belongs to node {owner.node_id!r}" in refused.stderr
    with socket.socket() as probe:  # it never listened
        assert probe.connect_ex(("127.0.0.1", second.port)) != 0
    owner.kill()
    assert _raft_rows(owner)[2] == rows[2]


def test_a_bootstrap_that_cannot_bind_writes_nothing_and_a_retry_bootstraps(
    tmp_path: Path,
) -> None:
    cluster = Cluster(tmp_path, size=1)
    try:
        (node,) = cluster.founders
        node.migrate()
        with socket.socket() as squatter:
            squatter.bind(("127.0.0.1", node.port))
            squatter.listen(1)
            failed = _run(node, "raftnode", "--bootstrap")
        assert failed.returncode != 0
        assert "cannot listen on" in failed.stderr, failed.stderr
        assert _raft_rows(node) == [[], [], []]
        node.start("--bootstrap")
        cluster.leader(timeout=15)
        assert _raft_rows(node)[2] == [(node.node_id, _raft_rows(node)[2][0][1])]
        assert len(_raft_rows(node)[0]) >= 1
    finally:
        cluster.close()


def test_a_node_whose_stored_membership_disagrees_with_its_settings_says_so(
    tmp_path: Path,
) -> None:
    cluster = Cluster(tmp_path, size=1)
    try:
        (node,) = cluster.founders
        node.migrate()
        node.start("--bootstrap")
        cluster.leader(timeout=15)
        assert node.do("kv.set", key="a", value="1")["ok"]
        node.kill()
        checked = _run(node, "check")
        assert checked.returncode == 0 and "W006" not in checked.stderr + checked.stdout
        start = node.log_path.stat().st_size
        node.start()  # same settings: no warning
        node.kill()
        assert "disagrees" not in node.log_path.read_text()[start:]

        node.port = free_port()  # moved, without a membership change
        node.address = f"http://127.0.0.1:{node.port}"
        checked = _run(node, "check")
        assert checked.returncode == 0, checked.stderr
        assert "django_raft.W006" in checked.stderr + checked.stdout
        start = node.log_path.stat().st_size
        node.start()
        logged = node.log_path.read_text()[start:]
        assert "disagrees with its settings" in logged
        assert "stored address is 'http://127.0.0.1:" in logged
    finally:
        cluster.close()


def test_joining_another_cluster_with_a_used_database_is_refused(tmp_path: Path) -> None:
    first = Cluster(tmp_path / "a", size=1)
    second = Cluster(tmp_path / "b", size=1)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    try:
        first.start()
        first.leader(timeout=15)
        (member,) = first.founders
        assert member.status()["cluster_id"]
        (node,) = second.founders
        node.migrate()
        node.start("--bootstrap")
        second.leader(timeout=15)
        node.kill()
        rows = _raft_rows(node)
        refused = _run(node, "raftnode", "--join", member.address)
        assert refused.returncode != 0
        assert f"of cluster {rows[2][0][1]}, not of cluster" in refused.stderr, refused.stderr
        assert member.status()["cluster_id"] in refused.stderr
        assert _raft_rows(node) == rows
        assert member.status()["voters"] == ["n1"]
    finally:
        first.close()
        second.close()
