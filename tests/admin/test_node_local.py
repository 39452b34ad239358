"""One node in this process, over the test database: the operator routes (overview, metrics,
snapshot, transfer), the events it logs, the log pages and the management commands.

The node is started with ``server.start_node`` on a free port; the test database (SQLite's
shared in-memory database) is also its node-local database, as in a web process that runs
next to its node.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from django.contrib.auth.models import User
from django.core.management import call_command
from django.db import connection
from django.test import Client, override_settings
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

import django_raft
from django_raft.models import LogEntry, Snapshot
from django_raft.node import events, metrics
from django_raft.node.http.server import start_node
from django_raft.node.runner import RaftNode
from tests.integration.cluster import free_port, wait_for
from tests.signing import signed as signed_headers

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.postgres]

SECRET = "local-secret-" + "l" * 32


class Local:
    """The running node and its address."""

    def __init__(self, node: RaftNode, address: str) -> None:
        self.node = node
        self.address = address

    def post(self, route: str, body: dict[str, Any], signed: bool = True) -> requests.Response:
        data = json.dumps(body).encode()
        url = f"{self.address}/raft/{route}"
        headers = signed_headers(url, data, SECRET) if signed else {}
        return requests.post(url, data=data, headers=headers, timeout=10)


@pytest.fixture
def local(transactional_db: None) -> Iterator[Local]:
    port = free_port()
    address = f"http://127.0.0.1:{port}"
    settings = {
        "SECRET": SECRET,
        "NODE_ID": "n1",
        "ADDRESS": address,
        "REPLICATED_MODELS": ["kv.KeyValue"],
        "ENTRIES_AFTER_SNAPSHOT": 2,
    }
    events.clear()
    events.install(verbosity=1)
    with override_settings(DJANGO_RAFT=settings):
        node, server = start_node("n1", address, f"127.0.0.1:{port}", True, None, threads=4)
        try:
            # Leading, and its term's first entry applied: the status holds still.
            wait_for(
                lambda: (
                    (status := node.status())["state"] == "leader"
                    and status["applied"] == status["last_index"]
                ),
                10,
                "n1 to lead and apply its first entry",
            )
            yield Local(node, address)
        finally:
            node.stop()
            server.stop()
            events.uninstall()


def fill(count: int) -> None:
    for i in range(count):
        django_raft.do("kv.set", key=f"k{i}", value=f"value {i}")


# -- routes -------------------------------------------------------------------------------


def test_overview_adds_events_and_addresses_to_the_status(local: Local) -> None:
    answer = local.post("overview", {})
    assert answer.status_code == 200
    value = answer.json()["value"]
    assert value["state"] == "leader" and value["address"] == local.address
    assert value["addresses"]["n1"] == local.address
    kinds = {event["kind"] for event in value["events"]}
    assert {"state", "leader", "term"} <= kinds
    assert any(e["message"] == "leader is n1" for e in value["events"])


def test_operator_routes_refuse_unsigned_requests(local: Local) -> None:
    before = local.node.status()
    for route, body in (("overview", {}), ("transfer", {"node_id": "n1"}), ("snapshot", {})):
        answer = local.post(route, body, signed=False)
        assert answer.status_code == 403, route
    assert local.node.status() == before
    assert not Snapshot.objects.filter(index__gt=0).exists()


@pytest.mark.parametrize(
    "body",
    [{}, {"node_id": ""}, {"node_id": 7}, {"node_id": "n1", "timeout": -1}, {"node_id": "a\x00"}],
)
def test_transfer_refuses_bad_input_with_a_400(local: Local, body: dict[str, Any]) -> None:
    answer = local.post("transfer", body)
    assert answer.status_code == 400
    assert answer.json()["ok"] is False
    assert local.node.status()["state"] == "leader"


def test_transfer_to_a_stranger_or_to_itself_is_refused(local: Local) -> None:
    for target in ("nobody", "n1"):
        answer = local.post("transfer", {"node_id": target})
        assert answer.status_code == 409, answer.text
        assert answer.json()["error_type"] in ("UnknownPeerError", "MembershipError")
    assert local.node.status()["leader"] == "n1"


def all_applied(local: Local) -> int:
    """The applied index, once the status shows every entry applied: the loop counts an
    entry applied when the applier reports it, just after do() returns."""
    return wait_for(
        lambda: (
            (status := local.node.status())["applied"] == status["commit"] and status["applied"]
        ),
        5,
        "the status to show every entry applied",
    )


def test_metrics_are_served_in_the_prometheus_format(local: Local) -> None:
    fill(3)
    applied = all_applied(local)
    answer = requests.get(f"{local.address}/raft/metrics", timeout=10)
    assert answer.status_code == 200
    assert answer.headers["Content-Type"].startswith("text/plain")
    text = answer.text
    assert "django_raft_server_is_leader 1.0" in text
    assert "django_raft_server_has_leader 1.0" in text
    assert f"django_raft_server_applied_index {float(applied)}" in text
    assert "django_raft_server_leader_changes_seen_total" in text
    assert requests.post(f"{local.address}/raft/metrics", timeout=10).status_code == 405


def test_snapshot_on_demand_stores_it_and_compacts_the_log(local: Local) -> None:
    fill(10)
    applied = all_applied(local)
    answer = local.post("snapshot", {})
    assert answer.status_code == 200, answer.text
    report = answer.json()["value"]
    assert report["taken"] is True and report["index"] == applied
    assert report["size"] > 0 and report["seconds"] >= 0
    stored = Snapshot.objects.get()
    assert stored.index == applied and len(stored.data) == report["size"]
    assert LogEntry.objects.order_by("index").first().index == applied - 2 + 1  # type: ignore[union-attr]
    again = local.post("snapshot", {}).json()["value"]
    assert again["taken"] is False and again["index"] == applied
    assert any(e["kind"] == "snapshot" for e in events.recent())
    assert "django_raft_snap_size_bytes_count" in metrics.exposition(local.node.status()).decode()


# -- logging ------------------------------------------------------------------------------


def test_the_node_logs_its_life_at_info(caplog: pytest.LogCaptureFixture, local: Local) -> None:
    caplog.set_level(logging.INFO, logger="django_raft.events")
    django_raft.do("kv.set", key="a", value="b")
    events.record("membership", "n1", "member n2 added")
    assert "raft n1: member n2 added" in caplog.text


def test_verbosity_zero_silences_info() -> None:
    events.install(verbosity=0)
    try:
        assert logging.getLogger("django_raft").level == logging.WARNING
        events.install(verbosity=3)
        assert logging.getLogger("django_raft").level == logging.DEBUG
    finally:
        events.uninstall()


# -- the log in the admin -----------------------------------------------------------------


@pytest.fixture
def admin_client(local: Local) -> Client:
    client = Client()
    client.force_login(User.objects.create_superuser("op", "op@example.com", "pw"))
    return client


def test_the_log_page_lists_entries_newest_first_decoded(
    local: Local, admin_client: Client
) -> None:
    fill(5)
    django_raft.do("kv.set", key="é", value="x" * 200)
    response = admin_client.get(reverse("admin:django_raft_logentry_changelist"))
    assert response.status_code == 200
    rows = list(response.context["cl"].result_list)
    assert [e.index for e in rows] == sorted((e.index for e in rows), reverse=True)
    html = response.content.decode()
    assert "kv.set" in html and "&quot;key&quot;: &quot;k4&quot;" in html
    assert "…" in html  # the long value's preview is cut
    assert "membership change" in html


def test_the_log_page_never_counts_the_log(local: Local, admin_client: Client) -> None:
    fill(3)
    url = reverse("admin:django_raft_logentry_changelist")
    with CaptureQueriesContext(connection) as queries:
        assert admin_client.get(url).status_code == 200
    assert not [q for q in queries.captured_queries if "COUNT(" in q["sql"].upper()]
    last = local.node.status()["last_index"]
    with CaptureQueriesContext(connection) as queries:
        response = admin_client.get(url, {"command": "kv.set"})
    assert response.context["cl"].result_count == 3
    sqls = [q["sql"].upper() for q in queries.captured_queries]
    assert not [sql for sql in sqls if "COUNT(" in sql]
    # One bounded scan finds the matches; the page is then read by primary key.
    scans = [sql for sql in sqls if "COMMAND\" = 'KV.SET'" in sql and " IN (" not in sql]
    assert len(scans) == 1 and "BETWEEN" in scans[0] and "LIMIT" in scans[0]
    assert [sql for sql in sqls if '"INDEX" IN (' in sql]
    assert last >= 5


def test_the_log_page_filters_and_searches(local: Local, admin_client: Client) -> None:
    fill(2)
    django_raft.do("kv.incr", key="n")
    url = reverse("admin:django_raft_logentry_changelist")
    found = admin_client.get(url, {"q": "kv.incr"}).context["cl"].result_list
    assert [e.command for e in found] == ["kv.incr"]
    changes = admin_client.get(url, {"type__exact": 1}).context["cl"].result_list
    assert changes and all(e.type == 1 for e in changes)
    term = local.node.status()["term"]
    in_term = admin_client.get(url, {"term": term}).context["cl"].result_list
    assert in_term and all(e.term == term for e in in_term)


def test_a_log_entry_page_shows_the_decoded_payload(local: Local, admin_client: Client) -> None:
    django_raft.do("kv.set", key="colour", value="blue")
    entry = LogEntry.objects.filter(command="kv.set").get()
    response = admin_client.get(reverse("admin:django_raft_logentry_change", args=[entry.index]))
    html = response.content.decode()
    assert "&quot;name&quot;: &quot;kv.set&quot;" in html
    assert "&quot;value&quot;: &quot;blue&quot;" in html


def test_the_log_cannot_be_added_changed_or_deleted(local: Local, admin_client: Client) -> None:
    django_raft.do("kv.set", key="a", value="b")
    entry = LogEntry.objects.filter(command="kv.set").get()
    before = list(LogEntry.objects.values_list("index", "term", "data"))
    assert admin_client.get(reverse("admin:django_raft_logentry_add")).status_code == 403
    change = reverse("admin:django_raft_logentry_change", args=[entry.index])
    admin_client.post(change, {"term": 99, "command": "evil"})
    delete = reverse("admin:django_raft_logentry_delete", args=[entry.index])
    assert admin_client.post(delete, {"post": "yes"}).status_code == 403
    assert list(LogEntry.objects.values_list("index", "term", "data")) == before


def test_hard_state_and_snapshot_pages_are_read_only(local: Local, admin_client: Client) -> None:
    for name in ("hardstate", "snapshot", "appliedstate"):
        page = admin_client.get(reverse(f"admin:django_raft_{name}_changelist"))
        assert page.status_code == 200, name
        assert admin_client.get(reverse(f"admin:django_raft_{name}_add")).status_code == 403


def test_take_snapshot_from_the_admin_asks_then_reports(local: Local, admin_client: Client) -> None:
    fill(4)
    url = reverse("admin:django_raft_snapshot_take")
    assert b"Yes, I" in admin_client.get(url).content
    assert not Snapshot.objects.filter(index__gt=1).exists()
    done = admin_client.post(url, follow=True)
    notes = [str(m) for m in done.context["messages"]]
    applied = local.node.status()["applied"]
    assert notes and notes[0].startswith(f"Snapshot taken at #{applied} ")
    assert Snapshot.objects.get().index == applied


def test_taking_a_snapshot_needs_the_permission(local: Local) -> None:
    viewer = User.objects.create_user("v", password="pw", is_staff=True)
    client = Client()
    client.force_login(viewer)
    assert client.get(reverse("admin:django_raft_snapshot_take")).status_code == 403
    assert client.post(reverse("admin:django_raft_snapshot_take")).status_code == 403


# -- management commands ------------------------------------------------------------------


def run(*arguments: str) -> str:
    out = io.StringIO()
    call_command(*arguments, stdout=out)
    return out.getvalue()


def test_raftstatus_prints_the_table_and_json(local: Local) -> None:
    text = run("raftstatus")
    assert "n1" in text and "leader" in text and "healthy" in text
    data = json.loads(run("raftstatus", "--json"))
    assert data["leader"] == "n1" and data["members"][0]["state"] == "leader"


def test_raftlog_prints_decoded_entries(local: Local) -> None:
    django_raft.do("kv.set", key="hello", value="world")
    text = run("raftlog", "-n", "3")
    assert 'kv.set {"key": "hello", "value": "world"}' in text
    rows = [json.loads(line) for line in run("raftlog", "-n", "2", "--json").splitlines()]
    assert rows[-1]["payload"]["arguments"] == {"key": "hello", "value": "world"}


def test_raftsnapshot_reports_the_snapshot(local: Local) -> None:
    fill(3)
    text = run("raftsnapshot")
    assert text.startswith(f"snapshot taken at #{local.node.status()['applied']} ")


def test_raftmembers_refuses_what_the_cluster_refuses(local: Local) -> None:
    from django.core.management.base import CommandError

    with pytest.raises(CommandError, match="promote nobody"):
        run("raftmembers", "promote", "nobody")
    assert local.node.status()["voters"] == ["n1"]


@pytest.mark.django_db
def test_term_range_finds_each_terms_run_of_indexes() -> None:
    from django_raft.logview import term_range

    assert term_range(1) == (1, 0)  # an empty log
    terms = [2, 2, 3, 5, 5, 5, 8]  # indexes 11..17: a compacted start, gaps between terms
    LogEntry.objects.bulk_create(
        LogEntry(index=11 + i, term=term, data=b"") for i, term in enumerate(terms)
    )
    assert term_range(2) == (11, 12)
    assert term_range(3) == (13, 13)
    assert term_range(5) == (14, 16)
    assert term_range(8) == (17, 17)
    for missing in (1, 4, 9):
        first, last = term_range(missing)
        assert first > last


def test_an_unreachable_peer_is_one_event_until_it_answers_again() -> None:
    from django_raft import signals

    events.clear()
    events.install(verbosity=1)
    try:
        for _ in range(3):
            events.peer_failed("n1", "n2", "connection refused")
        signals.heartbeat.send_robust(sender=RaftNode, node_id="n1", value="n2", prev_value=None)
        signals.heartbeat.send_robust(sender=RaftNode, node_id="n1", value="n2", prev_value=None)
        messages = [e["message"] for e in events.recent()][::-1]
        assert messages == ["peer n2 unreachable: connection refused", "peer n2 answers again"]
        assert 'django_raft_network_peer_sent_failures_total{peer="n2"}' in (
            metrics.exposition({}).decode()
        )
        events.snapshot_installed("n1", 40, 1000, 0.01)
        assert events.recent()[0]["message"].startswith("snapshot at #40 installed")
    finally:
        events.uninstall()
        events.clear()


def test_the_runner_timers_fill_the_histograms() -> None:
    before = metrics.fsyncs._value.get()
    with metrics.persisting():
        pass
    with metrics.applying():
        pass
    metrics.count_proposal(True)
    metrics.count_sent("append_entries", 3)
    metrics.count_received("heartbeat")
    text = metrics.exposition({}).decode()
    assert metrics.fsyncs._value.get() == before + 1
    assert "django_raft_disk_wal_fsync_duration_seconds_count" in text
    assert 'django_raft_network_peer_sent_messages_total{type="append_entries"}' in text
    assert 'django_raft_network_peer_received_messages_total{type="heartbeat"}' in text


def test_rafttransfer_to_the_leader_succeeds_with_nothing_to_do(
    local: Local, caplog: pytest.LogCaptureFixture
) -> None:
    term = local.node.status()["term"]
    assert run("rafttransfer", "n1") == "n1 already leads\n"
    assert local.node.status()["term"] == term
    assert not [r for r in caplog.records if r.getMessage().startswith("Conflict")]


def test_a_wrong_secret_says_what_to_compare_and_the_node_logs_why(
    local: Local, caplog: pytest.LogCaptureFixture
) -> None:
    from django_raft.node.http import views

    views._refusals.update(logged_at=float("-inf"), unlogged=0)  # earlier tests' refusals
    data = b"{}"
    url = f"{local.address}/raft/status"
    headers = signed_headers(url, data, "not-the-secret-" + "x" * 32)
    with caplog.at_level(logging.WARNING):
        answer = requests.post(url, data=data, headers=headers, timeout=10)
    assert answer.status_code == 403
    message = answer.json()["error"]
    assert "RAFT_SECRET" in message and "RAFT_CLIENT_SECRET" in message
    logged = [r.getMessage() for r in caplog.records if "/raft/status" in r.getMessage()]
    assert logged == [f"raft: refused POST /raft/status from 'client': {message}"]
    assert SECRET not in logged[0]


def test_arguments_that_are_not_json_are_an_invalid_request(local: Local) -> None:
    from django_raft.exceptions import InvalidRequestError
    from django_raft.protocol.send import post, send_command

    django_raft.do("kv.set", key="k", value="v")  # opens this process's session
    last = local.node.status()["last_index"]
    with pytest.raises(InvalidRequestError, match="JSON"):
        django_raft.do("kv.set", key="k", value=object())  # in the node's process
    body = {"name": "kv.set", "arguments": {"key": "k", "value": {1, 2}}}
    with pytest.raises(InvalidRequestError, match="JSON"):
        send_command(local.address, body, 5.0)  # on a command stream
    with pytest.raises(InvalidRequestError, match="JSON"):
        post(local.address, "command", body, 5.0)  # as a request
    assert local.node.status()["last_index"] == last
