"""``Progress`` and ``Inflights``: the leader's per-follower replication state."""

from __future__ import annotations

import pytest

from django_raft.core import Inflights, Progress, ProgressState

PROBE = ProgressState.PROBE
REPLICATE = ProgressState.REPLICATE


def progress(state: ProgressState, match: int, next_index: int, capacity: int = 4) -> Progress:
    result = Progress(next_index, capacity)
    result.state = state
    result.match = match
    return result


def test_inflights_fill_and_free() -> None:
    inflights = Inflights(3)
    for index in (2, 4, 6):
        assert not inflights.full()
        inflights.add(index)
    assert (inflights.full(), len(inflights)) == (True, 3)
    inflights.free_le(3)
    assert (inflights.full(), len(inflights)) == (False, 2)
    inflights.free_le(3)  # nothing more at or below 3
    assert len(inflights) == 2
    inflights.free_first()
    assert len(inflights) == 1
    inflights.free_le(100)
    assert len(inflights) == 0
    inflights.free_first()  # empty: nothing happens
    inflights.add(7)
    inflights.reset()
    assert len(inflights) == 0


def test_progress_starts_probing() -> None:
    result = Progress(5, 8)
    assert (result.state, result.match, result.next, result.is_paused()) == (PROBE, 0, 5, False)


@pytest.mark.parametrize("state", [PROBE, REPLICATE])
def test_become_probe_and_replicate_restart_after_match(state: ProgressState) -> None:
    result = progress(PROBE if state is REPLICATE else REPLICATE, 3, 9)
    result.inflights.add(7)
    result.probe_sent = True
    if state is PROBE:
        result.become_probe()
    else:
        result.become_replicate()
    assert (result.state, result.next, result.probe_sent, len(result.inflights)) == (
        state,
        4,
        False,
        0,
    )


def test_probe_pauses_after_one_message() -> None:
    result = progress(PROBE, 2, 3)
    result.sent_entries(5)
    assert result.is_paused()
    assert result.next == 3  # a probe does not move next optimistically


def test_replicate_streams_until_inflights_full() -> None:
    result = progress(REPLICATE, 2, 3, capacity=2)
    result.sent_entries(4)
    assert (result.next, result.is_paused()) == (5, False)
    result.sent_entries(6)
    assert (result.next, result.is_paused()) == (7, True)
    result.inflights.free_le(4)
    assert not result.is_paused()


@pytest.mark.parametrize(
    ("index", "updated", "match", "next_index"),
    [(2, False, 3, 5), (3, False, 3, 5), (4, True, 4, 5), (5, True, 5, 6), (6, True, 6, 7)],
)
def test_maybe_update(index: int, updated: bool, match: int, next_index: int) -> None:
    """An acknowledgement raises match (never lowers it) and keeps next past it."""
    result = progress(PROBE, 3, 5)
    result.probe_sent = True
    assert result.maybe_update(index) is updated
    assert (result.match, result.next) == (match, next_index)
    assert result.probe_sent is not updated


@pytest.mark.parametrize(
    ("state", "match", "next_index", "rejected", "hint", "decreased", "new_next"),
    [
        # Replicating: a refusal at or below match is stale; otherwise back to match + 1.
        (REPLICATE, 5, 10, 5, 5, False, 10),
        (REPLICATE, 5, 10, 4, 4, False, 10),
        (REPLICATE, 5, 10, 9, 9, True, 6),
        # Probing: only a refusal of the last probe (next - 1) counts.
        (PROBE, 0, 10, 5, 5, False, 10),
        (PROBE, 0, 10, 9, 9, True, 9),
        (PROBE, 0, 2, 1, 1, True, 1),
        (PROBE, 0, 1, 0, 0, True, 1),
        # The hint moves next back by more than one entry...
        (PROBE, 0, 10, 9, 2, True, 3),
        (PROBE, 0, 10, 9, 0, True, 1),
        # ...but never to or below match.
        (PROBE, 5, 10, 9, 1, True, 6),
    ],
)
def test_maybe_decrease_to(
    state: ProgressState,
    match: int,
    next_index: int,
    rejected: int,
    hint: int,
    decreased: bool,
    new_next: int,
) -> None:
    result = progress(state, match, next_index)
    result.probe_sent = True
    assert result.maybe_decrease_to(rejected, hint) is decreased
    assert result.next == new_next
    if state is PROBE:
        assert result.probe_sent is not decreased
