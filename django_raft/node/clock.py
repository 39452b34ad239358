"""The leader's clock entries: the log time moves while registrations exist and nobody writes.

Registrations expire in log time, which moves only when session-tracked commands are
applied. Should the only owner of a registration die while nobody else writes, nothing
would ever expire it. So the leader proposes a clock entry (``CLOCK``, stamped with its
clock like a session's command; applying it deletes what expired by then) when
registrations exist and either the log time lags its clock by more than a quarter of
the shortest TTL, or its clock passed the earliest expiry. At most one is in flight,
at most ``1 / MIN_INTERVAL`` a second, and none while there are no registrations.

The loop calls ``tick`` on its ticks: it reads what the apply thread published
(``registrations.summary``), never the database, and only queues a proposal.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from concurrent.futures import Future

from .. import replicated
from ..protocol.request import CLOCK
from ..protocol.wire import encode_command
from . import registrations
from .outcome import Outcome

__all__ = ["MIN_INTERVAL", "ClockProposer"]

MIN_INTERVAL = 0.25
"""Seconds between two clock entries at least."""
GIVE_UP = 2.0
"""Seconds after which a clock entry still unanswered no longer holds the next back."""


class ClockProposer:
    """Proposes clock entries for one node, from its loop thread (see the module).

    ``propose`` queues a command's data and returns the future of its outcome without
    waiting (``RaftNode.propose_async``).
    """

    def __init__(self, alias: str, propose: Callable[[bytes], Future[Outcome]]) -> None:
        self.alias = alias
        self._propose = propose
        self._last = -math.inf
        self._in_flight: Future[Outcome] | None = None
        self.proposed = 0
        """Clock entries proposed by this node so far."""
        if registrations.summary(alias) is None:  # before the loop starts: one query
            registrations.refresh(alias, replicated.log_time(alias))

    def tick(self, leading: bool, now: float) -> bool:
        """On a tick of the loop (``now``: ``time.monotonic()``): propose a clock entry if
        this node leads and one is due; return whether it did."""
        if not leading or now - self._last < MIN_INTERVAL:
            return False
        found = registrations.summary(self.alias)
        time_ms = registrations.log_time(self.alias)
        if found is None or not found.count or time_ms is None:
            return False
        waiting = self._in_flight
        if waiting is not None and not waiting.done() and now - self._last < GIVE_UP:
            return False
        clock = int(time.time() * 1000)
        if clock - time_ms <= found.min_ttl_ms // 4 and clock < found.next_expiry_ms:
            return False
        self._last = now
        self._in_flight = self._propose(encode_command(CLOCK, {}, "", 0, clock, 0))
        self.proposed += 1
        return True
