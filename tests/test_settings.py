"""The ``DJANGO_RAFT`` settings are validated in one place, and ``raftnode`` refuses bad options.

Every invalid setting is a system check error with the id of its problem
(``django_raft.E001``...), a message naming the setting and a hint linking to the
reference; ``manage.py raftnode`` with a bad option raises ``CommandError`` before it
opens the storage or a socket, so the node's database is left as it was.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from django.core import checks
from django.core.management import CommandError, call_command
from django.core.management.base import SystemCheckError
from django.test import override_settings

from django_raft import models
from django_raft.checks import IDS, REFERENCE, UNLISTED
from django_raft.conf import DEFAULTS, PROBLEMS, raft_settings
from django_raft.node.http import server

ROOT = Path(__file__).resolve().parent.parent

VALID: dict[str, Any] = {
    "NODE_ID": "n1",
    "ADDRESS": "http://127.0.0.1:8001",
    "CLUSTER": {
        "n1": "http://127.0.0.1:8001",
        "n2": "http://127.0.0.1:8002",
        "n3": "https://raft.example.com:8003",
    },
    "SECRET": "settings-test-secret-" + "s" * 32,
    "DATABASE": "default",
    "URL_PREFIX": "raft/",
    "REPLICATED_MODELS": ["kv.KeyValue"],
}


def raft_messages(value: Any) -> list[checks.CheckMessage]:
    """The django_raft messages of the system checks with ``DJANGO_RAFT = value``."""
    with override_settings(DJANGO_RAFT=value):
        return [m for m in checks.run_checks() if str(m.id).startswith("django_raft.")]


def errors_of(value: Any) -> list[str]:
    messages = raft_messages(value)
    assert all(m.id in IDS.values() for m in messages), messages
    return [m.msg for m in messages if m.level >= checks.ERROR]


# -- system checks ------------------------------------------------------------------------

NAN = math.nan
INF = math.inf

BAD_VALUES: list[tuple[str, Any]] = [
    ("NODE_ID", 5),
    ("NODE_ID", "n\n1"),
    ("NODE_ID", None),
    ("ADDRESS", "ftp://x"),
    ("ADDRESS", "http://"),
    ("ADDRESS", "127.0.0.1:8001"),
    ("ADDRESS", 8001),
    ("ADDRESS", "http://["),
    ("ADDRESS", "http://127.0.0.1:99999"),
    ("ADDRESS", "http://127.0.0.1:port"),
    ("ADDRESS", "http://127.0.0.1:0"),
    ("CLUSTER", ["http://127.0.0.1:8001"]),
    ("CLUSTER", {"n1": "not a url"}),
    ("CLUSTER", {"": "http://127.0.0.1:8001"}),
    ("CLUSTER", {"n1": "http://[::1"}),
    ("CLUSTER", {1: "http://127.0.0.1:8001"}),
    ("CLUSTER", None),
    ("SECRET", 5),
    ("SECRET", None),
    ("SECRET", b"bytes"),
    ("CLIENT_SECRET", None),
    ("CLIENT_SECRET", 5),
    ("ALLOW_WEAK_SECRET", 1),
    ("ALLOW_WEAK_SECRET", "yes"),
    *[("AUTH_WINDOW", value) for value in (0, -1, NAN, INF, 3601, "30", True)],
    *[(name, value) for name in ("TLS_CERT", "TLS_KEY", "TLS_CA") for value in (None, 5)],
    ("TLS_CLIENT_AUTH", "yes"),
    ("TLS_CLIENT_AUTH", 1),
    *[("MAX_COMMAND_SIZE", value) for value in (0, -1, 1.5, "10", True)],
    ("DATABASE", "nope"),
    ("DATABASE", 0),
    ("LOG_DATABASE", "nope"),
    ("LOG_DATABASE", 0),
    ("LOG_DATABASE", None),
    ("URL_PREFIX", "/raft/"),
    ("URL_PREFIX", "raft"),
    ("URL_PREFIX", None),
    *[
        (name, value)
        for name in ("TICK_INTERVAL", "HEARTBEAT_INTERVAL", "ELECTION_TIMEOUT")
        for value in (0, -0.05, NAN, INF, -INF, "0.05", True, None)
    ],
    *[
        ("ELECTION_TIMEOUT_THRESHOLD_PERCENT", value)
        for value in (0, -0.5, 1.5, NAN, INF, "0.8", False)
    ],
    *[
        (name, value)
        for name in ("MAX_ENTRIES_PER_REQUEST", "SNAPSHOT_THRESHOLD", "MAX_SNAPSHOT_CHUNK")
        for value in (0, -1, 1.5, NAN, "10", True)
    ],
    ("MAX_SNAPSHOT_CHUNK", (32 << 20) + 1),  # a chunk must fit in one stream frame
    *[("ENTRIES_AFTER_SNAPSHOT", value) for value in (-1, 1.5, NAN, "10", True, None)],
    ("REPLICATED_MODELS", "kv.KeyValue"),
    ("REPLICATED_MODELS", ["kv"]),
    ("REPLICATED_MODELS", ["kv.models.KeyValue"]),
    ("REPLICATED_MODELS", [5]),
    ("REPLICATED_MODELS", None),
    *[
        (name, value)
        for name in ("COMMAND_TIMEOUT", "RPC_TIMEOUT", "SLOW_HANDLER_WARNING")
        for value in (0, -1, NAN, INF, "1", None)
    ],
    *[("SESSION_TIMEOUT", value) for value in (0, -1, 0.0001, 31 * 86400, NAN, "60", True)],
    *[
        ("SIGNAL_TASKS", value)
        for value in ({"no_such_signal": "t"}, {"committed": ""}, {"committed": 5}, ["x"], None)
    ],
    *[(name, value) for name in ("PRE_VOTE", "CHECK_QUORUM") for value in (1, 0, "yes", None)],
    *[("METRICS_TOKEN", value) for value in (None, 5, "é", "a\nb")],
]


def test_every_setting_has_bad_values_here() -> None:
    assert {name for name, _ in BAD_VALUES} == set(DEFAULTS)


@pytest.mark.parametrize(("name", "value"), BAD_VALUES, ids=lambda v: repr(v))
def test_a_bad_value_is_an_error_naming_the_setting(name: str, value: Any) -> None:
    errors = errors_of({**VALID, name: value})
    assert len(errors) == 1, errors
    assert f"DJANGO_RAFT[{name!r}]" in errors[0]
    assert repr(value) in errors[0]
    [message] = raft_messages({**VALID, name: value})
    assert message.id == IDS[name]
    assert f"DJANGO_RAFT[{name!r}]" in str(message.hint)
    assert str(message.hint).endswith(f"See {REFERENCE}.")


def test_every_problem_has_its_own_id() -> None:
    assert set(IDS) >= set(DEFAULTS) | set(PROBLEMS)
    assert len(set(IDS.values())) == len(IDS)
    assert UNLISTED not in IDS.values()


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        (["not", "a", "dict"], "not-a-dict"),
        ({**VALID, "NODEID": "n1"}, "unknown"),
        (
            {**VALID, "TICK_INTERVAL": 0.1, "HEARTBEAT_INTERVAL": 0.05, "ELECTION_TIMEOUT": 1},
            "heartbeat-below-tick",
        ),
        ({**VALID, "TICK_INTERVAL": 1e-300, "ELECTION_TIMEOUT": 1e300}, "tick-too-short"),
        ({**VALID, "ELECTION_TIMEOUT": 0.05}, "election-not-above-heartbeat"),
        ({**VALID, "SECRET": ""}, "empty-secret"),
        ({**VALID, "CLUSTER": dict(list(VALID["CLUSTER"].items())[:2])}, "even-cluster"),
    ],
)
def test_each_cross_setting_problem_has_its_id_and_a_hint(value: Any, problem: str) -> None:
    [message] = raft_messages(value)
    assert message.id == IDS[problem]
    assert str(message.hint).endswith(f"See {REFERENCE}.")


def test_a_problem_can_be_silenced_alone() -> None:
    bad = {**VALID, "TICK_INTERVAL": -1, "PRE_VOTE": "no"}
    with (
        override_settings(DJANGO_RAFT=bad, SILENCED_SYSTEM_CHECKS=[IDS["PRE_VOTE"]]),
        pytest.raises(SystemCheckError) as raised,
    ):
        call_command("check")
    assert IDS["TICK_INTERVAL"] in str(raised.value)
    assert IDS["PRE_VOTE"] not in str(raised.value)


def test_the_reference_anchor_of_the_hints_exists() -> None:
    path, _, anchor = REFERENCE.partition("#")
    text = (ROOT / path).read_text()
    headings = {
        re.sub(r"[^a-z0-9 _-]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
        for line in text.splitlines()
        if line.startswith("#")
    }
    assert anchor in headings


def test_every_check_id_is_in_the_reference() -> None:
    text = (ROOT / "docs" / "reference.md").read_text()
    missing = [code for code in IDS.values() if f"`{code}`" not in text]
    assert missing == []


def test_the_same_bad_values_are_errors_with_no_node_configured() -> None:
    """Outside a node (no NODE_ID or ADDRESS) only those two may be left empty."""
    for name, value in BAD_VALUES:
        if name in ("NODE_ID", "ADDRESS"):
            continue
        errors = errors_of({name: value})
        assert len(errors) == 1 and f"DJANGO_RAFT[{name!r}]" in errors[0], (name, value, errors)


def test_several_bad_values_are_each_reported() -> None:
    errors = errors_of({**VALID, "TICK_INTERVAL": -1, "PRE_VOTE": "no", "DATABASE": "x"})
    assert len(errors) == 3
    for name in ("TICK_INTERVAL", "PRE_VOTE", "DATABASE"):
        assert any(f"DJANGO_RAFT[{name!r}]" in error for error in errors), (name, errors)


def test_an_unknown_setting_is_an_error_listing_the_known_ones() -> None:
    errors = errors_of({**VALID, "NODEID": "n1"})
    assert len(errors) == 1
    assert "DJANGO_RAFT['NODEID']" in errors[0] and "unknown setting" in errors[0]
    assert "NODE_ID" in errors[0]


@pytest.mark.parametrize("value", [["NODE_ID", "n1"], "n1", None, 5, ("NODE_ID",)])
def test_django_raft_must_be_a_dict(value: Any) -> None:
    errors = errors_of(value)
    assert errors == [f"DJANGO_RAFT must be a dict, not {type(value).__name__}"]


@pytest.mark.parametrize(
    ("heartbeat", "election"),
    [
        (0.05, 0.05),  # equal
        (0.05, 0.04),  # shorter
        (0.05, 0.054),  # longer, but the same whole number of ticks
    ],
)
def test_election_timeout_must_exceed_the_heartbeat_interval(
    heartbeat: float, election: float
) -> None:
    errors = errors_of({**VALID, "HEARTBEAT_INTERVAL": heartbeat, "ELECTION_TIMEOUT": election})
    assert len(errors) == 1, errors
    assert "DJANGO_RAFT['ELECTION_TIMEOUT']" in errors[0]
    assert "HEARTBEAT_INTERVAL" in errors[0]


def test_heartbeat_interval_must_be_at_least_one_tick() -> None:
    settings = {**VALID, "TICK_INTERVAL": 0.1, "HEARTBEAT_INTERVAL": 0.05, "ELECTION_TIMEOUT": 1}
    errors = errors_of(settings)
    assert len(errors) == 1
    assert "DJANGO_RAFT['HEARTBEAT_INTERVAL']" in errors[0] and "TICK_INTERVAL" in errors[0]


def test_intervals_too_far_apart_for_ticks_are_an_error_not_a_crash() -> None:
    errors = errors_of({**VALID, "TICK_INTERVAL": 1e-300, "ELECTION_TIMEOUT": 1e300})
    assert len(errors) == 1, errors
    assert "TICK_INTERVAL" in errors[0]


def test_node_id_must_be_in_cluster_for_a_node() -> None:
    with override_settings(DJANGO_RAFT={**VALID, "NODE_ID": "n9"}):
        problems = raft_settings.problems(node=True)
        assert len(problems) == 1
        assert "DJANGO_RAFT['NODE_ID'] 'n9' is not in CLUSTER" in problems[0]
    with override_settings(DJANGO_RAFT={**VALID, "NODE_ID": "n9", "CLUSTER": {}}):
        assert raft_settings.problems(node=True) == []  # a node that joins with --join


def test_a_node_needs_node_id_and_address() -> None:
    with override_settings(DJANGO_RAFT={"SECRET": "s"}):
        assert raft_settings.problems(node=False) == []
        problems = raft_settings.problems(node=True)
    assert len(problems) == 2
    assert "DJANGO_RAFT['NODE_ID']" in problems[0] and "DJANGO_RAFT['ADDRESS']" in problems[1]


@pytest.mark.parametrize(
    "value",
    [
        {},
        VALID,
        {**VALID, "CLUSTER": {}},
        {**VALID, "URL_PREFIX": ""},
        {"SECRET": "s", "REPLICATED_MODELS": ("kv.KeyValue",)},
        {
            **VALID,
            "TICK_INTERVAL": 1,
            "HEARTBEAT_INTERVAL": 1,
            "ELECTION_TIMEOUT": 3.0,
            "ELECTION_TIMEOUT_THRESHOLD_PERCENT": 1,
            "ENTRIES_AFTER_SNAPSHOT": 0,
            "PRE_VOTE": False,
        },
        dict(DEFAULTS),
    ],
    ids=["empty", "valid", "joining", "no-prefix", "client-only", "edges", "defaults"],
)
def test_a_valid_configuration_gives_no_error(value: dict[str, Any]) -> None:
    assert errors_of(value) == []


def test_empty_secret_on_a_node_is_a_warning() -> None:
    messages = raft_messages({**VALID, "SECRET": ""})
    assert [m.id for m in messages] == [IDS["empty-secret"]]
    assert isinstance(messages[0], checks.Warning)
    assert "DJANGO_RAFT['SECRET']" in messages[0].msg
    assert raft_messages(VALID) == []
    assert raft_messages({}) == []  # not a node: nothing to warn about


def test_settings_are_reread_when_they_change() -> None:
    with override_settings(DJANGO_RAFT={"COMMAND_TIMEOUT": 2.5}):
        assert raft_settings.COMMAND_TIMEOUT == 2.5
        with override_settings(DJANGO_RAFT={}):
            assert raft_settings.COMMAND_TIMEOUT == 5.0  # the default
        assert raft_settings.COMMAND_TIMEOUT == 2.5
    with pytest.raises(AttributeError, match="unknown DJANGO_RAFT setting 'NODEID'"):
        raft_settings.NODEID  # noqa: B018


# -- seconds to ticks -----------------------------------------------------------------------


def test_defaults_are_go_raft_s_in_ticks() -> None:
    with override_settings(DJANGO_RAFT={}):
        config = raft_settings.core_config("n1", applied=7)
    config.validate()
    assert (config.heartbeat_tick, config.election_tick) == (5, 15)  # 50 ms and 150 ms
    assert config.id == "n1" and config.applied == 7
    assert config.max_entries_per_message == DEFAULTS["MAX_ENTRIES_PER_REQUEST"] == 2000
    assert config.entries_after_snapshot == DEFAULTS["ENTRIES_AFTER_SNAPSHOT"] == 200
    assert config.snapshot_threshold == DEFAULTS["SNAPSHOT_THRESHOLD"]
    assert config.max_snapshot_chunk == DEFAULTS["MAX_SNAPSHOT_CHUNK"]
    assert config.pre_vote is True and config.check_quorum is True


def test_core_config_follows_the_settings() -> None:
    settings = {
        **VALID,
        "TICK_INTERVAL": 0.1,
        "HEARTBEAT_INTERVAL": 0.3,
        "ELECTION_TIMEOUT": 2.0,
        "MAX_ENTRIES_PER_REQUEST": 10,
        "SNAPSHOT_THRESHOLD": 50,
        "ENTRIES_AFTER_SNAPSHOT": 3,
        "MAX_SNAPSHOT_CHUNK": 4096,
        "PRE_VOTE": False,
        "CHECK_QUORUM": False,
    }
    with override_settings(DJANGO_RAFT=settings):
        config = raft_settings.core_config()
        assert raft_settings.ticks(0.001) == 1  # never less than one tick
        assert raft_settings.ticks(0.26) == 3  # rounded to the nearest tick
    config.validate()
    assert config.id == "n1"  # NODE_ID when no id is given
    assert (config.heartbeat_tick, config.election_tick) == (3, 20)
    assert (config.max_entries_per_message, config.snapshot_threshold) == (10, 50)
    assert (config.entries_after_snapshot, config.max_snapshot_chunk) == (3, 4096)
    assert config.pre_vote is False and config.check_quorum is False


# -- manage.py raftnode ---------------------------------------------------------------------


@pytest.fixture
def no_node(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[Any, ...]]]:
    """Record instead of starting a node, so a missed validation cannot block the test."""
    started: list[tuple[Any, ...]] = []

    def fake_start_node(*args: Any) -> tuple[Any, None]:
        started.append(args)
        return SimpleNamespace(failure=None), None  # a node that stopped cleanly

    monkeypatch.setattr(server, "start_node", fake_start_node)
    monkeypatch.setattr(server, "serve_forever", lambda node, http_server: None)
    with override_settings(DJANGO_RAFT=VALID):
        yield started


@pytest.mark.django_db
@pytest.mark.parametrize("secret", ["", "dev", "x" * 31])
def test_raftnode_refuses_an_empty_or_short_secret(
    no_node: list[tuple[Any, ...]], secret: str
) -> None:
    with override_settings(DJANGO_RAFT={**VALID, "SECRET": secret}):
        with pytest.raises(CommandError, match=r"token_urlsafe\(48\)"):
            call_command("raftnode", "--bootstrap", stdout=_Sink())
        assert no_node == []
    with override_settings(DJANGO_RAFT={**VALID, "SECRET": secret, "ALLOW_WEAK_SECRET": True}):
        call_command("raftnode", "--bootstrap", stdout=_Sink())
        assert len(no_node) == 1


def assert_nothing_stored() -> None:
    assert not models.LogEntry.objects.exists()
    assert not models.HardState.objects.exists()
    assert not models.Member.objects.exists()
    assert not models.AppliedState.objects.exists()


@pytest.mark.django_db
def test_raftnode_with_good_options_starts_a_node(no_node: list[tuple[Any, ...]]) -> None:
    """The control for the refusals below: the same command, valid, gets to start_node."""
    call_command("raftnode", "--bootstrap", "--threads", "4", stdout=_Sink())
    assert no_node == [("n1", "http://127.0.0.1:8001", "127.0.0.1:8001", True, None, 4)]
    call_command(
        "raftnode",
        "--node-id=n4",
        "--address=http://10.0.0.4:9000",
        "--bind=[::1]:9001",
        "--join=http://127.0.0.1:8001",
        stdout=_Sink(),
    )
    assert no_node[1] == (
        "n4",
        "http://10.0.0.4:9000",
        "[::1]:9001",
        False,
        "http://127.0.0.1:8001",
        64,
    )


BAD_OPTIONS: list[tuple[list[str], str]] = [
    (["--node-id", ""], "a node id is required"),
    (["--node-id", "n\t1"], "a node id is required"),
    (["--address", "ftp://x"], "an http(s) address is required"),
    (["--address", ""], "an http(s) address is required"),
    (["--address", "http://"], "an http(s) address is required"),
    (["--address", "10.0.0.1:8001"], "an http(s) address is required"),
    (["--address", "http://127.0.0.1:65536"], "an http(s) address is required"),
    (["--bind", ""], "--bind: '' is not host:port"),
    (["--bind", "nonsense"], "--bind: 'nonsense' is not host:port"),
    (["--bind", "127.0.0.1:99999"], "--bind: '127.0.0.1:99999' is not host:port"),
    (["--bind", "127.0.0.1:0"], "is not host:port"),
    (["--bind", "127.0.0.1:"], "is not host:port"),
    (["--bind", ":8001"], "is not host:port"),
    (["--bootstrap", "--join", "http://x"], "--bootstrap and --join exclude each other"),
    (["--join", "notaurl"], "--join must be a member's http(s) URL, not 'notaurl'"),
    (["--join", ""], "--join must be a member's http(s) URL"),
    (["--join", "http://["], "--join must be a member's http(s) URL"),
    (["--threads", "0"], "--threads must be between 1 and 512"),
    (["--threads", "-3"], "--threads must be between 1 and 512"),
    (["--threads", "100000"], "--threads must be between 1 and 512"),
    (["--threads", "many"], "invalid int value: 'many'"),
    (["--bootstrap", "--node-id", "n9"], "node 'n9' is not in DJANGO_RAFT['CLUSTER']"),
    (["--no-such-option"], "unrecognized arguments"),
]


@pytest.mark.django_db
@pytest.mark.parametrize(("options", "message"), BAD_OPTIONS, ids=lambda v: repr(v))
def test_raftnode_refuses_a_bad_option_and_changes_nothing(
    no_node: list[tuple[Any, ...]], options: list[str], message: str
) -> None:
    with pytest.raises(CommandError) as raised:
        call_command("raftnode", *options, stdout=_Sink())
    assert message in str(raised.value)
    assert no_node == []
    assert_nothing_stored()


@pytest.mark.django_db
def test_raftnode_reports_every_problem_at_once(no_node: list[tuple[Any, ...]]) -> None:
    with pytest.raises(CommandError) as raised:
        call_command(
            "raftnode", "--node-id=", "--join=x", "--bootstrap", "--threads=0", stdout=_Sink()
        )
    lines = str(raised.value).splitlines()
    assert len(lines) == 4, lines
    assert no_node == []
    assert_nothing_stored()


@pytest.mark.django_db
@pytest.mark.parametrize(
    "value",
    [
        {**VALID, "TICK_INTERVAL": -1},
        {**VALID, "SECRET": None},
        {**VALID, "UNKNOWN": 1},
        ["not", "a", "dict"],
    ],
    ids=["negative-tick", "secret", "unknown", "not-a-dict"],
)
def test_raftnode_refuses_bad_settings(no_node: list[tuple[Any, ...]], value: Any) -> None:
    with override_settings(DJANGO_RAFT=value), pytest.raises(CommandError, match="DJANGO_RAFT"):
        call_command("raftnode", "--bootstrap", stdout=_Sink())
    assert no_node == []
    assert_nothing_stored()


@pytest.mark.django_db
def test_raftnode_needs_a_node_id_and_an_address(no_node: list[tuple[Any, ...]]) -> None:
    with override_settings(DJANGO_RAFT={"SECRET": "s"}), pytest.raises(CommandError) as raised:
        call_command("raftnode", stdout=_Sink())
    assert "a node id is required" in str(raised.value)
    assert "an http(s) address is required" in str(raised.value)
    assert no_node == []
    assert_nothing_stored()


class _Sink:
    """A stdout that discards what is written."""

    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        pass


# -- the models the handlers write ----------------------------------------------------------


def test_a_replicated_model_that_is_not_installed_is_an_error() -> None:
    messages = raft_messages({**VALID, "REPLICATED_MODELS": ["kv.KeyValue", "kv.Nope"]})
    assert [m.id for m in messages] == [IDS["replicated-model-unknown"]]
    assert "'kv.Nope'" in messages[0].msg


def test_a_handler_using_a_model_outside_replicated_models_is_warned_about() -> None:
    messages = raft_messages({**VALID, "REPLICATED_MODELS": []})
    warned = {m.obj for m in messages if m.id == IDS["handler-writes-unreplicated-model"]}
    assert {"kv.set", "kv.incr", "kv.get", "kv.delete"} <= warned
    assert not raft_messages({**VALID, "REPLICATED_MODELS": ["kv.KeyValue"]})


def test_signal_tasks_knows_every_signal() -> None:
    import django.dispatch

    from django_raft import signals
    from django_raft.conf import _SIGNAL_NAMES

    declared = {n for n, v in vars(signals).items() if isinstance(v, django.dispatch.Signal)}
    assert declared == _SIGNAL_NAMES
