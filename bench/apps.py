"""The benchmark's Django app: registers ``bench.noop``, the trivial command handler."""

from __future__ import annotations

from django.apps import AppConfig

from django_raft.commands import Context

applied = 0
"""How many ``bench.noop`` commands this process applied (to check that nothing is lost)."""


def noop(context: Context, value: str) -> None:
    """Do nothing but count: the cost measured is the cluster's, not the handler's."""
    global applied
    applied += 1


class BenchConfig(AppConfig):
    name = "bench"
    label = "bench"
    verbose_name = "Benchmark"

    def ready(self) -> None:
        from django_raft import commands

        commands.register("bench.noop", noop)
