"""Load generators run inside a node process, and the line protocol the harness speaks to it.

Standard library only: the PySyncObj node imports this module from the bench environment,
where django-raft is not installed.

A system is driven through one function, ``submit(done)``: it proposes one command and
arranges for ``done(error)`` to be called once the command is committed and applied
(``error`` is "" on success, else the error's name), from whatever thread the system
completes it on. Submission always happens on the generator's own thread, never from a
completion callback, so a system that blocks a submitter (backpressure) cannot block
its own consensus thread.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any, TextIO

Done = Callable[[str], None]
Submit = Callable[[Done], None]

DRAIN_TIMEOUT = 120.0
"""Seconds a run waits, after it stops submitting, for what is still outstanding."""


def keep_outstanding(
    submit: Submit, outstanding: int, seconds: float | None = None, count: int | None = None
) -> dict[str, Any]:
    """Keep ``outstanding`` commands in flight until ``seconds`` pass or ``count`` are sent.

    With ``seconds``, throughput is the commands applied within that window; with only
    ``count``, it is ``count`` over the time until the last one completed. Either way the
    run then waits (up to ``DRAIN_TIMEOUT``) until nothing is outstanding, so the next
    measurement starts on a quiet node.
    """
    slots = threading.Semaphore(outstanding)
    lock = threading.Lock()
    errors: Counter[str] = Counter()
    state = {"ok": 0, "ok_in_window": 0, "finished": 0, "last": 0.0}
    all_done = threading.Event()
    submitted = 0
    start = time.perf_counter()
    end = start + seconds if seconds is not None else float("inf")
    stopped_submitting = False

    def done(error: str) -> None:
        now = time.perf_counter()
        with lock:
            state["finished"] += 1
            state["last"] = now
            if error:
                errors[error] += 1
            else:
                state["ok"] += 1
                if now <= end:
                    state["ok_in_window"] += 1
            if stopped_submitting and state["finished"] == submitted:
                all_done.set()
        slots.release()

    while count is None or submitted < count:
        if not slots.acquire(timeout=max(0.0, min(end - time.perf_counter(), 3600.0))):
            break
        if time.perf_counter() >= end:
            slots.release()
            break
        with lock:
            submitted += 1
        try:
            submit(done)
        except Exception as error:  # a refusal at submission counts as a failed command
            done(type(error).__name__)
    with lock:
        stopped_submitting = True
        if state["finished"] == submitted:
            all_done.set()
    submit_seconds = time.perf_counter() - start
    drained = all_done.wait(DRAIN_TIMEOUT)
    with lock:
        if seconds is not None:
            window, applied = seconds, state["ok_in_window"]
        else:
            window, applied = max(state["last"] - start, 1e-9), state["ok"]
        return {
            "outstanding": outstanding,
            "submitted": submitted,
            "acknowledged": state["ok"],
            "failed": sum(errors.values()),
            "errors": dict(errors),
            "window_seconds": window,
            "submit_seconds": submit_seconds,
            "drained": drained,
            "drain_seconds": time.perf_counter() - start - submit_seconds,
            "commands_per_second": applied / window,
        }


def one_at_a_time(submit: Submit, count: int, timeout: float) -> dict[str, Any]:
    """Send ``count`` commands, each after the previous one completed; return latencies."""
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    for _ in range(count):
        call = _Call()
        began = time.perf_counter()
        try:
            submit(call.done)
        except Exception as error:
            call.done(type(error).__name__)
        if not call.finished.wait(timeout):
            errors["Timeout"] += 1
        elif call.error:
            errors[call.error] += 1
        else:
            latencies.append(time.perf_counter() - began)
    return {"latencies": latencies, "errors": dict(errors)}


class _Call:
    """One command waited for."""

    def __init__(self) -> None:
        self.finished = threading.Event()
        self.error = ""

    def done(self, error: str) -> None:
        self.error = error
        self.finished.set()


def serve(handlers: dict[str, Callable[[dict[str, Any]], dict[str, Any]]]) -> None:
    """Answer one JSON request per line on stdin with one JSON line, until "stop" or EOF.

    Replies go to the process's original stdout; anything else the process prints is
    sent to stderr, so stray output cannot break the protocol.
    """
    sys.stdout.flush()
    replies = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    reply({"ready": True}, replies)
    for line in sys.stdin:
        request = json.loads(line)
        op = request.pop("op")
        if op == "stop":
            reply({"stopped": True}, replies)
            return
        try:
            answer = handlers[op](request)
        except Exception as error:
            answer = {"error": f"{type(error).__name__}: {error}"}
        reply(answer, replies)


def reply(answer: dict[str, Any], out: TextIO) -> None:
    """Write one answer line."""
    out.write(json.dumps(answer) + "\n")
    out.flush()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a whole process (every thread) from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
