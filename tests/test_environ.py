"""``settings_from_env`` builds a node's ``DJANGO_RAFT`` from ``RAFT_*`` variables.

Every setting can be given; a malformed value is an ``ImproperlyConfigured`` naming the
variable and the expected form, and the settings it builds pass the system checks.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from django.core import checks
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings

from django_raft.conf import DEFAULTS
from django_raft.environ import settings_from_env

ROOT = Path(__file__).resolve().parent.parent

THREE_SERVERS = {
    "RAFT_NODE_ID": "n2",
    "RAFT_ADDRESS": "http://10.0.0.2:8001",
    "RAFT_CLUSTER": "n1=http://10.0.0.1:8001, n2=http://10.0.0.2:8001,n3=http://10.0.0.3:8001",
    "RAFT_SECRET": "s3cret",
}


def test_a_node_s_settings_come_from_the_environment() -> None:
    built = settings_from_env({"REPLICATED_MODELS": ["kv.KeyValue"]}, THREE_SERVERS)
    assert built == {
        "NODE_ID": "n2",
        "ADDRESS": "http://10.0.0.2:8001",
        "CLUSTER": {
            "n1": "http://10.0.0.1:8001",
            "n2": "http://10.0.0.2:8001",
            "n3": "http://10.0.0.3:8001",
        },
        "SECRET": "s3cret",
        "REPLICATED_MODELS": ["kv.KeyValue"],
    }
    with override_settings(DJANGO_RAFT=built):
        assert [m for m in checks.run_checks() if str(m.id).startswith("django_raft.")] == []


def test_every_setting_can_be_given_and_is_parsed_after_its_default() -> None:
    environ = {
        "RAFT_NODE_ID": "n1",
        "RAFT_ADDRESS": "https://raft.example.com",
        "RAFT_CLUSTER": "",
        "RAFT_SECRET": "x",
        "RAFT_CLIENT_SECRET": "",
        "RAFT_ALLOW_WEAK_SECRET": "true",
        "RAFT_AUTH_WINDOW": "10",
        "RAFT_TLS_CERT": "",
        "RAFT_TLS_KEY": "",
        "RAFT_TLS_CA": "",
        "RAFT_TLS_CLIENT_AUTH": "false",
        "RAFT_MAX_COMMAND_SIZE": "2048",
        "RAFT_DATABASE": "default",
        "RAFT_LOG_DATABASE": "",
        "RAFT_URL_PREFIX": "",
        "RAFT_TICK_INTERVAL": "0.02",
        "RAFT_HEARTBEAT_INTERVAL": "0.1",
        "RAFT_ELECTION_TIMEOUT": "1",
        "RAFT_ELECTION_TIMEOUT_THRESHOLD_PERCENT": "0.5",
        "RAFT_MAX_ENTRIES_PER_REQUEST": "100",
        "RAFT_ENTRIES_AFTER_SNAPSHOT": "0",
        "RAFT_SNAPSHOT_THRESHOLD": "50",
        "RAFT_MAX_SNAPSHOT_CHUNK": "4096",
        "RAFT_REPLICATED_MODELS": "kv.KeyValue, auth.User,",
        "RAFT_COMMAND_TIMEOUT": "2",
        "RAFT_SLOW_HANDLER_WARNING": "0.25",
        "RAFT_SESSION_TIMEOUT": "600",
        "RAFT_RPC_TIMEOUT": "0.5",
        "RAFT_PRE_VOTE": "false",
        "RAFT_CHECK_QUORUM": "Yes",
        "RAFT_SIGNAL_TASKS": "leader_changed=app.tasks.on_leader",
        "RAFT_METRICS_TOKEN": "",
    }
    assert {f"RAFT_{name}" for name in DEFAULTS} <= set(environ)
    built = settings_from_env(environ=environ)
    assert set(built) == set(DEFAULTS)
    assert built["CLUSTER"] == {} and built["URL_PREFIX"] == ""
    assert built["ELECTION_TIMEOUT"] == 1.0 and isinstance(built["ELECTION_TIMEOUT"], float)
    assert built["SNAPSHOT_THRESHOLD"] == 50 and isinstance(built["SNAPSHOT_THRESHOLD"], int)
    assert built["REPLICATED_MODELS"] == ["kv.KeyValue", "auth.User"]
    assert built["PRE_VOTE"] is False and built["CHECK_QUORUM"] is True
    assert built["SLOW_HANDLER_WARNING"] == 0.25 and built["LOG_DATABASE"] == ""
    with override_settings(DJANGO_RAFT=built):
        assert [m for m in checks.run_checks() if str(m.id).startswith("django_raft.")] == []


def test_the_environment_wins_over_the_base_and_other_variables_are_ignored() -> None:
    built = settings_from_env(
        {"COMMAND_TIMEOUT": 9.0, "SECRET": "base"},
        {"RAFT_COMMAND_TIMEOUT": "3", "RAFT_TEST_POSTGRES": "postgres://x", "PATH": "/bin"},
    )
    assert built == {"COMMAND_TIMEOUT": 3.0, "SECRET": "base"}


def test_another_prefix() -> None:
    built = settings_from_env(
        environ={"APP_RAFT_NODE_ID": "a", "RAFT_NODE_ID": "b"}, prefix="APP_RAFT_"
    )
    assert built == {"NODE_ID": "a"}


MALFORMED: list[tuple[str, str, str]] = [
    ("RAFT_CLUSTER", "n1", "id=URL pairs separated by commas"),
    ("RAFT_CLUSTER", "n1=http://a:1,n2", "'n2' is not id=URL"),
    ("RAFT_CLUSTER", "=http://a:1", "is not id=URL"),
    ("RAFT_CLUSTER", "n1=", "is not id=URL"),
    ("RAFT_CLUSTER", "n1=http://a:1,n1=http://b:1", "'n1' appears twice"),
    ("RAFT_ELECTION_TIMEOUT", "150ms", "a number of seconds"),
    ("RAFT_ELECTION_TIMEOUT", "nan", "a number of seconds"),
    ("RAFT_ELECTION_TIMEOUT", "inf", "a number of seconds"),
    ("RAFT_ELECTION_TIMEOUT", "", "a number of seconds"),
    ("RAFT_SNAPSHOT_THRESHOLD", "1e4", "a whole number"),
    ("RAFT_SNAPSHOT_THRESHOLD", "10.5", "a whole number"),
    ("RAFT_PRE_VOTE", "maybe", "true or false"),
    ("RAFT_CHECK_QUORUM", "", "true or false"),
]


@pytest.mark.parametrize(("variable", "value", "expected"), MALFORMED)
def test_a_malformed_value_names_the_variable_and_the_form(
    variable: str, value: str, expected: str
) -> None:
    with pytest.raises(ImproperlyConfigured) as raised:
        settings_from_env(environ={"RAFT_NODE_ID": "n1", variable: value})
    message = str(raised.value)
    assert message.startswith(f"{variable} must be ")
    assert expected in message
    assert repr(value) in message


def test_a_well_formed_but_invalid_value_is_left_to_the_checks() -> None:
    built: dict[str, Any] = settings_from_env(environ={"RAFT_ELECTION_TIMEOUT": "-1"})
    assert built == {"ELECTION_TIMEOUT": -1.0}
    with override_settings(DJANGO_RAFT=built):
        ids = [m.id for m in checks.run_checks() if str(m.id).startswith("django_raft.")]
    assert ids == ["django_raft.E011"]


def test_manage_py_reports_a_malformed_variable_without_a_traceback_of_ours() -> None:
    env = {**os.environ, "RAFT_CLUSTER": "n1:http://127.0.0.1:8001"}
    result = subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(
        "django.core.exceptions.ImproperlyConfigured: RAFT_CLUSTER must be id=URL"
    )
