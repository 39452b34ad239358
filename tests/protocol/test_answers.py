"""One error vocabulary: every failing answer is built by ``answers.failure`` from one table."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from django_raft import exceptions
from django_raft.core import NotLeaderError, RaftError, StorageError
from django_raft.exceptions import (
    CommandTimeoutError,
    InvalidRequestError,
    MembershipError,
    NodeServerError,
    UnknownPeerError,
)
from django_raft.protocol.answers import ERRORS, LEGACY, failure, leaves_open, raise_for

PACKAGE = Path(__file__).resolve().parents[2] / "django_raft"


def test_the_table_names_every_error_a_node_answers_with() -> None:
    """Each name is importable from ``django_raft.exceptions`` as the class it names, and
    the errors the routes and the state machine raise are all there."""
    for name, kind in ERRORS.items():
        assert getattr(exceptions, name) is kind, name
    raised_on_nodes = (
        exceptions.ClusterUnreachableError,
        exceptions.CommandFailedError,
        exceptions.CommandTimeoutError,
        exceptions.ConfChangePendingError,
        exceptions.DuplicatePeerError,
        InvalidRequestError,
        MembershipError,
        NodeServerError,
        exceptions.NodeStoppedError,
        NotLeaderError,
        exceptions.OverloadedError,
        exceptions.ProposalDroppedError,
        exceptions.RemovedPeerError,
        exceptions.SessionExpiredError,
        exceptions.StaleTokenError,
        UnknownPeerError,
    )
    assert [kind for kind in raised_on_nodes if ERRORS.get(kind.__name__) is not kind] == []
    assert "RaftError" not in ERRORS  # too vague to be sent: a NodeServerError instead


@pytest.mark.parametrize("name", sorted(ERRORS))
def test_each_error_goes_over_the_wire_and_back(name: str) -> None:
    kind = ERRORS[name]
    answer = failure(kind, "what happened")
    assert answer == {"ok": False, "error": "what happened", "error_type": name}
    with pytest.raises(kind) as raised:
        raise_for(answer)
    assert type(raised.value) is kind
    if kind is not NotLeaderError:  # it carries the leader, not the message
        assert str(raised.value) == "what happened"
    assert leaves_open(answer) == exceptions.may_have_applied(raised.value)


def test_an_error_is_named_by_its_nearest_class_in_the_table() -> None:
    assert failure(UnknownPeerError("n9"))["error_type"] == "UnknownPeerError"

    class Narrower(MembershipError):
        pass

    assert failure(Narrower("x")) == {"ok": False, "error": "x", "error_type": "MembershipError"}
    assert failure(Narrower("x"), "said otherwise")["error"] == "said otherwise"


def test_an_error_outside_the_table_is_a_node_server_error() -> None:
    for error in (StorageError(7), ValueError("odd"), RaftError("core")):
        answer = failure(error)
        assert answer["error_type"] == "NodeServerError", error
        assert answer["error"].startswith(f"{type(error).__name__}: ")
        assert leaves_open(answer)  # unknown: it may have been applied


def test_a_class_outside_the_table_is_refused() -> None:
    with pytest.raises(TypeError, match="StorageError"):
        failure(StorageError, "no")


def test_old_names_are_read_but_never_sent() -> None:
    assert raise_for_kind("BadRequest") is InvalidRequestError
    assert raise_for_kind("ServerError") is NodeServerError
    assert raise_for_kind("NotFound") is InvalidRequestError
    assert not set(LEGACY) & set(ERRORS)
    assert failure(exceptions.StopError, "")["error_type"] == "NodeStoppedError"


def raise_for_kind(name: str) -> type[BaseException]:
    with pytest.raises(Exception) as raised:
        raise_for({"ok": False, "error": "e", "error_type": name})
    return type(raised.value)


def test_an_unknown_name_may_have_applied() -> None:
    answer = {"ok": False, "error": "?", "error_type": "FromTheFuture"}
    assert leaves_open(answer)
    with pytest.raises(RaftError):
        raise_for(answer)
    assert leaves_open(failure(CommandTimeoutError, "x"))


def test_no_module_builds_a_failing_answer_by_hand() -> None:
    """Only ``answers.py`` writes an ``error_type`` (a success's empty one aside)."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path == PACKAGE / "protocol" / "answers.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.Dict):
                continue
            for key, value in zip(node.keys, node.values, strict=True):
                named = isinstance(key, ast.Constant) and key.value == "error_type"
                if named and not (isinstance(value, ast.Constant) and value.value == ""):
                    found.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
    assert found == []
