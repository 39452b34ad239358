"""Filtering the log by command scans a bounded window of entries, newest first, and says
which; the page and the API link to the window before it."""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import parse_qs, urlsplit

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.urls import reverse

from django_raft import logview
from django_raft.models import LogEntry
from django_raft.protocol.wire import encode_command

pytestmark = [pytest.mark.django_db, pytest.mark.postgres]

LIST = "admin:django_raft_logentry_changelist"
WINDOW = 100


@pytest.fixture(autouse=True)
def small_window(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(logview, "SCAN_WINDOW", WINDOW)
    yield


@pytest.fixture
def log(db: None) -> None:
    """Entries 11-260 (1-10 compacted away): kv.set, and kv.delete at every 25th."""

    def name(i: int) -> str:
        return "kv.delete" if i % 25 == 0 else "kv.set"

    LogEntry.objects.bulk_create(
        LogEntry(index=i, term=1, command=name(i), data=encode_command(name(i), {"key": "k"}))
        for i in range(11, 261)
    )


@pytest.fixture
def client(db: None) -> Client:
    client = Client()
    client.force_login(User.objects.create_superuser("op", "op@example.com", "pw"))
    return client


def indexes(client: Client, **params: str) -> list[int]:
    return [e.index for e in client.get(reverse(LIST), params).context["cl"].result_list]


def test_a_filter_by_command_searches_the_newest_window_then_older_ones(
    log: None, client: Client
) -> None:
    assert indexes(client, command="kv.delete") == [250, 225, 200, 175]
    response = client.get(reverse(LIST), {"command": "kv.delete"})
    html = response.content.decode()
    assert "Searched entries\n  #161\u2013#260" in html
    older = response.context["raft_scan"]["older"]
    assert parse_qs(older[1:]) == {"command": ["kv.delete"], "before": ["161"]}
    assert indexes(client, command="kv.delete", before="161") == [150, 125, 100, 75]
    last = client.get(reverse(LIST), {"command": "kv.delete", "before": "61"})
    assert [e.index for e in last.context["cl"].result_list] == [50, 25]
    assert last.context["raft_scan"]["older"] is None
    assert "back to the start of the stored log" in last.content.decode()


def test_a_search_that_finds_many_stops_and_goes_on_below_the_last_match(
    log: None, client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(logview, "SCAN_MATCHES", 60)
    response = client.get(reverse(LIST), {"command": "kv.set"})
    shown = [e.index for e in response.context["cl"].result_list]
    assert response.context["cl"].result_count == 60 and shown[0] == 260
    scan = response.context["raft_scan"]
    expected = [i for i in range(260, 160, -1) if i % 25][:60]
    assert (scan["first"], scan["last"], scan["capped"]) == (expected[-1], 260, 60)
    assert "up to the first\n  60 matches" in response.content.decode()
    assert parse_qs(scan["older"][1:])["before"] == [str(expected[-1])]
    following = client.get(reverse(LIST) + scan["older"]).context["cl"]
    assert next(e.index for e in following.result_list) == expected[-1] - 1


def test_search_is_bounded_the_same_way(log: None, client: Client) -> None:
    assert indexes(client, q="kv.delete") == [250, 225, 200, 175]
    assert indexes(client, q="kv.nope") == []


def test_a_common_command_pages_within_the_window(log: None, client: Client) -> None:
    first = indexes(client, command="kv.set")
    assert len(first) == 50 and first[0] == 260 and first == sorted(first, reverse=True)
    second = indexes(client, command="kv.set", p="2")
    assert second[0] == first[-1] - 1 and min(second) >= 161


def test_the_unfiltered_log_is_not_windowed(log: None, client: Client) -> None:
    assert indexes(client, before="100")[:2] == [260, 259]


def test_the_api_says_what_it_searched_and_links_older_entries(log: None, client: Client) -> None:
    page = client.get("/api/raft/log", {"command": "kv.delete"}).json()
    assert [e["index"] for e in page["results"]] == [250, 225, 200, 175]
    assert page["searched"] == {"first": 161, "last": 260}
    query = parse_qs(urlsplit(page["older"]).query)
    assert query == {"command": ["kv.delete"], "before": ["161"]}
    older = client.get(page["older"]).json()
    assert [e["index"] for e in older["results"]] == [150, 125, 100, 75]
    oldest = client.get("/api/raft/log", {"command": "kv.delete", "before": "61"}).json()
    assert [e["index"] for e in oldest["results"]] == [50, 25] and oldest["older"] is None
    assert "searched" not in client.get("/api/raft/log").json()
    bad = client.get("/api/raft/log", {"command": "kv.set", "before": "-1"})
    assert bad.status_code == 400
