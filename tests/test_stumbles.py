"""What a newcomer meets first: the API's schema in a project of their own, the
management commands as health checks, and errors that name the setting to fix."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import Client, override_settings
from django.urls import reverse

from django_raft import status
from django_raft.exceptions import ClusterUnreachableError
from django_raft.management.commands import raftstatus
from django_raft.management.commands.raftsnapshot import report_line
from tests.integration.cluster import free_port

ROOT = Path(__file__).resolve().parent.parent

# A project of its own: no REST_FRAMEWORK settings, drf_spectacular not in INSTALLED_APPS,
# and a DRF view of the project's with DRF's default schema class.
PROJECT = """
SECRET_KEY = "stumbles"
INSTALLED_APPS = [
    "django.contrib.auth", "django.contrib.contenttypes", "django.contrib.sessions",
    "rest_framework", "django_raft",
]
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}
ROOT_URLCONF = "project_urls"
USE_TZ = True
"""
URLS = """
from django.urls import include, path
from rest_framework.response import Response
from rest_framework.views import APIView


class Hello(APIView):
    def get(self, request):
        return Response({"hello": "world"})


urlpatterns = [
    path("hello", Hello.as_view()),
    path("api/raft/", include("django_raft.api.urls")),
]
"""
FETCH = """
import json
import django
django.setup()
from django.test import Client
response = Client().get("/api/raft/schema", HTTP_ACCEPT="application/vnd.oai.openapi+json")
print(response.status_code)
print(json.dumps(sorted(json.loads(response.content)["paths"])))
"""


def test_the_api_schema_works_whatever_the_project_s_rest_framework_settings(
    tmp_path: Path,
) -> None:
    (tmp_path / "project_settings.py").write_text(PROJECT)
    (tmp_path / "project_urls.py").write_text(URLS)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAFT_", "DJANGO_"))}
    env.update(DJANGO_SETTINGS_MODULE="project_settings", PYTHONPATH=f"{tmp_path}:{ROOT}")
    result = subprocess.run(
        [sys.executable, "-c", FETCH], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-3000:]
    code, paths = result.stdout.splitlines()[-2:]
    assert code == "200"
    expected = {"status", "members", "members/{node_id}", "log/{index}", "commands", "health"}
    assert {"/api/raft/" + p for p in expected} <= set(json.loads(paths))
    assert "/hello" not in paths  # the project's own views are not this API's


# -- raftstatus as a health check ---------------------------------------------------------


def test_raftstatus_fails_with_a_reason_when_no_node_answers() -> None:
    address = f"http://127.0.0.1:{free_port()}"
    settings = override_settings(DJANGO_RAFT={"ADDRESS": address, "NODE_ID": "n1"})
    with settings, pytest.raises(CommandError, match="no node answered") as raised:
        call_command("raftstatus", "--timeout", "1.5", stdout=io.StringIO())
    assert raised.value.returncode == raftstatus.UNREACHABLE == 3
    assert address in str(raised.value) and "ADDRESS" in str(raised.value)


def test_raftstatus_names_the_settings_when_none_names_a_node() -> None:
    settings = override_settings(DJANGO_RAFT={})
    with settings, pytest.raises(CommandError, match=r"RAFT_ADDRESS") as raised:
        call_command("raftstatus", "--json", stdout=io.StringIO())
    assert raised.value.returncode == raftstatus.UNREACHABLE


def test_raftstatus_exit_statuses_follow_the_verdict() -> None:
    from django_raft.client.monitor import ClusterView, MemberView

    up = MemberView("n1", "http://a", state="follower", reachable=True)
    down = MemberView("n2", "http://b")
    healthy = ClusterView([up], leader="n1", healthy=True)
    degraded = ClusterView([up, down], leader="n1", problems=["n2 unreachable"])
    leaderless = ClusterView([up, down], problems=["no leader"])
    assert raftstatus.health(healthy)[0] == raftstatus.HEALTHY == 0
    assert raftstatus.health(degraded) == (raftstatus.DEGRADED, "degraded: n2 unreachable")
    assert raftstatus.health(leaderless)[0] == raftstatus.NO_LEADER == 2
    assert raftstatus.health(ClusterView([down]))[0] == raftstatus.UNREACHABLE


# -- errors that name the setting -----------------------------------------------------------


def test_status_without_an_address_names_the_settings_not_an_empty_address() -> None:
    with override_settings(DJANGO_RAFT={}), pytest.raises(ClusterUnreachableError) as raised:
        status()
    message = str(raised.value)
    assert "RAFT_ADDRESS" in message
    assert "cannot reach :" not in message and "connect to :" not in message
    assert type(raised.value) is ClusterUnreachableError  # the public class, not the sender's


def test_an_unreachable_node_is_named_once_with_what_to_check() -> None:
    address = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(ClusterUnreachableError) as raised:
        status(address, timeout=1.0)
    message = str(raised.value)
    assert message.count(address) == 1 and "raftnode" in message and "ADDRESS" in message


@pytest.mark.parametrize("command", ["raftsnapshot", "rafttransfer n2"])
def test_operations_name_the_public_error_and_the_setting(command: str) -> None:
    address = f"http://127.0.0.1:{free_port()}"
    settings = {"ADDRESS": address, "NODE_ID": "n1", "CLUSTER": {"n1": address, "n2": address}}
    with override_settings(DJANGO_RAFT=settings), pytest.raises(CommandError) as raised:
        call_command(*command.split(), stdout=io.StringIO())
    message = str(raised.value)
    assert message.startswith("ClusterUnreachableError: cannot reach the node at " + address)
    assert "Unsent" not in message and "ADDRESS" in message


def test_raftsnapshot_says_how_far_the_log_was_compacted() -> None:
    report = {"index": 10, "term": 2, "size": 99, "seconds": 0.004, "taken": True}
    kept = report_line({**report, "compacted_to": 0})
    assert kept.startswith("snapshot taken at #10 (term 2): 99 bytes in 4.0 ms; ")
    assert "compacted up to #0" not in kept and "not compacted yet" in kept
    assert "ENTRIES_AFTER_SNAPSHOT" in kept
    assert "#1 to #4 removed (#5 to #10 kept" in report_line({**report, "compacted_to": 4})
    assert report_line({**report, "compacted_to": 10}).endswith("log entries #1 to #10 removed")


# -- the admin --------------------------------------------------------------------------------


def _breadcrumbs(page: str) -> str:
    start = page.index('<div class="breadcrumbs">')
    return page[start : page.index("</div>", start)]


@pytest.mark.django_db
def test_confirmation_pages_show_the_whole_breadcrumb_trail(admin_client: Client) -> None:
    from django_raft.models import Member

    Member.objects.create(node_id="n2", address="http://127.0.0.1:1", role="learner")
    home, app = reverse("admin:index"), reverse("admin:app_list", args=["django_raft"])
    page = admin_client.get(reverse("admin:django_raft_snapshot_take")).content.decode()
    crumbs = _breadcrumbs(page)
    assert home in crumbs and app in crumbs
    assert reverse("admin:django_raft_snapshot_changelist") in crumbs
    members = reverse("admin:django_raft_member_changelist")
    form = {"action": "promote", ACTION_CHECKBOX_NAME: ["n2"]}
    with override_settings(DJANGO_RAFT={"ADDRESS": "http://127.0.0.1:1"}):
        page = admin_client.post(members, form).content.decode()
    crumbs = _breadcrumbs(page)
    assert home in crumbs and app in crumbs and members in crumbs
    assert crumbs.rstrip().endswith("Promote to voter")


@pytest.mark.django_db
def test_the_admin_s_snapshot_message_says_what_was_compacted(
    admin_client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    from django.contrib.messages import get_messages

    from django_raft.client import operations

    report = {"index": 10, "term": 2, "size": 99, "seconds": 0.004, "taken": True}
    monkeypatch.setattr(operations, "take_snapshot", lambda: {**report, "compacted_to": 0})
    response = admin_client.post(reverse("admin:django_raft_snapshot_take"))
    assert response.status_code == 302
    [message] = [str(m) for m in get_messages(response.wsgi_request)]
    assert "compacted up to #0" not in message and "not compacted yet" in message
    assert message.startswith("Snapshot taken at #10 (term 2): 99 bytes in 4.0 ms; ")
    assert "ENTRIES_AFTER_SNAPSHOT" in message  # the setting that keeps them


# -- raftmembers and the operations ---------------------------------------------------------


def test_raftmembers_names_the_public_error_not_the_sender_s_class() -> None:
    address = f"http://127.0.0.1:{free_port()}"
    settings = {"ADDRESS": address, "NODE_ID": "n1", "CLUSTER": {"n1": address}}
    for arguments in (["remove", "n2"], ["add", "n4", "http://127.0.0.1:1"]):
        with override_settings(DJANGO_RAFT=settings), pytest.raises(CommandError) as raised:
            call_command("raftmembers", *arguments, stdout=io.StringIO())
        message = str(raised.value)
        prefix = f"{arguments[0]} {arguments[1]}: ClusterUnreachableError: cannot reach the node"
        assert message.startswith(prefix) and address in message
        assert "Unsent" not in message


def test_raftmembers_without_members_names_the_settings() -> None:
    with override_settings(DJANGO_RAFT={}), pytest.raises(CommandError) as raised:
        call_command("raftmembers", stdout=io.StringIO())
    assert "RAFT_ADDRESS" in str(raised.value) and "RAFT_CLUSTER" in str(raised.value)
    assert raised.value.returncode == raftstatus.UNREACHABLE


def test_an_operation_without_an_address_names_the_setting_to_set() -> None:
    from django_raft.client import operations

    for operation in (
        lambda: operations.remove_member("n2"),
        lambda: operations.add_member("n4", "http://127.0.0.1:1"),
        lambda: operations.transfer_leadership("n2"),
        lambda: operations.take_snapshot(),
    ):
        with override_settings(DJANGO_RAFT={}), pytest.raises(ClusterUnreachableError) as raised:
            operation()
        message = str(raised.value)
        assert message.startswith("no node to ask: set DJANGO_RAFT['ADDRESS'] (RAFT_ADDRESS)")
        assert "http://" in message  # what a value looks like


# -- the API's leadership transfer ------------------------------------------------------------


@pytest.fixture
def leading_node(transactional_db: None) -> Iterator[Any]:
    """One node in this process that leads, its address in DJANGO_RAFT['ADDRESS']."""
    from django_raft.node.http.server import start_node
    from tests.integration.cluster import wait_for

    port = free_port()
    address = f"http://127.0.0.1:{port}"
    settings = {"SECRET": "stumbles-" + "s" * 32, "NODE_ID": "n1", "ADDRESS": address}
    with override_settings(DJANGO_RAFT=settings):
        node, server = start_node("n1", address, f"127.0.0.1:{port}", True, None, threads=4)
        try:
            wait_for(
                lambda: (s := node.status())["state"] == "leader" and s["applied"] == s["commit"],
                10,
                "n1 to lead",
            )
            yield node
        finally:
            node.stop()
            server.stop()


@pytest.mark.django_db(transaction=True)
def test_the_api_s_transfer_to_the_leader_succeeds_with_nothing_to_do(
    leading_node: Any, admin_client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    term = leading_node.status()["term"]
    response = admin_client.post(
        "/api/raft/leadership-transfer", {"node_id": "n1"}, content_type="application/json"
    )
    assert response.status_code == 200, response.content
    assert response.json() == {"ok": True, "value": {"leader": "n1"}}
    assert leading_node.status()["term"] == term and leading_node.status()["state"] == "leader"
    assert not [r for r in caplog.records if r.getMessage().startswith("Conflict")]
    response = admin_client.post(
        "/api/raft/leadership-transfer", {"node_id": "n7"}, content_type="application/json"
    )
    assert response.status_code == 409  # a node that is not a voter is still refused
    assert response.json()["error_type"] == "UnknownPeerError"


# -- what the scripts say about themselves -------------------------------------------------


def test_the_readme_and_scripts_test_give_the_same_time_for_quick() -> None:
    """The quick run's time, as scripts/test's header and the README state it (measured:
    update both together)."""
    header = (ROOT / "scripts" / "test").read_text().split("set -euo", 1)[0]
    stated = re.search(r"scripts/test --quick .*?: about (\d+) seconds", header, re.DOTALL)
    readme = (ROOT / "README.md").read_text()
    told = re.search(r"`scripts/test --quick` skips[^.]*?runs in\s+about (\d+) seconds", readme)
    assert stated and told, "both say how long scripts/test --quick takes, in seconds"
    assert stated[1] == told[1]
    assert 10 <= int(told[1]) <= 60  # what it takes on 2 cores, not "a minute" or "instant"
