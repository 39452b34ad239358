"""RaftRouter keeps django_raft's tables and the replicated models in the node's database."""

from __future__ import annotations

from django.contrib.auth.models import User
from django.test import override_settings

from demo_project.kv.models import KeyValue
from django_raft.models import HardState, LogEntry
from django_raft.routers import RaftRouter

RAFT = {"DATABASE": "raft", "REPLICATED_MODELS": ["kv.KeyValue"]}


@override_settings(DJANGO_RAFT=RAFT)
def test_raft_and_replicated_models_go_to_the_node_database() -> None:
    router = RaftRouter()
    for model in (LogEntry, HardState, KeyValue):
        assert router.db_for_read(model) == "raft"
        assert router.db_for_write(model) == "raft"
    assert router.db_for_read(User) is None
    assert router.db_for_write(User) is None


@override_settings(DJANGO_RAFT=RAFT)
def test_node_tables_are_migrated_only_in_the_node_database() -> None:
    router = RaftRouter()
    assert router.allow_migrate("raft", "django_raft", "logentry") is True
    assert router.allow_migrate("default", "django_raft", "logentry") is False
    assert router.allow_migrate("raft", "kv", "keyvalue") is True
    assert router.allow_migrate("default", "kv", "keyvalue") is False
    assert router.allow_migrate("default", "auth", "user") is None


@override_settings(DJANGO_RAFT=RAFT)
def test_no_relation_across_the_node_database() -> None:
    router = RaftRouter()
    user, row, entry = User(username="u"), KeyValue(key="k"), LogEntry(index=1)
    assert router.allow_relation(user, row) is False
    assert router.allow_relation(row, entry) is None
    assert router.allow_relation(user, User(username="v")) is None


@override_settings(DJANGO_RAFT={"REPLICATED_MODELS": []})
def test_with_the_default_alias_nothing_changes() -> None:
    router = RaftRouter()
    assert router.db_for_read(LogEntry) == "default"
    assert router.db_for_read(KeyValue) is None
    assert router.allow_migrate("default", "django_raft", "logentry") is True
