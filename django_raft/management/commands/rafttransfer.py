"""``manage.py rafttransfer ID``: ask the leader to hand leadership to voter ID."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from ...client import operations
from ...core import RaftError


class Command(BaseCommand):
    help = "Transfer leadership to the given voter."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("node_id")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            value = operations.transfer_leadership(options["node_id"])
        except (RaftError, ValueError, NotImplementedError) as error:
            raise CommandError(f"{type(error).__name__}: {error}") from error
        self.stdout.write(f"leader is now {value['leader']}")
