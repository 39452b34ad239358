"""``manage.py raftsnapshot``: make a node take a snapshot now and compact its log."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from ...client import operations
from ...core import RaftError


class Command(BaseCommand):
    help = "Take a snapshot of a node now (default: DJANGO_RAFT['ADDRESS']) and compact its log."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--node", help="the member that should take it (default: ours)")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            report = operations.take_snapshot(options["node"])
        except (RaftError, ValueError, NotImplementedError) as error:
            raise CommandError(f"{type(error).__name__}: {error}") from error
        what = "snapshot taken" if report["taken"] else "nothing new; the snapshot stands"
        self.stdout.write(
            f"{what} at #{report['index']} (term {report['term']}): {report['size']} bytes in "
            f"{report['seconds'] * 1000:.1f} ms; log compacted up to #{report['compacted_to']}"
        )
