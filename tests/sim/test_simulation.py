"""Seeded schedules: the five safety properties at every step, liveness once healed.

``SIM_SCHEDULES`` (default 500) and ``SIM_TICKS`` (default 1000) size the run;
``SIM_SEED`` picks the schedule ``test_replay`` runs. A failure names its seed and the
one-line command that replays it.
"""

from __future__ import annotations

import os

import pytest

from .invariants import InvariantViolation
from .simulation import ALLOWED_ELECTION_SETTINGS, Simulation, Stats

SCHEDULES = int(os.environ.get("SIM_SCHEDULES", "500"))
TICKS = int(os.environ.get("SIM_TICKS", "1000"))
CHUNKS = 16
"""Schedules are split into this many tests so pytest-xdist can spread them."""


def run_schedule(seed: int, ticks: int = TICKS) -> Stats:
    """Run one schedule; turn a violation into a test failure that says how to replay it."""
    simulation = Simulation(seed, ticks=ticks)
    try:
        return simulation.run()
    except InvariantViolation as violation:
        pytest.fail(f"{violation}\n{simulation.replay_hint()}", pytrace=False)


@pytest.mark.slow
@pytest.mark.parametrize("chunk", range(CHUNKS))
def test_random_schedules_keep_raft_safe_and_live(chunk: int) -> None:
    seeds = range(chunk, SCHEDULES, CHUNKS)
    committed = sum(run_schedule(seed).committed for seed in seeds)
    if len(seeds):
        assert committed > 0, "no schedule in this chunk committed anything"


def test_replay() -> None:
    """Replay one schedule: ``SIM_SEED=N scripts/test tests/sim -k replay``."""
    stats = run_schedule(int(os.environ.get("SIM_SEED", "0")))
    assert stats.ticks >= TICKS


def test_a_seed_replays_exactly() -> None:
    first = Simulation(7, ticks=400)
    second = Simulation(7, ticks=400)
    assert first.run() == second.run()
    for node_id in first.ids:
        assert first.nodes[node_id].chain == second.nodes[node_id].chain
    assert Simulation(8, ticks=400).run() != first.stats


def test_schedules_exercise_every_fault() -> None:
    """Guard against a simulator that silently stopped injecting faults."""
    totals = Stats()
    sizes = set()
    profiles = set()
    settings = set()
    for seed in range(40):
        simulation = Simulation(seed, ticks=600)
        stats = simulation.run()
        sizes.add(len(simulation.ids))
        profiles.add(simulation.profile)
        settings.add((simulation.faults.pre_vote, simulation.faults.check_quorum))
        for name, value in vars(stats).items():
            setattr(totals, name, getattr(totals, name) + value)
    assert {1, 3, 5} <= sizes
    assert max(sizes) > 5, "membership changes never added a node"
    assert profiles == {"full", "elections"}
    assert totals.crashes > 20
    assert totals.dropped > 1000
    assert totals.elections > 80
    assert totals.committed > 5000
    assert totals.conf_changes > 20
    assert totals.snapshots_sent > 10
    assert totals.snapshots_installed > 5
    assert totals.transfers > 5
    assert totals.reads_served > 100
    assert settings == {(True, True), (True, False), (False, True)}
    assert totals.reuse_refused > 0
    assert totals.reads_reused > 5
    assert totals.stale_answered > 100
    assert totals.slow_writes > 100
    assert totals.early_sends > 1000
    assert totals.late_applies > 1000


def test_violation_names_the_seed_and_replay_command() -> None:
    simulation = Simulation(3, ticks=200)
    hint = simulation.replay_hint()
    assert "seed 3" in hint
    assert "SIM_SEED=3" in hint
    assert "-k replay" in hint


def test_schedules_run_only_the_election_settings_a_node_accepts() -> None:
    """Both pre-vote and check-quorum off is refused (``ALLOWED_ELECTION_SETTINGS`` says
    why); the simulator draws every other combination, and no refused one."""
    from django.core.checks import ERROR
    from django.test import override_settings

    from django_raft import checks
    from django_raft.conf import raft_settings

    drawn = {
        (simulation.faults.pre_vote, simulation.faults.check_quorum)
        for simulation in (Simulation(seed, ticks=1) for seed in range(200))
    }
    assert drawn == set(ALLOWED_ELECTION_SETTINGS)
    for pre_vote in (True, False):
        for check_quorum in (True, False):
            raft = {"PRE_VOTE": pre_vote, "CHECK_QUORUM": check_quorum}
            with override_settings(DJANGO_RAFT=raft):
                found = [what for what, _ in raft_settings.coded_problems()]
                messages = checks.check_settings()
            if (pre_vote, check_quorum) in drawn:
                assert found == [] and messages == []
            else:
                assert found == ["no-pre-vote-nor-check-quorum"]
                assert [(m.id, m.level) for m in messages] == [("django_raft.E036", ERROR)]
                assert "never settle" in messages[0].msg
