"""The linearizability checker on hand-written histories: the classic anomalies are
caught, and operations whose outcome is unknown may or may not have happened."""

from __future__ import annotations

import math
import random

import pytest

from tests.faults.checker import FAIL, INCR, INFO, OK, READ, WRITE, Op, check, check_key


def w(process: str, value: object, start: float, end: float, status: str = OK) -> Op:
    return Op(process, WRITE, "x", value, None, status, start, math.inf if status == INFO else end)


def r(process: str, result: object, start: float, end: float) -> Op:
    return Op(process, READ, "x", None, result, OK, start, end)


def inc(process: str, result: object, start: float, end: float, status: str = OK) -> Op:
    return Op(process, INCR, "x", 1, result, status, start, math.inf if status == INFO else end)


def valid(*ops: Op) -> bool | None:
    return check(list(ops)).valid


# -- linearizable histories ------------------------------------------------------------


def test_sequential_writes_and_reads_are_linearizable() -> None:
    assert valid(r("a", None, 0, 1), w("a", 1, 2, 3), r("b", 1, 4, 5), w("b", 2, 6, 7))


def test_a_read_concurrent_with_a_write_may_see_either_value() -> None:
    assert valid(w("a", 1, 0, 1), w("a", 2, 2, 6), r("b", 1, 3, 4))
    assert valid(w("a", 1, 0, 1), w("a", 2, 2, 6), r("b", 2, 3, 4))


def test_concurrent_writes_may_take_effect_in_either_order() -> None:
    both = [w("a", 1, 0, 5), w("b", 2, 1, 4)]
    assert valid(*both, r("c", 1, 6, 7))
    assert valid(*both, r("c", 2, 6, 7))


def test_an_unknown_write_may_have_happened_late() -> None:
    # The write timed out at 2; a read long after still may see it or not.
    assert valid(w("a", 1, 0, 2, INFO), r("b", None, 3, 4), r("b", 1, 10, 11))
    assert valid(w("a", 1, 0, 2, INFO), r("b", None, 3, 4), r("b", None, 10, 11))


def test_a_failed_write_is_left_out() -> None:
    assert valid(w("a", 1, 0, 1, FAIL), r("b", None, 2, 3))


def test_increments_that_each_applied_once() -> None:
    assert valid(inc("a", 1, 0, 1), inc("b", 3, 2, 5), inc("c", 2, 3, 4), r("d", 3, 6, 7))


def test_an_unknown_increment_may_count_or_not() -> None:
    assert valid(inc("a", 1, 0, 1), inc("b", None, 2, 3, INFO), inc("a", 3, 4, 5))
    assert valid(inc("a", 1, 0, 1), inc("b", None, 2, 3, INFO), inc("a", 2, 4, 5))


def test_keys_are_checked_independently() -> None:
    history = [
        Op("a", WRITE, "x", 1, None, OK, 0, 1),
        Op("b", WRITE, "y", 2, None, OK, 0, 1),
        Op("c", READ, "x", None, 1, OK, 2, 3),
        Op("c", READ, "y", None, 2, OK, 2, 3),
    ]
    result = check(history)
    assert result.valid
    assert [k.key for k in result.keys] == ["x", "y"]


def test_many_concurrent_operations_are_searched_quickly() -> None:
    # 12 processes each writing its own value, all concurrent, then the last one read:
    # memoization keeps this to the subsets of writes, not their orders.
    ops = [w(f"p{i}", i, 0, 10) for i in range(12)]
    ops.append(r("q", 7, 11, 12))
    result = check_key("x", ops)
    assert result.valid
    assert result.steps < 100_000


# -- the anomalies ------------------------------------------------------------------------


def test_a_stale_read_after_a_completed_write_is_caught() -> None:
    result = check([w("a", 1, 0, 1), w("a", 2, 2, 3), r("b", 1, 4, 5)])
    assert result.valid is False
    bad = result.anomalies[0]
    assert bad.blocked == r("b", 1, 4, 5)
    assert bad.states == [2]
    assert "not linearizable" in result.explain()


def test_a_lost_acknowledged_write_is_caught() -> None:
    assert valid(w("a", 1, 0, 1), r("b", None, 2, 3)) is False


def test_a_write_applied_twice_is_caught() -> None:
    # Write 1 is applied again after write 2 completed (a retry without a session).
    assert valid(w("a", 1, 0, 1), w("a", 2, 2, 3), r("b", 2, 4, 5), r("b", 1, 6, 7)) is False


def test_an_increment_applied_twice_is_caught() -> None:
    assert valid(inc("a", 1, 0, 1), inc("a", 3, 2, 3)) is False
    assert valid(inc("a", 1, 0, 1), r("b", 2, 2, 3)) is False


def test_a_read_of_a_value_never_written_is_caught() -> None:
    assert valid(w("a", 1, 0, 1), r("b", 9, 2, 3)) is False


def test_values_going_back_in_time_are_caught() -> None:
    # Two reads in sequence that see the concurrent writes in opposite orders.
    ops = [w("a", 1, 0, 10), w("b", 2, 0, 10), r("c", 1, 1, 2), r("c", 2, 3, 4), r("d", 1, 5, 6)]
    assert valid(*ops) is False


def test_an_unknown_write_cannot_explain_a_read_before_it_began() -> None:
    assert valid(r("b", 1, 0, 1), w("a", 1, 2, 3, INFO)) is False


def test_a_failed_write_that_is_read_is_caught() -> None:
    assert valid(w("a", 1, 0, 1, FAIL), r("b", 1, 2, 3)) is False


def test_a_search_too_long_gives_up_rather_than_answering() -> None:
    ops = [w(f"p{i}", i, 0, 10) for i in range(12)] + [r("q", 99, 11, 12)]
    assert check_key("x", ops, max_steps=50).valid is None


# -- against a brute force ----------------------------------------------------------------


def brute_force(ops: list[Op]) -> bool:
    """Every order of every subset of unknown operations with all the completed ones."""
    import itertools
    from dataclasses import replace

    from tests.faults.checker import step

    ops = [o for o in ops if o.status != FAIL and not (o.status == INFO and o.f == READ)]
    done = [o for o in ops if o.status == OK]
    # An unknown increment's result was never seen.
    unknown = [replace(o, result=None) for o in ops if o.status == INFO]
    for size in range(len(unknown) + 1):
        for chosen in itertools.combinations(unknown, size):
            for order in itertools.permutations(done + list(chosen)):
                # Real time: an op that completed before another began comes first.
                if any(b.complete < a.invoke for i, a in enumerate(order) for b in order[i + 1 :]):
                    continue
                state = None
                for op in order:
                    fits, state = step(state, op)
                    if not fits:
                        break
                else:
                    return True
    return False


@pytest.mark.parametrize("seed", range(150))
def test_the_search_agrees_with_brute_force_on_small_random_histories(seed: int) -> None:
    rng = random.Random(seed)
    ops: list[Op] = []
    for i in range(rng.randint(2, 6)):
        start = rng.uniform(0, 10)
        end = start + rng.uniform(0.1, 4)
        status = rng.choice([OK, OK, OK, INFO, FAIL])
        kind = rng.choice([WRITE, READ, INCR])
        if kind == WRITE:
            ops.append(w(f"p{i}", rng.randint(1, 2), start, end, status))
        elif kind == READ:
            ops.append(r(f"p{i}", rng.choice([None, 1, 2, 3]), start, end))
        else:
            ops.append(inc(f"p{i}", rng.randint(1, 3), start, end, status))
    assert check(ops).valid == brute_force(ops), ops
