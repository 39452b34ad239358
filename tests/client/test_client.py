"""``do()``: every keyword is the handler's; options belong to a ``Client``; bad input
is refused before anything reaches the log."""

from __future__ import annotations

import time

import pytest
from django.test import override_settings

import django_raft
from django_raft import commands
from django_raft.client import Client
from django_raft.client.client import MIN_ATTEMPT, Attempts
from django_raft.exceptions import ClusterUnreachableError, InvalidRequestError
from django_raft.protocol.answers import raise_for
from tests.node.test_node import Running, running, start  # noqa: F401  (fixtures)

pytestmark = pytest.mark.django_db(transaction=True)


def test_handler_arguments_named_like_options_reach_the_handler(
    running: Running,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def echo(context: commands.Context, **arguments: object) -> object:
        return arguments

    monkeypatch.setitem(commands._handlers, "tests.echo", echo)
    clashing = {"name": "beta", "timeout": 3, "command": "x", "session": False, "self": 1}
    assert django_raft.do("tests.echo", **clashing) == clashing
    assert Client(timeout=5, session=False).do("tests.echo", **clashing) == clashing


def test_bad_input_is_refused_before_the_log(running: Running) -> None:  # noqa: F811
    last = django_raft.status()["last_index"]
    with pytest.raises(InvalidRequestError):
        django_raft.do("")
    with pytest.raises(InvalidRequestError):
        django_raft.do("kv.set", key="a", value=object())
    with pytest.raises(InvalidRequestError):
        Client(timeout=0)
    with pytest.raises(TypeError):
        django_raft.do(command="kv.set")
    assert django_raft.status()["last_index"] <= last + 1  # at most the session's opening


def test_without_any_node_do_says_so() -> None:
    nowhere = {"ADDRESS": "http://127.0.0.1:9", "COMMAND_TIMEOUT": 0.5}
    with override_settings(DJANGO_RAFT=nowhere), pytest.raises(ClusterUnreachableError):
        django_raft.do("kv.set", key="a", value="1")


def test_legacy_error_names_map_to_the_new_errors() -> None:
    from django_raft.exceptions import NodeStoppedError

    with pytest.raises(NodeStoppedError):
        raise_for({"ok": False, "error": "stopping", "error_type": "StopError"})
    from django_raft import exceptions

    assert exceptions.CommandError is exceptions.CommandFailedError
    assert "CommandError" not in exceptions.__all__


def test_a_failing_snapshot_is_logged_counted_and_tried_again(
    running: Running,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from django_raft import models
    from tests.integration.cluster import wait_for

    node = running.node

    def broken() -> tuple[int, bytes]:
        raise LookupError("App 'nope' doesn't have a 'Model' model.")

    monkeypatch.setattr(node.raw, "snapshot_due", lambda: True)
    monkeypatch.setattr(node.machine, "save_applied", broken)
    for value in range(3):
        django_raft.do("kv.set", key="a", value=str(value))
    wait_for(lambda: node.status()["snapshot_failures"] >= 1, 5, "a failed snapshot")
    assert node.status()["state"] == "leader"
    assert "could not save a snapshot" in caplog.text
    monkeypatch.undo()  # the cause is fixed: the next one is saved
    monkeypatch.setattr(node.raw, "snapshot_due", lambda: True)
    django_raft.do("kv.set", key="a", value="fixed")
    wait_for(lambda: models.Snapshot.objects.exists(), 5, "a snapshot saved")


def test_an_expired_session_is_replaced_and_the_command_applied_once(
    running: Running,  # noqa: F811
) -> None:
    import time

    client = Client(session_timeout=0.3)
    assert client.do("kv.incr", key="e") == 1
    first = client.client_id
    time.sleep(0.6)  # log time moves on with another client's command
    django_raft.do("kv.incr", key="other")
    assert client.do("kv.incr", key="e") == 2  # refused in the old session, sent in a new one
    assert client.client_id != first


def test_no_retry_is_sent_with_less_than_MIN_ATTEMPT_left() -> None:
    """A retry sent with milliseconds to go would rarely be answered, and an unanswered
    command may have been applied: with less than ``MIN_ATTEMPT`` left the call ends
    with what it was told ("not applied" stays "not applied"). The first attempt always
    goes."""
    members = {"a": "http://a.test:8000", "b": "http://b.test:8000"}
    settings = {"SECRET": "attempt-tests", "ADDRESS": members["a"], "CLUSTER": members}
    with override_settings(DJANGO_RAFT=settings):
        client = Client()
        now = time.monotonic()
        short = Attempts(client, {"name": "kv.set"}, now + MIN_ATTEMPT / 2)
        assert short.next() is not None
        refused = {"ok": False, "error": "no leader", "error_type": "NotLeaderError"}
        assert short.settle(members["a"], refused) is not None  # retryable
        assert short.next() is None
        assert short.answer()["error_type"] == "NotLeaderError"
        roomy = Attempts(client, {"name": "kv.set"}, now + 10 * MIN_ATTEMPT)
        assert roomy.next() is not None and roomy.next() is not None
