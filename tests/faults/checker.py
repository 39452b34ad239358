"""A linearizability checker for histories of key-value operations.

A history is a list of ``Op``: each operation's invocation and completion times (one
clock for every process) and its outcome:

- ``ok``: it happened, with the result the client saw;
- ``fail``: it certainly did not happen (an error that proves the command was not
  applied); dropped before the search;
- ``info``: unknown (a timeout, an error that says it may have applied, a client killed
  in the middle): it may have happened at any moment after its invocation, or never.

The model is a register per key (``write`` sets a value, ``read`` returns it) with an
``incr`` that adds to the integer stored (0 when absent) and returns the new value: a
counter whose increments must each be applied exactly once. Keys are independent, so
each key's sub-history is checked on its own (linearizability is local).

The search is Wing & Gong's, with Lowe's memoization: walk the events in time order,
try to linearize each pending call in turn (its effect on the model must match its
result), remember every (set of linearized operations, model state) already explored,
and backtrack when the completion of an operation not yet linearized is reached. An
``info`` operation has no completion: the search succeeds once every operation that
completed is linearized, whether or not the unknown ones were.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

OK = "ok"
FAIL = "fail"
INFO = "info"

WRITE = "write"
READ = "read"
INCR = "incr"

ABSENT: Any = None
"""A key's value before any write (a read of a missing key returns it)."""


@dataclass(frozen=True)
class Op:
    """One client operation of a history."""

    process: str
    """Who ran it (a client thread): a process runs one operation at a time."""
    f: str
    """``write``, ``read`` or ``incr``."""
    key: str
    value: Any = None
    """What a ``write`` writes, what an ``incr`` adds."""
    result: Any = None
    """What a ``read`` returned, the new value an ``incr`` returned (None: unknown)."""
    status: str = OK
    invoke: float = 0.0
    complete: float = math.inf
    """When the client got its answer; ``inf`` for an ``info`` operation."""


@dataclass
class KeyResult:
    """The verdict on one key's sub-history."""

    key: str
    valid: bool | None
    """None when the search gave up (more than ``max_steps``)."""
    operations: int
    steps: int = 0
    blocked: Op | None = None
    """An operation that completed but could be linearized in no way the search found
    (the one with the deepest partial linearization)."""
    states: list[Any] = field(default_factory=list)
    """The model states that operation could have met (for the report)."""

    def explain(self) -> str:
        if self.valid:
            return f"{self.key}: linearizable ({self.operations} operations)"
        if self.valid is None:
            return f"{self.key}: gave up after {self.steps} steps"
        op = self.blocked
        what = f"{op.f}({op.value!r}) -> {op.result!r} by {op.process}" if op else "?"
        when = f"[{op.invoke:.4f}, {op.complete:.4f}]" if op else ""
        states = ", ".join(repr(s) for s in self.states[:5])
        return f"{self.key}: not linearizable: {what} {when}; the register could hold {states}"


@dataclass
class Result:
    """The verdict on a whole history."""

    keys: list[KeyResult]

    @property
    def valid(self) -> bool | None:
        """True when every key is linearizable, False when one is not, else None."""
        if any(k.valid is False for k in self.keys):
            return False
        if any(k.valid is None for k in self.keys):
            return None
        return True

    @property
    def anomalies(self) -> list[KeyResult]:
        return [k for k in self.keys if k.valid is not True]

    def explain(self) -> str:
        bad = self.anomalies
        if not bad:
            operations = sum(k.operations for k in self.keys)
            return f"linearizable: {len(self.keys)} keys, {operations} operations"
        return "\n".join(k.explain() for k in bad)


def step(state: Any, op: Op) -> tuple[bool, Any]:
    """Apply ``op`` to the register's ``state``: whether its result fits, the new state."""
    if op.f == WRITE:
        return True, op.value
    if op.f == READ:
        return state == op.result, state
    if op.f == INCR:
        try:
            new = (0 if state is ABSENT else int(state)) + int(op.value)
        except (TypeError, ValueError):
            return False, state  # an increment of a non-integer fails: not this one
        return op.result is None or int(op.result) == new, new
    raise ValueError(f"unknown operation {op.f!r}")


class _Event:
    __slots__ = ("call", "match", "next", "op", "position", "prev")

    def __init__(self, op: Op, position: int, call: bool) -> None:
        self.op = op
        self.position = position
        self.call = call
        self.match: _Event | None = None
        self.prev: _Event | None = None
        self.next: _Event | None = None


def _prepare(ops: Iterable[Op]) -> list[Op]:
    """The operations the search must consider: failed ones and unknown reads (which
    change nothing) left out."""
    kept = []
    for op in ops:
        if op.status == FAIL:
            continue
        if op.status == INFO and op.f == READ:
            continue
        if op.status == INFO:
            op = Op(op.process, op.f, op.key, op.value, None, INFO, op.invoke, math.inf)
        kept.append(op)
    return kept


def check_key(key: str, ops: list[Op], max_steps: int = 2_000_000) -> KeyResult:
    """Whether one key's operations are linearizable for the register model."""
    ops = _prepare(ops)
    events: list[tuple[float, int, int, _Event]] = []
    for position, op in enumerate(ops):
        call = _Event(op, position, True)
        events.append((op.invoke, 0, position, call))
        if op.complete != math.inf:
            ret = _Event(op, position, False)
            call.match = ret
            # At equal times a return sorts after a call: the two are then concurrent,
            # the permissive reading of a tie.
            events.append((op.complete, 1, position, ret))
    events.sort(key=lambda item: item[:3])
    head = _Event(Op("", READ, key), -1, False)
    previous = head
    for *_, event in events:
        previous.next, event.prev = event, previous
        previous = event
    returns = sum(1 for op in ops if op.complete != math.inf)

    def lift(call: _Event) -> None:
        assert call.prev is not None
        call.prev.next = call.next
        if call.next is not None:
            call.next.prev = call.prev
        ret = call.match
        if ret is not None:
            assert ret.prev is not None
            ret.prev.next = ret.next
            if ret.next is not None:
                ret.next.prev = ret.prev

    def unlift(call: _Event) -> None:
        ret = call.match
        if ret is not None:
            assert ret.prev is not None
            ret.prev.next = ret
            if ret.next is not None:
                ret.next.prev = ret
        assert call.prev is not None
        call.prev.next = call
        if call.next is not None:
            call.next.prev = call

    state: Any = ABSENT
    linearized = 0
    done = 0
    seen: set[tuple[int, Any]] = set()
    stack: list[tuple[_Event, Any]] = []
    deepest = -1
    blocked: Op | None = None
    states: set[Any] = set()
    steps = 0
    entry = head.next
    while done < returns:
        steps += 1
        if steps > max_steps:
            return KeyResult(key, None, len(ops), steps)
        assert entry is not None  # a return is always met before the end of the list
        if entry.call:
            fits, new_state = step(state, entry.op)
            if fits:
                mask = linearized | (1 << entry.position)
                if (mask, new_state) not in seen:
                    seen.add((mask, new_state))
                    stack.append((entry, state))
                    state, linearized = new_state, mask
                    if entry.match is not None:
                        done += 1
                    lift(entry)
                    entry = head.next
                    continue
            entry = entry.next
            continue
        # The completion of an operation not linearized yet: undo the last choice.
        if done >= deepest:
            if done > deepest:
                states = set()
            deepest, blocked = done, entry.op
            states.add(state)
        if not stack:
            return KeyResult(key, False, len(ops), steps, blocked, sorted(states, key=repr))
        call, state = stack.pop()
        linearized &= ~(1 << call.position)
        if call.match is not None:
            done -= 1
        unlift(call)
        entry = call.next
    return KeyResult(key, True, len(ops), steps)


def check(history: Iterable[Op], max_steps: int = 2_000_000) -> Result:
    """Check every key's sub-history on its own."""
    by_key: dict[str, list[Op]] = defaultdict(list)
    for op in history:
        by_key[op.key].append(op)
    return Result([check_key(key, ops, max_steps) for key, ops in sorted(by_key.items())])
