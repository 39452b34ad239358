"""``manage.py rafttransfer ID``: ask the leader to hand leadership to voter ID."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from ...client import operations, status
from ...core import RaftError
from ...protocol.answers import failure


def _leader() -> str:
    """The leader our node knows of ("" when it cannot be asked or knows none)."""
    try:
        return str(status().get("leader") or "")
    except (RaftError, ValueError):
        return ""


class Command(BaseCommand):
    help = "Transfer leadership to the given voter (nothing to do when it already leads)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("node_id")

    def handle(self, *args: Any, **options: Any) -> None:
        node_id = options["node_id"]
        if _leader() == node_id:
            self.stdout.write(f"{node_id} already leads")
            return
        try:
            value = operations.transfer_leadership(node_id)
        except (RaftError, ValueError, NotImplementedError) as error:
            if _leader() == node_id:  # it took over meanwhile
                self.stdout.write(f"{node_id} already leads")
                return
            raise CommandError(message(error)) from error
        self.stdout.write(f"leader is now {value['leader']}")


def message(error: Exception) -> str:
    """What a failed operation tells its user: the error's public name and its message."""
    if isinstance(error, RaftError):
        return f"{failure(error)['error_type']}: {error}"
    return str(error)
