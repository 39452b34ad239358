"""``Config`` validation: every invalid setting is refused with its name."""

from __future__ import annotations

import random
from typing import Any

import pytest

from django_raft.core import Config, ConfigError, ConfState, MemoryStorage, RawNode


@pytest.mark.parametrize(
    ("settings", "name"),
    [
        ({"id": ""}, "id"),
        ({"id": 5}, "id"),
        ({"election_tick": 0}, "election_tick"),
        ({"election_tick": True}, "election_tick"),
        ({"election_tick": 10.0}, "election_tick"),
        ({"heartbeat_tick": 0}, "heartbeat_tick"),
        ({"heartbeat_tick": -1}, "heartbeat_tick"),
        ({"election_tick": 5, "heartbeat_tick": 5}, "election_tick"),
        ({"election_tick": 3, "heartbeat_tick": 4}, "election_tick"),
        ({"max_entries_per_message": 0}, "max_entries_per_message"),
        ({"max_inflight_messages": 0}, "max_inflight_messages"),
        ({"max_inflight_messages": "8"}, "max_inflight_messages"),
        ({"max_committed_per_ready": 0}, "max_committed_per_ready"),
        ({"applied": -1}, "applied"),
        ({"applied": "3"}, "applied"),
        ({"applied": False}, "applied"),
        ({"pre_vote": 1}, "pre_vote"),
        ({"check_quorum": None}, "check_quorum"),
    ],
)
def test_config_validation(settings: dict[str, Any], name: str) -> None:
    """Each invalid setting raises ``ConfigError`` (a ``ValueError``) whose message starts
    with the setting's name; a node cannot be built from it."""
    config = Config(**{"id": "1", **settings})
    with pytest.raises(ConfigError, match=rf"^{name}\b"):
        config.validate()
    with pytest.raises(ValueError, match=rf"^{name}\b"):
        RawNode(config, MemoryStorage(ConfState(voters=("1",))))


def test_valid_config() -> None:
    """The defaults and the smallest legal timing are accepted."""
    Config(id="1").validate()
    Config(id="1", election_tick=2, heartbeat_tick=1, rng=random.Random(1)).validate()
    config = Config(id="1")
    assert (config.election_tick, config.heartbeat_tick) == (10, 1)
    assert (config.pre_vote, config.check_quorum) == (True, True)
