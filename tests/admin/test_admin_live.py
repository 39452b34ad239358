"""The admin against a live cluster: dashboard, members, and changes proposed through Raft."""

from __future__ import annotations

import contextlib
import io
import queue
import subprocess
import sys
import threading
import time

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import Client
from django.urls import reverse

from tests.admin.conftest import wait_leader_is
from tests.integration.cluster import ROOT, Cluster, free_port, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.postgres]


def logged_in(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_dashboard_shows_one_leader_and_three_reachable_members(web: Cluster, viewer: User) -> None:
    client = logged_in(viewer)
    response = client.get(reverse("admin:django_raft_dashboard"))
    assert response.status_code == 200
    cluster = response.context["cluster"]
    assert [m.node_id for m in cluster.members] == ["n1", "n2", "n3"]
    assert all(m.reachable and m.role == "voter" for m in cluster.members)
    assert [m.state for m in cluster.members].count("leader") == 1
    assert cluster.leader == web.leader().node_id
    assert cluster.healthy, cluster.problems
    assert b'id="raft-leader"' in response.content


def test_dashboard_data_is_json_with_the_rendered_table(web: Cluster, viewer: User) -> None:
    response = logged_in(viewer).get(reverse("admin:django_raft_dashboard_data"))
    assert response.status_code == 200
    data = response.json()
    assert len(data["cluster"]["members"]) == 3
    assert 'data-node="n2"' in data["html"]


def test_dashboard_needs_a_staff_login(web: Cluster, db: None) -> None:
    response = Client().get(reverse("admin:django_raft_dashboard"))
    assert response.status_code == 302 and "/login/" in response["Location"]
    user = User.objects.create_user("plain", password="pw")
    assert logged_in(user).get(reverse("admin:django_raft_dashboard")).status_code == 302


def test_dashboard_shows_a_down_node_as_unreachable(web: Cluster, viewer: User) -> None:
    down = next(n for n in web.founders if n.node_id != web.leader().node_id)
    down.kill()
    try:
        data = logged_in(viewer).get(reverse("admin:django_raft_dashboard_data")).json()
        rows = {m["node_id"]: m for m in data["cluster"]["members"]}
        assert rows[down.node_id]["reachable"] is False
        assert rows[down.node_id]["state"] == "unreachable"
        assert f"{down.node_id} unreachable" in data["cluster"]["problems"]
        assert data["cluster"]["healthy"] is False
    finally:
        down.start()
        web.wait_applied()


def test_transfer_leadership_from_the_admin_asks_then_moves_the_leader(
    web: Cluster, operator: User
) -> None:
    client = logged_in(operator)
    old = web.leader().node_id
    target = next(n.node_id for n in web.founders if n.node_id != old)
    url = reverse("admin:django_raft_member_changelist")
    form = {"action": "transfer_leadership", "_selected_action": [target]}
    confirm = client.post(url, form)
    assert confirm.status_code == 200 and b"Make leader" in confirm.content
    assert web.leader().node_id == old  # asking changed nothing
    done = client.post(url, {**form, "post": "yes"}, follow=True)
    notes = [str(m) for m in done.context["messages"]]
    assert notes == [f"Transfer leadership to {target}: done."]
    wait_leader_is(web, target)


def test_add_learner_then_promote_then_remove_through_the_admin(
    web: Cluster, operator: User
) -> None:
    client = logged_in(operator)
    address = f"http://127.0.0.1:{free_port()}"
    response = client.post(
        reverse("admin:django_raft_member_add"),
        {"node_id": "n9", "address": address, "role": "learner"},
        follow=True,
    )
    assert "Add n9 as a learner: done." in response.content.decode()
    wait_for(lambda: "n9" in web.leader().status()["learners"], 10, "n9 to be a learner")
    from django_raft.models import Member

    Member.objects.create(node_id="n9", address=address, role="learner")
    url = reverse("admin:django_raft_member_changelist")
    client.post(url, {"action": "promote", "_selected_action": ["n9"], "post": "yes"})
    wait_for(lambda: "n9" in web.leader().status()["voters"], 10, "n9 to vote")
    response = client.post(
        url, {"action": "remove", "_selected_action": ["n9"], "post": "yes"}, follow=True
    )
    assert "Remove n9: done." in response.content.decode()
    status = web.leader().status()
    assert "n9" not in status["voters"] + status["learners"]


def test_a_failed_proposal_is_reported_and_changes_nothing(web: Cluster, operator: User) -> None:
    before = web.leader().status()
    response = logged_in(operator).post(
        reverse("admin:django_raft_member_changelist"),
        {"action": "transfer_leadership", "_selected_action": ["nobody"], "post": "yes"},
        follow=True,
    )
    # "nobody" has no Member row: the admin refuses before proposing anything.
    assert response.status_code == 200
    after = web.leader().status()
    assert (after["voters"], after["learners"]) == (before["voters"], before["learners"])


def test_the_add_form_rejects_bad_input_without_proposing(web: Cluster, operator: User) -> None:
    before = web.leader().status()["last_index"]
    response = logged_in(operator).post(
        reverse("admin:django_raft_member_add"),
        {"node_id": "n8", "address": "not a url", "role": "voter"},
    )
    assert response.status_code == 200
    assert response.context["form"].errors["address"]
    assert web.leader().status()["last_index"] == before


def test_a_viewer_sees_read_only_pages_and_cannot_act(web: Cluster, viewer: User) -> None:
    client = logged_in(viewer)
    listing = client.get(reverse("admin:django_raft_member_changelist"))
    assert listing.status_code == 200
    html = listing.content.decode()
    assert html.count('class="field-live_state">leader<') == 1
    assert html.count('class="field-live_state">follower<') == 2
    assert b"transfer_leadership" not in listing.content
    assert b"/member/add/" not in listing.content
    assert client.get(reverse("admin:django_raft_member_add")).status_code == 403
    leader = web.leader().node_id
    target = next(n.node_id for n in web.founders if n.node_id != leader)
    client.post(
        reverse("admin:django_raft_member_changelist"),
        {"action": "transfer_leadership", "_selected_action": [target], "post": "yes"},
    )
    assert web.leader().node_id == leader
    detail = client.get(reverse("admin:django_raft_member_change", args=[target]))
    assert detail.status_code == 200
    assert b"Transfer leadership here" not in detail.content
    assert b'id="raft-live-state"' in detail.content


def test_the_member_page_shows_live_state_and_buttons_to_act(web: Cluster, operator: User) -> None:
    leader = web.leader().node_id
    detail = logged_in(operator).get(reverse("admin:django_raft_member_change", args=[leader]))
    assert detail.context["live"].state == "leader"
    assert b"Transfer leadership here" in detail.content


# -- management commands and the node's own log ------------------------------------------


def run(*arguments: str) -> str:
    out = io.StringIO()
    call_command(*arguments, stdout=out)
    return out.getvalue()


def test_raftstatus_and_raftmembers_list_show_the_cluster(web: Cluster) -> None:
    text = run("raftstatus")
    assert text.count(" voter ") == 3 and "leader" in text and "healthy" in text
    assert run("raftmembers").count(" voter ") == 3


def test_raftmembers_and_rafttransfer_propose_through_raft(web: Cluster) -> None:
    address = f"http://127.0.0.1:{free_port()}"
    assert run("raftmembers", "add-learner", "n6", address) == "added n6 as a learner\n"
    assert "n6" in web.leader().status()["learners"]
    assert run("raftmembers", "promote", "n6") == "promoted n6 to voter\n"
    wait_for(lambda: "n6" in web.leader().status()["voters"], 10, "n6 to vote")
    assert run("raftmembers", "remove", "n6") == "removed n6\n"
    old = web.leader().node_id
    target = next(n.node_id for n in web.founders if n.node_id != old)
    assert run("rafttransfer", target) == f"leader is now {target}\n"
    wait_leader_is(web, target)
    with pytest.raises(CommandError, match="UnknownPeerError"):
        run("rafttransfer", "stranger")


def test_raftlog_follow_prints_new_entries_as_they_come(web: Cluster) -> None:
    node = web.nodes["n2"]
    follow = subprocess.Popen(
        [sys.executable, "manage.py", "raftlog", "--follow", "-n", "0", "--interval", "0.1"],
        cwd=ROOT,
        env=node.env(),
        stdout=subprocess.PIPE,
        text=True,
    )
    lines: queue.SimpleQueue[str] = queue.SimpleQueue()
    assert follow.stdout is not None
    stdout = follow.stdout

    def read() -> None:
        for line in stdout:
            lines.put(line)

    threading.Thread(target=read, daemon=True).start()
    try:
        # It starts at the end of the log, whenever its process is up: write until a
        # line comes (bounded), and check the entries printed are the ones written.
        deadline = time.monotonic() + 30
        line = ""
        while not line and time.monotonic() < deadline:
            web.leader().do("kv.set", key="followed", value="yes")
            with contextlib.suppress(queue.Empty):
                line = lines.get(timeout=0.5)
        assert 'kv.set {"key": "followed", "value": "yes"}' in line
    finally:
        follow.kill()
        follow.wait(timeout=10)


def test_raftnode_logs_its_life_at_info(web: Cluster) -> None:
    text = web.nodes["n1"].log_path.read_text()
    assert "INFO raft n1: leader is" in text
    assert "INFO raft n1: member n2 added" in text


def test_every_node_records_the_same_outcomes(web: Cluster) -> None:
    """The outcome rows come from the deterministic apply: each node has the same ones."""
    leader = web.leader()
    before = leader.status()["last_index"]
    answers = [
        leader.do("kv.set", key="outcome", value="x"),
        leader.do("kv.incr", key="outcome"),
        leader.do("kv.get", key="no-such-key"),
        leader.do("kv.delete", key="outcome"),
    ]
    assert [a["ok"] for a in answers] == [True, False, True, True]
    nodes = [n for n in web.founders if n.running()]
    web.wait_applied(nodes)
    query = (
        'SELECT o."index", o.ok, o.text, o.truncated, e.command FROM django_raft_entryoutcome o '
        f'JOIN django_raft_logentry e ON e."index" = o."index" WHERE o."index" > {before} '
        'ORDER BY o."index"'
    )
    rows = [node.query(query) for node in nodes]
    assert len(nodes) == 3 and rows[0] == rows[1] == rows[2]
    recorded = [(command, bool(ok), text) for _, ok, text, _, command in rows[0]]
    assert recorded == [
        ("kv.set", True, "1"),
        ("kv.incr", False, "ValueError: the value of 'outcome' is not an integer: 'x'"),
        ("kv.delete", True, "true"),
    ]
