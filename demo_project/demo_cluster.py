"""A real django-raft cluster on this machine, told as a story.

Run it with ``scripts/demo`` (or ``python -m demo_project.demo_cluster``). It starts
three ``manage.py raftnode`` processes of the demo project on 127.0.0.1, each with its
own SQLite file, and a web process serving the Django admin, then shows what Raft does:

1. the nodes elect a leader;
2. commands written through each node are read back, identical, from all three databases;
3. the leader is killed with SIGKILL; the others elect a new one (the failover is timed);
4. the old leader restarts far behind and catches up, by snapshot;
5. a fourth node joins as a learner, is promoted to voter, and a founder is removed.

Then it keeps the cluster running and prints the admin's URL until Ctrl-C, and stops
every process it started. With ``--once`` it exits after the story: 0 when every step
checked out, 1 otherwise. Only the public interfaces are used: ``manage.py raftnode``,
``django_raft.do``/``status`` and the client's ``members`` route.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import requests

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DIR = ROOT / ".demo"
FOUNDERS = ("n1", "n2", "n3")
NEWCOMER = "n4"
SNAPSHOT_THRESHOLD = 20
"""Low, so that a node that misses a few dozen commands is sent a snapshot."""
ENTRIES_AFTER_SNAPSHOT = 5
WRITES_WHILE_DOWN = 50
USERNAME = "demo"

T = TypeVar("T")


class DemoFailed(Exception):
    """A step of the story did not turn out as Raft promises."""


def port_in_use(port: int) -> bool:
    """Whether something already listens on ``port`` of 127.0.0.1."""
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for(condition: Callable[[], T | None], timeout: float, what: str) -> T:
    """Poll ``condition`` every 10 ms until it returns something; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = condition()
        except Exception as error:  # a node may be starting or down while polled
            last_error, value = error, None
        if value:
            return value
        time.sleep(0.01)
    raise DemoFailed(f"timed out after {timeout:g} s waiting for {what} (last error: {last_error})")


class Cluster:
    """The processes of the demo, their databases and their addresses."""

    def __init__(self, workdir: Path, ports: Sequence[int], secret: str) -> None:
        self.workdir = workdir
        self.secret = secret
        ids = (*FOUNDERS, NEWCOMER)
        self.addresses = {
            n: f"http://127.0.0.1:{port}" for n, port in zip(ids, ports, strict=False)
        }
        self.web_address = f"http://127.0.0.1:{ports[len(ids)]}"
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    def database(self, name: str) -> Path:
        return self.workdir / f"{name}.sqlite3"

    def env(self, name: str, **raft: str) -> dict[str, str]:
        """The environment of a process of node ``name`` (the web process uses n1's)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RAFT_", "DATABASE_URL"))}
        env.update(
            DJANGO_SETTINGS_MODULE="demo_project.settings",
            DJANGO_SQLITE_PATH=str(self.database(name)),
            RAFT_SECRET=self.secret,
            RAFT_SNAPSHOT_THRESHOLD=str(SNAPSHOT_THRESHOLD),
            RAFT_ENTRIES_AFTER_SNAPSHOT=str(ENTRIES_AFTER_SNAPSHOT),
            RAFT_ADDRESS=self.addresses[name],
            **raft,
        )
        return env

    def manage(self, name: str, *arguments: str, **extra_env: str) -> None:
        """Run a ``manage.py`` command for node ``name`` to completion."""
        subprocess.run(
            [sys.executable, "manage.py", *arguments],
            cwd=ROOT,
            env={**self.env(name), **extra_env},
            check=True,
            timeout=120,
            stdout=subprocess.DEVNULL,
        )

    def spawn(self, key: str, env: dict[str, str], *arguments: str) -> None:
        log = (self.workdir / f"{key}.log").open("ab")
        self.processes[key] = subprocess.Popen(
            [sys.executable, "manage.py", *arguments],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches the demo, which stops them in order
        )
        log.close()

    def start_node(self, name: str, *arguments: str) -> None:
        cluster = ",".join(f"{n}={self.addresses[n]}" for n in FOUNDERS)
        # A node that joins later is not a founder: its CLUSTER stays empty.
        env = self.env(name, RAFT_NODE_ID=name, RAFT_CLUSTER=cluster if name in FOUNDERS else "")
        self.spawn(name, env, "raftnode", *arguments)

    def kill(self, key: str, sig: int = signal.SIGKILL) -> None:
        process = self.processes.pop(key, None)
        if process is not None and process.poll() is None:
            process.send_signal(sig)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def stop_all(self) -> None:
        for key in list(self.processes):
            self.kill(key, signal.SIGTERM)

    def status(self, name: str) -> dict[str, Any]:
        import django_raft

        value: dict[str, Any] = django_raft.status(self.addresses[name], timeout=1.0)
        return value

    def leader(self, among: Sequence[str], timeout: float = 10.0) -> str:
        """Wait until exactly one of ``among`` leads and all of them follow it."""

        def agreed() -> str | None:
            states = [self.status(n) for n in among]
            leaders = {s["id"] for s in states if s["state"] == "leader"}
            followed = {s["leader"] for s in states}
            return leaders.pop() if len(leaders) == 1 and followed == leaders else None

        return wait_for(agreed, timeout, f"one leader among {', '.join(among)}")

    def command(self, through: str, name: str, **arguments: Any) -> Any:
        """Run a command through the node ``through`` (a follower forwards it)."""
        from django_raft.client import post, raise_for

        body = {"name": name, "arguments": arguments, "timeout": 5.0}
        return raise_for(post(self.addresses[through], "command", body, 5.0))

    def members(self, through: str, **change: Any) -> None:
        """Propose a membership change through ``through`` and wait until it is applied."""
        from django_raft.client import post, raise_for

        raise_for(post(self.addresses[through], "members", {**change, "timeout": 10.0}, 10.0))

    def voters(self, name: str, including: str = "", excluding: str = "") -> list[str] | None:
        """Return node ``name``'s voters if they include/exclude the given node, else None."""
        voters: list[str] = self.status(name)["voters"]
        if (including and including not in voters) or excluding in voters:
            return None
        return voters

    def caught_up(self, names: Sequence[str], timeout: float = 30.0) -> int:
        """Wait until ``names`` have applied the same index, their commit index."""

        def same() -> int | None:
            states = [self.status(n) for n in names]
            applied = {s["applied"] for s in states} | {s["commit"] for s in states}
            return applied.pop() if len(applied) == 1 else None

        return wait_for(same, timeout, f"{', '.join(names)} to apply the same entries")

    def query(self, name: str, sql: str) -> list[tuple[Any, ...]]:
        """Read node ``name``'s own database (read-only: the node owns it)."""
        uri = f"file:{self.database(name)}?mode=ro"
        with sqlite3.connect(uri, uri=True, timeout=10) as db:
            return db.execute(sql).fetchall()

    def rows(self, name: str) -> dict[str, str]:
        return dict(self.query(name, "SELECT key, value FROM kv_keyvalue ORDER BY key"))

    def snapshot_of(self, name: str) -> tuple[int, int]:
        """Return the node's snapshot index and the last index compacted from its log."""
        rows = self.query(name, "SELECT `index`, compacted_index FROM django_raft_snapshot")
        return (rows[0][0], rows[0][1]) if rows else (0, 0)

    def last_index(self, name: str) -> int:
        rows = self.query(name, "SELECT MAX(`index`) FROM django_raft_logentry")
        return int(rows[0][0] or 0)


class Story:
    """Prints the steps with the time since the start."""

    def __init__(self) -> None:
        self.started = time.monotonic()

    def say(self, text: str = "") -> None:
        stamp = f"[{time.monotonic() - self.started:6.1f}s] " if text else ""
        print(f"{stamp}{text}", flush=True)

    def check(self, condition: bool, what: str) -> None:
        if not condition:
            raise DemoFailed(what)
        self.say(f"  ✓ {what}")


def identical(cluster: Cluster, story: Story, names: Sequence[str]) -> dict[str, str]:
    """Read every node's key-value table and check they hold the same rows."""
    tables = {n: cluster.rows(n) for n in names}
    keys = sorted(set().union(*tables.values()))
    shown = keys if len(keys) <= 6 else [*keys[:5], "..."]
    story.say(
        "  " + f"{'key':<10}" + "".join(f"{n:>12}" for n in names) + "   (each from its database)"
    )
    for key in shown:
        cells = "".join(f"{tables[n].get(key, '-') if key != '...' else '...':>12}" for n in names)
        story.say(f"  {key:<10}{cells}")
    first = tables[names[0]]
    story.check(
        all(table == first for table in tables.values()),
        f"{len(first)} keys, identical in {', '.join(n + '.sqlite3' for n in names)}",
    )
    return first


def run_story(cluster: Cluster, story: Story, admin_password: str) -> None:
    """Steps 1 to 5; raise ``DemoFailed`` at the first that does not check out."""
    founders = list(FOUNDERS)
    story.say("1. Starting three raftnode processes (manage.py raftnode --bootstrap) ...")
    started = time.monotonic()
    for name in founders:
        cluster.start_node(name, "--bootstrap")
        story.say(f"   {name} at {cluster.addresses[name]}, database {cluster.database(name).name}")
    leader = cluster.leader(founders, timeout=30)
    term = cluster.status(leader)["term"]
    story.say(
        f"   {leader} was elected leader of term {term}, "
        f"{time.monotonic() - started:.1f} s after launch (Python and Django start-up included)"
    )

    story.say()
    story.say("2. Writing through every node; a follower forwards its command to the leader.")
    for index, name in enumerate(founders, 1):
        version = cluster.command(
            name, "kv.set", key=f"color-{index}", value=("red", "green", "blue")[index - 1]
        )
        role = "leader" if name == leader else "follower"
        story.say(f"   kv.set color-{index} through {name} ({role}) -> version {version}")
    total = cluster.command(founders[0], "kv.incr", key="counter", by=10)
    story.say(f"   kv.incr counter by 10 through {founders[0]} -> {total}")
    cluster.caught_up(founders)
    identical(cluster, story, founders)

    story.say()
    story.say(f"3. kill -9 of the leader, {leader}.")
    last_before = cluster.last_index(leader)
    killed_at = time.monotonic()
    cluster.kill(leader)
    survivors = [n for n in founders if n != leader]
    new_leader = cluster.leader(survivors, timeout=10)
    elected = time.monotonic() - killed_at
    result = cluster.command(new_leader, "kv.incr", key="counter", by=1)
    committed = time.monotonic() - killed_at
    term = cluster.status(new_leader)["term"]
    story.say(f"   {new_leader} leads term {term}: elected {elected * 1000:.0f} ms after the kill")
    story.say(
        f"   first command committed {committed * 1000:.0f} ms after the kill (counter = {result})"
    )
    story.check(result == total + 1, "no acknowledged command was lost")

    story.say()
    story.say(f"4. {WRITES_WHILE_DOWN} more commands while {leader} is down; then it restarts.")
    for _ in range(WRITES_WHILE_DOWN):
        result = cluster.command(new_leader, "kv.incr", key="counter", by=1)
    cluster.caught_up(survivors)
    _, compacted = cluster.snapshot_of(new_leader)
    story.say(
        f"   {leader}'s log ends at #{last_before}; {new_leader} compacted its log up to "
        f"#{compacted} (SNAPSHOT_THRESHOLD={SNAPSHOT_THRESHOLD})"
    )
    by_snapshot = compacted > last_before
    restarted_at = time.monotonic()
    cluster.start_node(leader)
    cluster.caught_up(founders)
    snapshot_index, _ = cluster.snapshot_of(leader)
    how = f"by a snapshot at #{snapshot_index}" if by_snapshot else "from the log"
    story.say(
        f"   {leader} restarted and caught up {how} in {time.monotonic() - restarted_at:.1f} s"
    )
    story.check(
        not by_snapshot or snapshot_index > last_before, f"{leader} installed the leader's snapshot"
    )
    identical(cluster, story, founders)

    story.say()
    story.say(
        f"5. Membership: {NEWCOMER} joins as a learner, is promoted to voter, and a founder leaves."
    )
    cluster.start_node(NEWCOMER)
    wait_for(lambda: cluster.status(NEWCOMER), 30, f"{NEWCOMER} to answer")
    through = leader  # any member: the change is forwarded to the leader
    cluster.members(through, node_id=NEWCOMER, address=cluster.addresses[NEWCOMER], role="learner")
    members = [*founders, NEWCOMER]
    cluster.caught_up(members)
    story.say(
        f"   {NEWCOMER} added as a learner through {through}: it receives the log but does not vote"
    )
    cluster.members(through, node_id=NEWCOMER, address=cluster.addresses[NEWCOMER], role="voter")
    voters = wait_for(
        lambda: cluster.voters(NEWCOMER, including=NEWCOMER), 10, f"{NEWCOMER} to be a voter"
    )
    story.say(f"   {NEWCOMER} promoted: voters are {', '.join(voters)}")
    leader = cluster.leader(members)
    leaving = next(n for n in reversed(founders) if n != leader and n != "n1")
    cluster.members(leader, node_id=leaving, remove=True)
    remaining = [n for n in members if n != leaving]
    voters = wait_for(
        lambda: cluster.voters(leader, excluding=leaving), 10, f"{leaving} to be removed"
    )
    cluster.kill(leaving, signal.SIGTERM)
    story.say(f"   {leaving} removed and stopped: voters are {', '.join(voters)}")
    cluster.command(NEWCOMER, "kv.set", key="greeting", value="hello")
    cluster.caught_up(remaining)
    identical(cluster, story, remaining)

    story.say()
    story.say("6. The admin, on n1's database.")
    check_admin(cluster, story, admin_password)


def check_admin(cluster: Cluster, story: Story, password: str) -> None:
    """Log in to the admin as the demo user and find the replicated keys there."""
    session = requests.Session()
    login = f"{cluster.web_address}/admin/login/"
    wait_for(lambda: session.get(login, timeout=2).ok, 30, "the web process to answer")
    session.post(
        login,
        data={
            "username": USERNAME,
            "password": password,
            "csrfmiddlewaretoken": session.cookies["csrftoken"],
            "next": "/admin/kv/keyvalue/",
        },
        headers={"Referer": login},
        timeout=5,
    )
    page = session.get(f"{cluster.web_address}/admin/kv/keyvalue/", timeout=5)
    story.check(page.ok and "greeting" in page.text, "the admin lists the replicated keys")


def prepare(cluster: Cluster, story: Story, password: str) -> None:
    """Create every node's database (one migration, copied) and the admin user in n1's."""
    template = cluster.workdir / "template.sqlite3"
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"],
        cwd=ROOT,
        env={**cluster.env("n1"), "DJANGO_SQLITE_PATH": str(template)},
        check=True,
        timeout=120,
    )
    for name in (*FOUNDERS, NEWCOMER):
        shutil.copyfile(template, cluster.database(name))
    template.unlink()
    cluster.manage(
        "n1",
        "createsuperuser",
        "--noinput",
        f"--username={USERNAME}",
        "--email=demo@example.com",
        DJANGO_SUPERUSER_PASSWORD=password,
    )
    web = cluster.web_address.removeprefix("http://")
    # --insecure serves the admin's static files with DEBUG off, as a demo needs.
    cluster.spawn("web", cluster.env("n1"), "runserver", web, "--noreload", "--insecure")
    story.say(f"Databases, logs and the admin user are in {cluster.workdir}")


def print_running(cluster: Cluster, password: str) -> None:
    """Say where the admin and the nodes are, and how to send a command by hand."""
    lines = [
        "",
        f"The cluster keeps running. Admin: {cluster.web_address}/admin/ "
        f"(user {USERNAME!r}, password {password!r})",
        *(
            f"  {name}: {address}/raft/ (log: {cluster.workdir / (name + '.log')})"
            for name, address in cluster.addresses.items()
            if name in cluster.processes
        ),
        "Send a command from another shell:",
        f"  source .venv/bin/activate; RAFT_SECRET={cluster.secret} "
        f"RAFT_ADDRESS={cluster.addresses['n1']} \\",
        "    python manage.py shell -v 0 -c "
        "\"import django_raft; print(django_raft.do('kv.incr', key='counter'))\"",
        "Press Ctrl-C to stop every process.",
    ]
    print("\n".join(lines), flush=True)


def parse_arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="scripts/demo",
        description="Run a real three-node django-raft cluster on 127.0.0.1 and show it at work.",
    )
    parser.add_argument(
        "--once", action="store_true", help="exit after the story (0: all checks passed)"
    )
    parser.add_argument(
        "--dir",
        type=Path,
        default=DEFAULT_DIR,
        help="where the databases and logs go; emptied first (default .demo/)",
    )
    parser.add_argument(
        "--port",
        type=int,
        metavar="N",
        help="use ports N to N+4 (nodes n1-n4, then the admin) instead of free ones",
    )
    arguments = parser.parse_args(argv)
    if arguments.port is not None:
        if not 1024 <= arguments.port <= 65531:
            parser.error("argument --port: must be between 1024 and 65531")
        busy = [p for p in range(arguments.port, arguments.port + 5) if port_in_use(p)]
        if busy:
            parser.error(f"argument --port: port {busy[0]} is in use; choose other ports")
    return arguments


def main(argv: Sequence[str] | None = None) -> int:
    arguments = parse_arguments(argv)
    workdir: Path = arguments.dir.resolve()
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    ports = (
        [arguments.port + i for i in range(5)]
        if arguments.port
        else [free_port() for _ in range(5)]
    )
    secret, password = secrets.token_hex(16), secrets.token_hex(6)
    cluster = Cluster(workdir, ports, secret)

    # This process is a client of the cluster, like a web process: django_raft.status and
    # the client routes need the settings (the secret) of the demo project.
    os.environ.update(cluster.env("n1"))
    import django

    django.setup()

    story = Story()
    interrupted = False

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        prepare(cluster, story, password)
        run_story(cluster, story, password)
        story.say()
        story.say("Every step checked out.")
        if not arguments.once:
            print_running(cluster, password)
            while True:
                signal.pause()
        return 0
    except KeyboardInterrupt:
        interrupted = True
        return 0
    except (DemoFailed, subprocess.CalledProcessError, Exception) as error:
        story.say(f"FAILED: {error}")
        for key in cluster.processes:
            print(f"  log of {key}: {workdir / (key + '.log')}", file=sys.stderr)
        return 1
    finally:
        # A second Ctrl-C must not cut the clean-up short.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        cluster.stop_all()
        if interrupted:
            print("\nStopped every process the demo started.", flush=True)


if __name__ == "__main__":
    sys.exit(main())
