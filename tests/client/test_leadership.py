"""A real node in this process, asked over HTTP: it serves its routes without the project's
``ROOT_URLCONF``, a failure of its status route is loud on both sides, and
``leadership()`` tells "does not lead" from "cannot tell"."""

from __future__ import annotations

import logging
from functools import partial
from typing import Any

import pytest
from django.conf import settings
from django.test import override_settings
from django.urls import reverse

from django_raft.client import status as node_status
from django_raft.client.leader import LeaderState, is_leader, leadership
from django_raft.core import RaftError
from django_raft.exceptions import ClusterUnreachableError
from django_raft.node.http import views
from tests.node.test_node import Running, post, running, start

__all__ = ["running", "start"]  # fixtures

pytestmark = pytest.mark.django_db(transaction=True)


def over_http(monkeypatch: pytest.MonkeyPatch, running: Running) -> None:
    """Make ``leadership()`` ask the node over HTTP, as a web process does (in this
    process it would ask the node object directly)."""
    monkeypatch.setattr("django_raft.client.client.status", partial(node_status, running.address))


def test_the_node_serves_its_routes_without_the_project_s_root_urlconf(
    running: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    answer = views.status_answer
    reversed_in_view: list[str] = []

    def status_answer(*arguments: Any) -> Any:
        reversed_in_view.append(reverse("django_raft:status"))
        return answer(*arguments)

    monkeypatch.setattr(views, "status_answer", status_answer)
    over_http(monkeypatch, running)
    with override_settings():
        del settings.ROOT_URLCONF
        assert not hasattr(settings, "ROOT_URLCONF")
        status = post(running.url("status"), b"{}")
        missing = post(running.url("nowhere"), b"{}")
        found = leadership()
    assert status.status_code == 200, status.text
    assert status.json()["value"]["state"] == "leader"
    # reverse() in a node view resolves against the node's routes
    assert reversed_in_view == ["/raft/status", "/raft/status"]  # the request, leadership()
    assert missing.status_code == 404 and missing.json()["error_type"] == "InvalidRequestError"
    assert found.state is LeaderState.LEADER


def test_a_failing_status_route_is_logged_with_its_traceback_and_the_client_told_its_cause(
    running: Running, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def fail(*arguments: Any) -> Any:
        raise AttributeError("'Settings' object has no attribute 'SOMETHING'")

    monkeypatch.setattr(views, "status_answer", fail)
    over_http(monkeypatch, running)
    with caplog.at_level(logging.WARNING):
        with pytest.raises(RaftError) as raised:
            node_status(running.address)
        found = leadership()
        assert is_leader() is False
    # The node answered: the error is the node's, not "unreachable", and names its cause.
    assert not isinstance(raised.value, ClusterUnreachableError)
    assert "internal error: AttributeError" in str(raised.value)
    assert "SOMETHING" not in str(raised.value)  # the message stays in the node's log
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert errors and all(r.exc_info and r.exc_info[0] is AttributeError for r in errors)
    assert "raft: error serving POST /raft/status" in errors[0].getMessage()
    assert found.state is LeaderState.UNKNOWN
    assert "internal error: AttributeError" in found.reason
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("cannot tell whether this node leads" in w and found.reason in w for w in warnings)
