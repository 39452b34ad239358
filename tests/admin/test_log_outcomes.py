"""The log's outcome column, entry page and API field, over a log applied by the state
machine in the test database (no node needed: the pages only read it).

Entries 1-6 are applied, entry 7 is not: a result, a handler error, an entry applied
without a result, a membership change, a long result cut for length, and one pending.
"""

from __future__ import annotations

import io
import json
import re

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from django_raft.core import ConfChangeType, Entry
from django_raft.models import LogEntry
from django_raft.node.statemachine import StateMachine
from django_raft.node.storage import _command_name
from tests.node.test_statemachine import command, conf

pytestmark = [pytest.mark.django_db, pytest.mark.postgres]

LIST = "admin:django_raft_logentry_changelist"


@pytest.fixture
def log(db: None) -> list[Entry]:
    entries = [
        command(1, "kv.set", key="colour", value="blue"),  # ok: 1
        command(2, "kv.incr", key="colour"),  # error
        command(3, "kv.get", key="absent"),  # ok, None: nothing recorded
        conf(4, ConfChangeType.ADD_LEARNER, "n9", "http://n9.test"),
        command(5, "kv.set", key="big", value="x" * 2000),
        command(6, "kv.get", key="big"),  # a result longer than is kept
        command(7, "kv.set", key="colour", value="red"),  # not applied: pending
    ]
    LogEntry.objects.bulk_create(
        LogEntry(
            index=e.index, term=e.term, type=e.type.value, command=_command_name(e), data=e.data
        )
        for e in entries
    )
    StateMachine("default", "n1").apply(entries[:6])
    return entries


@pytest.fixture
def admin_client(db: None) -> Client:
    client = Client()
    client.force_login(User.objects.create_superuser("op", "op@example.com", "pw"))
    return client


def outcome_cells(html: str) -> dict[int, tuple[str, str]]:
    """Each row's outcome cell: (data-status, text), by entry index."""
    cells = {}
    for row in re.findall(r"<tr>.*?</tr>", html, flags=re.S):
        index = re.search(r"/logentry/(\d+)/change/", row)
        cell = re.search(r'class="raft-outcome" data-status="(\w+)"[^>]*>(.*?)</span>', row, re.S)
        if index and cell:
            cells[int(index.group(1))] = (cell.group(1), cell.group(2))
    return cells


def test_the_log_page_shows_each_outcome(log: list[Entry], admin_client: Client) -> None:
    html = admin_client.get(reverse(LIST)).content.decode()
    cells = outcome_cells(html)
    assert cells[1] == ("ok", "ok: 1")
    assert cells[2] == (
        "error",
        "error: ValueError: the value of &#x27;colour&#x27; is not an integer: &#x27;blue&#x27;",
    )
    assert cells[3] == ("ok", "ok")
    assert cells[4] == ("ok", "ok")
    assert cells[5] == ("ok", "ok: 1")
    status, text = cells[6]
    assert status == "ok" and text.startswith("ok: &quot;xxx") and text.endswith("…")
    assert cells[7] == ("pending", "pending")


def test_the_outcomes_come_with_the_page_in_one_query(
    log: list[Entry], admin_client: Client
) -> None:
    with CaptureQueriesContext(connection) as captured:
        assert admin_client.get(reverse(LIST)).status_code == 200
    reads = [q["sql"] for q in captured.captured_queries if "entryoutcome" in q["sql"]]
    assert len(reads) == 1 and "LEFT OUTER JOIN" in reads[0]


def test_an_entry_page_shows_the_whole_outcome(log: list[Entry], admin_client: Client) -> None:
    def page(index: int) -> str:
        url = reverse("admin:django_raft_logentry_change", args=[index])
        return str(admin_client.get(url).content.decode())

    assert 'data-status="ok"' in page(1) and ">1</span>" in page(1)
    assert "ValueError: the value of &#x27;colour&#x27; is not an integer" in page(2)
    assert 'data-status="pending"' in page(7)
    long = page(6)
    assert "x" * 990 in long and "(cut: the result was longer)" in long


def test_the_api_gives_each_entry_its_outcome(log: list[Entry], admin_client: Client) -> None:
    entries = {e["index"]: e for e in admin_client.get("/api/raft/log").json()["results"]}
    assert entries[1]["outcome"] == {"status": "ok", "result": 1}
    assert entries[2]["outcome"] == {
        "status": "error",
        "error": "ValueError: the value of 'colour' is not an integer: 'blue'",
    }
    assert entries[3]["outcome"] == {"status": "ok", "result": None}
    assert entries[7]["outcome"] == {"status": "pending"}
    cut = admin_client.get("/api/raft/log/6").json()["outcome"]
    assert cut["truncated"] is True and cut["result"] is None
    assert cut["result_text"].startswith('"xxx') and len(cut["result_text"]) == 1000


def test_raftlog_json_carries_the_outcome(log: list[Entry]) -> None:
    out = io.StringIO()
    call_command("raftlog", "-n", "7", "--json", stdout=out)
    rows = {row["index"]: row for row in map(json.loads, out.getvalue().splitlines())}
    assert rows[1]["outcome"] == {"status": "ok", "result": 1}
    assert rows[7]["outcome"] == {"status": "pending"}
