"""The checks bite: each deliberately broken core is caught by the simulator.

For every safety property there is a mutant that breaks a rule the property rests on;
the simulator must report that property (not merely some failure) within a bounded
number of seeds.
"""

from __future__ import annotations

import pytest

from .invariants import InvariantViolation
from .mutants import MUTANTS, Mutant
from .simulation import Simulation

MAX_SEEDS = 400


@pytest.mark.slow
@pytest.mark.parametrize("mutant", MUTANTS, ids=[m.name for m in MUTANTS])
def test_simulator_catches_broken_rule(mutant: Mutant, monkeypatch: pytest.MonkeyPatch) -> None:
    for owner, attribute, replacement in mutant.patches:
        monkeypatch.setattr(owner, attribute, replacement)
    seen: dict[str, int] = {}
    for seed in range(MAX_SEEDS):
        try:
            Simulation(seed, profile=mutant.profile).run()
        except InvariantViolation as violation:
            seen.setdefault(violation.prop, seed)
            if violation.prop in mutant.catches:
                return
    pytest.fail(
        f"mutant {mutant.name} ({mutant.rule}) not caught as {sorted(mutant.catches)} "
        f"in {MAX_SEEDS} seeds; other failures: {seen}"
    )


def test_every_safety_property_has_a_mutant() -> None:
    from .invariants import (
        DURABILITY,
        ELECTION_SAFETY,
        LEADER_APPEND_ONLY,
        LEADER_COMPLETENESS,
        LINEARIZABILITY,
        LOG_MATCHING,
        STALE_TERM,
        STATE_MACHINE_SAFETY,
    )

    covered = {prop for m in MUTANTS if len(m.catches) == 1 for prop in m.catches}
    assert covered == {
        ELECTION_SAFETY,
        LEADER_APPEND_ONLY,
        LOG_MATCHING,
        LEADER_COMPLETENESS,
        STATE_MACHINE_SAFETY,
        LINEARIZABILITY,
        DURABILITY,
        STALE_TERM,
    }
