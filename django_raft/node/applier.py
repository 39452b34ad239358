"""The apply thread: committed entries run through their handlers beside the loop.

The loop hands over, in log order, each snapshot to restore and each run of committed
entries (with the proposals of this node waiting for them), and goes on persisting,
sending, ticking and answering votes and heartbeats whatever a handler does. The
applier applies each run in one transaction (``StateMachine.apply``: the applied index
and the client sessions commit with the handlers' writes), answers the waiting callers,
and tells the loop which index it reached (``Applied``): only then does the core count
the entries applied, so reads, snapshots and backpressure go by what the database holds.

Apply is ordered: a slow handler delays the commands behind it, never the loop.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass

from ..core import ConfChange, Entry, EntryType, NotLeaderError, ProposalDroppedError, Snapshot
from ..exceptions import CommandTimeoutError
from . import events, metrics, storage, watch
from .dispatch import Completer, Completion, together
from .outcome import Outcome
from .statemachine import StateMachine

logger = logging.getLogger(__name__)

MAX_RUN = 1024
"""Entries applied in one transaction at most: the runs that wait together (the loop
hands them over faster than they are applied) are applied as one."""


class InlineFuture(Future[Outcome]):
    """A proposal's future that only the node's own short, non-blocking callbacks are
    attached to (a blocking ``propose``, a client's command stream): the applier
    resolves it itself, one thread hand-off fewer than through the completer."""


@dataclass(slots=True)
class Waiting:
    """A proposal of this node waiting for its entry: the term it was proposed in."""

    term: int
    future: Future[Outcome]


@dataclass(frozen=True, slots=True)
class Run:
    """Committed entries to apply in order, and the proposals waiting for them by index."""

    entries: tuple[Entry, ...]
    waiting: dict[int, Waiting]


@dataclass(frozen=True, slots=True)
class Restore:
    """A snapshot from the leader to restore the state machine from."""

    snapshot: Snapshot


@dataclass(frozen=True, slots=True)
class Forget:
    """The log was compacted up to ``index``: the outcomes recorded for it can go."""

    index: int


@dataclass(frozen=True, slots=True)
class Applied:
    """What the applier reports to the loop: everything up to ``index`` is applied.

    ``changes`` are the membership changes among the entries; ``restored`` says the
    index is a snapshot's (the members' addresses are to be read again).
    """

    index: int
    changes: tuple[ConfChange, ...] = ()
    restored: bool = False


class Applier:
    """One thread that applies what the loop hands over, in order.

    ``report`` takes each ``Applied`` (the loop's inbox); ``leader`` names the leader
    the node knows of (for the error of a proposal another leader's entry replaced);
    ``failed`` is called once, with the error, if applying fails for good (the node
    stops: its log applies the entries again when restarted).
    """

    def __init__(
        self,
        name: str,
        machine: StateMachine,
        completer: Completer,
        report: Callable[[Applied], None],
        leader: Callable[[], str],
        failed: Callable[[BaseException], None],
    ) -> None:
        self.machine = machine
        self.completer = completer
        self._report = watch.reporting(machine, report)  # and wakes the watches
        self._leader = leader
        self._failed = failed
        self._jobs: queue.SimpleQueue[Run | Restore | Forget | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._stopped = False
        self._peeked: Run | Restore | Forget | None = None
        """A job taken from the queue while joining runs, to do next."""

    def start(self) -> None:
        """Start the thread."""
        self._thread.start()

    def hand_over(self, job: Run | Restore | Forget) -> None:
        """Queue a snapshot to restore, a run of entries to apply or outcomes to forget,
        after the others."""
        self._jobs.put(job)

    def stop(self, timeout: float) -> None:
        """Finish the job in hand (within ``timeout``), answer every queued proposal with
        ``CommandTimeoutError``: their entries are committed and will be applied, here
        on restart or elsewhere, but not by this run of the node."""
        self._stopped = True
        self._jobs.put(None)
        self._thread.join(timeout)
        error = CommandTimeoutError(
            "the node stopped before applying the command; it is committed and will be applied"
        )
        if isinstance(self._peeked, Run):
            self._fail(self._peeked, error)
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if isinstance(job, Run):
                self._fail(job, error)

    def _take(self) -> Run | Restore | Forget | None:
        """The next job; runs waiting one after another, joined into one."""
        job, self._peeked = self._peeked, None
        if job is None:
            job = self._jobs.get()
        if not isinstance(job, Run):
            return job
        entries, waiting = list(job.entries), dict(job.waiting)
        while len(entries) < MAX_RUN:
            try:
                following = self._jobs.get_nowait()
            except queue.Empty:
                break
            if not isinstance(following, Run):
                self._peeked = following
                break
            entries.extend(following.entries)
            waiting.update(following.waiting)
        return job if len(entries) == len(job.entries) else Run(tuple(entries), waiting)

    def _run(self) -> None:
        while True:
            job = self._take()
            if job is None or self._stopped:
                if isinstance(job, Run):
                    self._jobs.put(job)  # answered by stop()
                return
            try:
                if isinstance(job, Restore):
                    self._restore(job.snapshot)
                elif isinstance(job, Forget):
                    self.machine.forget_outcomes(job.index)
                else:
                    self._apply(job)
            except BaseException as error:
                logger.exception("raft: %s could not apply; the node stops", self._thread.name)
                if isinstance(job, Run):
                    self._fail(job, CommandTimeoutError(f"the node could not apply: {error}"))
                self._stopped = True
                self._failed(error)
                return

    def _restore(self, snapshot: Snapshot) -> None:
        started = time.perf_counter()
        metadata = snapshot.metadata
        self.machine.restore(snapshot.data, metadata.index, metadata.term)
        events.snapshot_installed(
            self.machine.node_id, metadata.index, len(snapshot.data), time.perf_counter() - started
        )
        self._report(Applied(metadata.index, restored=True))

    def _apply(self, run: Run) -> None:
        entries = run.entries
        with metrics.applying():
            outcomes = self.machine.apply(entries)
        completions: list[Completion] = []
        changes: list[ConfChange] = []
        with together():
            self._answer(run, outcomes, completions, changes)
        self.completer.complete(completions)
        self._report(Applied(entries[-1].index, tuple(changes)))
        storage.checkpoint(sum(len(entry.data) for entry in entries))  # answers are out

    def _answer(
        self,
        run: Run,
        outcomes: dict[int, Outcome],
        completions: list[Completion],
        changes: list[ConfChange],
    ) -> None:
        """Answer the proposals waiting for a run's entries: this node's own (inline)
        here, the others through the completer (``completions``); collect the run's
        membership changes."""
        for entry in run.entries:
            if entry.type is EntryType.CONF_CHANGE:
                changes.append(ConfChange.decode(entry.data))
            waiting = run.waiting.get(entry.index)
            if waiting is None or waiting.future.done():
                continue
            outcome = outcomes.get(entry.index)
            metrics.count_proposal(
                waiting.term == entry.term and outcome is not None and outcome.ok
            )
            if waiting.term != entry.term:
                lead = self._leader()
                error: Exception = (
                    NotLeaderError(lead)
                    if lead != self.machine.node_id
                    else ProposalDroppedError(
                        "the command was superseded by another leader's entry; not applied"
                    )
                )
                completions.append((waiting.future, None, error))
            elif outcome is None:  # applied before: a snapshot overtook it
                error = CommandTimeoutError("the command was applied; its outcome is unknown")
                completions.append((waiting.future, None, error))
            elif isinstance(waiting.future, InlineFuture):
                waiting.future.set_result(outcome)  # its callbacks are short: run them here
            else:
                completions.append((waiting.future, outcome, None))

    def _fail(self, run: Run, error: Exception) -> None:
        self.completer.complete(
            [(w.future, None, error) for w in run.waiting.values() if not w.future.done()]
        )
