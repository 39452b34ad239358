"""Fault runs: do the errors a client reports tell the truth about whether its command
was applied, and how fast do commands get through a paused leader?

    .venv/bin/python bench/fault_run.py                     # both scenarios (~2.5 minutes)
    .venv/bin/python bench/fault_run.py --quick             # short truth run, one pause (~50 s)
    .venv/bin/python bench/fault_run.py --scenario truth --seconds 60 --clients 4 --threads 2
    .venv/bin/python bench/fault_run.py --scenario paused --pauses 3 --pause-seconds 6
    (--seed N repeats a run's faults; --results DIR; --keep keeps the nodes' logs)

Each scenario starts 3 ``manage.py raftnode`` processes of the demo project on 127.0.0.1
(``tests.faults.cluster.FaultCluster`` with no proxies: each its own SQLite file in a
temporary directory, durable as by default) and client processes configured like web
processes (``ADDRESS`` one node, ``CLUSTER`` all of them) that call ``do("kv.set",
key=<unique>, value=<unique>)`` in a loop and record, per call, the outcome (``ok`` or
the exception's class name) and when it started and ended.

- ``truth``: half the client processes use ``django_raft.do`` (a session), half
  ``Client(session=False)``, while faults follow each other: kill -9 of the leader or of
  a random node (restarted 1-3 s later), SIGSTOP of the leader for 1-6 s, kill -9 of
  both followers for about a second. Then everything is healed, the nodes converge, and
  every node's ``kv_keyvalue`` is read: a key is there iff its call was applied, and the
  demo's ``kv.set`` counts the writes to a key in ``version`` (above 1: applied twice).
  The table: per outcome and session mode, how many calls were found applied or not,
  beside what docs/reference.md says of that error.
- ``paused``: sessions, one client process per node; the leader is SIGSTOPped for
  ``--pause-seconds``, then SIGCONTed, ``--pauses`` times. Per pause: when the new leader
  was elected (the other nodes' status polled), and for the commands sent during the
  pause their completion time after that election and how many completed only after the
  resume.

Times are ``time.monotonic()`` (CLOCK_MONOTONIC, one clock for every process of the
machine), printed relative to the scenario's start. Every process is started in a
process group of its own and killed at the end, whatever happens. Prints tables and
writes ``bench/results/fault_run-<timestamp>.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.faults.cluster import SECRET, FaultCluster, Node, kill_group, status_of  # noqa: E402

RESULTS = ROOT / "bench" / "results"
COMMAND = "kv.set"
CLIENT_GRACE = 20.0
"""Seconds client processes have to finish their calls in flight once told to stop."""

DOCUMENTED: dict[str, str] = {
    "ok": "applied",
    "CommandTimeoutError": "maybe",
    "NodeStoppedError": "maybe",
    "StopError": "maybe",
    "NotLeaderError": "no",
    "ClusterUnreachableError": "no",
    "UnavailableError": "no",
    "OverloadedError": "no",
    "InvalidRequestError": "no",
    "SessionExpiredError": "no",
    "ProposalDroppedError": "no",
    "CommandFailedError": "no",
}
"""What docs/reference.md ("Errors") says of a call that ended so: may it be applied?
(``CommandFailedError`` is applied as a failure, its writes rolled back: no key.)"""


# -- processes ----------------------------------------------------------------------------


def django_raft_source(node: Node) -> str:
    """The file ``node``'s tree and settings import django_raft from (to tell which tree
    runs)."""
    done = subprocess.run(
        [
            sys.executable,
            "manage.py",
            "shell",
            "-c",
            "import django_raft; print(django_raft.__file__)",
        ],
        cwd=ROOT,
        env=node.env(),
        check=True,
        timeout=300,
        capture_output=True,
        text=True,
    )
    paths = [p for p in done.stdout.splitlines() if p.endswith(".py")]  # not shell's banner
    return paths[-1] if paths else done.stdout.strip()


def key_versions(node: Node, prefix: str) -> dict[str, int]:
    """Every key of this run in the node's own database, with its version (writes)."""
    rows = node.query("SELECT key, version FROM kv_keyvalue")
    return {str(key): int(version) for key, version in rows if str(key).startswith(prefix)}


@dataclass
class ClientSpec:
    """What one client process does; written as JSON for it to read."""

    name: str
    address: str
    cluster: str
    threads: int
    session: bool
    output: str
    deadline: float
    """A monotonic time it stops at in any case (it stops earlier when stdin closes)."""


class ClientProcess:
    """A client process (this script's ``_client`` mode) and the calls it recorded."""

    def __init__(self, spec: ClientSpec, workdir: Path) -> None:
        self.spec = spec
        config = workdir / f"{spec.name}.json"
        config.write_text(json.dumps(asdict(spec)))
        with (workdir / f"{spec.name}.log").open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, str(Path(__file__).resolve()), "_client", str(config)],
                cwd=ROOT,
                stdin=subprocess.PIPE,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.killed = False

    def stop(self) -> None:
        """Close its stdin: each thread finishes the call in flight and ends."""
        if self.process.stdin is not None:
            with contextlib.suppress(OSError):
                self.process.stdin.close()

    def wait(self, timeout: float) -> None:
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.killed = True
        kill_group(self.process)

    def records(self) -> tuple[str, list[dict[str, Any]]]:
        """Where it imported django_raft from, and its calls."""
        source, calls = "", []
        with contextlib.suppress(FileNotFoundError), open(self.spec.output) as lines:
            for line in lines:
                try:
                    record = json.loads(line)
                except ValueError:
                    continue  # a line cut short by a kill
                if "django_raft" in record:
                    source = record["django_raft"]
                else:
                    calls.append(record)
        return source, calls


def records(
    clients: list[ClientProcess], node_source: str
) -> tuple[set[str], list[dict[str, Any]]]:
    """Where the nodes and clients imported django_raft from, and every client's calls."""
    sources = {node_source}
    calls: list[dict[str, Any]] = []
    for client in clients:
        source, mine = client.records()
        sources.add(source)
        calls += mine
    return sources, calls


def stop_clients(clients: list[ClientProcess]) -> None:
    for client in clients:
        client.stop()
    deadline = time.monotonic() + CLIENT_GRACE
    for client in clients:
        client.wait(max(0.1, deadline - time.monotonic()))


# -- the client process -------------------------------------------------------------------


def client_main(config_path: str) -> None:
    """Run one client process: ``threads`` threads calling ``do(COMMAND)`` back to back
    with unique keys until stdin closes, one JSON line per call."""
    spec = ClientSpec(**json.loads(Path(config_path).read_text()))
    os.environ.pop("DATABASE_URL", None)
    os.environ.update(
        {
            "DJANGO_SETTINGS_MODULE": "demo_project.settings",
            "DJANGO_SQLITE_PATH": str(Path(spec.output).with_suffix(".sqlite3")),
            "RAFT_ADDRESS": spec.address,
            "RAFT_CLUSTER": spec.cluster,
            "RAFT_SECRET": SECRET,
        }
    )
    import django

    django.setup()
    import django_raft

    stop = threading.Event()

    def watch_stdin() -> None:
        sys.stdin.read()
        stop.set()

    threading.Thread(target=watch_stdin, daemon=True).start()
    sessionless = None if spec.session else django_raft.Client(session=False)
    lock = threading.Lock()
    out = open(spec.output, "w", buffering=1)  # noqa: SIM115 (closed below)
    out.write(json.dumps({"django_raft": django_raft.__file__}) + "\n")
    print(f"django_raft from {django_raft.__file__}", file=sys.stderr, flush=True)

    def calls(thread: int) -> None:
        for i in range(1 << 62):
            if stop.is_set() or time.monotonic() > spec.deadline:
                return
            key = f"{spec.name}-{thread}-{i}"
            began = time.monotonic()
            try:
                if sessionless is None:
                    value = django_raft.do(COMMAND, key=key, value=key)
                else:
                    value = sessionless.do(COMMAND, key=key, value=key)
                outcome, detail = "ok", value
            except Exception as error:
                outcome, detail = type(error).__name__, str(error)[:200]
            record = {
                "key": key,
                "client": spec.name,
                "session": spec.session,
                "outcome": outcome,
                "detail": detail,
                "start": began,
                "end": time.monotonic(),
            }
            with lock:
                out.write(json.dumps(record) + "\n")

    workers = [threading.Thread(target=calls, args=(t,)) for t in range(spec.threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    out.close()


# -- scenario 1: do the errors tell the truth? ---------------------------------------------


FAULTS = ("kill-leader", "kill-random", "pause-leader", "kill-followers")


def inject(cluster: FaultCluster, rng: random.Random, kind: str) -> dict[str, Any]:
    """One fault, healed before it returns; what was done to which nodes, for how long."""
    leader = cluster.leader()
    began = time.monotonic()
    if kind == "kill-leader" or kind == "kill-random":
        node = leader if kind == "kill-leader" else rng.choice(cluster.nodes)
        down = rng.uniform(1.0, 3.0)
        node.kill()
        time.sleep(down)
        node.start()
        victims = [node]
    elif kind == "pause-leader":
        down = rng.uniform(1.0, 6.0)
        leader.pause()
        time.sleep(down)
        leader.resume()
        victims = [leader]
    else:
        victims = [n for n in cluster.nodes if n is not leader]
        down = rng.uniform(0.8, 1.2)
        for node in victims:
            node.kill()
        time.sleep(down)
        cluster.heal()  # restarts the dead ones, together
    return {
        "fault": kind,
        "nodes": [n.node_id for n in victims],
        "leader": leader.node_id,
        "at": began,
        "down_s": round(down, 3),
        "healed_at": time.monotonic(),
    }


def truth(options: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Scenario 1: calls under faults, then every node's database against the outcomes."""
    rng = random.Random(options.seed)
    cluster = FaultCluster(workdir, proxies=False)
    clients: list[ClientProcess] = []
    prefix = "t-"
    try:
        cluster.start()
        node_source = django_raft_source(cluster.nodes[0])
        origin = time.monotonic()
        deadline = origin + options.seconds
        for k in range(options.clients):
            node = cluster.nodes[k % len(cluster.nodes)]
            spec = ClientSpec(
                name=f"{prefix}c{k}",
                address=node.address,
                cluster=cluster.spec,
                threads=options.threads,
                session=k % 2 == 0,
                output=str(workdir / f"{prefix}c{k}.jsonl"),
                deadline=deadline + 120,
            )
            clients.append(ClientProcess(spec, workdir))
        time.sleep(2.0)  # let the clients import Django and open their sessions
        faults: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            time.sleep(rng.uniform(0.5, 2.0))  # commands flow between faults
            if time.monotonic() >= deadline:
                break
            fault = inject(cluster, rng, rng.choice(FAULTS))
            faults.append(fault)
            print(
                f"  {fault['at'] - origin:6.1f} s  {fault['fault']:<15} "
                f"{','.join(fault['nodes']):<6} {fault['down_s']:.1f} s",
                flush=True,
            )
        cluster.heal()
        stop_clients(clients)
        ended = time.monotonic()
        cluster.leader()
        index = cluster.converge()
        keys = {n.node_id: key_versions(n, prefix) for n in cluster.nodes}
    finally:
        for client in clients:
            kill_group(client.process)
        cluster.close()
    sources, calls = records(clients, node_source)
    for fault in faults:
        fault["at"] = round(fault["at"] - origin, 3)
        fault["healed_at"] = round(fault["healed_at"] - origin, 3)
    for call in calls:
        call["start"] = round(call["start"] - origin, 4)
        call["end"] = round(call["end"] - origin, 4)
    result = judge(calls, keys, faults)
    result.update(
        seconds=round(ended - origin, 1),
        applied_index=index,
        faults=faults,
        fault_counts=dict(Counter(f["fault"] for f in faults)),
        clients_killed=sum(c.killed for c in clients),
        django_raft=sorted(sources),
    )
    return result


def judge(
    calls: list[dict[str, Any]], keys: dict[str, dict[str, int]], faults: list[dict[str, Any]]
) -> dict[str, Any]:
    """Each call's outcome against the nodes' databases: the table and the surprises
    (each with the last fault that began before the call ended)."""
    nodes = sorted(keys)
    rows: dict[tuple[str, bool], Counter[str]] = {}
    surprises: list[dict[str, Any]] = []
    divergent = 0
    for call in calls:
        versions = [keys[n].get(call["key"], 0) for n in nodes]
        if len(set(versions)) > 1:
            divergent += 1
        applied, version = max(versions) > 0, max(versions)
        row = rows.setdefault((call["outcome"], call["session"]), Counter())
        row["calls"] += 1
        row["applied" if applied else "not_applied"] += 1
        if version > 1:
            row["twice"] += 1
        if call["outcome"] == "ok" and call["detail"] != 1:
            row["ok_result_not_1"] += 1
        said = DOCUMENTED.get(call["outcome"], "?")
        wrong = (said == "no" and applied) or (said == "applied" and not applied)
        if wrong or (version > 1 and call["session"]):
            before = [f for f in faults if f["at"] <= call["end"]]
            surprises.append(
                {
                    **call,
                    "versions": dict(zip(nodes, versions, strict=True)),
                    "fault": before[-1] if before else None,
                }
            )
    recorded = {c["key"] for c in calls}
    unrecorded = {k for n in nodes for k in keys[n]} - recorded
    table = [
        {
            "outcome": outcome,
            "session": session,
            "documented": DOCUMENTED.get(outcome, "?"),
            "calls": row["calls"],
            "applied": row["applied"],
            "not_applied": row["not_applied"],
            "applied_twice": row["twice"],
            "ok_result_not_1": row["ok_result_not_1"],
        }
        for (outcome, session), row in sorted(
            rows.items(), key=lambda item: (item[0][0] != "ok", item[0][0], not item[0][1])
        )
    ]
    ok = [c["end"] - c["start"] for c in calls if c["outcome"] == "ok"]
    return {
        "calls": len(calls),
        "table": table,
        "surprises": surprises,
        "divergent_keys": divergent,
        "unrecorded_keys_applied": len(unrecorded),
        "ok_latency_s": summary(ok),
    }


def summary(values: list[float]) -> dict[str, float | int]:
    """Count, median, p99 and max of some durations (seconds)."""
    if not values:
        return {"n": 0}
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
    return {
        "n": len(ordered),
        "median": round(statistics.median(ordered), 4),
        "p99": round(p99, 4),
        "max": round(ordered[-1], 4),
    }


def print_truth(result: dict[str, Any]) -> None:
    print(
        f"\ntruth: {result['calls']} calls in {result['seconds']} s, faults "
        + ", ".join(f"{k} {v}" for k, v in sorted(result["fault_counts"].items()))
    )
    head = ("outcome", "session", "doc: applied?", "calls", "applied", "not applied", "twice")
    widths = (26, 8, 14, 8, 8, 12, 6)
    print(line(head, widths))
    for row in result["table"]:
        cells = (
            row["outcome"],
            "yes" if row["session"] else "no",
            row["documented"],
            row["calls"],
            row["applied"],
            row["not_applied"],
            row["applied_twice"],
        )
        print(line(cells, widths))
    latency = result["ok_latency_s"]
    if latency.get("n"):
        print(
            f"ok calls: median {latency['median'] * 1000:.1f} ms, p99 "
            f"{latency['p99'] * 1000:.1f} ms, max {latency['max'] * 1000:.0f} ms"
        )
    problems = Counter(
        (
            s["outcome"],
            "session" if s["session"] else "no session",
            s["fault"]["fault"] if s["fault"] else "no fault",
            re.sub(r"\d+", "N", str(s["detail"]))[:70],
        )
        for s in result["surprises"]
    )
    for (outcome, mode, fault, detail), n in sorted(problems.items()):
        said = DOCUMENTED.get(outcome, "?")
        what = {"no": "found applied", "applied": "found NOT applied"}.get(said, "applied twice")
        print(f"SURPRISE: {n} {outcome} ({mode}) {what}; after {fault}: {detail!r}")
    for row in result["table"]:
        if row["ok_result_not_1"]:
            print(f"SURPRISE: {row['ok_result_not_1']} ok calls returned a version other than 1")
    if result["divergent_keys"]:
        print(f"SURPRISE: {result['divergent_keys']} keys differ between nodes")
    if result["unrecorded_keys_applied"]:
        print(f"note: {result['unrecorded_keys_applied']} keys applied with no recorded call")
    if result["clients_killed"]:
        print(f"note: {result['clients_killed']} client processes had to be killed")


def line(cells: Iterable[object], widths: Iterable[int]) -> str:
    return "  ".join(
        f"{c!s:<{w}}" if i == 0 else f"{c!s:>{w}}"
        for i, (c, w) in enumerate(zip(cells, widths, strict=True))
    )


# -- scenario 2: a paused leader ------------------------------------------------------------


def first_election(cluster: FaultCluster, stopped: Node, term: int, until: float) -> float | None:
    """Poll the other nodes until one says it leads in a later term; when (or None)."""
    others = [n for n in cluster.nodes if n is not stopped and n.up()]
    found: list[float] = []
    done = threading.Event()

    def poll(node: Node) -> None:
        while not done.is_set() and time.monotonic() < until:
            status = status_of(node.address, 0.3)
            if status and status.get("state") == "leader" and int(status["term"]) > term:
                found.append(time.monotonic())
                done.set()
                return
            time.sleep(0.01)

    pollers = [threading.Thread(target=poll, args=(n,)) for n in others]
    for poller in pollers:
        poller.start()
    for poller in pollers:
        poller.join()
    return min(found) if found else None


def paused(options: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Scenario 2: steady load with sessions; the leader SIGSTOPped and resumed."""
    cluster = FaultCluster(workdir, proxies=False)
    clients: list[ClientProcess] = []
    prefix = "p-"
    pauses: list[dict[str, Any]] = []
    try:
        cluster.start()
        node_source = django_raft_source(cluster.nodes[0])
        origin = time.monotonic()
        for k, node in enumerate(cluster.nodes):
            spec = ClientSpec(
                name=f"{prefix}c{k}",
                address=node.address,
                cluster=cluster.spec,
                threads=options.paused_threads,
                session=True,
                output=str(workdir / f"{prefix}c{k}.jsonl"),
                deadline=origin + 60 + options.pauses * (options.pause_seconds + 40),
            )
            clients.append(ClientProcess(spec, workdir))
        time.sleep(3.0)  # the clients start, open their sessions, learn the leader
        for _ in range(options.pauses):
            leader = cluster.leader()
            status = status_of(leader.address, 2.0) or {}
            time.sleep(1.5)  # steady load
            stopped_at = time.monotonic()
            leader.pause()
            resume_at = stopped_at + options.pause_seconds
            elected = first_election(cluster, leader, int(status.get("term", 0)), resume_at)
            time.sleep(max(0.0, resume_at - time.monotonic()))
            leader.resume()
            resumed = time.monotonic()
            cluster.leader()
            pauses.append(
                {"node": leader.node_id, "stop": stopped_at, "elected": elected, "cont": resumed}
            )
            print(
                f"  pause of {leader.node_id}: elected after "
                + (f"{elected - stopped_at:.3f} s" if elected else "none before the resume"),
                flush=True,
            )
            time.sleep(6.5)  # every command of the pause is done (COMMAND_TIMEOUT is 5 s)
        stop_clients(clients)
    finally:
        for client in clients:
            kill_group(client.process)
        cluster.close()
    sources, calls = records(clients, node_source)
    addresses = {c.spec.name: c.spec.address for c in clients}
    ids = {n.address: n.node_id for n in cluster.nodes}
    return {
        "pause_seconds": options.pause_seconds,
        "pauses": [measure(p, calls, origin, addresses, ids) for p in pauses],
        "calls": len(calls),
        "django_raft": sorted(sources),
    }


def measure(
    pause: dict[str, Any],
    calls: list[dict[str, Any]],
    origin: float,
    addresses: dict[str, str],
    ids: dict[str, str],
) -> dict[str, Any]:
    """One pause: the election delay, and when the commands it held up completed.

    Two sets of calls: the ones *sent* during the pause (between SIGSTOP and SIGCONT),
    and the ones *caught* by it (in flight at the SIGSTOP, or sent before the new leader
    was elected): a closed-loop client thread whose call is stuck sends nothing else, so
    the second set is where the waiting shows. Also the calls in flight at the SIGCONT or
    sent in the second after it (what the resumed old leader costs the others).
    """
    stop, elected, cont = pause["stop"], pause["elected"], pause["cont"]
    until = elected if elected is not None else cont
    sent = [c for c in calls if stop <= c["start"] < cont]
    caught = [c for c in calls if c["start"] < until and c["end"] > stop]
    at_cont = [c for c in calls if c["start"] < cont + 1.0 and c["end"] > cont]

    def completion(group: list[dict[str, Any]]) -> dict[str, Any]:
        ok = [c for c in group if c["outcome"] == "ok"]
        return {
            "n": len(group),
            "ok": len(ok),
            "errors": dict(Counter(c["outcome"] for c in group if c["outcome"] != "ok")),
            "completion_after_election_s": summary(
                [c["end"] - elected for c in ok] if elected is not None else []
            ),
            "latency_s": summary([c["end"] - c["start"] for c in ok]),
            "completed_after_resume": sum(c["end"] > cont for c in group),
            "via_paused_node": sum(ids.get(addresses[c["client"]]) == pause["node"] for c in group),
        }

    return {
        "node": pause["node"],
        "stop_at": round(stop - origin, 3),
        "election_delay_s": round(elected - stop, 3) if elected is not None else None,
        "resumed_after_s": round(cont - stop, 3),
        "sent": completion(sent),
        "caught": completion(caught),
        "around_resume": completion(at_cont),
    }


def print_paused(result: dict[str, Any]) -> None:
    print(f"\npaused leader: SIGSTOP for {result['pause_seconds']} s, then SIGCONT")
    head = "pause election set calls ok errors c-e_median c-e_max max_latency after_CONT"
    widths = (6, 9, 6, 5, 5, 24, 10, 8, 11, 10)
    print(line([h.replace("_", " ") for h in head.split()], widths))
    for k, p in enumerate(result["pauses"]):
        delay = p["election_delay_s"]
        for name in ("caught", "sent"):
            group = p[name]
            after, latency = group["completion_after_election_s"], group["latency_s"]
            cells = (
                f"{k + 1} {p['node']}" if name == "caught" else "",
                (f"{delay * 1000:.0f} ms" if delay is not None else "none")
                if name == "caught"
                else "",
                name,
                group["n"],
                group["ok"],
                ",".join(f"{e} {n}" for e, n in sorted(group["errors"].items())) or "-",
                f"{after['median']:.3f} s" if after.get("n") else "-",
                f"{after['max']:.3f} s" if after.get("n") else "-",
                f"{latency['max']:.3f} s" if latency.get("n") else "-",
                group["completed_after_resume"],
            )
            print(line(cells, widths))
    print(
        "election: SIGSTOP to the first status of another node leading in a later term.\n"
        "caught: calls in flight at the SIGSTOP or sent before that election; sent: calls\n"
        "sent between SIGSTOP and SIGCONT. c-e: completion - election of the ok ones;\n"
        "after CONT: calls of the set that ended only after the SIGCONT."
    )
    for k, p in enumerate(result["pauses"]):
        group = p["around_resume"]
        latency = group["latency_s"]
        if latency.get("n"):
            print(
                f"pause {k + 1}: {group['n']} calls in flight at the SIGCONT or sent in the "
                f"second after it, longest "
                f"{latency['max']:.3f} s"
                + (f", errors {group['errors']}" if group["errors"] else "")
            )


# -- main ---------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    """What the figures depend on: the tree's commit (and whether it is changed), CPUs,
    load."""

    def git(*arguments: str) -> str:
        done = subprocess.run(["git", *arguments], cwd=ROOT, capture_output=True, text=True)
        return done.stdout.strip()

    return {
        "root": str(ROOT),
        "commit": git("rev-parse", "--short", "HEAD"),
        "changed_files": git("status", "--porcelain", "--", "django_raft").splitlines(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scenario", choices=("truth", "paused", "both"), default="both")
    parser.add_argument("--seconds", type=float, help="length of the truth run (60; quick 15)")
    parser.add_argument("--clients", type=int, default=4, help="truth: client processes (4)")
    parser.add_argument("--threads", type=int, default=2, help="truth: threads per client (2)")
    parser.add_argument("--pauses", type=int, help="paused: how many pauses (3; quick 1)")
    parser.add_argument("--pause-seconds", type=float, default=6.0, help="paused: SIGSTOP (6)")
    parser.add_argument(
        "--paused-threads", type=int, default=2, help="paused: threads per client process (2)"
    )
    parser.add_argument("--quick", action="store_true", help="a ~20 s truth run and one pause")
    parser.add_argument("--seed", type=int, help="the faults' random seed (default: random)")
    parser.add_argument("--results", type=Path, default=RESULTS, help="where the JSON goes")
    parser.add_argument("--keep", action="store_true", help="keep the nodes' logs and files")
    options = parser.parse_args(argv)
    if options.seconds is None:
        options.seconds = 15.0 if options.quick else 60.0
    if options.pauses is None:
        options.pauses = 1 if options.quick else 3
    if options.seed is None:
        options.seed = random.randrange(1 << 32)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(143))  # run the finally

    started = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    options.results.mkdir(parents=True, exist_ok=True)
    path = options.results / f"fault_run-{started}.json"
    report: dict[str, Any] = {
        "started": started,
        "options": {k: str(v) if isinstance(v, Path) else v for k, v in vars(options).items()},
        "machine_before": machine(),
    }
    workdir = Path(tempfile.mkdtemp(prefix="raft-fault-"))
    runs: list[tuple[str, Callable[[argparse.Namespace, Path], dict[str, Any]]]] = []
    if options.scenario in ("truth", "both"):
        runs.append(("truth", truth))
    if options.scenario in ("paused", "both"):
        runs.append(("paused", paused))
    print(f"seed {options.seed}; work directory {workdir}", flush=True)
    try:
        for name, run in runs:
            print(f"{name} ...", flush=True)
            scenario_dir = workdir / name
            scenario_dir.mkdir()
            report[name] = run(options, scenario_dir)
            path.write_text(json.dumps(report, indent=1))
    finally:
        if not options.keep:
            import shutil

            shutil.rmtree(workdir, ignore_errors=True)
    report["machine_after"] = machine()
    path.write_text(json.dumps(report, indent=1))
    sources = sorted({s for name, _ in runs for s in report[name]["django_raft"]})
    print(f"\ndjango_raft imported from: {', '.join(sources)}")
    if "truth" in report:
        print_truth(report["truth"])
    if "paused" in report:
        print_paused(report["paused"])
    print(f"\nwrote {path}" + (f"; logs in {workdir}" if options.keep else ""))
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["_client"]:
        client_main(sys.argv[2])
    else:
        sys.exit(main())
