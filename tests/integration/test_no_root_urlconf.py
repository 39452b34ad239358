"""Three real raftnode processes of a project without ``ROOT_URLCONF``
(``tests.no_urlconf_settings``): they serve status, commands and the other routes, and
``leadership()`` asked from another process says LEADER on the leader, NOT_LEADER on a
follower and UNKNOWN (never NOT_LEADER) on a node that is down."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.test import override_settings

import django_raft
from django_raft.client.leader import LeaderState, is_leader, leadership

from .cluster import SECRET, Cluster, Node

pytestmark = [pytest.mark.integration, pytest.mark.slow]

RAFTNODE = ("manage.py", "raftnode", "--settings=tests.no_urlconf_settings")


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    cluster = Cluster(tmp_path)
    try:
        cluster.start(program=RAFTNODE)  # waits until every node answers status
        yield cluster
    finally:
        cluster.close()


def at(node: Node) -> override_settings:
    """This process as a web process of ``node``'s server."""
    return override_settings(DJANGO_RAFT={"SECRET": SECRET, "ADDRESS": node.address})


def test_the_settings_lack_root_urlconf() -> None:
    from tests import no_urlconf_settings

    assert not hasattr(no_urlconf_settings, "ROOT_URLCONF")
    assert hasattr(no_urlconf_settings, "INSTALLED_APPS")


def test_nodes_without_root_urlconf_serve_their_routes_and_tell_who_leads(
    cluster: Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    leader = cluster.leader()
    follower = next(node for node in cluster.founders if node is not leader)
    assert leader.do("kv.set", key="a", value="1")["ok"]
    assert follower.do("kv.set", key="b", value="2")["ok"]  # forwarded to the leader
    assert leader.post("overview", {})["ok"]
    assert leader.post("nowhere", {})["error_type"] == "InvalidRequestError"
    with at(follower):
        assert django_raft.do("kv.set", key="c", value="3") == 1  # the client API
        assert django_raft.status()["leader"] == leader.node_id
        assert leadership().state is LeaderState.NOT_LEADER
        assert is_leader() is False
    with at(leader):
        assert leadership().state is LeaderState.LEADER
        assert is_leader() is True
    assert cluster.wait_applied() >= 3
    assert all(node.kv() == {"a": "1", "b": "2", "c": "3"} for node in cluster.founders)

    follower.kill()
    with at(follower), caplog.at_level(logging.WARNING, logger="django_raft.leader"):
        found = leadership(timeout=0.5)
        assert is_leader(timeout=0.5) is False
    assert found.state is LeaderState.UNKNOWN
    assert found.reason.startswith("ClusterUnreachableError: ") and follower.address in found.reason
    assert [r.getMessage() for r in caplog.records] == [
        f"raft: is_leader() is False: cannot tell whether this node leads: {found.reason}"
    ]
    for node in cluster.founders:
        assert "Traceback" not in node.log_path.read_text(), node.node_id
