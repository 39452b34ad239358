"""``manage.py raftsnapshot``: make a node take a snapshot now and compact its log."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from ...client import operations
from ...core import RaftError
from .rafttransfer import message


def report_line(report: dict[str, Any]) -> str:
    """The snapshot report in words: what was taken and how far the log was compacted."""
    index, compacted = report["index"], report["compacted_to"]
    what = "snapshot taken" if report["taken"] else "nothing new to snapshot; the snapshot stands"
    taken = (
        f"{what} at #{index} (term {report['term']}): {report['size']} bytes in "
        f"{report['seconds'] * 1000:.1f} ms"
    )
    if compacted <= 0:
        return (
            f"{taken}; the log is not compacted yet: the node keeps ENTRIES_AFTER_SNAPSHOT "
            "entries before its snapshot for followers that lag"
        )
    if compacted < index:
        return (
            f"{taken}; log entries #1 to #{compacted} removed (#{compacted + 1} to #{index} "
            "kept for followers that lag: ENTRIES_AFTER_SNAPSHOT)"
        )
    return f"{taken}; log entries #1 to #{compacted} removed"


class Command(BaseCommand):
    help = "Take a snapshot of a node now (default: DJANGO_RAFT['ADDRESS']) and compact its log."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--node", help="the member that should take it (default: ours)")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            report = operations.take_snapshot(options["node"])
        except (RaftError, ValueError, NotImplementedError) as error:
            raise CommandError(message(error)) from error
        self.stdout.write(report_line(report))
