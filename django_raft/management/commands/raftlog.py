"""``manage.py raftlog``: the last entries of this node's log, decoded; ``--follow`` to tail."""

from __future__ import annotations

import json
import time
from typing import Any

from django.core.management.base import BaseCommand, CommandParser
from django.db import close_old_connections

from ... import logview


class Command(BaseCommand):
    help = "Print the last entries of this node's Raft log, decoded; --follow for new ones."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("-n", "--lines", type=int, default=20, help="entries to show")
        parser.add_argument("-f", "--follow", action="store_true", help="wait for new entries")
        parser.add_argument("--interval", type=float, default=0.5, help="poll interval (s)")
        parser.add_argument("--json", action="store_true", help="one JSON object per entry")

    def handle(self, *args: Any, **options: Any) -> None:
        last = list(logview.entries()[: max(0, options["lines"])])[::-1]
        after = last[-1].index if last else 0
        if not last and options["follow"]:
            newest = logview.entries().values_list("index", flat=True).first()
            after = newest or 0
        self._print(last, options["json"])
        while options["follow"]:
            time.sleep(options["interval"])
            close_old_connections()
            new = list(logview.entries().filter(index__gt=after).order_by("index")[:1000])
            if new:
                after = new[-1].index
                self._print(new, options["json"])

    def _print(self, entries: list[Any], as_json: bool) -> None:
        applied = logview.applied_index()
        for entry in entries:
            row = logview.describe(entry, applied)
            if as_json:
                self.stdout.write(json.dumps(row, ensure_ascii=False))
                continue
            mark = " " if row["applied"] else "*"
            name = row["command"] or row["payload"].get("kind", "")
            self.stdout.write(
                f"{mark}#{row['index']} term {row['term']} {name} {row['preview']}".rstrip()
            )
            self.stdout.flush()
