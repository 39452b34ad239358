"""System checks: the ``DJANGO_RAFT`` settings, validated as the node validates them."""

from __future__ import annotations

from typing import Any

from django.core.checks import CheckMessage, Error, Warning, register

from .conf import raft_settings


@register()
def check_settings(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """Report each invalid DJANGO_RAFT setting (E001) and an empty SECRET (W001)."""
    messages: list[CheckMessage] = [
        Error(problem, hint="See the Settings section of the README.", id="django_raft.E001")
        for problem in raft_settings.problems()
    ]
    if not messages and raft_settings.NODE_ID and not raft_settings.SECRET:
        messages.append(
            Warning(
                "DJANGO_RAFT['SECRET'] is empty: anyone who can reach a node can speak Raft "
                "to it and submit commands.",
                hint="Set the same long random SECRET on every node.",
                id="django_raft.W001",
            )
        )
    return messages
