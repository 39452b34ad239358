"""``manage.py raftstatus``: the cluster table, every member asked at once (``--json``).

Its exit status makes it a health check: ``HEALTHY`` (0) when a leader is known and every
member answers within the lag budget, ``DEGRADED`` (1) when a leader is known but the
verdict names a problem (a member unreachable or behind), ``NO_LEADER`` (2) when no
answering node knows a leader, ``UNREACHABLE`` (3) when no node answered at all.
"""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from ...client import monitor

HEALTHY, DEGRADED, NO_LEADER, UNREACHABLE = 0, 1, 2, 3
"""The exit statuses."""

COLUMNS = (
    ("ID", "node_id"),
    ("ADDRESS", "address"),
    ("ROLE", "role"),
    ("STATE", "state"),
    ("TERM", "term"),
    ("COMMIT", "commit"),
    ("APPLIED", "applied"),
    ("LAST INDEX", "last_index"),
    ("SNAPSHOT", "snapshot_index"),
    ("LAG", "lag"),
)


def table(rows: list[dict[str, Any]]) -> str:
    """Format member rows as an aligned text table ("—" for what is unknown)."""
    cells = [[title for title, _ in COLUMNS]]
    for row in rows:
        cells.append(["—" if row.get(key) is None else str(row[key]) for _, key in COLUMNS])
    widths = [max(len(line[i]) for line in cells) for i in range(len(COLUMNS))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in cells
    )


class Command(BaseCommand):
    help = "Show the cluster: every member's role, state, term and indexes, and its health."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--json", action="store_true", help="print JSON")
        parser.add_argument(
            "--timeout", type=float, default=monitor.TIMEOUT, help="seconds to wait for each node"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        cluster = monitor.gather(timeout=options["timeout"])
        if options["json"]:
            self.stdout.write(json.dumps(cluster.as_dict(), indent=2))
        else:
            self.stdout.write(table(cluster.as_dict()["members"]))
            verdict = "healthy" if cluster.healthy else "UNHEALTHY: " + "; ".join(cluster.problems)
            leader = cluster.leader or "none"
            self.stdout.write(f"\nleader {leader}, term {cluster.term}: {verdict}")
        status, why = health(cluster)
        if status != HEALTHY:
            raise CommandError(why, returncode=status)


def health(cluster: monitor.ClusterView) -> tuple[int, str]:
    """The exit status for ``cluster`` and what it means."""
    if not cluster.members:
        return UNREACHABLE, (
            "no member to ask: set DJANGO_RAFT['ADDRESS'] (RAFT_ADDRESS) to this server's "
            "node, or CLUSTER (RAFT_CLUSTER) to the members"
        )
    if not any(member.reachable for member in cluster.members):
        addresses = ", ".join(member.address or member.node_id for member in cluster.members)
        return UNREACHABLE, (
            f"no node answered ({addresses}): is raftnode running there, and are "
            "DJANGO_RAFT['ADDRESS'] / ['CLUSTER'] and the secrets right?"
        )
    if not cluster.leader:
        return NO_LEADER, "no leader: the cluster cannot commit (is a majority of voters up?)"
    if not cluster.healthy:
        return DEGRADED, "degraded: " + "; ".join(cluster.problems)
    return HEALTHY, "healthy"
