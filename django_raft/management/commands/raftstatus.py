"""``manage.py raftstatus``: the cluster table, every member asked at once (``--json``)."""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from ...client import monitor

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
            return
        self.stdout.write(table(cluster.as_dict()["members"]))
        verdict = "healthy" if cluster.healthy else "UNHEALTHY: " + "; ".join(cluster.problems)
        self.stdout.write(f"\nleader {cluster.leader or 'none'}, term {cluster.term}: {verdict}")
