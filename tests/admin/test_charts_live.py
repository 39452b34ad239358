"""The dashboard's charts against live nodes: each ``raftnode`` samples itself once a
second; its ``overview`` route answers the samples after a time; the admin passes them on."""

from __future__ import annotations

import itertools
import statistics
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.urls import reverse

from tests.integration.cluster import Cluster, Node, wait_for

pytestmark = [pytest.mark.integration]

COMMANDS = 40


def history_of(node: Node, since: float = 0.0) -> list[dict[str, Any]]:
    answer = node.post("overview", {"history": since}, timeout=5.0)
    assert answer["ok"], answer
    samples: list[dict[str, Any]] = answer["value"]["history"]
    return samples


def test_a_nodes_history_shows_its_commands_as_a_commit_rate_and_an_advancing_index(
    live: Cluster,
) -> None:
    leader = live.leader()
    before = wait_for(lambda: history_of(leader), 10, "a first sample")[-1]
    for i in range(COMMANDS):
        assert leader.do("kv.set", key=f"chart-{i}", value=str(i))["ok"]
    committed = leader.status()["commit"]

    def sampled() -> list[dict[str, Any]] | None:
        samples = history_of(leader, before["time"])
        return samples if samples and samples[-1]["commit"] >= committed else None

    samples = wait_for(sampled, 10, "samples that saw the commands committed")
    assert all(s["time"] > before["time"] for s in samples)
    commits = [before["commit"], *(s["commit"] for s in samples)]
    assert commits == sorted(commits) and commits[-1] - commits[0] >= COMMANDS
    assert max(s["commit_rate"] for s in samples) > 0
    # The rates add up to the entries committed: each is per second of its interval.
    times = [before["time"], *(s["time"] for s in samples)]
    counted = sum(
        s["commit_rate"] * (t - t0) for s, t, t0 in zip(samples, times[1:], times[:-1], strict=True)
    )
    assert counted == pytest.approx(commits[-1] - commits[0], rel=0.05, abs=1.0)
    # Every command's handler ran here; the leader sees every member's lag.
    assert sum(s["handler_calls"] for s in samples) >= COMMANDS
    assert all(s["handler_mean"] > 0 for s in samples if s["handler_calls"])
    assert set(samples[-1]["lag"]) == {"n1", "n2", "n3"}
    assert {(s["state"], s["leader"]) for s in samples} == {("leader", leader.node_id)}


def test_a_followers_history_has_its_own_lag_and_the_leader_it_follows(live: Cluster) -> None:
    leader = live.leader()
    follower = next(n for n in live.founders if n.node_id != leader.node_id)

    def following() -> list[dict[str, Any]] | None:
        samples = history_of(follower)
        return samples if len(samples) >= 3 and samples[-1]["leader"] == leader.node_id else None

    samples = wait_for(following, 15, "a follower's sample naming its leader")
    assert samples[-1]["state"] == "follower"
    gaps = [b["time"] - a["time"] for a, b in itertools.pairwise(samples)]
    assert len(gaps) >= 2 and statistics.median(gaps) == pytest.approx(1.0, abs=0.2)
    assert set(samples[-1]["lag"]) == {follower.node_id}
    assert len(samples) <= 600


def test_a_bad_history_time_is_refused_with_a_400(live: Cluster) -> None:
    node = live.founders[0]
    for bad in ("yesterday", True, [1], {"t": 1}):
        answer = node.post("overview", {"history": bad})
        assert answer["ok"] is False and "history" in answer["error"], answer
    assert node.status()["state"] in {"leader", "follower"}


def logged_in(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_the_dashboard_passes_on_the_chosen_nodes_new_samples(web: Cluster, viewer: User) -> None:
    client = logged_in(viewer)
    leader = web.leader().node_id
    url = reverse("admin:django_raft_dashboard_data")

    def led() -> Any:
        """The history once its last sample was taken as leader (the node may have been
        sampled before its election)."""
        found = client.get(url, {"node": leader, "since": "0"}).json()
        samples = found["history"]["samples"]
        return found if samples and samples[-1]["state"] == "leader" else None

    data = wait_for(led, 15, "a sample taken by the leader as leader")
    history = data["history"]
    assert history["node"] == leader and history["error"] == ""
    assert history["nodes"] == ["n1", "n2", "n3"]
    assert history["samples"] and set(history["samples"][-1]["lag"]) == {"n1", "n2", "n3"}
    last = history["samples"][-1]["time"]
    newer = client.get(url, {"node": leader, "since": str(last)}).json()["history"]["samples"]
    assert all(s["time"] > last for s in newer)
    # Without a choice (or a node it does not know): this server's node, n1.
    assert client.get(url).json()["history"]["node"] == "n1"
    assert client.get(url, {"node": "nobody", "since": "nan"}).json()["history"]["node"] == "n1"


def test_the_dashboard_page_carries_the_charts_and_their_first_samples(
    web: Cluster, viewer: User
) -> None:
    response = logged_in(viewer).get(reverse("admin:django_raft_dashboard"))
    assert response.status_code == 200
    assert response.context["history"]["samples"]
    for chart in ("commit", "lag", "leader", "handler"):
        assert f'id="raft-chart-{chart}"'.encode() in response.content
    assert b'id="raft-history-initial"' in response.content
    assert b'id="raft-charts-slot"' in response.content


def test_the_dashboard_says_when_the_charts_node_does_not_answer(
    web: Cluster, viewer: User
) -> None:
    down = next(n for n in web.founders if n.node_id != web.leader().node_id)
    down.kill()
    try:
        client = logged_in(viewer)
        data = client.get(reverse("admin:django_raft_dashboard_data"), {"node": down.node_id})
        assert data.status_code == 200
        history = data.json()["history"]
        assert history["node"] == down.node_id and history["samples"] == []
        assert history["error"].startswith(f"{down.node_id} did not answer")
        assert f'data-node="{down.node_id}"' in data.json()["html"]  # the table goes on
        page = client.get(reverse("admin:django_raft_dashboard"), {"node": down.node_id})
        assert page.status_code == 200 and b"did not answer" in page.content
    finally:
        down.start()
        web.wait_applied()
