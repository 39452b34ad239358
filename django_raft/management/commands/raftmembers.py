"""``manage.py raftmembers``: list the members, or propose adding, promoting or removing one."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from ...client import monitor, operations
from ...core import RaftError
from .raftstatus import UNREACHABLE, health, table
from .rafttransfer import message


class Command(BaseCommand):
    help = (
        "List the cluster's members, or propose a change through Raft: "
        "add ID URL, add-learner ID URL, promote ID, remove ID."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="action")
        sub.add_parser("list", help="list the members (the default)")
        for name, text in (("add", "add a voter"), ("add-learner", "add a learner")):
            adding = sub.add_parser(name, help=text)
            adding.add_argument("node_id")
            adding.add_argument("address")
        sub.add_parser("promote", help="make a learner a voter").add_argument("node_id")
        sub.add_parser("remove", help="remove a member").add_argument("node_id")

    def handle(self, *args: Any, **options: Any) -> None:
        action = options.get("action") or "list"
        if action == "list":
            cluster = monitor.gather()
            if not cluster.members:  # nothing to list: say which settings name the members
                raise CommandError(health(cluster)[1], returncode=UNREACHABLE)
            self.stdout.write(table(cluster.as_dict()["members"]))
            return
        node_id = options["node_id"]
        try:
            if action in ("add", "add-learner"):
                role = "voter" if action == "add" else "learner"
                operations.add_member(node_id, options["address"], role)
                done = f"added {node_id} as a {role}"
            elif action == "promote":
                operations.promote(node_id)
                done = f"promoted {node_id} to voter"
            else:
                operations.remove_member(node_id)
                done = f"removed {node_id}"
        except (RaftError, ValueError, NotImplementedError) as error:
            # The error's public name (ClusterUnreachableError, not the sender's subclass).
            raise CommandError(f"{action} {node_id}: {message(error)}") from error
        self.stdout.write(done)
