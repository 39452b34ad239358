"""A node knows its own database: whose it is, and what membership it stored.

The storage records the node id and the cluster id when a node first starts on a
database and refuses, with nothing written, a database recorded for another node or
cluster. The stored membership (applied, then the log's changes) is compared with the
settings.
"""

from __future__ import annotations

import pytest
from django.core.checks import WARNING
from django.core.management import call_command
from django.test import override_settings

from django_raft import checks, models
from django_raft.checks import membership_disagreements, stored_membership
from django_raft.core import ConfChange, ConfChangeType, Entry, EntryType
from django_raft.node.storage import (
    DjangoStorage,
    IdentityError,
    check_identity,
    claim_identity,
    cluster_id_of,
)

pytestmark = [pytest.mark.django_db, pytest.mark.postgres]

CLUSTER = {"n1": "http://127.0.0.1:7001", "n2": "http://127.0.0.1:7002"}


def test_every_founder_derives_the_same_cluster_id_from_the_founding_members() -> None:
    assert cluster_id_of(CLUSTER) == cluster_id_of(dict(reversed(CLUSTER.items())))
    assert cluster_id_of(CLUSTER) != cluster_id_of({**CLUSTER, "n2": "http://127.0.0.1:7003"})
    assert len(cluster_id_of(CLUSTER)) == 32


def test_bootstrap_claims_the_database_for_the_node_in_the_same_transaction() -> None:
    storage = DjangoStorage()
    storage.bootstrap(sorted(CLUSTER), CLUSTER, "n1")
    row = models.NodeIdentity.objects.get()
    assert (row.node_id, row.cluster_id) == ("n1", cluster_id_of(CLUSTER))


def test_a_database_of_another_node_is_refused_and_nothing_is_written() -> None:
    claim_identity("default", "n1", "c1")
    before = list(models.NodeIdentity.objects.values_list("node_id", "cluster_id"))
    with pytest.raises(IdentityError) as refused:
        check_identity("default", "n2")
    message = str(refused.value)
    assert "'n1'" in message and "'n2'" in message and "'default'" in message
    with pytest.raises(IdentityError):
        claim_identity("default", "n2", "c1")
    storage = DjangoStorage()
    with pytest.raises(IdentityError):
        storage.bootstrap(sorted(CLUSTER), CLUSTER, "n2")
    assert storage.last_index() == 0 and not models.LogEntry.objects.exists()
    assert not models.HardState.objects.exists()
    assert list(models.NodeIdentity.objects.values_list("node_id", "cluster_id")) == before


def test_a_database_of_another_cluster_is_refused() -> None:
    claim_identity("default", "n1", "c1")
    with pytest.raises(IdentityError, match="cluster c1, not of cluster c2"):
        check_identity("default", "n1", "c2")
    check_identity("default", "n1", "c1")
    check_identity("default", "n1")  # the cluster not known: only the node is compared


def test_a_known_cluster_id_fills_in_an_unknown_one() -> None:
    claim_identity("default", "n3")
    assert models.NodeIdentity.objects.get().cluster_id == ""
    claim_identity("default", "n3", "c1")
    assert models.NodeIdentity.objects.get().cluster_id == "c1"
    claim_identity("default", "n3")  # restarting without it keeps it
    assert models.NodeIdentity.objects.get().cluster_id == "c1"


def _conf(index: int, kind: ConfChangeType, node_id: str, address: str = "") -> Entry:
    change = ConfChange(kind, node_id, address)
    return Entry(index=index, term=1, type=EntryType.CONF_CHANGE, data=change.encode())


def test_the_stored_membership_is_the_applied_one_with_the_logs_changes_replayed() -> None:
    models.Member.objects.create(node_id="n1", address="http://a:1", role="voter")
    models.Member.objects.create(node_id="n2", address="http://b:1", role="voter")
    storage = DjangoStorage()
    storage.persist(
        entries=[
            _conf(1, ConfChangeType.ADD_VOTER, "n3", "http://c:1"),
            _conf(2, ConfChangeType.REMOVE, "n2"),
            _conf(3, ConfChangeType.ADD_VOTER, "n1", "http://a:2"),
        ]
    )
    assert stored_membership("default", "default") == {"n1": "http://a:2", "n3": "http://c:1"}


def test_disagreements_name_the_address_and_the_cluster_entries_that_differ() -> None:
    stored = {"n1": "http://a:1", "n2": "http://b:1", "n4": "http://d:1"}
    assert membership_disagreements({}, "n1", "http://x:1", {"n9": "http://x:9"}) == []
    assert membership_disagreements(stored, "n1", "http://a:1", {"n1": "http://a:1"}) == []
    found = membership_disagreements(
        stored, "n1", "http://a:9", {"n1": "http://a:9", "n2": "http://b:2", "n3": "http://c:1"}
    )
    assert len(found) == 3
    assert "'http://a:1'" in found[0] and "'http://a:9'" in found[0]
    assert "'n2'" in found[1] and "'n3'" in found[2]
    assert "not among" in membership_disagreements(stored, "n5", "http://e:1", {})[0]


def test_manage_py_check_warns_when_the_stored_membership_disagrees() -> None:
    models.Member.objects.create(node_id="n1", address="http://127.0.0.1:7001", role="voter")
    raft = {"NODE_ID": "n1", "ADDRESS": "http://127.0.0.1:7009", "SECRET": "s" * 40}
    with override_settings(DJANGO_RAFT=raft):
        found = checks.check_stored_membership()
        assert [message.id for message in found] == ["django_raft.W006"]
        assert found[0].level == WARNING
        assert "7001" in found[0].msg and "7009" in found[0].msg
        call_command("check", "--tag", checks.STORED_TAG)  # a warning: no failure
    with override_settings(DJANGO_RAFT={**raft, "ADDRESS": "http://127.0.0.1:7001"}):
        assert checks.check_stored_membership() == []


@pytest.mark.django_db(transaction=True)
def test_a_database_without_the_identity_table_is_refused_with_a_hint() -> None:
    from django.core.exceptions import ImproperlyConfigured
    from django.db import connection

    with connection.schema_editor() as editor:
        editor.delete_model(models.NodeIdentity)
    try:
        with pytest.raises(ImproperlyConfigured, match=r"manage\.py migrate --database default"):
            check_identity("default", "n1")
    finally:
        with connection.schema_editor() as editor:
            editor.create_model(models.NodeIdentity)
