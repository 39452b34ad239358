"""``manage.py raftnode``: run this server's Raft node until SIGTERM or SIGINT."""

from __future__ import annotations

from typing import Any

from django.core.checks import Tags
from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError, CommandParser

from ... import checks
from ...conf import is_node_url, raft_settings
from ...core import RaftError
from ...node import events


class Command(BaseCommand):
    requires_system_checks = [  # noqa: RUF012  (Django reads it from the class)
        *(
            tag
            for name, tag in vars(Tags).items()
            if not name.startswith("_") and tag not in (Tags.urls, Tags.admin, Tags.templates)
        ),
        checks.TAG,
    ]
    """Every check but those of the URL configuration, the admin and the templates: the
    node serves none of them, and checking them (importing every URL module, every
    ModelAdmin, every template tag library) would delay its start by a few tenths of a
    second (``manage.py check`` still runs them)."""
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
            "--threads", type=int, default=64, help="HTTP server threads (default 64)"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        from ...node.http.server import bind_of, parse_bind, serve_forever, start_node

        # An option given empty is refused, not replaced by the setting.
        node_id = raft_settings.NODE_ID if options["node_id"] is None else options["node_id"]
        address = raft_settings.ADDRESS if options["address"] is None else options["address"]
        join = options["join"]
        problems = raft_settings.problems(node=False)
        problems.extend(
            message
            for what, message in raft_settings.security_problems(node=True)
            if what == "weak-secret"
        )
        if not isinstance(node_id, str) or not node_id or not node_id.isprintable():
            problems.append("a node id is required: --node-id or DJANGO_RAFT['NODE_ID']")
        elif (
            options["bootstrap"]
            and isinstance(raft_settings.CLUSTER, dict)
            and raft_settings.CLUSTER
            and node_id not in raft_settings.CLUSTER
        ):
            problems.append(
                f"--bootstrap: node {node_id!r} is not in DJANGO_RAFT['CLUSTER'], the founding "
                "members; a node joining a running cluster is given --join"
            )
        if not is_node_url(address):
            problems.append("an http(s) address is required: --address or DJANGO_RAFT['ADDRESS']")
        if options["bootstrap"] and join is not None:
            problems.append("--bootstrap and --join exclude each other")
        if join is not None and not is_node_url(join):
            problems.append(f"--join must be a member's http(s) URL, not {join!r}")
        if not 1 <= options["threads"] <= 512:
            problems.append("--threads must be between 1 and 512")
        bind = options["bind"]
        if not problems:
            bind = bind_of(address) if bind is None else bind
            try:
                parse_bind(bind)
            except ValueError as error:
                problems.append(f"--bind: {error}")
        if problems:
            raise CommandError("\n".join(problems))
        events.install(options["verbosity"])
        try:
            node, server = start_node(
                node_id, address, bind, options["bootstrap"], join, options["threads"]
            )
        except OSError as error:
            raise CommandError(f"cannot listen on {bind}: {error}") from error
        except ImproperlyConfigured as error:
            raise CommandError(str(error)) from error
        except RaftError as error:
            if join is None:
                raise
            raise CommandError(f"cannot join through {join}: {error}") from error
        self.stdout.write(f"raftnode {node_id} listening on {bind} ({address})")
        serve_forever(node, server)
        if node.failure is not None:  # a supervisor restarts it, once the cause is fixed
            raise CommandError(
                f"raftnode {node_id} stopped after a failure: {node.failure} (logged above)"
            )
        self.stdout.write(f"raftnode {node_id} stopped")
