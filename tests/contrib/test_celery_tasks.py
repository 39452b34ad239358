"""``leader_only_task`` against a running node: it runs only where the node leads,
holding the lock, and its fencing token fences the writes of a run that lost it."""

from __future__ import annotations

import pytest

import django_raft
from demo_project.kv.models import KeyValue
from django_raft.client.locks import Lock
from django_raft.exceptions import StaleTokenError
from tests.node.test_node import Running, running, start  # noqa: F401  (fixtures)

pytest.importorskip("celery")

from django_raft.contrib.celery.tasks import leader_only_task

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_leader_only_task_holds_the_lock_and_passes_its_token(
    running: Running,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tokens: list[int] = []

    @leader_only_task("nightly", ttl=30)
    def nightly(value: str, fencing_token: int) -> int:
        tokens.append(fencing_token)
        result: int = django_raft.do(
            "kv.fenced_set", key="n", value=value, lock="nightly", token=fencing_token
        )
        return result

    assert nightly("one") == 1
    assert nightly("two") == 2  # the lock was released in between: a new, larger token
    assert tokens[1] > tokens[0]
    with pytest.raises(StaleTokenError):  # the first run's token no longer fences anything
        django_raft.do("kv.fenced_set", key="n", value="late", lock="nightly", token=tokens[0])
    assert KeyValue.objects.get(pk="n").value == "two"
    # Another holder has the lock: the task does not run.
    other = Lock("nightly", ttl=30, client=django_raft.Client())
    assert other.acquire(blocking=False)
    assert nightly("three") is None and len(tokens) == 2
    other.release()
    # Where the node does not lead, it does not run either.
    monkeypatch.setattr("django_raft.client.leader.is_leader", lambda: False)
    assert nightly("four") is None and len(tokens) == 2
