"""A live 3-node cluster for the admin, API and command tests, and users with and without
the app's permissions.

The cluster's nodes are real ``raftnode`` processes with their own databases; this test
process plays the web process, with ``DJANGO_RAFT`` pointing at them.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import Permission, User
from django.test import override_settings

from django_raft.models import Member
from tests.integration.cluster import SECRET, Cluster, wait_for


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Three founding members, running; module-scoped (starting them takes seconds)."""
    cluster = Cluster(Path(tmp_path_factory.mktemp("live")))
    try:
        cluster.start()
        cluster.leader()
        yield cluster
    finally:
        cluster.close()


def raft_settings_for(cluster: Cluster) -> dict[str, Any]:
    """DJANGO_RAFT of a web process next to n1."""
    return {
        "SECRET": SECRET,
        "ADDRESS": cluster.nodes["n1"].address,
        "CLUSTER": {n.node_id: n.address for n in cluster.founders},
    }


@pytest.fixture
def web(live: Cluster, db: None) -> Iterator[Cluster]:
    """This process as a web process of the live cluster, with the members in its database."""
    with override_settings(DJANGO_RAFT=raft_settings_for(live)):
        for node in live.founders:
            Member.objects.create(node_id=node.node_id, address=node.address, role="voter")
        yield live


@pytest.fixture
def operator(db: None) -> User:
    """A superuser: may do everything."""
    return User.objects.create_superuser("operator", "op@example.com", "pw")


@pytest.fixture
def viewer(db: None) -> User:
    """Staff with the app's view permissions only: read-only."""
    user = User.objects.create_user("viewer", "viewer@example.com", "pw", is_staff=True)
    user.user_permissions.set(
        Permission.objects.filter(
            content_type__app_label="django_raft", codename__startswith="view_"
        )
    )
    return user


def leader_id(cluster: Cluster) -> str:
    return cluster.leader().node_id


def wait_leader_is(cluster: Cluster, node_id: str) -> None:
    wait_for(lambda: cluster.leader().node_id == node_id, 10, f"{node_id} to lead")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Keep each phase's report on the test item (the browser test screenshots failures)."""
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report
