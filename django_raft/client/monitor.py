"""The cluster as the admin, the API and ``raftstatus`` show it, asked of every member at once.

Runs in web processes and shells. It asks each known member's ``overview`` route
concurrently with a short timeout; a member that does not answer in time is shown as
unreachable. Members are known from this node's database (``Member`` rows), the
founding ``CLUSTER`` setting, ``ADDRESS``, and whatever the answering nodes report.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

from ..conf import raft_settings
from ..core import RaftError
from .client import post, raise_for

TIMEOUT = 1.0
"""Seconds to wait for each member's answer."""

LAG_BUDGET = 1000
"""Entries a member may be behind the leader's commit index and still count as healthy."""


@dataclass
class MemberView:
    """One row of the cluster table."""

    node_id: str
    address: str
    role: str = "unknown"
    """voter or learner, as the leader (else any answering node) knows it."""
    state: str = "unreachable"
    reachable: bool = False
    error: str = ""
    term: int | None = None
    leader: str | None = None
    commit: int | None = None
    applied: int | None = None
    last_index: int | None = None
    snapshot_index: int | None = None
    lag: int | None = None
    last_contact: float | None = None
    """Seconds since it last answered the leader's heartbeat (leader's view)."""
    progress: dict[str, Any] | None = None
    """The leader's replication progress towards this member, when known."""
    max_loop_turn: float | None = None
    seconds: float = 0.0
    """How long its answer took."""


@dataclass
class ClusterView:
    """The whole table, the leader's view, recent events and a health verdict."""

    members: list[MemberView]
    leader: str = ""
    term: int = 0
    events: list[dict[str, Any]] = field(default_factory=list)
    progress_known: bool = False
    """Whether the leader reported its replication progress."""
    healthy: bool = False
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        """The view as JSON-ready data."""
        return asdict(self)


def known_members() -> dict[str, str]:
    """Return node id -> address of every member this process knows of."""
    from ..models import Member

    found: dict[str, str] = {}
    cluster = raft_settings.CLUSTER
    if isinstance(cluster, dict):
        found.update({str(k): str(v) for k, v in cluster.items()})
    try:
        rows = Member.objects.using(raft_settings.DATABASE).values_list("node_id", "address")
        found.update({node_id: address for node_id, address in rows if address})
    except Exception:  # no table yet (not migrated): fall back on the settings
        pass
    return found


def ask(address: str, timeout: float = TIMEOUT) -> dict[str, Any]:
    """Return one node's overview (status, events, last contact); raise when unreachable."""
    value = raise_for(post(address, "overview", {"timeout": timeout}, timeout - 1.0))
    if not isinstance(value, dict):
        raise RaftError(f"bad overview answer {value!r}")
    return value


def _ask_timed(address: str, timeout: float) -> tuple[dict[str, Any] | Exception, float]:
    started = time.perf_counter()
    try:
        answer: dict[str, Any] | Exception = ask(address, timeout)
    except Exception as error:
        answer = error
    return answer, time.perf_counter() - started


def gather(members: dict[str, str] | None = None, timeout: float = TIMEOUT) -> ClusterView:
    """Ask every member concurrently and build the cluster table."""
    started = time.perf_counter()
    addresses = dict(known_members() if members is None else members)
    if not addresses and raft_settings.ADDRESS:
        addresses = {"": raft_settings.ADDRESS}
    answers = _ask_all(addresses, timeout)
    # A node the others know of but we did not: ask it too (one more round at most).
    extra = {}
    for answer, _ in answers.values():
        if isinstance(answer, dict):
            for node_id in [*answer.get("voters", []), *answer.get("learners", [])]:
                if node_id not in answers and node_id not in addresses:
                    extra[node_id] = ""
    if "" in answers:
        answer, spent = answers.pop("")
        key = answer.get("id", "") if isinstance(answer, dict) else ""
        answers[key or raft_settings.ADDRESS] = (answer, spent)
        addresses[key or raft_settings.ADDRESS] = raft_settings.ADDRESS
        extra.pop(key, None)
    view = _build(addresses, answers, extra)
    view.seconds = time.perf_counter() - started
    return view


def _ask_all(
    addresses: dict[str, str], timeout: float
) -> dict[str, tuple[dict[str, Any] | Exception, float]]:
    if not addresses:
        return {}
    with ThreadPoolExecutor(max_workers=min(16, len(addresses))) as pool:
        futures = {
            node_id: pool.submit(_ask_timed, address, timeout)
            for node_id, address in addresses.items()
        }
        return {node_id: future.result() for node_id, future in futures.items()}


def _build(
    addresses: dict[str, str],
    answers: dict[str, tuple[dict[str, Any] | Exception, float]],
    unknown: dict[str, str],
) -> ClusterView:
    statuses = {k: a for k, (a, _) in answers.items() if isinstance(a, dict)}
    leader_id, term = "", 0
    for status in statuses.values():
        if status.get("state") == "leader" and int(status.get("term", 0)) >= term:
            leader_id, term = str(status.get("id", "")), int(status.get("term", 0))
    if not leader_id:
        term = max((int(s.get("term", 0)) for s in statuses.values()), default=0)
    leader_status = next((s for s in statuses.values() if s.get("id") == leader_id), None)
    reference = leader_status or next(iter(statuses.values()), None)
    voters = set(reference.get("voters", [])) if reference else set()
    learners = set(reference.get("learners", [])) if reference else set()
    ids = sorted(set(addresses) | set(unknown) | voters | learners)
    addresses = {**_reported_addresses(statuses), **addresses}
    rows = []
    for node_id in ids:
        answer, spent = answers.get(node_id, (RaftError("no address known"), 0.0))
        row = MemberView(node_id=node_id, address=addresses.get(node_id, ""), seconds=spent)
        if node_id in voters:
            row.role = "voter"
        elif node_id in learners:
            row.role = "learner"
        elif reference is not None:
            row.role = "not a member"
        if isinstance(answer, dict):
            _fill(row, answer)
        else:
            row.error = str(answer)
        if leader_status is not None:
            contact = leader_status.get("last_contact", {}).get(node_id)
            row.last_contact = 0.0 if node_id == leader_id else contact
            progress = leader_status.get("progress")
            if isinstance(progress, dict) and node_id in progress:
                row.progress = progress[node_id]
            if row.applied is not None:
                row.lag = max(0, int(leader_status.get("commit", 0)) - row.applied)
        rows.append(row)
    view = ClusterView(members=rows, leader=leader_id, term=term)
    view.progress_known = any(row.progress for row in rows)
    view.events = _merge_events(statuses)
    view.problems = _verdict(view, voters) + _slow_links(statuses)
    view.healthy = not view.problems
    return view


def _fill(row: MemberView, status: dict[str, Any]) -> None:
    row.reachable = True
    row.state = str(status.get("state", "unknown"))
    row.term = _int(status.get("term"))
    row.leader = str(status.get("leader", ""))
    row.commit = _int(status.get("commit"))
    row.applied = _int(status.get("applied"))
    row.last_index = _int(status.get("last_index"))
    row.snapshot_index = _int(status.get("snapshot_index"))
    row.max_loop_turn = status.get("max_loop_turn")
    if not row.address:
        row.address = str(status.get("address", ""))


def _reported_addresses(statuses: dict[str, dict[str, Any]]) -> dict[str, str]:
    found: dict[str, str] = {}
    for status in statuses.values():
        reported = status.get("addresses")
        if isinstance(reported, dict):
            found.update({str(k): str(v) for k, v in reported.items() if v})
    return found


def _int(value: Any) -> int | None:
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else None


def _merge_events(statuses: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    merged = [event for status in statuses.values() for event in status.get("events", [])]
    merged.sort(key=lambda event: event.get("time", 0), reverse=True)
    return merged[:50]


def _slow_links(statuses: dict[str, dict[str, Any]]) -> list[str]:
    """The links a node reports too slow for the election timeout (``node/rtt.py``)."""
    found = []
    for node_id, status in sorted(statuses.items()):
        trips = status.get("round_trips")
        if not isinstance(trips, dict) or not isinstance(trips.get("peers"), dict):
            continue
        for peer in trips.get("too_slow") or []:
            median = (trips["peers"].get(peer) or {}).get("p50_ms")
            found.append(
                f"round trip {node_id} to {peer} ({median} ms) too large for the election "
                f"timeout (limit {trips.get('limit_ms')} ms)"
            )
    return found


def _verdict(view: ClusterView, voters: set[str]) -> list[str]:
    problems = []
    if not view.leader:
        problems.append("no leader")
    reachable_voters = [m for m in view.members if m.node_id in voters and m.reachable]
    if voters and len(reachable_voters) * 2 <= len(voters):
        problems.append(f"quorum not reachable: {len(reachable_voters)} of {len(voters)} voters")
    for member in view.members:
        if not member.reachable:
            problems.append(f"{member.node_id or member.address} unreachable")
        elif member.lag is not None and member.lag > LAG_BUDGET:
            problems.append(f"{member.node_id} lags {member.lag} entries behind the leader")
    return problems
