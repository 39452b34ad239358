"""``manage.py raftnode``: run this server's Raft node until SIGTERM or SIGINT."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from ...conf import raft_settings


class Command(BaseCommand):
    help = (
        "Run the Raft node of this server: the consensus loop and its HTTP routes. "
        "Found a new cluster with --bootstrap (members from DJANGO_RAFT['CLUSTER'], or this "
        "node alone), or join a running one with --join URL-OF-ANY-MEMBER."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--node-id", help="this node's id (default: DJANGO_RAFT['NODE_ID'])")
        parser.add_argument(
            "--address", help="URL the other nodes reach this one at (default: ADDRESS)"
        )
        parser.add_argument(
            "--bind", help="host:port to listen on (default: the host and port of the address)"
        )
        parser.add_argument(
            "--bootstrap",
            action="store_true",
            help="found a new cluster if this node's log is empty",
        )
        parser.add_argument("--join", metavar="URL", help="join the cluster that URL belongs to")
        parser.add_argument(
            "--threads", type=int, default=16, help="HTTP server threads (default 16)"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        from ...server import bind_of, parse_bind, serve_forever, start_node

        node_id = options["node_id"] or raft_settings.NODE_ID
        address = options["address"] or raft_settings.ADDRESS
        problems = raft_settings.problems(node=False)
        if not isinstance(node_id, str) or not node_id or not node_id.isprintable():
            problems.append("a node id is required: --node-id or DJANGO_RAFT['NODE_ID']")
        if not isinstance(address, str) or not address.startswith(("http://", "https://")):
            problems.append("an http(s) address is required: --address or DJANGO_RAFT['ADDRESS']")
        if options["bootstrap"] and options["join"]:
            problems.append("--bootstrap and --join exclude each other")
        if options["join"] and not options["join"].startswith(("http://", "https://")):
            problems.append(f"--join must be a member's http(s) URL, not {options['join']!r}")
        if not 1 <= options["threads"] <= 512:
            problems.append("--threads must be between 1 and 512")
        bind = options["bind"]
        if not problems:
            bind = bind or bind_of(address)
            try:
                parse_bind(bind)
            except ValueError as error:
                problems.append(f"--bind: {error}")
        if problems:
            raise CommandError("\n".join(problems))
        try:
            node, server = start_node(
                node_id, address, bind, options["bootstrap"], options["join"], options["threads"]
            )
        except OSError as error:
            raise CommandError(f"cannot listen on {bind}: {error}") from error
        self.stdout.write(f"raftnode {node_id} listening on {bind} ({address})")
        serve_forever(node, server)
        self.stdout.write(f"raftnode {node_id} stopped")
