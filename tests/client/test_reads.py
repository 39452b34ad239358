"""``read()``'s local half: the applied index this server's database holds."""

from __future__ import annotations

import pytest

from django_raft.client import reads
from django_raft.models import SINGLETON, AppliedState

pytestmark = pytest.mark.django_db


def test_applied_index_is_what_the_database_holds() -> None:
    assert reads.applied_index() == 0
    AppliedState.objects.create(pk=SINGLETON, applied_index=41, applied_term=3)
    assert reads.applied_index() == 41
    AppliedState.objects.filter(pk=SINGLETON).update(applied_index=42)
    assert reads.applied_index() == 42
